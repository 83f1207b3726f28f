"""Which objects an evaluation scores, on which frames: the one place that decides it.

Two protocols, named in every output that reports a score (docs/evaluation.md):
- `DAVIS_2017` ("davis2017"), the DAVIS 2017 semi-supervised protocol: the objects given are
  those of the first frame (the ids present in its annotation); each is scored on frames
  1..T-2 (not the first, given, nor the last, as the official davis2017-evaluation tool). An
  object that first appears later is neither given nor scored; its ground-truth pixels count as
  background. A video whose first frame holds no object is an error, as is one with fewer than
  3 frames. Frames 1..T-2 must all be annotated, otherwise the video is not scored.
- `YOUTUBE_VOS` ("youtube_vos"), the YouTube-VOS convention for videos whose objects appear
  mid-video: every object is given in the frame where it first appears and scored on the
  annotated frames after that one (the last frame included); the frames before it and its own
  frame are excluded for that object. A video whose annotated frames are all frames where
  objects are given (YouTube-VOS validation, whose ground truth only the server holds) is not
  scored.
An annotated frame is one with a pixel that is not IGNORE_LABEL. Predicted ids must be 0 or
an object the protocol gives (checked on the scored frames).

`protocol_for(config.dataset)` picks the protocol: `config.dataset.eval_protocol`, or when
that is "" the dataset's own: DAVIS_2017 for `davis2017/*`, YOUTUBE_VOS for every other
dataset (YouTube-VOS, synthetic, folders of videos). `score_video` applies one to a video held
in memory; `split_evaluation` (`--mode=evaluate`, the validation during training) and
`davis_files` (`python -m feelvos_jax.evaluate`) both score through it.
"""
from typing import Any, Optional, Sequence

import numpy as np

from feelvos_jax import config_checks
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.evaluation import videos

DAVIS_2017 = "davis2017"
YOUTUBE_VOS = "youtube_vos"
PROTOCOLS = (DAVIS_2017, YOUTUBE_VOS)

DESCRIPTIONS = {
    DAVIS_2017: "DAVIS 2017 semi-supervised: the objects of the first frame, scored on frames "
                "1..T-2",
    YOUTUBE_VOS: "YouTube-VOS convention: each object scored on the annotated frames after the "
                 "one it is given in",
}
"""One line per protocol, printed with its tables."""


def describe(protocol: str) -> str:
  """`protocol davis2017 (DAVIS 2017 semi-supervised: ...)`, as the commands print it."""
  return f"protocol {protocol} ({DESCRIPTIONS[check(protocol)]})"


def check(protocol: Any, name: str = "protocol") -> str:
  """`protocol` if it is one of PROTOCOLS; ValueError naming `name` otherwise."""
  return config_checks.check_choice(protocol, name, PROTOCOLS)


def protocol_for(dataset_config: Any) -> str:
  """The protocol of `config.dataset`: its `eval_protocol`, or when that is "" (or absent)
  DAVIS_2017 for a `davis2017/...` dataset name and YOUTUBE_VOS for any other."""
  protocol = dataset_config.get("eval_protocol", "")
  if protocol:
    return check(protocol, "config.dataset.eval_protocol")
  return DAVIS_2017 if dataset_config.name.split("/")[0] == "davis2017" else YOUTUBE_VOS


def given_objects(protocol: str, first_frame: Sequence[int], *, name: str = "video",
                  first_frame_name: Optional[str] = None) -> np.ndarray:
  """[N] bool: the objects the protocol gives the model (and scores), from the index of the
  frame where each first appears: DAVIS_2017 those of frame 0, YOUTUBE_VOS all.

  ValueError naming the video (`name`) and its first frame (`first_frame_name`) when that
  leaves no object.
  """
  first_frame = np.asarray(first_frame, np.int64).reshape(-1)
  given = first_frame == 0 if check(protocol) == DAVIS_2017 else np.ones(first_frame.shape, bool)
  if not given.any():
    where = ("" if protocol != DAVIS_2017 or first_frame_name is None
             else f" (its first frame {first_frame_name!r} holds none)")
    raise ValueError(f"Video {name!r}: no object to evaluate{where} with the "
                     f"{describe(protocol)}.")
  return given


