"""Depthwise and 1x1 convolutions on CPU: XLA's convolution against this project's forms.

    python -m benchmarks.layers [--repeats=3] [--no_write] [--results_dir=DIR]

`layers.depthwise_conv_native` (`lax.conv_general_dilated`, `feature_group_count` = C, what
the heads and `nn.Conv` used before) against `layers.depthwise_conv_shifted` (what
`layers.depthwise_conv_same` runs on CPU), each jitted alone, median ms of --repeats calls:
- the dynamic segmentation head's 7x7 at [2, 60, 108, 256] (the shape first measured),
  float32 and bfloat16, forward and forward + backward (gradient of a sum of squares with
  respect to input and kernel);
- the other depthwise convs of the paper's model at 480x854 (forward): embedding head and
  decoder 3x3 at stride 4, Xception's entry-flow stride-2 3x3 and middle-flow 3x3, ASPP's 3x3
  at rate 6 on 2048 channels;
- the whole dynamic segmentation head (`ObjectSegmentationHead`, the paper's 4 layers of 7x7
  x 256, 1 object = 2 slots) at 480x854 (stride 4: 120 x 214) forward, and at 240x426 (60 x
  107) forward and forward + backward (at 480p the native backward takes minutes here), with
  each form in its depthwise convs (`heads.depthwise_conv_same` swapped for the native form
  while the "native" row is traced).
and `nn.Conv` with a 1x1 kernel (XLA's convolution) against `layers.PointwiseConv` (an einsum,
what `layers.conv2d_same(features, 1)` builds), the same parameters, forward and forward +
backward, at the 1x1 convs of the paper's model at 480x854.
Prints two tables and appends one record per row to `benchmarks/results/layers.jsonl`
(`benchmarks.records`; tables "depthwise" and "1x1").
"""
import argparse
import functools
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from benchmarks import records
from feelvos_jax.models import heads
from feelvos_jax.models import layers

# (what, input shape [B, H, W, C], kernel side, stride, rate, dtype, with backward)
CONVS = [
    ("head 7x7", (2, 60, 108, 256), 7, 1, 1, jnp.float32, True),
    ("head 7x7", (2, 60, 108, 256), 7, 1, 1, jnp.bfloat16, True),
    ("embedding/decoder 3x3, 480p", (1, 120, 214, 256), 3, 1, 1, jnp.float32, False),
    ("Xception entry stride 2, 480p", (1, 240, 427, 128), 3, 2, 1, jnp.float32, False),
    ("Xception middle 3x3, 480p", (1, 30, 54, 728), 3, 1, 1, jnp.float32, False),
    ("ASPP 3x3 rate 6, 480p", (1, 30, 54, 2048), 3, 1, 6, jnp.float32, False),
]


def _record_depthwise(run: records.Run | None, what: str, shape: str, kernel: str, dtype: str,
                      timings: dict[tuple[str, str], float]) -> None:
  """Appends a depthwise row's record (table "depthwise") when there is a run."""
  if run is None:
    return
  figures = {"native forward": records.figure(timings["native", "forward"], "ms"),
             "shifted forward": records.figure(timings["shifted", "forward"], "ms"),
             "forward speed-up": records.figure(
                 timings["native", "forward"] / timings["shifted", "forward"], "x")}
  if ("native", "backward") in timings:
    figures.update({
        "native forward+backward": records.figure(timings["native", "backward"], "ms"),
        "shifted forward+backward": records.figure(timings["shifted", "backward"], "ms"),
        "forward+backward speed-up": records.figure(
            timings["native", "backward"] / timings["shifted", "backward"], "x")})
  run.append(["depthwise", what, shape, dtype], figures, kind="speed", table="depthwise",
             params={"conv": what, "input": shape, "kernel": kernel, "dtype": dtype})


