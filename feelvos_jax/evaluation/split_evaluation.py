"""Evaluation of a model on a dataset split: propagate every video, score it with the DAVIS
semi-supervised protocol (`videos.evaluate_video`), write the predictions.

- `evaluate_videos(propagator, videos)`: any propagator (in process or an exported bundle).
- `evaluate_dataset(model, variables, videos, config)`: the validation J&F during training.
- `run_evaluation(config, workdir)`: `main.py --mode=evaluate`, from the latest checkpoint.
"""
import os
from typing import Any, Callable, Iterable, Mapping, Optional

from absl import logging
from etils import epath
import flax.linen as nn
import ml_collections
import numpy as np

from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax.evaluation import davis_files
from feelvos_jax.evaluation import videos as video_scores
from feelvos_jax.evaluation import writers
from feelvos_jax.inference import video_propagation
from feelvos_jax.training import checkpointing
from feelvos_jax.training import workdir_lock


def predict_video(propagator: Any, video: Mapping[str, Any]) -> np.ndarray:
  """Predicted dataset ids [T, H, W] uint8 of one `input_pipeline.create_eval_videos` video.

  The pipeline's padding is cropped off (`original_size`); the propagator pads again.
  `propagator` is a `VideoPropagator` or an `export.ExportedModel`.
  """
  height, width = (int(n) for n in video["original_size"])
  segmentations = video["segmentations"][:, :height, :width]
  first_frame = np.asarray(video["first_frame"])
  annotations = {int(t): segmentations[t] for t in np.unique(first_frame)}
  labels = propagator.propagate(video["frames"][:, :height, :width], annotations, first_frame,
                                video["object_ids"], name=video["name"])
  return np.stack([frame.astype(np.uint8) for frame in labels])


def _ground_truth_ids(video: Mapping[str, Any]) -> np.ndarray:
  """The video's segmentations [T, H, W] (cropped) in dataset ids, IGNORE_LABEL kept."""
  height, width = (int(n) for n in video["original_size"])
  lookup = np.zeros(256, np.int64)
  lookup[1:len(video["object_ids"]) + 1] = video["object_ids"]
  lookup[IGNORE_LABEL] = IGNORE_LABEL
  return lookup[video["segmentations"][:, :height, :width]]


def _scorable(ground_truth: np.ndarray) -> bool:
  """Whether every frame the protocol scores (1 .. T-2) holds an annotation."""
  scored = ground_truth[1:-1]
  return len(ground_truth) >= 3 and bool(
      np.all(np.any(scored != IGNORE_LABEL, axis=(1, 2))))


def evaluate_videos(propagator: Any, videos: Iterable[Mapping[str, Any]], *,
                    write: Optional[Callable[[Mapping[str, Any], np.ndarray], None]] = None
                    ) -> tuple[Optional[dict[str, float]], list[dict[str, Any]], int]:
  """Propagates and scores videos (the official semi-supervised protocol).

  Args:
    propagator: a `VideoPropagator` or an `export.ExportedModel`.
    videos: `input_pipeline.create_eval_videos` dicts.
    write: called with (video, predicted dataset ids [T, H, W]) for each video.

  Returns:
    (global table or None if no video had ground truth on its scored frames, per-object
    rows, videos propagated). Videos without annotations on frames 1..T-2 (YouTube-VOS
    validation) are propagated and written but not scored.
  """
  scores = []
  count = 0
  for video in videos:
    prediction = predict_video(propagator, video)
    count += 1
    if write is not None:
      write(video, prediction)
    ground_truth = _ground_truth_ids(video)
    if not _scorable(ground_truth):
      logging.info("Video %r has no ground truth on its scored frames: not scored.",
                   video["name"])
      continue
    scores.append(video_scores.evaluate_video(
        prediction, ground_truth, [int(i) for i in video["object_ids"]], name=video["name"],
        frame_names=video["frame_names"]))
  if not scores:
    return None, [], count
  global_table, rows = video_scores.summarize(scores)
  return global_table, rows, count