def annotated_frames(ground_truth: np.ndarray) -> np.ndarray:
  """[T] bool: frames of `ground_truth` [T, H, W] with a pixel that is not IGNORE_LABEL."""
  ground_truth = np.asarray(ground_truth)
  return np.any(ground_truth.reshape(len(ground_truth), -1) != IGNORE_LABEL, axis=1)


def scored_frames(protocol: str, first_frame: Sequence[int], annotated: Sequence[bool], *,
                  name: str = "video") -> np.ndarray:
  """[N, T] bool: whether object n (given, see `given_objects`) is scored on frame t.

  Args:
    protocol: DAVIS_2017 or YOUTUBE_VOS.
    first_frame: [N] index of the frame where each given object first appears.
    annotated: [T] whether each frame is annotated (`annotated_frames`).
    name: the video, named in errors.

  Returns:
    The mask of the module docstring; all False when the video cannot be scored (DAVIS_2017:
    an unannotated frame in 1..T-2; YOUTUBE_VOS: annotations only where objects are given).

  Raises:
    ValueError: DAVIS_2017 with fewer than 3 frames, naming the video.
  """
  first_frame = np.asarray(first_frame, np.int64).reshape(-1)
  annotated = np.asarray(annotated, bool)
  num_frames = len(annotated)
  frames = np.arange(num_frames)
  if check(protocol) == DAVIS_2017:
    if num_frames < 3:
      raise ValueError(f"Video {name!r}: the DAVIS 2017 protocol scores frames 1..T-2 and needs "
                       f"T >= 3 frames, got {num_frames}.")
    inner = (frames >= 1) & (frames <= num_frames - 2)
    scorable = bool(np.all(annotated[inner]))
    return np.repeat((inner & scorable)[None], len(first_frame), axis=0)
  annotated_elsewhere = annotated.copy()  # Frames annotated beyond the objects given there.
  annotated_elsewhere[first_frame] = False
  if not annotated_elsewhere.any():
    return np.zeros((len(first_frame), num_frames), bool)
  return (frames[None] > first_frame[:, None]) & annotated[None]


def score_video(protocol: str, prediction: np.ndarray, ground_truth: np.ndarray,
                object_ids: Sequence[int], first_frame: Sequence[int], *, name: str = "video",
                frame_names: Optional[Sequence[str]] = None) -> Optional[videos.VideoScores]:
  """J and F of the objects `protocol` gives, on the frames it scores.

  Args:
    protocol: DAVIS_2017 or YOUTUBE_VOS.
    prediction: [T, H, W] predicted dataset ids (0 background); read on scored frames only.
    ground_truth: [T, H, W] dataset ids, IGNORE_LABEL where unannotated or void.
    object_ids: [N] dataset ids of the video's objects.
    first_frame: [N] index of the frame where each first appears.
    name: the video, named in errors and in the scores.
    frame_names: optional [T] frame names for errors.

  Returns:
    VideoScores of the given objects (NaN where an object is not scored on a frame that
    another one is scored on), or None when the video has nothing to score.

  Raises:
    ValueError: naming the video: DAVIS_2017 and no object in the first frame or fewer than 3
      frames; a predicted id that is neither 0 nor a given object (naming the frame and id);
      bad shapes or dtypes (see `videos.evaluate_video`).
  """
  object_ids = np.asarray(object_ids, np.int64).reshape(-1)
  first_frame = np.asarray(first_frame, np.int64).reshape(-1)
  if object_ids.shape != first_frame.shape:
    raise ValueError(f"Video {name!r}: {len(object_ids)} object ids but {len(first_frame)} "
                     "first frames.")
  given = given_objects(protocol, first_frame, name=name,
                        first_frame_name=None if frame_names is None else frame_names[0])
  scored = scored_frames(protocol, first_frame[given], annotated_frames(ground_truth), name=name)
  if not scored.any():
    return None
  return videos.evaluate_video(prediction, ground_truth, object_ids[given].tolist(),
                               scored=scored, name=name, frame_names=frame_names)


__all__ = ["DAVIS_2017", "DESCRIPTIONS", "PROTOCOLS", "YOUTUBE_VOS", "annotated_frames", "check",
           "describe", "given_objects", "protocol_for", "score_video", "scored_frames"]
