"""Evaluation of a model on a dataset split: propagate every video, score it with the
dataset's protocol (`protocols`: DAVIS 2017 for DAVIS, the YouTube-VOS convention for the
others), write the predictions.

- `evaluate_videos(propagator, videos, protocol=...)`: any propagator (in process or an
  exported bundle); the model is given the objects the protocol gives.
- `evaluate_dataset(model, variables, videos, config)`: the validation J&F during training.
- `run_evaluation(config, workdir)`: `main.py --mode=evaluate`, from the latest checkpoint.
These two step up to `config.inference.video_batch_size` videos of one shape bucket together.
"""
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from absl import logging
from etils import epath
import flax.linen as nn
import ml_collections
import numpy as np

from feelvos_jax import console
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax.evaluation import davis_files
from feelvos_jax.evaluation import protocols
from feelvos_jax.evaluation import videos as video_scores
from feelvos_jax.evaluation import writers
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import video_propagation
from feelvos_jax.training import checkpointing
from feelvos_jax.training import workdir_lock


def predict_video(propagator: Any, video: Mapping[str, Any],
                  given: Optional[np.ndarray] = None) -> np.ndarray:
  """Predicted dataset ids [T, H, W] uint8 of one `input_pipeline.create_eval_videos` video.

  The pipeline's padding is cropped off (`original_size`); the propagator pads again.
  `propagator` is a `VideoPropagator` or an `export.ExportedModel`. `given` ([N] bool,
  default all) selects the objects whose masks the propagator is given (and so predicts).
  """
  inputs = _propagation_input(video, given)
  return _to_prediction(propagator.propagate(inputs.frames, inputs.annotations,
                                             inputs.first_frame, inputs.object_ids,
                                             name=inputs.name))


def _propagation_input(video: Mapping[str, Any],
                       given: Optional[np.ndarray] = None) -> host_loop.Video:
  """The `host_loop.Video` of an eval video: its frames cropped to `original_size`, the
  masks of the `given` objects ([N] bool, default all) renumbered 1..M in their first
  frames."""
  height, width = (int(n) for n in video["original_size"])
  segmentations = video["segmentations"][:, :height, :width]
  first_frame = np.asarray(video["first_frame"])
  object_ids = np.asarray(video["object_ids"])
  slots = np.zeros(256, np.int64)  # Slot labels of the given objects -> 1..M, others -> 0.
  slots[IGNORE_LABEL] = IGNORE_LABEL
  given = np.ones(len(object_ids), bool) if given is None else np.asarray(given, bool)
  slots[np.flatnonzero(given) + 1] = np.arange(1, int(given.sum()) + 1)
  first_frame, object_ids = first_frame[given], object_ids[given]
  annotations = {int(t): slots[segmentations[t]] for t in np.unique(first_frame)}
  return host_loop.Video(video["frames"][:, :height, :width], annotations, first_frame,
                           object_ids, video["name"])


def _to_prediction(labels: Iterable[np.ndarray]) -> np.ndarray:
  """Labels per frame (in dataset ids) -> the prediction [T, H, W] uint8."""
  return np.stack([frame.astype(np.uint8) for frame in labels])


def _ground_truth_ids(video: Mapping[str, Any]) -> np.ndarray:
  """The video's segmentations [T, H, W] (cropped) in dataset ids, IGNORE_LABEL kept."""
  height, width = (int(n) for n in video["original_size"])
  lookup = np.zeros(256, np.int64)
  lookup[1:len(video["object_ids"]) + 1] = video["object_ids"]
  lookup[IGNORE_LABEL] = IGNORE_LABEL
  return lookup[video["segmentations"][:, :height, :width]]


def evaluate_videos(propagator: Any, videos: Iterable[Mapping[str, Any]], *,
                    protocol: str = protocols.DAVIS_2017,
                    write: Optional[Callable[[Mapping[str, Any], np.ndarray], None]] = None,
                    video_batch_size: int = 1
                    ) -> tuple[Optional[dict[str, float]], list[dict[str, Any]], int]:
  """Propagates and scores videos with `protocol` (see `protocols`).

  Args:
    propagator: a `VideoPropagator` or an `export.ExportedModel`.
    videos: `input_pipeline.create_eval_videos` dicts.
    protocol: `protocols.DAVIS_2017` (the propagator is given, and scored on, the objects of
      the first frame; later ones are logged) or `protocols.YOUTUBE_VOS` (every object, from
      the frame where it first appears).
    write: called with (video, predicted dataset ids [T, H, W]) for each video.
    video_batch_size: 1 propagates one video at a time; more (a `VideoPropagator` only) steps
      the videos of one shape bucket together, holding up to this many videos
      (`VideoPropagator.propagate_in_batches`); they may be written in another order, the
      tables are the same.

  Returns:
    (global table or None if no video had ground truth on its scored frames, per-object
    rows, videos propagated). Videos without ground truth on the frames the protocol scores
    (YouTube-VOS validation) are propagated and written but not scored.

  Raises:
    ValueError: naming the video, when the protocol gives no object (DAVIS 2017: none in the
      first frame) or a prediction holds an id of no given object.
  """
  scores = []
  positions = []  # Input position of each score: batched videos may finish out of order.
  count = 0
  bar = console.progress(desc="Evaluating", unit="video")  # Drawn on a terminal only.
  for position, video, prediction in _predictions(propagator, videos, protocol,
                                                  video_batch_size):
    name, frame_names = video["name"], video["frame_names"]
    first_frame = np.asarray(video["first_frame"])
    count += 1
    bar.update(1)
    if write is not None:
      write(video, prediction)
    video_score = protocols.score_video(protocol, prediction, _ground_truth_ids(video),
                                        video["object_ids"], first_frame, name=name,
                                        frame_names=frame_names)
    if video_score is None:
      logging.info("Video %r has no ground truth on the frames the %s scores: not scored.",
                   name, protocols.describe(protocol))
      continue
    scores.append(video_score)
    positions.append(position)
    if not bar.disable:
      bar.set_postfix_str(f"J&F so far {video_scores.summarize(scores)[0]['J&F-Mean']:.3f}")
  bar.close()
  if not scores:
    return None, [], count
  global_table, rows = video_scores.summarize([scores[i] for i in np.argsort(positions)])
  return global_table, rows, count


