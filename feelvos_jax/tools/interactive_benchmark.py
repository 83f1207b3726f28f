"""The DAVIS interactive protocol, run locally with the `davisinteractive` package (its scribble
robot, its evaluation service, its J&F / AUC / J&F@60 s report) on an `InteractiveSession`.

    python -m feelvos_jax.tools.interactive_benchmark --dataset_root=/tmp/davis_synthetic \
        --workdir=/tmp/feelvos_synthetic --make_dataset

`--make_dataset` first writes a DAVIS-layout folder from the `synthetic_vos/small` validation
videos (`JPEGImages/480p`, `Annotations/480p`, `ImageSets/2017/val.txt`, and as first
scribbles `Scribbles/<video>/001.json`: the robot's strokes for an empty prediction on the
frame showing the most objects, objects only, as the protocol's first scribbles are) and the
sequence table the package reads (`davis_interactive.json`). Then, per video, up to
`--max_interactions` interactions: the robot's new strokes (`add_scribbles`), a propagation
from their frame in both directions, the masks submitted (offering the robot, for its next
scribble, every frame or, under `--frame_candidates=not_interacted`, those without scribbles
yet: the protocol's `next_scribble_frame_candidates`; `--ground_truth_marks` adds the frame's
ground truth as marks, for an upper bound). Written to `--output` (default
`<workdir>/interactive_benchmark`): the package's report CSV, `summary.json` (its AUC,
J&F@60 s and curve, plus J&F per interaction, overall and per video, and the session's
timings) and `jf_curve.png` (J&F against interactions and against time).

`davisinteractive` 1.0.4 predates NumPy 2, networkx 3 and pandas 2: `patch_davisinteractive`
adapts it here (aliases it calls by their old names, its report's string column), never in
site-packages. Install: `pip install --no-deps davisinteractive==1.0.4` (built with
`--no-build-isolation` where numpy and Cython are installed) plus scikit-learn, pandas and
opencv-python-headless.
"""
import json
import os
import time
import types
from typing import Any, Optional

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from feelvos_jax.inference import interactive
from feelvos_jax.inference.interactive import protocol
from feelvos_jax.inference.interactive import scribbles

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_root", None, "The DAVIS-layout folder (written by "
                    "--make_dataset).", required=True)
flags.DEFINE_string("workdir", None, "Training workdir of the model (latest checkpoint).",
                    required=True)
flags.DEFINE_string("output", "", "Report folder (default: <workdir>/interactive_benchmark).")
flags.DEFINE_bool("make_dataset", False, "Write --dataset_root from synthetic_vos/small "
                  "validation first.")
flags.DEFINE_integer("num_videos", 0, "Videos to evaluate (0: all).")
flags.DEFINE_integer("max_interactions", 8, "Interactions per video (the package allows 16).")
flags.DEFINE_enum("background_prior", "far", list(scribbles.BACKGROUND_PRIORS),
                  "The session's background prior.")
flags.DEFINE_bool("stop_at_interacted", False, "Stop each propagation at the nearest "
                  "previously interacted frame.")
flags.DEFINE_integer("warm_up_pixels", 4096, "warm_up(max_reference_pixels) before timing.")
flags.DEFINE_enum("frame_candidates", "any", list(protocol.FRAME_CANDIDATES),
                  "Frames the robot may draw its next scribble on (the protocol's "
                  "next_scribble_frame_candidates): 'any' (it picks the worst of all) or "
                  "'not_interacted' (the worst of those without scribbles yet).")

flags.DEFINE_bool("ground_truth_marks", False, "Also mark each frame of interaction with "
                  "its ground-truth labels (an upper bound: propagation after a perfect "
                  "scribble-to-mask step).")

METADATA = "davis_interactive.json"
"""The sequence table of a folder made by `make_dataset` (davisinteractive's `davis.json`
entries: name, num_frames, num_objects, image_size [W, H], num_scribbles, set)."""

SPLIT = "val"


def _palette() -> list[int]:
  """The DAVIS palette (the VOC colours) as a flat PIL list."""
  palette = []
  for index in range(256):
    colour, value = [0, 0, 0], index
    for bit in range(8):
      for channel in range(3):
        colour[channel] |= ((value >> channel) & 1) << (7 - bit)
      value >>= 3
    palette.extend(colour)
  return palette


