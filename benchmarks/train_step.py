"""Compiled FEELVOS train-step time per backbone, and the synthetic demo's step beside its input.

    cd /work/main && /work/venv/bin/python -m benchmarks.train_step \\
        [--backbones=tiny,resnet50,xception65] [--crop=465] [--batch=1] [--steps=5]

For each backbone: the paper's config (configs/common.py) with that backbone, crops of
--crop x --crop and --batch samples per device (each sample is 3 frames), on random inputs.
Reports the compile time and the median wall time of --steps compiled steps (after one
untimed step). Then configs/synthetic.py as it trains (tiny backbone, its crop and batch) with
the rate of its input pipeline (synthetic_vos/small, frames decoded lazily) beside it. Prints
a table and appends a dated section to BENCHMARKS.md.
"""
import argparse
import datetime
import os
import pathlib
import platform
import resource
import statistics
import time

import jax
import numpy as np

from benchmarks import machine
from configs import common
from configs import synthetic
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax import sharding
from feelvos_jax import train

_BENCHMARKS_FILE = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def _random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """config.batch_size samples of random frames and labels with max_objects objects each."""
  rng = np.random.default_rng(seed)
  height, width = config.dataset.crop_size
  size = config.batch_size
  batch = {name: rng.integers(0, 256, (size, height, width, 3), dtype=np.uint8)
           for name in ("reference_frame", "previous_frame", "current_frame")}
  for name in ("reference_labels", "previous_labels", "current_labels"):
    labels = rng.integers(0, config.model.max_objects + 1, (size, height, width))
    labels[rng.random(labels.shape) < 0.05] = IGNORE_LABEL
    batch[name] = labels.astype(np.int32)
  batch["num_objects"] = np.full((size,), config.model.max_objects, np.int32)
  return batch


def time_train_step(config, steps: int) -> dict[str, float]:
  """{'compile_s', 'step_s' (median of `steps`), 'steps_per_s', 'examples_per_s'}."""
  mesh = sharding.create_mesh(config.mesh)
  model = models.build_model(config.model)
  state = train.create_train_state(config, model, jax.random.PRNGKey(config.seed), mesh)
  batch = sharding.global_batch(_random_batch(config), mesh)
  start = time.perf_counter()
  step_fn = train.compile_train_step(config, state, mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {"compile_s": compile_s, "step_s": step_s, "steps_per_s": 1 / step_s,
          "examples_per_s": config.batch_size / step_s}


def input_batches_per_second(config, count: int) -> float:
  """Steady-state training batches/s of config's input pipeline on one host."""
  from datasets import registry  # pylint: disable=g-import-not-at-top (imports TF)
  from feelvos_jax import input_pipeline  # pylint: disable=g-import-not-at-top
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbones", default="tiny,resnet50,xception65",
                      help="Comma-separated backbones for the paper-config rows ('' for none).")
  parser.add_argument("--crop", type=int, default=465, help="Square crop (paper: 465).")
  parser.add_argument("--batch", type=int, default=1, help="Samples per device.")
  parser.add_argument("--steps", type=int, default=5, help="Timed steps per row.")
  parser.add_argument("--input_batches", type=int, default=50,
                      help="Timed input-pipeline batches for the synthetic row (0 skips it).")
  parser.add_argument("--no_write", action="store_true", help="Print only, skip BENCHMARKS.md.")
  args = parser.parse_args()

  rows = []
  for backbone in filter(None, args.backbones.split(",")):
    config = common.get_base_config()
    config.model.backbone = backbone
    config.dataset.crop_size = (args.crop, args.crop)
    config.batch_size = args.batch * jax.device_count()
    result = time_train_step(config, args.steps)
    rows.append((f"{backbone}, paper config", f"{args.crop}x{args.crop}", config.batch_size,
                 result, "", _peak_rss_gib()))
    print(rows[-1], flush=True)
  config = synthetic.get_config()
  result = time_train_step(config, args.steps)
  pipeline = (f"{input_batches_per_second(config, args.input_batches):.1f} batches/s"
              if args.input_batches else "")
  crop = "x".join(str(size) for size in config.dataset.crop_size)
  rows.append(("tiny, configs/synthetic.py", crop, config.batch_size, result, pipeline,
               _peak_rss_gib()))

  command = "cd /work/main && /work/venv/bin/python -m benchmarks.train_step " + " ".join(
      f"--{name}={getattr(args, name)}" for name in ("backbones", "crop", "batch", "steps"))
  lines = [
      f"## Train step, {datetime.date.today().isoformat()}",
      "",
      f"- Machine: {machine.cpu_model()}, {os.cpu_count()} CPU cores visible (shared with other "
      f"jobs), {jax.device_count()} JAX device(s) ({jax.devices()[0].platform}), Python "
      f"{platform.python_version()}",
      f"- Versions: JAX {jax.__version__}",
      f"- Command: `{command}`",
      "- Median wall time of compiled steps (one untimed step first); batch = samples of 3 "
      "frames; peak RSS of the process so far.",
      "",
      "| model | crop | batch | compile s | step s | steps/s | examples/s | input pipeline "
      "| peak RSS GiB |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, crop_text, batch, result, pipeline, rss in rows:
    lines.append(f"| {name} | {crop_text} | {batch} | {result['compile_s']:.1f} | "
                 f"{result['step_s']:.3f} | {result['steps_per_s']:.3g} | "
                 f"{result['examples_per_s']:.3g} | {pipeline} | {rss:.1f} |")
  report = "\n".join(lines + [""])
  print(report)
  if not args.no_write:
    with open(_BENCHMARKS_FILE, "a") as benchmarks:
      benchmarks.write("\n" + report)


if __name__ == "__main__":
  main()
