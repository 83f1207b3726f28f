r"""Scores DAVIS 2017 predictions like the official davis2017-evaluation tool.

  python -m feelvos_jax.evaluate --predictions=DIR --dataset_root=DIR --split=val
  python -m feelvos_jax.tools.evaluate ...   (the same command)

Prints the global table (J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay) and the
per-object table, and writes `global_results-<split>.csv` and `per-sequence_results-<split>.csv`
into the predictions folder (replacing earlier ones; the tool would reuse them instead). The
first and last frame of each sequence are not scored, as in the tool's semi-supervised task;
see `feelvos_jax.evaluation.davis_files` for the exact behaviour on bad input.
"""
from collections.abc import Sequence

from absl import app
from absl import flags

from feelvos_jax import evaluation
from feelvos_jax.evaluation import evaluate_predictions

_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Folder of predicted sequences: <predictions>/<seq>/<frame>.png.")
_DATASET_ROOT = flags.DEFINE_string(
    "dataset_root", None, "DAVIS folder holding ImageSets/2017 and Annotations/<resolution>.")
_SPLIT = flags.DEFINE_string("split", "val", "Split: ImageSets/2017/<split>.txt.")
_RESOLUTION = flags.DEFINE_string(
    "resolution", "480p", "Annotation resolution folder: 480p or Full-Resolution.")

__all__ = ["evaluate_predictions", "main"]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  split = _SPLIT.value
  global_table, per_sequence_table = evaluate_predictions(
      _PREDICTIONS.value, _DATASET_ROOT.value, split, _RESOLUTION.value)
  global_path, per_sequence_path = evaluation.write_results_csv(
      _PREDICTIONS.value, split, global_table, per_sequence_table)
  print(f"--------------------------- Global results for {split} ---------------------------")
  print(evaluation.format_table(evaluation.GLOBAL_COLUMNS, [global_table]))
  print(f"\n---------- Per sequence results for {split} ----------")
  print(evaluation.format_table(evaluation.PER_SEQUENCE_COLUMNS, per_sequence_table))
  print("\nFirst and last frames not scored (semi-supervised protocol); annotation 255 pixels "
        "count as background, as in the official tool.")
  print(f"Global results saved in {global_path}")
  print(f"Per-sequence results saved in {per_sequence_path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["predictions", "dataset_root"])
  app.run(main)
