"""Scoring whole videos held in memory, and the DAVIS result tables.

Which objects and frames are scored is the protocol's choice (`protocols`: DAVIS 2017 or the
YouTube-VOS convention); given that choice, scoring follows the official davis2017-evaluation
tool:
- each object is scored on its scored frames, `pred == id` against `gt == id`; ground-truth
  pixels whose value is not an evaluated id (255 included) are background for every object,
  as the tool turns 255 into 0 and passes no void mask in this task;
- a predicted id that is neither 0 nor an evaluated object id is an error (the tool stops);
- per object, Mean / Recall / Decay of J and of F over its scored frames
  (`statistics.mean_recall_decay`);
- the global table averages over all objects of all videos (not per video first), and
  J&F-Mean = (J-Mean + F-Mean) / 2; the per-sequence table has one row `<video>_<id>` per object.
"""
import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

from feelvos_jax.evaluation import metrics
from feelvos_jax.evaluation import statistics

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
"""Columns of the global table and of `global_results-<split>.csv`, in the tool's order."""

PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
"""Columns of the per-sequence table and of `per-sequence_results-<split>.csv`."""


@dataclasses.dataclass(frozen=True)
class VideoScores:
  """Per-object, per-frame measures of one video.

  Attributes:
    name: the video (sequence) name.
    object_ids: the N evaluated dataset object ids.
    j: [N, T'] region similarity of each object on each scored frame.
    f: [N, T'] boundary F-measure of each object on each scored frame.
  """
  name: str
  object_ids: tuple[int, ...]
  j: np.ndarray
  f: np.ndarray


def davis_object_ids(first_frame_gt: np.ndarray) -> tuple[int, ...]:
  """The ids the DAVIS 2017 protocol evaluates: those present in the first annotation.

  The official tool evaluates 1 .. max id of the first annotation instead, scoring an id
  missing from that range as an empty object (J = F = 1 wherever the prediction is empty too);
  with the DAVIS numbering (ids 1..N per video, which the DAVIS builder enforces) both are the
  same. Ids absent from the first annotation are never evaluated.

  Args:
    first_frame_gt: [H, W] first-frame annotation (dataset ids, 0 background, 255 void).

  Returns:
    The sorted ids, () when the first frame holds no object.
  """
  ids = np.unique(np.asarray(first_frame_gt).astype(np.int64))
  return tuple(int(i) for i in ids if i not in (0, 255))


def _frame_label(frame_names: Optional[Sequence[str]], index: int) -> str:
  return f"frame {frame_names[index]!r}" if frame_names is not None else f"frame index {index}"


