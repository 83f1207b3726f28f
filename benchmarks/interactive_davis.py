"""The DAVIS interactive protocol on a DAVIS-layout folder made from synthetic_vos/small
validation: J&F per interaction, AUC, the largest drop between interactions and the time per
interaction, recorded.

    python -m benchmarks.interactive_davis --workdir=/tmp/feelvos_synthetic \
        --dataset_root=/tmp/davis_synthetic --num_videos=10 [--background_prior=far]
        [--stop_at_interacted] [--max_interactions=8] [--frame_candidates=not_interacted]
        [--ground_truth_marks] [--no_write] [--results_dir=DIR]

Runs `feelvos_jax.tools.interactive_benchmark` (its flags and its `run_from_flags`) with the latest
checkpoint of `--workdir`, then appends one record to `benchmarks/results/interactive_davis.jsonl`
(kind "accuracy") per run. Needs `davisinteractive` (install as that tool's docstring says). Targets
(`benchmarks.report`): J&F after the first interaction >= 0.80, after the fifth >= 0.90, no sequence
dropping by more than 0.02 from one interaction to the next.
"""
import sys

from absl import app
from absl import flags

from benchmarks import records
from feelvos_jax.tools import interactive_benchmark

FLAGS = flags.FLAGS
_NO_WRITE = flags.DEFINE_bool("no_write", False, "Print only: append no record.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Where to append records.")


def figures_of(summary: dict) -> dict:
  """The recorded figures of an `interactive_benchmark.run` summary: J&F after interactions
  1, 5 and the last, AUC, J&F@60 s, the largest drop, seconds per interaction (mean, max)."""
  curve = summary["j_and_f"]
  last = max(curve)
  figures = {"J&F after 1": records.figure(curve[1])}
  if 5 in curve:
    figures["J&F after 5"] = records.figure(curve[5])
  figures[f"J&F after {last}"] = records.figure(curve[last])
  figures.update({
      "AUC": records.figure(summary["auc"]),
      "J&F@60s": records.figure(summary["j_and_f_at_60s"]),
      "largest drop": records.figure(summary["largest_drop"]),
      "seconds per interaction": records.figure(summary["seconds_per_interaction"]["mean"],
                                                "s"),
      "slowest interaction": records.figure(summary["seconds_per_interaction"]["max"], "s")})
  return figures


def main(argv):
  del argv
  run = records.Run("interactive_davis", sys.argv[1:], write=not _NO_WRITE.value,
                    directory=_RESULTS_DIR.value)
  summary, _ = interactive_benchmark.run_from_flags()
  figures = figures_of(summary)
  for name, value in figures.items():
    print(f"{name}: {value['value']}{' ' + value['unit'] if value['unit'] else ''}")
  stop = "stop-at-interacted" if FLAGS.stop_at_interacted else "through"
  trained = (f"scribbles-{summary['scribble_references']:g}"
             if summary["scribble_references"] else "masks")
  case = ["synthetic_vos-small", f"trained-on-{trained}-{summary['checkpoint_step']}-steps",
          f"prior-{FLAGS.background_prior}", stop]
  if FLAGS.frame_candidates != "any":
    case.append(f"next-frame-{FLAGS.frame_candidates.replace('_', '-')}")
  if FLAGS.ground_truth_marks:
    case.append("ground-truth-marks")
  run.append(
      case,
      figures,
      kind="accuracy",
      params={"videos": summary["videos"], "checkpoint step": summary["checkpoint_step"],
              "scribble references": summary["scribble_references"],
              "max interactions": summary["max_interactions"],
              "background prior": FLAGS.background_prior,
              "stop at interacted": FLAGS.stop_at_interacted,
              "warm-up pixels": FLAGS.warm_up_pixels,
              "frame candidates": FLAGS.frame_candidates,
              "ground-truth marks": FLAGS.ground_truth_marks},
      note="J&F per interaction: mean over the videos' objects and frames (davisinteractive's "
           "report); seconds per interaction: add_scribbles + propagation, compile excluded "
           "(warm_up first)")
  print(run.summary())


if __name__ == "__main__":
  app.run(main)
