"""`python -m feelvos_jax.evaluate_vis --results=FILE --annotations=FILE`: YouTube-VIS AP.

Scores a results file of the YouTube-VIS challenge format (`feelvos_jax.vis.results`; a zip
holding `results.json` is read too) against an `instances.json` with annotations, and prints
AP, AP50, AP75, APs, APm, APl, AR1, AR10 (spatio-temporal mask IoU, `feelvos_jax.vis.metrics`).
`--output=FILE` also writes them as JSON. A file that does not match the annotations' videos
(unknown video or category, wrong frame count or size, a malformed RLE) ends the command with
one line naming the entry, the video and the frame; nothing is written.
"""
import sys

from absl import app
from absl import flags

from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import metrics
from feelvos_jax.vis import results as results_io

_RESULTS = flags.DEFINE_string("results", None, "Results JSON (or a zip with results.json).")
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "YouTube-VIS instances.json.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional: write the metrics here as JSON.")


def main(argv):
  del argv
  try:
    scores = metrics.evaluate_files(_RESULTS.value, _ANNOTATIONS.value)
  except annotation_io.AnnotationError as error:
    sys.exit(f"error: {error}")
  print(metrics.format_table(scores))
  if _OUTPUT.value:
    results_io.write_json(scores, _OUTPUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["results", "annotations"])
  app.run(main)
