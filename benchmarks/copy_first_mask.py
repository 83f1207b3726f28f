"""The copy-the-first-mask baseline: J&F when every object keeps the mask it first appears with.

    python -m benchmarks.copy_first_mask [--config=configs/synthetic.py] [--no_write]
        [--results_dir=DIR]

Scores, with the official semi-supervised protocol (`feelvos_jax.evaluation`), the prediction
that pastes each object's first-appearance mask into every later frame, on the evaluation split
of the configured dataset: the floor a VOS model must clear by following motion. Prints the
table and appends a record to `benchmarks/results/copy_first_mask.jsonl` (`benchmarks.records`).
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from benchmarks import records
from datasets import registry
from feelvos_jax import evaluation
from feelvos_jax.data import input_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
_NO_WRITE = flags.DEFINE_bool("no_write", False, "Print only: append no record.")
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", None, f"Where to append records (default: ${records.RESULTS_ENV}, else "
    "benchmarks/results/).")
_TABLE = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def copy_first_masks(segmentations: np.ndarray, first_frame: np.ndarray) -> np.ndarray:
  """[T, H, W] labels 1..N -> [T, H, W] with object n's mask at first_frame[n-1] from then on."""
  prediction = np.zeros_like(segmentations)
  for object_id, first in enumerate(first_frame, start=1):
    prediction[first:, segmentations[first] == object_id] = object_id
  return prediction


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")
  run = records.Run("copy_first_mask", sys.argv[1:], write=not _NO_WRITE.value,
                    directory=_RESULTS_DIR.value)
  config = _CONFIG.value
  videos = registry.load_builder(config.dataset).as_dataset(split=config.dataset.eval_split)

  count = 0

  def scored_videos():
    nonlocal count
    for video in input_pipeline.create_eval_videos(config.dataset, videos, pad_multiple=1):
      prediction = copy_first_masks(video["segmentations"], video["first_frame"])
      count += 1
      yield (video["name"], prediction, video["segmentations"],
             list(range(1, video["num_objects"] + 1)))

  global_table, _ = evaluation.evaluate_arrays(scored_videos())
  print(f"copy-the-first-mask baseline on {config.dataset.name} {config.dataset.eval_split}:")
  print(evaluation.format_table(list(global_table), [global_table]))
  run.append([config.dataset.name, config.dataset.eval_split],
             {name: records.figure(float(global_table[name])) for name in _TABLE},
             kind="accuracy", params={"dataset": config.dataset.name,
                                      "split": config.dataset.eval_split, "videos": count})
  print(run.summary())


if __name__ == "__main__":
  app.run(main)