def evaluate_video(pred: np.ndarray, gt: np.ndarray, object_ids: Sequence[int],
                   void: Optional[np.ndarray] = None, *, skip_first_and_last: bool = True,
                   scored: Optional[np.ndarray] = None, name: str = "video",
                   frame_names: Optional[Sequence[str]] = None) -> VideoScores:
  """J and F of every object on every scored frame of one video.

  Args:
    pred: [T, H, W] predicted labels in dataset ids (0 background).
    gt: [T, H, W] ground-truth labels in dataset ids (0 background, 255 void).
    object_ids: the ids to score, each in 1..254 (`davis_object_ids` gives the DAVIS choice).
    void: optional [T, H, W] bool mask of pixels left out of J and F. None (the official
      semi-supervised behaviour) scores every pixel, gt 255 counting as background.
    skip_first_and_last: leave out the first and last frame (official protocol; needs T >= 3).
    scored: optional [N, T] bool, which frames each object is scored on (`protocols`); replaces
      `skip_first_and_last`.
    name: video name, used in error messages and in `VideoScores`.
    frame_names: optional [T] frame names for error messages.

  Returns:
    VideoScores with j, f of shape [N, T']: the T' frames that some object is scored on
    (T - 2 when skipping, T when not), NaN where an object is not scored.

  Raises:
    ValueError: bad shapes or dtypes, no or invalid object ids, too few frames, or a predicted
      id that is neither 0 nor one of `object_ids` (naming the video, frame and id).
  """
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.ndim != 3 or pred.shape != gt.shape:
    raise ValueError(f"Video {name!r}: pred and gt must be [T, H, W] of one shape, got pred "
                     f"{pred.shape} and gt {gt.shape}.")
  for array_name, array in (("pred", pred), ("gt", gt)):
    if not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"Video {name!r}: {array_name} must hold integer labels, got dtype "
                       f"{array.dtype}.")
  if void is not None:
    void = np.asarray(void, dtype=bool)
    if void.shape != gt.shape:
      raise ValueError(f"Video {name!r}: void must have the shape of gt {gt.shape}, got "
                       f"{void.shape}.")
  if frame_names is not None and len(frame_names) != len(gt):
    raise ValueError(f"Video {name!r}: {len(frame_names)} frame names for {len(gt)} frames.")
  object_ids = tuple(int(i) for i in object_ids)
  if not object_ids:
    raise ValueError(f"Video {name!r}: no object to evaluate (the first-frame annotation holds "
                     "no object id).")
  if len(set(object_ids)) != len(object_ids) or not all(0 < i < 255 for i in object_ids):
    raise ValueError(f"Video {name!r}: object_ids must be distinct ids in 1..254, got "
                     f"{object_ids}.")
  if scored is None:
    if skip_first_and_last and len(gt) < 3:
      raise ValueError(f"Video {name!r}: the semi-supervised protocol scores frames 1..T-2 and "
                       f"needs T >= 3 frames, got {len(gt)}.")
    scored = np.ones((len(object_ids), len(gt)), bool)
    if skip_first_and_last:
      scored[:, [0, -1]] = False
  scored = np.asarray(scored, bool)
  if scored.shape != (len(object_ids), len(gt)):
    raise ValueError(f"Video {name!r}: scored must be [N, T] = {(len(object_ids), len(gt))}, "
                     f"got {scored.shape}.")
  frames = np.flatnonzero(scored.any(axis=0))

  allowed = np.array((0,) + object_ids)
  j = np.full((len(object_ids), len(frames)), np.nan)
  f = np.full((len(object_ids), len(frames)), np.nan)
  for column, t in enumerate(frames):
    unknown = np.setdiff1d(np.unique(pred[t]), allowed)
    if unknown.size:
      raise ValueError(
          f"Video {name!r}, {_frame_label(frame_names, t)}: predicted id(s) "
          f"{unknown.tolist()} are not objects of this video (evaluated ids {object_ids}).")
    frame_void = None if void is None else void[t]
    for row, object_id in enumerate(object_ids):
      if not scored[row, t]:
        continue
      pred_mask = pred[t] == object_id
      gt_mask = gt[t] == object_id
      j[row, column] = metrics.region_similarity(pred_mask, gt_mask, frame_void)
      f[row, column] = metrics.boundary_f_measure(pred_mask, gt_mask, frame_void)
  return VideoScores(name=name, object_ids=object_ids, j=j, f=f)


def summarize(videos: Iterable[VideoScores]) -> tuple[dict[str, float], list[dict[str, object]]]:
  """The global and per-sequence tables of the official tool.

  Args:
    videos: scores of each video (distinct names).

  Returns:
    (global_table, per_sequence_table): global_table maps each of `GLOBAL_COLUMNS` to a float;
    per_sequence_table is one dict per object, keys `PER_SEQUENCE_COLUMNS`, Sequence being
    `<video>_<object id>`, in the order of the videos and of their object ids. The statistics
    of an object are over its scored frames (its non-NaN entries); an object with none is
    left out.
  """
  seen = set()
  stats = {"J": [], "F": []}
  rows = []
  for video in videos:
    if video.name in seen:
      raise ValueError(f"Video {video.name!r} appears twice.")
    seen.add(video.name)
    for row, object_id in enumerate(video.object_ids):
      frames = ~np.isnan(video.j[row])
      if not frames.any():
        continue
      j_stats = statistics.mean_recall_decay(video.j[row][frames])
      f_stats = statistics.mean_recall_decay(video.f[row][frames])
      stats["J"].append(j_stats)
      stats["F"].append(f_stats)
      rows.append({"Sequence": f"{video.name}_{object_id}", "J-Mean": j_stats[0],
                   "F-Mean": f_stats[0]})
  if not rows:
    raise ValueError("No object was scored: there is nothing to summarize.")
  j_mean, j_recall, j_decay = np.mean(np.array(stats["J"]), axis=0)
  f_mean, f_recall, f_decay = np.mean(np.array(stats["F"]), axis=0)
  values = ((j_mean + f_mean) / 2, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay)
  return dict(zip(GLOBAL_COLUMNS, (float(v) for v in values))), rows


def evaluate_arrays(
    videos: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[int]]],
    *, skip_first_and_last: bool = True,
) -> tuple[dict[str, float], list[dict[str, object]]]:
  """Scores in-memory videos and returns the tool's two tables (see `summarize`).

  Args:
    videos: (name, pred [T, H, W], gt [T, H, W], object_ids) per video, consumed one at a time.
    skip_first_and_last: as in `evaluate_video`.

  Returns:
    (global_table, per_sequence_table) as `summarize` returns them.
  """
  return summarize(
      evaluate_video(pred, gt, object_ids, skip_first_and_last=skip_first_and_last, name=name)
      for name, pred, gt, object_ids in videos)