def _predictions(propagator: Any, videos: Iterable[Mapping[str, Any]], protocol: str,
                 video_batch_size: int) -> Iterator[tuple[int, Mapping[str, Any], np.ndarray]]:
  """(input position, video, prediction [T, H, W] uint8) of each video, the propagator given
  the objects `protocol` gives; in input order for one video at a time, else in the order the
  batches finish."""
  def given_objects(video):
    name, frame_names = video["name"], video["frame_names"]
    given = protocols.given_objects(protocol, np.asarray(video["first_frame"]), name=name,
                                    first_frame_name=frame_names[0])
    if not given.all():
      logging.warning("Video %r: objects %s first appear after frame %r and are neither given "
                      "nor scored (%s).", name, np.asarray(video["object_ids"])[~given].tolist(),
                      frame_names[0], protocols.describe(protocol))
    return given

  if video_batch_size == 1:
    for position, video in enumerate(videos):
      yield position, video, predict_video(propagator, video, given_objects(video))
    return
  if not hasattr(propagator, "propagate_in_batches"):
    raise ValueError(f"config.inference.video_batch_size={video_batch_size!r}: videos "
                     f"propagated together need an in-process VideoPropagator, not "
                     f"{type(propagator).__name__}")
  inputs = (((position, video), _propagation_input(video, given_objects(video)))
            for position, video in enumerate(videos))
  for (position, video), labels in propagator.propagate_in_batches(inputs, video_batch_size):
    yield position, video, _to_prediction(labels)


def evaluate_dataset(model: nn.Module, variables: Any, videos: Iterable[Mapping[str, Any]],
                     config: ml_collections.ConfigDict) -> dict[str, float]:
  """Validation J&F of `model` on `videos` (`input_pipeline.create_eval_videos` dicts).

  Returns:
    The global table: 'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
    'F-Decay' over all objects of the videos, plus 'num_videos'; scored with the protocol of
    `protocols.protocol_for(config.dataset)`, which the log names.

  Raises:
    ValueError: when no video has ground truth on the frames the protocol scores.
  """
  propagator = video_propagation.propagator_from_config(
      model, video_propagation.to_local_device(variables), config)
  protocol = protocols.protocol_for(config.dataset)
  logging.info("Validation J&F, %s.", protocols.describe(protocol))
  global_table, _, count = evaluate_videos(
      propagator, videos, protocol=protocol,
      video_batch_size=config.inference.video_batch_size)
  if global_table is None:
    raise ValueError(f"none of the {count} videos of config.dataset.eval_split="
                     f"{config.dataset.eval_split!r} has ground truth on the frames the "
                     f"{protocols.describe(protocol)} scores: nothing to evaluate")
  return dict(global_table, num_videos=float(count))


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict[str, float]]:
  """`main.py --mode=evaluate`: propagate `config.dataset.eval_split` with the latest checkpoint.

  Writes the predictions to `<workdir>/predictions/<split>/` (DAVIS layout `<video>/<frame>.png`;
  for YouTube-VOS the submission layout `Annotations/<video>/<frame>.png` and the zip
  `<workdir>/predictions/<split>.zip`), prints the global and per-object tables and writes them
  beside the predictions as the official tool's CSVs (`davis_files.write_results_csv`). The
  protocol is `protocols.protocol_for(config.dataset)`, printed with the tables. Returns the
  global table (None when the split has no ground truth to score, as YouTube-VOS validation).

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
  protocol = protocols.protocol_for(config.dataset)
  global_table, rows, count = evaluate_videos(
      propagator, input_pipeline.create_eval_videos(config.dataset, videos), protocol=protocol,
      write=write, video_batch_size=config.inference.video_batch_size)
  print(f"Checkpoint step {step}: {count} videos of split {split!r} propagated into {output}")
  if youtube_vos:
    zip_path = output.parent / f"{split}.zip"
    writers.zip_youtube_vos_submission(os.fspath(output), os.fspath(zip_path))
    print(f"YouTube-VOS submission zip: {zip_path}")
  if global_table is None:
    print(f"No ground truth on the frames the {protocols.describe(protocol)} scores in this "
          "split: nothing to score.")
    return None
  paths = davis_files.write_results_csv(os.fspath(output), split, global_table, rows, protocol)
  print(davis_files.format_results(split, protocol, global_table, rows, paths))
  return global_table
