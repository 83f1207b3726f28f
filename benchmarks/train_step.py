"""Compiled FEELVOS train-step time per backbone, and the synthetic demo's step beside its input.

    python -m benchmarks.train_step [--backbones=tiny,resnet50,xception65] [--crop=465] \\
        [--batch=1] [--steps=5] [--depthwise=platform|both] [--lower_for=cuda] \\
        [--synthetic_rows="model.head=rde;model.head=rde+dataset.clip_frames=0"] [--no_write] \\
        [--results_dir=DIR]

For each backbone: the paper's config (configs/common.py) with that backbone, crops of
--crop x --crop and --batch samples per device (each sample is 3 frames), on random inputs.
Reports the compile time (split into tracing + lowering and XLA's compilation, with the
operation counts of the lowered and the optimised modules: what a compile-time profile starts
from; `--lower_for=cuda` also counts the program lowered for another platform, without its
device) and the median wall time of --steps compiled steps (after one untimed step). Then
configs/synthetic.py as it trains (tiny backbone, its crop and batch) with the rate of its
input pipeline (synthetic_vos/small, frames decoded lazily) beside it, and one more synthetic
row per `--synthetic_rows` entry (config overrides joined by '+', e.g. another head: the
before/after of a training-step change in one process). With --depthwise=both
every row is also timed with XLA's grouped depthwise convolution forced, in the same process
(the A/B of `layers.depthwise_conv_same`). Prints a table and appends one record per row to
`benchmarks/results/train_step.jsonl` (`benchmarks.records`).
"""
import argparse
import ast
import contextlib
import resource
import statistics
import time
from typing import Sequence

import jax
import ml_collections

from benchmarks import machine
from benchmarks import records
from configs import common
from configs import synthetic
from feelvos_jax import models
from feelvos_jax.models import heads
from feelvos_jax.models import layers
from feelvos_jax.training import sharding
from feelvos_jax.training import train
from tests import testing


def hlo_instructions(text: str) -> int:
  """Instructions in an HLO module's text: lines that assign a value (`%x = ...` or
  `x = ...`), over every computation (fusions and loop bodies included)."""
  return sum(1 for line in text.splitlines() if " = " in line and not line.lstrip().startswith(
      ("HloModule", "//", "#")))


def stablehlo_ops(lowered) -> int:
  """Operations of a lowered module (lines of its StableHLO text that assign a value)."""
  return sum(1 for line in lowered.as_text().splitlines() if " = " in line)


def time_train_step(config, steps: int, other_platforms: Sequence[str] = ()) -> dict[str, float]:
  """{'compile_s' (= 'lower_s' + 'xla_s'), 'lower_s' (tracing to a jaxpr and lowering to
  StableHLO), 'xla_s' (XLA's compilation), 'stablehlo_ops' (operations of the lowered module),
  'hlo_instructions' (of the optimised module), 'step_s' (median of `steps`), 'steps_per_s',
  'examples_per_s'}, and per platform P of `other_platforms` (e.g. "cuda", lowered here
  without that device: the program its compiler would get) 'stablehlo_ops_P'."""
  mesh = sharding.create_mesh(config.mesh)
  model = models.build_model(config.model)
  state = train.create_train_state(config, model, jax.random.PRNGKey(config.seed), mesh)
  batch = sharding.global_batch(testing.random_batch(config), mesh)
  start = time.perf_counter()
  lowered = train.compile_train_step(config, state, mesh).lower(state, batch)
  lower_s = time.perf_counter() - start
  step_fn = lowered.compile()
  compile_s = time.perf_counter() - start
  optimised = hlo_instructions(step_fn.as_text() or "")
  other = {f"stablehlo_ops_{platform}": stablehlo_ops(
      train.compile_train_step(config, state, mesh).trace(state, batch).lower(
          lowering_platforms=(platform,))) for platform in other_platforms}
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {"compile_s": compile_s, "lower_s": lower_s, "xla_s": compile_s - lower_s,
          "stablehlo_ops": stablehlo_ops(lowered), "hlo_instructions": optimised,
          "step_s": step_s, "steps_per_s": 1 / step_s,
          "examples_per_s": config.batch_size / step_s, **other}


