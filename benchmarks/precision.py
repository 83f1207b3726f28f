"""bfloat16 against float32 inference: validation J&F of one checkpoint evaluated in both.

    python -m benchmarks.precision [--workdir=/tmp/feelvos_synthetic] [--num_videos=-1] \
        [--no_write] [--results_dir=DIR]
    python -m benchmarks.precision --train_steps=N [...]

Trains nothing by default: it restores the latest checkpoint of `--workdir` (default the README
quick start's, trained with configs/synthetic.py) and evaluates it on the validation split of
`synthetic_vos/small` twice, with `config.model.dtype` float32 and bfloat16 (the parameters are
float32 either way, so the same checkpoint restores into both), with the protocol and object
buckets of `main.py --mode=evaluate`; nothing is written into the workdir. With
`--train_steps=N` it first trains configs/synthetic.py for N steps (float32) into a temporary
workdir, deleted at the end, and evaluates that checkpoint. The target: |J&F bfloat16 - J&F
float32| <= 0.005. Prints both tables and appends one record (kind "accuracy") to
`benchmarks/results/precision.jsonl` (`benchmarks.records`). The dataset is read with TFDS, so
this benchmark needs TensorFlow.
"""
import argparse
import tempfile
import time
from typing import Any

import jax

from benchmarks import records
from configs import synthetic
from feelvos_jax import models
from feelvos_jax.evaluation import protocols
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.inference import video_propagation
from feelvos_jax.training import checkpointing
from feelvos_jax.training import workdir_lock

TARGET = 0.005
"""Largest |J&F bfloat16 - J&F float32| the target allows."""

_DTYPES = ("float32", "bfloat16")


def train(config: Any, workdir: str, steps: int) -> None:
  """Trains `config` for `steps` steps into `workdir` (no evaluation, one final checkpoint)."""
  from feelvos_jax.training import train as training  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.num_train_steps = steps
  config.checkpoint_every_steps = steps
  config.eval_every_steps = 0
  training.train_and_evaluate(config, workdir, evaluate=False)


def evaluate(config: Any, workdir: str, dtype: str,
             num_videos: int) -> tuple[dict[str, float], int, int, float]:
  """(global table, checkpoint step, videos, seconds) of the latest checkpoint of `workdir`
  evaluated with `config.model.dtype = dtype`, as `main.py --mode=evaluate` propagates it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (the dataset reader)
  from datasets import registry  # pylint: disable=g-import-not-at-top
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  model = models.build_model(config.model)
  variables, step = checkpointing.restore_variables(config, workdir, model)
  videos = registry.load_builder(config.dataset).as_dataset(split=config.dataset.eval_split,
                                                            shuffle_files=False)
  if num_videos >= 0:
    videos = videos.take(num_videos)
  propagator = video_propagation.propagator_from_config(model, variables, config)
  start = time.perf_counter()
  table, _, count = split_evaluation.evaluate_videos(
      propagator, input_pipeline.create_eval_videos(config.dataset, videos),
      protocol=protocols.protocol_for(config.dataset))
  if table is None:
    raise ValueError(f"no video of {config.dataset.name} {config.dataset.eval_split} has "
                     f"ground truth on the frames its protocol scores")
  return table, step, count, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/feelvos_synthetic",
                      help="Workdir of a configs/synthetic.py run (its latest checkpoint).")
  parser.add_argument("--train_steps", type=int, default=0,
                      help="Train configs/synthetic.py for this many steps into a temporary "
                      "workdir first (0: use --workdir).")
  parser.add_argument("--num_videos", type=int, default=-1,
                      help="Validation videos evaluated (-1: all).")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("precision", write=not args.no_write, directory=args.results_dir)
  config = synthetic.get_config()

  with tempfile.TemporaryDirectory() as scratch:
    workdir = args.workdir
    if args.train_steps:
      workdir = scratch
      train(config, workdir, args.train_steps)
    with workdir_lock.hold(workdir, "evaluate"):
      results = {dtype: evaluate(config, workdir, dtype, args.num_videos) for dtype in _DTYPES}

  (full, step, count, _), (half, _, _, _) = (results[dtype] for dtype in _DTYPES)
  difference = half["J&F-Mean"] - full["J&F-Mean"]
  for dtype, (table, _, _, seconds) in results.items():
    print(f"{dtype}: " + ", ".join(f"{name} {value:.4f}" for name, value in table.items()
                                   if isinstance(value, float)) + f" ({seconds:.1f} s)")
  status = "met" if abs(difference) <= TARGET else "missed"
  print(f"checkpoint step {step}, {count} videos: J&F bfloat16 - float32 = {difference:+.4f} "
        f"(target |difference| <= {TARGET}: {status})")
  figures = {f"J&F {dtype}": records.figure(float(results[dtype][0]["J&F-Mean"]))
             for dtype in _DTYPES}
  figures["J&F difference"] = records.figure(float(difference))
  figures["|J&F difference|"] = records.figure(abs(float(difference)))
  for dtype in _DTYPES:
    figures[f"seconds {dtype}"] = records.figure(results[dtype][3], "s")
  run.append([config.dataset.name, config.dataset.eval_split, "float32-vs-bfloat16"], figures,
             kind="accuracy",
             params={"dataset": config.dataset.name, "split": config.dataset.eval_split,
                     "checkpoint step": step, "trained here": args.train_steps or "no",
                     "videos": count, "backend": jax.default_backend()})
  print(run.summary())


if __name__ == "__main__":
  main()