def evaluate_dataset(model: nn.Module, variables: Any, videos: Iterable[Mapping[str, Any]],
                     config: ml_collections.ConfigDict) -> dict[str, float]:
  """Validation J&F of `model` on `videos` (`input_pipeline.create_eval_videos` dicts).

  Returns:
    The global table: 'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
    'F-Decay' over all objects of the videos, plus 'num_videos'.

  Raises:
    ValueError: when no video has ground truth on the frames the protocol scores.
  """
  propagator = video_propagation.propagator_from_config(model, video_propagation.to_local_device(variables), config)
  global_table, _, count = evaluate_videos(propagator, videos)
  if global_table is None:
    raise ValueError(f"none of the {count} videos of config.dataset.eval_split="
                     f"{config.dataset.eval_split!r} has ground truth on the frames the "
                     f"protocol scores (1..T-2): nothing to evaluate")
  return dict(global_table, num_videos=float(count))


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict[str, float]]:
  """`main.py --mode=evaluate`: propagate `config.dataset.eval_split` with the latest checkpoint.

  Writes the predictions to `<workdir>/predictions/<split>/` (DAVIS layout `<video>/<frame>.png`;
  for YouTube-VOS the submission layout `Annotations/<video>/<frame>.png` and the zip
  `<workdir>/predictions/<split>.zip`), prints the global and per-object tables and writes them
  beside the predictions as the official tool's CSVs. Returns the global table (None when the
  split has no ground truth to score, as YouTube-VOS validation).

  The workdir is locked meanwhile (`workdir_lock.hold`: WorkdirLockedError if another run, e.g.
  a training, holds it); a checkpoint whose files do not match their checksums raises
  `integrity.IntegrityError` naming them.
  """
  with workdir_lock.hold(workdir, "evaluate"):
    return _run_evaluation(config, workdir)


def _run_evaluation(config: ml_collections.ConfigDict,
                    workdir: str) -> Optional[dict[str, float]]:
  """`run_evaluation` once the workdir is locked."""
  # The dataset code imports TensorFlow; inference itself does not need it.
  from datasets import registry  # pylint: disable=g-import-not-at-top
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model)
  variables, step = checkpointing.restore_variables(config, workdir, model)
  split = config.dataset.eval_split
  output = epath.Path(workdir) / "predictions" / split
  output.mkdir(parents=True, exist_ok=True)
  youtube_vos = config.dataset.name.split("/")[0] == "youtube_vos"

  def write(video, prediction):
    if youtube_vos:
      writers.write_youtube_vos_predictions(os.fspath(output), video["name"],
                                            video["frame_names"], prediction)
    else:
      writers.write_davis_predictions(os.fspath(output), video["name"], video["frame_names"],
                                      prediction)

  videos = registry.load_builder(config.dataset).as_dataset(split=split, shuffle_files=False)
  propagator = video_propagation.propagator_from_config(model, variables, config)
  global_table, rows, count = evaluate_videos(
      propagator, input_pipeline.create_eval_videos(config.dataset, videos), write=write)
  print(f"Checkpoint step {step}: {count} videos of split {split!r} propagated into {output}")
  if youtube_vos:
    zip_path = output.parent / f"{split}.zip"
    writers.zip_youtube_vos_submission(os.fspath(output), os.fspath(zip_path))
    print(f"YouTube-VOS submission zip: {zip_path}")
  if global_table is None:
    print("No ground truth on the scored frames of this split: nothing to score.")
    return None
  print(f"--------------------------- Global results for {split} ---------------------------")
  print(davis_files.format_table(video_scores.GLOBAL_COLUMNS, [global_table]))
  print(f"\n---------- Per sequence results for {split} ----------")
  print(davis_files.format_table(video_scores.PER_SEQUENCE_COLUMNS, rows))
  paths = davis_files.write_results_csv(os.fspath(output), split, global_table, rows)
  print("First and last frames not scored (semi-supervised protocol). Results saved in "
        + " and ".join(paths))
  return global_table