def conv_rows(repeats: int, run: records.Run | None = None) -> list[str]:
  """Table rows of the single convolutions (and their records when `run` is given)."""
  rows = []
  for what, shape, k, stride, rate, dtype, backward in CONVS:
    keys = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(keys[0], shape, dtype)
    kernel = jax.random.normal(keys[1], (k, k, 1, shape[-1]), dtype)
    timings = {}
    for name, form in (("native", layers.depthwise_conv_native),
                       ("shifted", layers.depthwise_conv_shifted)):
      conv = functools.partial(form, stride=stride, rate=rate)
      timings[name, "forward"] = machine.median_ms(jax.jit(conv), x, kernel, repeats=repeats)
      if backward:
        grad = jax.jit(jax.grad(
            lambda x, kernel, conv=conv: jnp.sum(conv(x, kernel).astype(jnp.float32) ** 2),
            argnums=(0, 1)))
        timings[name, "backward"] = machine.median_ms(grad, x, kernel, repeats=repeats)
    line = (f"| {what} | {'x'.join(map(str, shape))} | {k}x{k} s{stride} r{rate} | "
            f"{jnp.dtype(dtype).name} | {timings['native', 'forward']:.1f} | "
            f"{timings['shifted', 'forward']:.1f} | "
            f"{timings['native', 'forward'] / timings['shifted', 'forward']:.1f} |")
    if backward:
      line += (f" {timings['native', 'backward']:.0f} | {timings['shifted', 'backward']:.0f} | "
               f"{timings['native', 'backward'] / timings['shifted', 'backward']:.1f} |")
    else:
      line += " | | |"
    rows.append(line)
    print(line, flush=True)
    _record_depthwise(run, what, "x".join(map(str, shape)), f"{k}x{k} s{stride} r{rate}",
                      jnp.dtype(dtype).name, timings)
  return rows


# (what, input shape [B, H, W, C], output channels, stride)
POINTWISE = [
    ("head logits, 480p", (2, 120, 214, 256), 1, 1),
    ("decoder projection, 480p", (1, 120, 214, 256), 48, 1),
    ("Xception entry residual s2, 480p", (1, 240, 427, 128), 256, 2),
    ("Xception middle 1x1, 480p", (1, 30, 54, 728), 728, 1),
    ("ASPP 1x1, 480p", (1, 30, 54, 2048), 256, 1),
]


def pointwise_rows(repeats: int, run: records.Run | None = None) -> list[str]:
  """Table rows of nn.Conv 1x1 against PointwiseConv (and their records when `run` is
  given)."""
  rows = []
  for what, shape, features, stride in POINTWISE:
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
    pointwise = layers.PointwiseConv(features, stride, use_bias=True)
    variables = jax.jit(pointwise.init)(jax.random.PRNGKey(1), x)
    timings = {}
    for name, module in (("conv", nn.Conv(features, (1, 1), strides=stride,
                                          padding=((0, 0), (0, 0)))),
                         ("einsum", pointwise)):
      timings[name, "forward"] = machine.median_ms(jax.jit(module.apply), variables, x,
                                                   repeats=repeats)
      grad = jax.jit(jax.grad(lambda v, x, m=module: jnp.sum(m.apply(v, x) ** 2),
                              argnums=(0, 1)))
      timings[name, "backward"] = machine.median_ms(grad, variables, x, repeats=repeats)
    line = (f"| {what} | {'x'.join(map(str, shape))} | {features} s{stride} | "
            f"{timings['conv', 'forward']:.1f} | {timings['einsum', 'forward']:.1f} | "
            f"{timings['conv', 'forward'] / timings['einsum', 'forward']:.1f} | "
            f"{timings['conv', 'backward']:.1f} | {timings['einsum', 'backward']:.1f} | "
            f"{timings['conv', 'backward'] / timings['einsum', 'backward']:.1f} |")
    rows.append(line)
    print(line, flush=True)
    if run is not None:
      shape_text = "x".join(map(str, shape))
      run.append(
          ["1x1", what, shape_text],
          {"conv forward": records.figure(timings["conv", "forward"], "ms"),
           "einsum forward": records.figure(timings["einsum", "forward"], "ms"),
           "forward speed-up": records.figure(
               timings["conv", "forward"] / timings["einsum", "forward"], "x"),
           "conv forward+backward": records.figure(timings["conv", "backward"], "ms"),
           "einsum forward+backward": records.figure(timings["einsum", "backward"], "ms"),
           "forward+backward speed-up": records.figure(
               timings["conv", "backward"] / timings["einsum", "backward"], "x")},
          kind="speed", table="1x1",
          params={"conv": what, "input": shape_text, "output, stride": f"{features} s{stride}"})
  return rows