def with_overrides(config, overrides: str):
  """`config` with '+'-joined `key.path=value` overrides set (values parsed as Python
  literals, else kept as strings); raises ValueError naming an override without '=' and
  KeyError naming a key the config lacks."""
  for override in filter(None, overrides.split("+")):
    if "=" not in override:
      raise ValueError(f"--synthetic_rows: {override!r} is not key.path=value")
    path, text = override.split("=", 1)
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    *parents, leaf = path.split(".")
    for parent in parents:
      node = node.get(parent) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise KeyError(f"--synthetic_rows: the config has no key {path!r}")
    node[leaf] = value
  return config


def input_batches_per_second(config, count: int) -> float:
  """Steady-state training batches/s of config's input pipeline on one host."""
  from datasets import registry  # pylint: disable=g-import-not-at-top (imports TF)
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  videos = registry.load_builder(config.dataset).as_dataset(
      split=config.dataset.train_split, decoders=input_pipeline.LAZY_FRAME_DECODERS)
  batches = input_pipeline.create_train_dataset(
      config.dataset, videos, batch_size_per_host=config.batch_size,
      max_objects=config.model.max_objects, seed=config.seed, process_index=0, process_count=1)
  for _ in range(5):
    next(batches)
  start = time.perf_counter()
  for _ in range(count):
    next(batches)
  return count / (time.perf_counter() - start)


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextlib.contextmanager
def _depthwise_form(form: str):
  """Runs the block with every depthwise conv in `form`: "platform" (as shipped:
  `layers.depthwise_conv_same`, shifted slices on CPU) or "native" (XLA's grouped
  convolution forced, for an A/B in one process)."""
  if form == "platform":
    yield
    return
  shipped = layers.depthwise_conv_same

  def native(x, kernel, *, stride=1, rate=1):
    return layers.depthwise_conv_native(x, kernel, stride, rate)

  layers.depthwise_conv_same = heads.depthwise_conv_same = native
  try:
    yield
  finally:
    layers.depthwise_conv_same = heads.depthwise_conv_same = shipped


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbones", default="tiny,resnet50,xception65",
                      help="Comma-separated backbones for the paper-config rows ('' for none).")
  parser.add_argument("--crop", type=int, default=465, help="Square crop (paper: 465).")
  parser.add_argument("--batch", type=int, default=1, help="Samples per device.")
  parser.add_argument("--steps", type=int, default=5, help="Timed steps per row.")
  parser.add_argument("--input_batches", type=int, default=50,
                      help="Timed input-pipeline batches for the synthetic row (0 skips it).")
  parser.add_argument("--depthwise", default="platform", choices=("platform", "both"),
                      help="'both': every row also with XLA's grouped depthwise convolution "
                           "forced (A/B of layers.depthwise_conv_same in one process).")
  parser.add_argument("--dtypes", default="float32",
                      help="Comma-separated compute dtypes of the paper-config rows (float32, "
                           "bfloat16).")
  parser.add_argument("--lower_for", default="",
                      help="Comma-separated other platforms (e.g. cuda, tpu) to lower each "
                           "paper-config step for as well, recording the operation count of "
                           "the program that platform's compiler would get.")
  parser.add_argument("--synthetic_rows", default="",
                      help="';'-separated extra configs/synthetic.py rows, each '+'-joined "
                           "config overrides (e.g. 'model.head=rde+dataset.clip_frames=0').")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("train_step", write=not args.no_write, directory=args.results_dir)
  forms = ("platform",) if args.depthwise == "platform" else ("platform", "native")

  configs = []
  for backbone in filter(None, args.backbones.split(",")):
    for dtype in args.dtypes.split(","):
      config = common.get_base_config()
      config.model.backbone = backbone
      config.model.dtype = dtype
      config.dataset.crop_size = (args.crop, args.crop)
      config.batch_size = args.batch * jax.device_count()
      configs.append((f"{backbone}, paper config", config))
  configs.append(("tiny, configs/synthetic.py", synthetic.get_config()))
  for overrides in filter(None, args.synthetic_rows.split(";")):
    configs.append((f"tiny, configs/synthetic.py, {overrides.replace('+', ', ')}",
                    with_overrides(synthetic.get_config(), overrides)))

  rows = []
  for name, config in configs:
    for form in forms:
      with _depthwise_form(form):
        result = time_train_step(config, args.steps, [
            platform for platform in args.lower_for.split(",") if platform
            and name.endswith("paper config")])
      pipeline = ""
      if name.endswith("synthetic.py") and args.input_batches and form == "platform":
        pipeline = f"{input_batches_per_second(config, args.input_batches):.1f} batches/s"
      crop = "x".join(str(size) for size in config.dataset.crop_size)
      rows.append((name, config.model.dtype, form, crop, config.batch_size, result, pipeline,
                   _peak_rss_gib(), machine.device_bytes("peak_bytes_in_use") / 2**30))
      print(rows[-1], flush=True)
      _record(run, *rows[-1])

  lines = [
      f"- {jax.device_count()} JAX device(s) ({jax.devices()[0].platform}). Median wall time of "
      "compiled steps (one untimed step first); batch = samples of 3 frames; peak RSS of the "
      "process so far. Depthwise: `platform` = as shipped (`layers.depthwise_conv_same`: "
      "shifted slices on CPU), `native` = XLA's grouped convolution forced. Peak device GiB: "
      "the first device's peak memory in use so far (0: not reported on CPU).",
      "",
      "| model | dtype | depthwise | crop | batch | compile s (lower + XLA) | HLO ops "
      "(StableHLO / optimised) | step s | steps/s | examples/s | input pipeline | peak RSS GiB "
      "| peak device GiB |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, dtype, form, crop_text, batch, result, pipeline, rss, device in rows:
    lines.append(f"| {name} | {dtype} | {form} | {crop_text} | {batch} | "
                 f"{result['compile_s']:.1f} ({result['lower_s']:.1f} + "
                 f"{result['xla_s']:.1f}) | {result['stablehlo_ops']} / "
                 f"{result['hlo_instructions']} | {result['step_s']:.4g} | "
                 f"{result['steps_per_s']:.3g} | {result['examples_per_s']:.3g} | {pipeline} | "
                 f"{rss:.1f} | {device:.1f} |")
  print("\n".join(lines))
  print(run.summary())


def _record(run: records.Run, name: str, dtype: str, form: str, crop: str, batch: int,
            result: dict[str, float], pipeline: str, rss_gib: float,
            device_gib: float) -> None:
  """Appends one row's record (case: backend / model / dtype / depthwise / crop / batch)."""
  figures = {"compile": records.figure(result["compile_s"], "s"),
             "trace and lower": records.figure(result["lower_s"], "s"),
             "XLA compile": records.figure(result["xla_s"], "s"),
             "StableHLO ops": records.figure(result["stablehlo_ops"], "ops"),
             "optimised HLO": records.figure(result["hlo_instructions"], "instructions"),
             **{f"StableHLO ops lowered for {key.rsplit('_', 1)[1]}": records.figure(value, "ops")
                for key, value in result.items() if key.startswith("stablehlo_ops_")},
             "step": records.figure(result["step_s"], "s"),
             "step rate": records.figure(result["steps_per_s"], "steps/s"),
             "throughput": records.figure(result["examples_per_s"], "examples/s")}
  if pipeline:
    figures["input pipeline"] = records.figure(float(pipeline.split()[0]), "batches/s")
  figures["peak RSS"] = records.figure(rss_gib, "GiB")
  if jax.default_backend() != "cpu":  # The CPU backend reports no device memory.
    figures["peak device memory"] = records.figure(device_gib, "GiB")
  run.append([name, dtype, form, crop, f"batch {batch}"], figures, kind="speed",
             params={"model": name, "dtype": dtype, "depthwise": form, "crop": crop,
                     "batch": batch})


if __name__ == "__main__":
  main()