def make_dataset(root: str, num_videos: int = 0) -> dict[str, dict[str, Any]]:
  """Writes the DAVIS-layout folder of the `synthetic_vos/small` validation videos.

  Returns:
    The sequence table (also written to `<root>/davis_interactive.json`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from configs import synthetic  # pylint: disable=import-outside-toplevel
  from datasets import registry  # pylint: disable=import-outside-toplevel
  robot = _robot()
  config = synthetic.get_config()
  builder = registry.load_builder(config.dataset)
  videos = builder.as_dataset(split=config.dataset.eval_split,
                              read_config=tfds.ReadConfig(try_autocache=False))
  if num_videos:
    videos = videos.take(num_videos)
  table, palette = {}, _palette()
  for example in tfds.as_numpy(videos):
    video = example["video"]
    name = video["name"].decode()
    frames, labels = video["frames"], video["segmentations"].astype(np.int64)
    labels = labels.reshape(labels.shape[:3])
    labels[labels == 255] = 0
    ids = [int(i) for i in np.unique(labels) if i != 0]
    remap = np.zeros(256, np.int64)
    remap[ids] = np.arange(1, len(ids) + 1)
    labels = remap[labels]
    for sub in ("JPEGImages/480p", "Annotations/480p", "Scribbles"):
      os.makedirs(os.path.join(root, sub, name), exist_ok=True)
    for t, (frame, label) in enumerate(zip(frames, labels)):
      Image.fromarray(frame).save(os.path.join(root, "JPEGImages/480p", name, f"{t:05d}.jpg"),
                                  quality=95)
      mask = Image.fromarray(label.astype(np.uint8), mode="P")
      mask.putpalette(palette)
      mask.save(os.path.join(root, "Annotations/480p", name, f"{t:05d}.png"))
    shown = [(len(np.unique(label)), int((label > 0).sum())) for label in labels]
    first = max(range(len(labels)), key=lambda t: shown[t])
    scribble = robot.interact(name, np.zeros_like(labels), labels, nb_objects=len(ids),
                              frame=first)
    with open(os.path.join(root, "Scribbles", name, "001.json"), "w") as file:
      json.dump(scribble, file)
    table[name] = {"name": name, "num_frames": int(len(frames)), "num_objects": len(ids),
                   "image_size": [int(frames.shape[2]), int(frames.shape[1])],
                   "num_scribbles": 1, "set": SPLIT}
  os.makedirs(os.path.join(root, "ImageSets/2017"), exist_ok=True)
  with open(os.path.join(root, "ImageSets/2017", f"{SPLIT}.txt"), "w") as file:
    file.write("".join(f"{name}\n" for name in table))
  with open(os.path.join(root, METADATA), "w") as file:
    json.dump(table, file, indent=1)
  return table


def patch_davisinteractive(table: dict[str, dict[str, Any]]) -> None:
  """Points davisinteractive at `table`'s sequences and adapts it to today's NumPy, networkx
  and pandas, in its module namespaces only (NumPy's removed `int` and `float` aliases exist
  while it is imported, for its default arguments, and are removed again)."""
  import networkx  # pylint: disable=import-outside-toplevel
  import pandas  # pylint: disable=import-outside-toplevel
  added = [name for name in ("int", "float") if name not in np.__dict__]
  for name in added:
    setattr(np, name, {"int": int, "float": float}[name])
  try:
    from davisinteractive.dataset import davis  # pylint: disable=import-outside-toplevel
    from davisinteractive.evaluation import service  # pylint: disable=import-outside-toplevel
    from davisinteractive.metrics import jaccard  # pylint: disable=import-outside-toplevel
    from davisinteractive.robot import interactive_robot  # pylint: disable=import-outside-toplevel
    from davisinteractive.storage import local  # pylint: disable=import-outside-toplevel
    from davisinteractive.utils import operations  # pylint: disable=import-outside-toplevel
    from davisinteractive.utils import scribbles  # pylint: disable=import-outside-toplevel
  finally:
    for name in added:
      delattr(np, name)
  numpy_compat = types.ModuleType("numpy_compat")
  numpy_compat.__dict__.update(np.__dict__)
  numpy_compat.__dict__.update(int=int, float=float, bool=bool, trapz=np.trapezoid)
  for module in (davis, service, jaccard, interactive_robot, local, operations, scribbles):
    module.np = numpy_compat
  networkx_compat = types.ModuleType("networkx_compat")
  networkx_compat.__dict__.update(networkx.__dict__)
  networkx_compat.from_scipy_sparse_matrix = networkx.from_scipy_sparse_array
  interactive_robot.nx = networkx_compat
  sets: dict[str, list[str]] = {SPLIT: list(table), "train": [], "trainval": list(table)}
  davis.Davis.dataset = table
  davis.Davis.sets = sets
  original_report = getattr(local.LocalStorage.get_report, "original",
                            local.LocalStorage.get_report)

  def numeric_report(self, session_id=None, **kwargs):
    """The report without its string session column, numbers as numbers (pandas 2 no longer
    averages a frame holding strings)."""
    report = original_report(self, session_id=session_id, **kwargs)
    report = report.drop(columns="session_id")
    for column in report.columns:
      if column != "sequence":
        report[column] = pandas.to_numeric(report[column])
    return report

  numeric_report.original = original_report
  local.LocalStorage.get_report = numeric_report


def _robot():
  """davisinteractive's robot with the evaluation service's parameters."""
  patch_davisinteractive({})
  from davisinteractive.evaluation import service  # pylint: disable=import-outside-toplevel
  from davisinteractive import robot  # pylint: disable=import-outside-toplevel
  return robot.InteractiveScribblesRobot(**service.ROBOT_DEFAULT_PARAMETERS)


def _load_frames(root: str, name: str, num_frames: int) -> np.ndarray:
  return np.stack([np.asarray(Image.open(os.path.join(root, "JPEGImages/480p", name,
                                                      f"{t:05d}.jpg")).convert("RGB"))
                   for t in range(num_frames)])


def _load_annotation(root: str, name: str, frame: int) -> np.ndarray:
  return np.asarray(Image.open(os.path.join(root, "Annotations/480p", name, f"{frame:05d}.png")))


def _per_interaction(report) -> dict[str, Any]:
  """J&F per interaction (mean over objects and frames) overall and per video, and the
  largest drop from one interaction to the next on any video."""
  per_video = report.groupby(["sequence", "interaction"])["j_and_f"].mean().unstack()
  overall = report.groupby("interaction")["j_and_f"].mean()
  drops = -(per_video.diff(axis=1).min(axis=1))
  return {"j_and_f": {int(k): float(v) for k, v in overall.items()},
          "j_and_f_per_video": {name: [float(v) for v in row.dropna()]
                                for name, row in per_video.iterrows()},
          "largest_drop": float(max(drops.max(), 0.0)) if len(drops) else 0.0}


def _plot(summary: dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4))
  interactions = sorted(summary["j_and_f"])
  left.plot(interactions, [summary["j_and_f"][i] for i in interactions], marker="o")
  left.set(xlabel="interaction", ylabel="J&F", ylim=(0, 1), title="J&F per interaction")
  curve = summary["curve"]
  right.plot(curve["time"], curve["J_AND_F"], marker=".")
  right.set(xlabel="seconds (mean over samples)", ylabel="J&F", ylim=(0, 1),
            title=f"AUC {summary['auc']:.3f}, J&F@60s {summary['j_and_f_at_60s']:.3f}")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)


def run(root: str, workdir: str, output: str, *, max_interactions: int,
        background_prior: str, stop_at_interacted: bool, warm_up_pixels: int,
        num_videos: int = 0, candidates: str = "any",
        ground_truth_marks: bool = False) -> dict[str, Any]:
  """The protocol over the folder's videos; writes and returns the summary."""
  from feelvos_jax import models  # pylint: disable=import-outside-toplevel
  from feelvos_jax.training import checkpointing  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  with open(os.path.join(root, METADATA)) as file:
    table = json.load(file)
  if num_videos:
    table = dict(list(table.items())[:num_videos])
  patch_davisinteractive(table)
  from davisinteractive import session as davis_session  # pylint: disable=import-outside-toplevel
  checkpointer = checkpointing.Checkpointer(workdir, keep=1)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"--workdir={workdir}: no checkpoint")
    config = ml_collections.ConfigDict(checkpointer.saved_config(step))
  finally:
    checkpointer.close()
  model = models.build_model(config.model)
  variables, step = checkpointing.restore_variables(config, workdir, model, step)
  os.makedirs(output, exist_ok=True)
  warm = {}
  for name, entry in table.items():  # Compile every bucket of every frame size, untimed.
    size = "x".join(str(n) for n in entry["image_size"])
    if size not in warm:
      probe = interactive.InteractiveSession(model, variables,
                                             _load_frames(root, name, entry["num_frames"]))
      warm[size] = probe.warm_up(warm_up_pixels, min(model.max_objects, max(
          e["num_objects"] for e in table.values())))
  timings: dict[str, list[dict[str, Any]]] = {}
  session: Optional[interactive.InteractiveSession] = None
  with davis_session.DavisInteractiveSession(
      davis_root=root, subset=SPLIT, max_nb_interactions=max_interactions, max_time=None,
      report_save_dir=output) as evaluation:
    for name, scribble, new_sequence in evaluation.scribbles_iterator(only_last=True):
      if new_sequence:
        entry = table[name]
        session = interactive.InteractiveSession(
            model, variables, _load_frames(root, name, entry["num_frames"]),
            object_ids=range(1, entry["num_objects"] + 1), background_prior=background_prior)
        timings[name] = session.timings
      frames = session.add_scribbles(scribble)
      if ground_truth_marks:
        for frame in frames:
          protocol.mark_ground_truth(session, frame, _load_annotation(root, name, frame))
      for frame in frames:
        session.propagate(frame, "both", stop_at_interacted=stop_at_interacted)
      evaluation.submit_masks(
          session.labels, next_scribble_frame_candidates=protocol.frame_candidates(
              candidates, session.num_frames, session.interacted_frames))
    report = evaluation.get_report()
    global_summary = evaluation.get_global_summary(
        save_file=os.path.join(output, "davis_global_summary.json"))
  summary = {"checkpoint_step": int(step), "videos": len(table),
             "scribble_references": float(config.dataset.get("scribble_references", 0.0)),
             "max_interactions": max_interactions, "background_prior": background_prior,
             "stop_at_interacted": stop_at_interacted, "frame_candidates": candidates,
             "ground_truth_marks": ground_truth_marks,
             "auc": float(global_summary["auc"]),
             "j_and_f_at_60s": float(global_summary["metric_at_threshold"]["J_AND_F"]),
             "curve": global_summary["curve"], "warm_up_seconds": warm,
             **_per_interaction(report)}
  seconds = [t["seconds"] for runs in timings.values() for t in runs]
  summary["seconds_per_interaction"] = {"mean": float(np.mean(seconds)),
                                        "max": float(np.max(seconds))}
  summary["timings"] = timings
  with open(os.path.join(output, "summary.json"), "w") as file:
    json.dump(summary, file, indent=1, default=str)
  _plot(summary, os.path.join(output, "jf_curve.png"))
  return summary