def head_row(repeats: int, frame: str, height: int, width: int, backward: bool,
             slots: int = 2, run: records.Run | None = None) -> str:
  """Table row of the paper's dynamic segmentation head, native against shifted convs."""
  head = heads.ObjectSegmentationHead(num_layers=4, channels=256, kernel_size=7)
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(1, height, width, 256)), jnp.float32)
  maps = jnp.asarray(rng.random((1, height, width, slots, 3)), jnp.float32)
  variables = jax.jit(head.init)(jax.random.PRNGKey(0), features, maps)

  def loss(variables, features, maps):
    return jnp.sum(head.apply(variables, features, maps) ** 2)

  timings = {}
  for name, form in (("native", layers.depthwise_conv_native),
                     ("shifted", layers.depthwise_conv_shifted)):
    # Traced (at the first call) with the heads' depthwise convs in this form.
    with mock.patch.object(heads, "depthwise_conv_same", form):
      timings[name, "forward"] = machine.median_ms(jax.jit(head.apply), variables, features,
                                                   maps, repeats=repeats)
      if backward:
        timings[name, "backward"] = machine.median_ms(jax.jit(jax.grad(loss)), variables,
                                                      features, maps, repeats=repeats)
  row = (f"| dynamic segmentation head (4 x 7x7, 256), {frame} frame, {slots} slots | "
         f"1x{height}x{width}x256 | 7x7 s1 r1 | float32 | "
         f"{timings['native', 'forward']:.0f} | {timings['shifted', 'forward']:.0f} | "
         f"{timings['native', 'forward'] / timings['shifted', 'forward']:.1f} |")
  if backward:
    row += (f" {timings['native', 'backward']:.0f} | {timings['shifted', 'backward']:.0f} | "
            f"{timings['native', 'backward'] / timings['shifted', 'backward']:.1f} |")
  else:
    row += " | | |"
  print(row, flush=True)
  _record_depthwise(run, f"dynamic segmentation head (4 x 7x7, 256), {frame} frame, {slots} "
                    "slots", f"1x{height}x{width}x256", "7x7 s1 r1", "float32", timings)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls per figure.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("layers", write=not args.no_write, directory=args.results_dir)

  rows = conv_rows(args.repeats, run) + [
      head_row(args.repeats, "480x854", 120, 214, backward=False, run=run),
      head_row(args.repeats, "240x427", 60, 107, backward=True, run=run)]
  pointwise = pointwise_rows(args.repeats, run)
  lines = [
      f"- Load average (1 / 5 / 15 min) at the start: {run.load_start} (on a shared machine "
      "figures are indicative; the ratios are taken within this run).",
      "- native = `lax.conv_general_dilated` with feature_group_count = C (before); shifted = "
      "`layers.depthwise_conv_shifted`, k x k shifted slices summed, custom VJP (after; what "
      "`layers.depthwise_conv_same` runs on CPU). Median ms of "
      f"{args.repeats} jitted calls; backward = gradient of sum(out^2) in input and kernel "
      "(forward included).",
      "",
      "| conv | input | kernel | dtype | native fwd ms | shifted fwd ms | speed-up | "
      "native fwd+bwd ms | shifted fwd+bwd ms | speed-up |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ] + rows + [
      "",
      "1x1 convolutions: conv = `nn.Conv` with a 1x1 kernel (XLA's convolution, before); einsum "
      "= `layers.PointwiseConv`, the same parameters (after; what `layers.conv2d_same` builds "
      "for a 1x1 kernel). Median ms of jitted calls, with bias; backward = gradient of "
      "sum(out^2) in parameters and input (forward included).",
      "",
      "| conv | input | output, stride | conv fwd ms | einsum fwd ms | speed-up | "
      "conv fwd+bwd ms | einsum fwd+bwd ms | speed-up |",
      "|---|---|---|---|---|---|---|---|---|",
  ] + pointwise
  print("\n".join(lines))
  print(run.summary())


if __name__ == "__main__":
  main()
