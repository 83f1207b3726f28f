"""FEELVOS, PML, FEELVOS + each CFBI option, STM and RDE-VOS side by side on synthetic_vos.

    python -m benchmarks.variants --steps=600 \
        --variants=feelvos,pml,background_matching,matching_bias,multi_local,atrous,instance_attention,stm,rde

For each variant, configs/synthetic.py with that one change (`VARIANTS`):
- trains `--steps` steps with `train.train_and_evaluate` (no in-training evaluation) into a
  temporary workdir, timing the whole run (input pipeline, compilation and steps);
- scores validation J&F on `config.num_eval_videos` videos of `config.dataset.eval_split` with
  `split_evaluation.evaluate_videos` (the dataset's protocol, `protocols.protocol_for`: the
  YouTube-VOS convention for synthetic_vos), which also compiles the propagation steps;
- measures CPU inference frames/s: a second, timed pass of the same videos through the same
  `video_propagation.VideoPropagator` (compiled already), end to end (padding, jitted steps,
  labels to the host), frames of all videos / seconds.
`--validate_on=synthetic_vos/small,synthetic_vos/long` scores each trained variant on the
validation videos of several datasets (one training, one table per validation set).
Prints the table and appends one record per variant to `benchmarks/results/variants.jsonl`
(`benchmarks.records`, kind "accuracy"; `--no_write` to skip).
"""
import argparse
import tempfile
import time
from typing import Any

import jax
import ml_collections

from benchmarks import records
from configs import synthetic
from datasets import registry
from feelvos_jax import models
from feelvos_jax.data import input_pipeline
from feelvos_jax.evaluation import protocols
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.inference import video_propagation
from feelvos_jax.training import train

MULTI_LOCAL_WINDOWS = (1, 2, 4, 7)
"""Radii of the multi_local variant: nested windows up to the synthetic config's window 7 (at
stride 4; CFBI's {2,...,12} are at stride 8 on 465-pixel crops)."""

VARIANTS: dict[str, dict[str, Any]] = {
    "feelvos": {},
    "pml": {"head": "nearest_neighbor"},
    "background_matching": {"background_matching": True},
    "matching_bias": {"matching_bias": True},
    "multi_local": {"local_windows": MULTI_LOCAL_WINDOWS},
    "atrous": {"global_atrous_rate": 2},
    "instance_attention": {"instance_attention": True},
    "stm": {"head": "stm"},
    "rde": {"head": "rde"},
}
"""config.model changes of each variant against configs/synthetic.py."""


def variant_config(name: str, steps: int,
                   dataset: str = "synthetic_vos/small") -> ml_collections.ConfigDict:
  """configs/synthetic.py on `dataset` (a synthetic_vos config) with variant `name` on, `steps`
  training steps, no in-training eval."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
  if steps < 1:
    raise ValueError(f"--steps must be >= 1, got {steps}")
  config = synthetic.get_config()
  config.model.update(VARIANTS[name])
  config.dataset.name = dataset
  config.num_train_steps = steps
  config.eval_every_steps = 0
  config.checkpoint_every_steps = steps
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 2)
  return config


def evaluation_videos(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The first `config.num_eval_videos` videos of the eval split, decoded and padded."""
  videos = registry.load_builder(config.dataset).as_dataset(
      split=config.dataset.eval_split, shuffle_files=False)
  if config.num_eval_videos >= 0:
    videos = videos.take(config.num_eval_videos)
  return list(input_pipeline.create_eval_videos(
      config.dataset, videos, pad_multiple=config.dataset.eval_pad_multiple))