def run_from_flags() -> tuple[dict, str]:
  """`run` as the command-line flags ask, writing the folder first under --make_dataset or
  when it lacks the sequence table: (the summary of `run`, the output folder)."""
  root = os.path.expanduser(FLAGS.dataset_root)
  if FLAGS.make_dataset or not os.path.exists(os.path.join(root, METADATA)):
    began = time.perf_counter()
    table = make_dataset(root, FLAGS.num_videos)
    print(f"Wrote {len(table)} videos to {root} in {time.perf_counter() - began:.0f} s")
  output = FLAGS.output or os.path.join(FLAGS.workdir, "interactive_benchmark")
  summary = run(root, FLAGS.workdir, output, max_interactions=FLAGS.max_interactions,
                background_prior=FLAGS.background_prior,
                stop_at_interacted=FLAGS.stop_at_interacted,
                warm_up_pixels=FLAGS.warm_up_pixels, num_videos=FLAGS.num_videos,
                candidates=FLAGS.frame_candidates,
                ground_truth_marks=FLAGS.ground_truth_marks)
  return summary, output


def main(argv):
  del argv
  summary, output = run_from_flags()
  print("interaction  " + "  ".join(f"{i:>5}" for i in sorted(summary["j_and_f"])))
  print("J&F          " + "  ".join(f"{summary['j_and_f'][i]:5.3f}"
                                     for i in sorted(summary["j_and_f"])))
  print(f"AUC {summary['auc']:.3f}  J&F@60s {summary['j_and_f_at_60s']:.3f}  largest drop "
        f"{summary['largest_drop']:.3f}  {summary['seconds_per_interaction']['mean']:.2f} s "
        f"per interaction; written to {output}")


if __name__ == "__main__":
  app.run(main)
