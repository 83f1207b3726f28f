"""Training input pipeline throughput on the synthetic set (configs/synthetic.py settings).

    python -m benchmarks.input_pipeline [--num_batches=100] [--no_write] [--results_dir=DIR]

Prepares `config.dataset.name` through `datasets.registry.load_builder` (generated, no download),
measures the steady-state rate of `create_train_dataset` batches (batch_size_per_host =
config.batch_size on one host) with videos decoded by TFDS and with frames left encoded
(`input_pipeline.LAZY_FRAME_DECODERS`), and the time to the first batch when resuming at a late
step; prints them and appends one record per mode to `benchmarks/results/input_pipeline.jsonl`
(`benchmarks.records`; `python -m benchmarks.report` regenerates BENCHMARKS.md).
"""
import argparse
import time

import tensorflow as tf
import tensorflow_datasets as tfds

from benchmarks import records
from configs import synthetic
from datasets import registry
from feelvos_jax.data import input_pipeline


def _batches_per_second(iterator, warmup: int, count: int) -> tuple[float, float]:
  """(seconds to the first batch, batches/s over `count` batches after `warmup` more)."""
  start = time.perf_counter()
  next(iterator)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(count):
    next(iterator)
  return first, count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_batches", type=int, default=100, help="Timed batches.")
  parser.add_argument("--warmup_batches", type=int, default=10, help="Untimed batches first.")
  parser.add_argument("--resume_step", type=int, default=10_000,
                      help="Step at which the resumed pipeline starts.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("input_pipeline", write=not args.no_write, directory=args.results_dir)

  tf.config.set_visible_devices([], "GPU")
  config = synthetic.get_config()
  builder = registry.load_builder(config.dataset)
  split = config.dataset.train_split
  num_videos = builder.info.splits[config.dataset.train_split].num_examples
  kwargs = dict(batch_size_per_host=config.batch_size, max_objects=config.model.max_objects,
                seed=config.seed, process_index=0, process_count=1)

  results = {}
  for mode, decoders in (("decoded videos", None),
                         ("encoded frames", input_pipeline.LAZY_FRAME_DECODERS)):
    videos = builder.as_dataset(split=split, decoders=decoders)
    first, rate = _batches_per_second(
        input_pipeline.create_train_dataset(config.dataset, videos, **kwargs),
        args.warmup_batches, args.num_batches)
    resume_first, _ = _batches_per_second(
        input_pipeline.create_train_dataset(config.dataset, videos, start_step=args.resume_step,
                                            **kwargs), 0, 1)
    results[mode] = (first, rate, resume_first)

  crop = "x".join(str(size) for size in config.dataset.crop_size)
  for mode, (first, rate, resume_first) in results.items():
    run.append(
        [mode], {"throughput": records.figure(rate, "batches/s"),
                 "samples": records.figure(rate * config.batch_size, "samples/s"),
                 "first batch": records.figure(first, "s"),
                 "first batch, resumed": records.figure(resume_first, "s")},
        kind="speed",
        params={"decoding": mode, "dataset": f"{config.dataset.name} {split} ({num_videos} "
                f"videos)", "batch": config.batch_size, "crop": crop,
                "timed batches": args.num_batches, "warm-up batches": args.warmup_batches,
                "resume step": args.resume_step})
  lines = [
      f"- TensorFlow {tf.__version__}, TFDS {tfds.__version__}",
      f"- Data: `{config.dataset.name}` train ({num_videos} videos), configs/synthetic.py: "
      f"batch {config.batch_size}, crop {crop}, scale {config.dataset.min_scale}-"
      f"{config.dataset.max_scale}, max_frame_gap {config.dataset.max_frame_gap}, "
      f"max_objects {config.model.max_objects}, reference_frame "
      f"{config.dataset.reference_frame}",
      f"- Training batches/s, steady state over {args.num_batches} batches after "
      f"{args.warmup_batches} warm-up; time to the first batch from step 0 and resuming at "
      f"step {args.resume_step}:",
  ]
  for mode, (first, rate, resume_first) in results.items():
    lines.append(f"  - {mode}: **{rate:.1f} batches/s** ({rate * config.batch_size:.0f} "
                 f"samples/s); first batch {first:.1f} s, resumed {resume_first:.1f} s")
  lines += [
      "  - encoded frames = `builder.as_dataset(split, decoders=input_pipeline."
      "LAZY_FRAME_DECODERS)`: only the 3 frames of a sample are decoded.",
      "- Tiny-model training steps/s to compare with: `python -m benchmarks.train_step`.",
  ]
  print("\n".join(lines))
  print(run.summary())


if __name__ == "__main__":
  main()