def run_variant(name: str, steps: int, validations: dict[str, list[dict[str, Any]]],
                dataset: str = "synthetic_vos/small") -> list[dict[str, Any]]:
  """Trains one variant on `dataset`, then scores and times it on the videos of each validation
  dataset (`validations`: dataset name -> videos); returns one table row per validation set."""
  config = variant_config(name, steps, dataset)
  with tempfile.TemporaryDirectory(prefix=f"variants_{name}_") as workdir:
    start = time.perf_counter()
    state = train.train_and_evaluate(config, workdir, evaluate=False)
    train_seconds = time.perf_counter() - start
  model = models.build_model(config.model)
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  propagator = video_propagation.VideoPropagator(model, variables,
                                         object_buckets=config.inference.object_buckets)
  rows = []
  for validation, videos in validations.items():
    table, _, _ = split_evaluation.evaluate_videos(
        propagator, videos, protocol=protocols.protocol_for(config.dataset))
    if table is None:
      raise ValueError(f"no validation video of {validation} has ground truth to score")
    start = time.perf_counter()
    for video in videos:
      split_evaluation.predict_video(propagator, video)
    inference_seconds = time.perf_counter() - start
    frames = sum(len(video["frames"]) for video in videos)
    rows.append({"variant": name, "change": VARIANTS[name], "train_s": train_seconds,
                 "validation": validation, "videos": len(videos),
                 "jf": float(table["J&F-Mean"]), "j": float(table["J-Mean"]),
                 "f": float(table["F-Mean"]), "frames": frames,
                 "fps": frames / inference_seconds})
  return rows


def change_text(name: str) -> str:
  """Variant `name`'s config.model change as text, e.g. 'global_atrous_rate=2'."""
  return ", ".join(f"{key}={value}" for key, value in VARIANTS[name].items()) or "(none)"


def table_lines(rows: list[dict[str, Any]], steps: int, num_videos: int,
                dataset: str = "synthetic_vos/small", validation: str = "") -> list[str]:
  """The markdown table and its notes (`validation`: the validation dataset, if not
  `dataset`)."""
  validated = f", validated on {validation}" if validation and validation != dataset else ""
  lines = [
      f"configs/synthetic.py (tiny backbone, trained on {dataset}{validated}) with one "
      f"config.model change per variant, {steps} training steps each (batch 8, from scratch, "
      f"same seed), validation J&F on {num_videos} videos (official semi-supervised "
      f"protocol); frames/s: second timed pass over the same videos on CPU, compilation "
      f"excluded; train s: the whole train_and_evaluate call (input pipeline and compilation "
      f"included). multi_local radii {MULTI_LOCAL_WINDOWS}; pml = model.head=nearest_neighbor. "
      f"Shared, loaded machine: timings are noisy.",
      "",
      "| variant | config.model change | J&F | J | F | frames/s | train s |",
      "|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append(f"| {row['variant']} | {change_text(row['variant'])} | {row['jf']:.3f} | "
                 f"{row['j']:.3f} | {row['f']:.3f} | {row['fps']:.2f} | {row['train_s']:.0f} |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600, help="Training steps per variant.")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"Comma-separated, from {','.join(VARIANTS)}.")
  parser.add_argument("--dataset", default="synthetic_vos/small",
                      help="The synthetic_vos config to train and validate on, e.g. "
                           "synthetic_vos/long (300-frame videos).")
  parser.add_argument("--validate_on", default="",
                      help="Comma-separated synthetic_vos configs whose validation videos score "
                           "each trained variant (default: --dataset), e.g. "
                           "synthetic_vos/small,synthetic_vos/long.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("variants", write=not args.no_write, directory=args.results_dir)
  names = [name for name in args.variants.split(",") if name]
  for name in names:
    variant_config(name, args.steps, args.dataset)  # Rejects unknown names before training.

  validations = {
      validation: evaluation_videos(variant_config(names[0], args.steps, validation))
      for validation in (args.validate_on or args.dataset).split(",") if validation}
  rows = []
  for name in names:
    for row in run_variant(name, args.steps, validations, args.dataset):
      rows.append(row)
      print(row, flush=True)
      validation = row["validation"]
      table = ("" if validation == args.dataset == "synthetic_vos/small" else
               validation if validation == args.dataset else
               f"{validation} (trained on {args.dataset})")
      run.append(
          [name, f"{args.steps} steps"] + ([table] if table else []),
          {"J&F": records.figure(row["jf"]), "J": records.figure(row["j"]),
           "F": records.figure(row["f"]), "throughput": records.figure(row["fps"], "frames/s"),
           "train": records.figure(row["train_s"], "s")},
          kind="accuracy", table=table,
          params={"variant": name, "config.model change": change_text(name),
                  "steps": args.steps, "validation videos": row["videos"],
                  "dataset": args.dataset, "validated on": validation})
  for validation in validations:
    print("\n".join(table_lines([row for row in rows if row["validation"] == validation],
                                args.steps, len(validations[validation]), args.dataset,
                                validation)))
  print(run.summary())


if __name__ == "__main__":
  main()
