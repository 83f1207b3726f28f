r"""Scores DAVIS 2017 predictions like the official davis2017-evaluation tool.

  python -m feelvos_jax.evaluate --predictions=DIR --dataset_root=DIR --split=val
  python -m feelvos_jax.tools.evaluate ...   (the same command)
  python -m feelvos_jax.evaluate ... --protocol=youtube_vos   (objects appearing mid-video)

Prints the protocol, the global table (J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall,
F-Decay) and the per-object table, and writes `global_results-<split>.csv` and
`per-sequence_results-<split>.csv` into the predictions folder (replacing earlier ones; the tool
would reuse them instead; `...-<split>-youtube_vos.csv` for the YouTube-VOS convention).
`--protocol=davis2017` (the default) is the tool's semi-supervised task: the objects of the
first frame, the first and last frame of each sequence not scored; `youtube_vos` scores every
object from the frame after its first appearance, as `main.py --mode=evaluate` does for
datasets other than DAVIS (`feelvos_jax.evaluation.protocols`). See
`feelvos_jax.evaluation.davis_files` for the exact behaviour on bad input: a bad file or folder
ends the command with one line `error: <message>` naming it (`--verbosity=1`: the traceback).
"""
from collections.abc import Sequence
import sys

from absl import app
from absl import flags

from feelvos_jax import evaluation
from feelvos_jax.evaluation import evaluate_predictions
from feelvos_jax.evaluation import protocols

_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Folder of predicted sequences: <predictions>/<seq>/<frame>.png.")
_DATASET_ROOT = flags.DEFINE_string(
    "dataset_root", None, "DAVIS folder holding ImageSets/2017 and Annotations/<resolution>.")
_SPLIT = flags.DEFINE_string("split", "val", "Split: ImageSets/2017/<split>.txt.")
_RESOLUTION = flags.DEFINE_string(
    "resolution", "480p", "Annotation resolution folder: 480p or Full-Resolution.")
_PROTOCOL = flags.DEFINE_enum(
    "protocol", protocols.DAVIS_2017, list(protocols.PROTOCOLS),
    "davis2017: the objects of the first frame on frames 1..T-2 (the official tool); "
    "youtube_vos: each object on the frames after the one it first appears in.")

__all__ = ["evaluate_predictions", "main"]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  split, protocol = _SPLIT.value, _PROTOCOL.value
  try:
    global_table, per_sequence_table = evaluate_predictions(
        _PREDICTIONS.value, _DATASET_ROOT.value, split, _RESOLUTION.value, protocol)
    paths = evaluation.write_results_csv(_PREDICTIONS.value, split, global_table,
                                         per_sequence_table, protocol)
  except (ValueError, OSError) as error:
    if flags.FLAGS.verbosity >= 1:
      raise
    sys.exit(f"error: {error}")
  print(evaluation.format_results(split, protocol, global_table, per_sequence_table, paths))


def cli() -> None:
  """The `feelvos-evaluate` console command (pyproject.toml): this module as a program."""
  flags.mark_flags_as_required(["predictions", "dataset_root"])
  app.run(main)


if __name__ == "__main__":
  cli()
