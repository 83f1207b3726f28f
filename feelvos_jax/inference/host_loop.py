"""The host loop of video propagation: pad frames, order objects into slots, call the compiled
steps of a `Plan` frame by frame (or several videos together), and hand out each frame's labels.

- `run_video(planner, frames, annotations, first_frame, object_ids)`: a generator of [H, W]
  int32 labels per frame (frames streamed; only the current state is kept).
- `run_videos(planner, videos)`: several videos of one plan stepped together, per-video
  [T, H, W] labels in input order.
- `Plan`, `bucket_slots`, `check_object_buckets`, `round_up`: the shape buckets.

`video_propagation.VideoPropagator` builds plans from a model; `export.ExportedModel` from a
bundle's serialized steps. Design notes: docs/inference.md.
"""
import dataclasses
import itertools
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference import propagation
from feelvos_jax.inference.propagation import MAX_OBJECTS
from feelvos_jax.inference.propagation import PAD_PIXEL
from feelvos_jax.inference.propagation import State


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one video runs: its padded size, its object slots and the two compiled functions.

  Attributes:
    height, width: padded frame size.
    objects_per_chunk: M, slots per chunk.
    num_chunks: C; the state holds S = C * M object slots.
    start: (frame [Hp, Wp, 3] uint8, given_labels [Hp, Wp] int32) -> State.
    step: (state, frame, paste_labels, num_objects, valid_size) -> (State, labels [Hp, Wp]).
    max_annotated_frames: most frames where objects are given that the state can hold (a
      memory model's `config.model.memory_frames`); None: no limit.

  The plans of `run_videos` have batched functions instead: the same arguments and results
  with a leading video axis (`start_videos`, `propagation_steps`).
  """
  height: int
  width: int
  objects_per_chunk: int
  num_chunks: int
  start: Callable[..., State]
  step: Callable[..., tuple[State, jax.Array]]
  max_annotated_frames: Optional[int] = None


Planner = Callable[[int, int, int], Plan]
"""(frame height, frame width, number of objects) -> Plan."""


class Video(NamedTuple):
  """One video to propagate: the arguments of `run_video` (see there)."""
  frames: Iterable[np.ndarray]
  annotations: Mapping[int, np.ndarray]
  first_frame: Sequence[int]
  object_ids: Optional[Sequence[int]] = None
  name: str = "video"


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class _Objects:
  """A video's objects in slot order (first appearance), with the label lookups."""
  first_frame: np.ndarray  # [N] first frame of slot 1..N.
  label_to_slot: np.ndarray  # [256] input label -> slot (0 -> 0, 255 -> 255, unknown -> -1).
  slot_to_id: np.ndarray  # [256] slot -> output id (0 and 255 -> 0).


def _order_objects(first_frame: Sequence[int], object_ids: Optional[Sequence[int]],
                   name: str) -> _Objects:
  first_frame = np.asarray(first_frame, dtype=np.int64).reshape(-1)
  num_objects = len(first_frame)
  if num_objects == 0:
    raise ValueError(f"video {name!r}: no object to propagate (first_frame is empty)")
  if num_objects > MAX_OBJECTS:
    raise ValueError(f"video {name!r}: {num_objects} objects, at most {MAX_OBJECTS} supported")
  if (first_frame < 0).any():
    raise ValueError(f"video {name!r}: negative first_frame {first_frame.tolist()}")
  if object_ids is None:
    object_ids = np.arange(1, num_objects + 1)
  object_ids = np.asarray(object_ids, dtype=np.int64).reshape(-1)
  if object_ids.shape != (num_objects,):
    raise ValueError(f"video {name!r}: {len(object_ids)} object_ids for {num_objects} objects")
  order = np.argsort(first_frame, kind="stable")  # order[s - 1] + 1 = input label of slot s.
  label_to_slot = np.full(256, -1, np.int64)
  label_to_slot[0], label_to_slot[IGNORE_LABEL] = 0, IGNORE_LABEL
  label_to_slot[order + 1] = np.arange(1, num_objects + 1)
  slot_to_id = np.zeros(256, np.int64)
  slot_to_id[1:num_objects + 1] = object_ids[order]
  return _Objects(first_frame[order], label_to_slot, slot_to_id)


def _to_slots(labels: np.ndarray, objects: _Objects, name: str, frame: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"video {name!r} frame {frame}: annotation must be [H, W], got shape "
                     f"{labels.shape}")
  values = np.unique(labels)
  unknown = values[(values < 0) | (values > 255)]
  if unknown.size == 0:
    unknown = values[objects.label_to_slot[values] < 0]
  if unknown.size:
    raise ValueError(f"video {name!r} frame {frame}: annotation holds label(s) "
                     f"{unknown.tolist()} that are neither 0, {IGNORE_LABEL} nor objects "
                     f"1..{len(objects.first_frame)}")
  return objects.label_to_slot[labels]


def _pad(array: np.ndarray, height: int, width: int, value: int) -> np.ndarray:
  padding = [(0, height - array.shape[0]), (0, width - array.shape[1])]
  padding += [(0, 0)] * (array.ndim - 2)
  return np.pad(array, padding, constant_values=value)


class _VideoFeed:
  """The host side of one video's propagation, shared by `run_video` and `run_videos`: checks
  its frames and annotations, gives each step its padded inputs and turns slot labels back
  into the video's object ids. Its errors name the video and the frame."""

  def __init__(self, annotations: Mapping[int, np.ndarray], first_frame: Sequence[int],
               object_ids: Optional[Sequence[int]], name: str):
    self.objects = _order_objects(first_frame, object_ids, name)
    self.annotations = annotations
    self.name = name
    self.num_objects = len(self.objects.first_frame)
    self.start_frame = int(self.objects.first_frame[0])
    self.size = None  # (height, width) of the first frame.

  def check_frame(self, index: int, frame: np.ndarray) -> np.ndarray:
    """Frame `index` as a uint8 [H, W, 3] array of the first frame's size; ValueError else."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
      raise ValueError(f"video {self.name!r} frame {index}: frames must be uint8 RGB, got "
                       f"dtype {frame.dtype}")
    if self.size is None:
      if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"video {self.name!r} frame {index}: expected [H, W, 3], got "
                         f"{frame.shape}")
      self.size = frame.shape[:2]
    elif frame.shape != self.size + (3,):
      raise ValueError(f"video {self.name!r} frame {index}: shape {frame.shape} differs from "
                       f"the first frame's {self.size + (3,)}")
    return frame

  def _annotation(self, index: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(slots first annotated at frame `index`, that frame's checked annotation [H, W] in
    slots, or None when no object first appears there)."""
    new = np.flatnonzero(self.objects.first_frame == index) + 1
    if not new.size:
      return new, None
    name = self.name
    if index not in self.annotations:
      raise ValueError(f"video {name!r}: objects first appear at frame {index} but no "
                       f"annotation is given for it")
    given = _to_slots(self.annotations[index], self.objects, name, index)
    if given.shape != self.size:
      raise ValueError(f"video {name!r} frame {index}: annotation shape {given.shape} "
                       f"differs from the frame's {self.size}")
    later = np.unique(given[(given > new.max()) & (given != IGNORE_LABEL)])
    if later.size:
      raise ValueError(f"video {name!r} frame {index}: the annotation holds objects "
                       f"whose first_frame is later")
    missing = [int(s) for s in new if not (given == s).any()]
    if missing:
      raise ValueError(f"video {name!r} frame {index}: object(s) with first_frame {index} "
                       f"are absent from its annotation (slots {missing})")
    return new, given

  def start_labels(self, plan: "Plan") -> np.ndarray:
    """The first annotated frame's slot labels, padded to the plan: [Hp, Wp] int32."""
    _, given = self._annotation(self.start_frame)
    return _pad(given, plan.height, plan.width, IGNORE_LABEL).astype(np.int32)

  def step_inputs(self, plan: "Plan", index: int) -> tuple[np.ndarray, np.int32, bool]:
    """(paste_labels [Hp, Wp] int32, objects present before frame `index`, whether objects
    first appear at it) of a frame after the first annotated one."""
    new, given = self._annotation(index)
    if new.size:
      paste = np.where(np.isin(given, new), given, IGNORE_LABEL)
      paste = _pad(paste, plan.height, plan.width, IGNORE_LABEL).astype(np.int32)
    else:
      paste = np.full((plan.height, plan.width), IGNORE_LABEL, np.int32)
    return paste, np.int32(np.sum(self.objects.first_frame < index)), bool(new.size)

  def to_ids(self, labels: Any) -> np.ndarray:
    """Padded slot labels [Hp, Wp] -> [H, W] int32 in the video's object ids."""
    height, width = self.size
    return self.objects.slot_to_id[np.asarray(labels)[:height, :width]].astype(np.int32)

  def check_memory(self, plan: "Plan") -> None:
    """ValueError unless the plan's state holds every frame where this video's objects are
    given (`Plan.max_annotated_frames`)."""
    annotated = len(np.unique(self.objects.first_frame))
    if plan.max_annotated_frames is not None and annotated > plan.max_annotated_frames:
      raise ValueError(f"video {self.name!r}: objects are given in {annotated} frames, more "
                       f"than the memory holds (config.model.memory_frames="
                       f"{plan.max_annotated_frames})")

  def check_started(self, num_frames: int) -> None:
    """ValueError unless the video's `num_frames` frames reach its first annotated frame."""
    if num_frames <= self.start_frame:
      raise ValueError(f"video {self.name!r}: {num_frames} frames, but objects first appear "
                       f"at frame {self.start_frame}")

  def check_complete(self, num_frames: int) -> None:
    """ValueError unless every object first appears within the video's `num_frames` frames."""
    last_frame = int(self.objects.first_frame[-1])
    if num_frames <= last_frame:
      raise ValueError(f"video {self.name!r}: {num_frames} frames, but an object first appears "
                       f"at frame {last_frame}")


def run_video(planner: Planner, frames: Iterable[np.ndarray],
              annotations: Mapping[int, np.ndarray], first_frame: Sequence[int],
              object_ids: Optional[Sequence[int]] = None, *,
              name: str = "video") -> Iterator[np.ndarray]:
  """Propagates the given masks through a video, one frame at a time.

  Args:
    planner: picks the padded size, the slots and the compiled functions (`Plan`).
    frames: iterable of [H, W, 3] uint8 frames (an array [T, H, W, 3] works).
    annotations: frame index -> [H, W] int label map (0 background, 1..N objects, IGNORE_LABEL
      void) for every frame in `first_frame`; only the objects first appearing at a frame
      are read from its map (and, at the first of these frames, the background).
    first_frame: [N] frame index at which object n+1 is first annotated.
    object_ids: [N] id written for object n+1 (default 1..N).
    name: video name for error messages.

  Yields:
    [H, W] int32 labels per frame, in `object_ids` (0 background).
  """
  feed = _VideoFeed(annotations, first_frame, object_ids, name)
  pending = []  # Labels not yet handed out: at most this frame's and the previous one's.
  plan = state = None
  index = -1
  for index, frame in enumerate(frames):
    frame = feed.check_frame(index, frame)
    if plan is None:
      plan = planner(*feed.size, feed.num_objects)
      feed.check_memory(plan)
      valid_size = np.array(feed.size, np.int32)
    if index < feed.start_frame:
      pending.append(np.zeros((plan.height, plan.width), np.int32))
    else:
      padded_frame = _pad(frame, plan.height, plan.width, PAD_PIXEL)
      if index == feed.start_frame:
        given = feed.start_labels(plan)
        state = plan.start(padded_frame, given)
        pending.append(np.where(given == IGNORE_LABEL, 0, given))
      else:
        paste, present, adds = feed.step_inputs(plan, index)
        state, labels = plan.step(state, padded_frame, paste, present, valid_size)
        if adds:
          state = propagation.add_reference(state, paste)
        pending.append(labels)
    while len(pending) > 1:
      yield feed.to_ids(pending.pop(0))
  feed.check_started(index + 1)
  if pending:
    yield feed.to_ids(pending.pop(0))
  feed.check_complete(index + 1)


def run_videos(planner: Planner, videos: Sequence[Video]) -> list[np.ndarray]:
  """Propagates several videos, stepping the videos of one Plan (padded size, slots) together.

  Args:
    planner: as `run_video`'s, but its plans' functions take and return a leading video axis
      (`start_videos`, `propagation_steps`).
    videos: the videos; frames may be any iterables (each video's first frame is read first,
      to find its plan).

  Returns:
    Per video, in order, its labels [T, H, W] int32 in its object ids: what `run_video`
    yields for it, frame by frame.

  The videos of one plan start together, each at its first annotated frame (earlier frames are
  background, as in `run_video`), and then step one frame each per call: a video with no
  frame left repeats its last one and that output is dropped; where objects first appear in
  some of the videos, every video's reference buffer grows by one frame (`add_references`).
  Each video's errors are `run_video`'s.
  """
  feeds, streams, groups = [], [], {}
  for index, video in enumerate(videos):
    feed = _VideoFeed(video.annotations, video.first_frame, video.object_ids, video.name)
    stream = iter(video.frames)
    first = next(stream, None)
    if first is None:
      feed.check_started(0)
    feed.check_frame(0, first)
    plan = planner(*feed.size, feed.num_objects)
    feed.check_memory(plan)
    key = (plan.height, plan.width, plan.objects_per_chunk, plan.num_chunks)
    groups.setdefault(key, (plan, []))[1].append(index)
    feeds.append(feed)
    streams.append(itertools.chain([first], stream))
  results = [None] * len(feeds)
  for plan, members in groups.values():
    labels = _run_group(plan, [feeds[i] for i in members], [streams[i] for i in members])
    for index, video_labels in zip(members, labels):
      results[index] = video_labels
  return results


def _run_group(plan: Plan, feeds: Sequence[_VideoFeed],
               streams: Sequence[Iterator[np.ndarray]]) -> list[np.ndarray]:
  """`run_videos` for the videos of one batched plan: [T, H, W] int32 labels per video."""
  size = len(feeds)
  outputs = [[] for _ in feeds]
  read_frames = [0] * size

  def read(video: int) -> Optional[np.ndarray]:
    """The video's next frame, checked and padded; None at its end."""
    frame = next(streams[video], None)
    if frame is None:
      return None
    frame = feeds[video].check_frame(read_frames[video], frame)
    read_frames[video] += 1
    return _pad(frame, plan.height, plan.width, PAD_PIXEL)

  last_frames = []
  for video, feed in enumerate(feeds):
    while True:
      frame = read(video)
      if frame is None:
        feed.check_started(read_frames[video])
      if read_frames[video] > feed.start_frame:
        break
      outputs[video].append(np.zeros(feed.size, np.int32))
    last_frames.append(frame)
  given = np.stack([feed.start_labels(plan) for feed in feeds])
  state = plan.start(np.stack(last_frames), given)
  for video, feed in enumerate(feeds):
    outputs[video].append(feed.to_ids(np.where(given[video] == IGNORE_LABEL, 0, given[video])))
  valid_size = np.array([feed.size for feed in feeds], np.int32)
  present = np.zeros(size, np.int32)
  active = np.ones(size, bool)
  pending = None  # (labels [B, Hp, Wp] of the last step, the videos whose frame it holds)
  while True:
    paste = np.full((size, plan.height, plan.width), IGNORE_LABEL, np.int32)
    adds = np.zeros(size, bool)
    present = present.copy()  # A fresh array per step: the last one may still be in use.
    for video, feed in enumerate(feeds):
      frame = read(video) if active[video] else None
      if frame is None:
        if active[video]:
          active[video] = False
          feed.check_complete(read_frames[video])
        continue
      last_frames[video] = frame
      paste[video], present[video], adds[video] = feed.step_inputs(plan,
                                                                   read_frames[video] - 1)
    if not active.any():
      break
    state, labels = plan.step(state, np.stack(last_frames), paste, present, valid_size)
    if adds.any():
      state = propagation.add_references(state, paste, adds)
    if pending is not None:
      _hand_out(pending, feeds, outputs)
    pending = (labels, active.copy())
  if pending is not None:
    _hand_out(pending, feeds, outputs)
  return [np.stack(output) for output in outputs]


def _hand_out(pending: tuple[jax.Array, np.ndarray], feeds: Sequence[_VideoFeed],
              outputs: list[list[np.ndarray]]) -> None:
  """Appends a step's labels [B, Hp, Wp] to the outputs of the videos it stepped."""
  labels, stepped = pending
  labels = np.asarray(labels)
  for video in np.flatnonzero(stepped):
    outputs[video].append(feeds[video].to_ids(labels[video]))


def bucket_slots(num_objects: int, object_buckets: Sequence[int]) -> tuple[int, int]:
  """(slots per chunk M, chunks C): the smallest bucket holding every object, else the largest
  bucket in ceil(N / M) chunks."""
  for slots in object_buckets:
    if slots >= num_objects:
      return slots, 1
  slots = object_buckets[-1]
  return slots, math.ceil(num_objects / slots)


def check_object_buckets(object_buckets: Sequence[int], name: str) -> tuple[int, ...]:
  """Sorted distinct positive bucket sizes; ValueError naming `name` otherwise."""
  buckets = tuple(sorted({int(b) for b in object_buckets}))
  if not buckets or buckets[0] < 1 or buckets[-1] > MAX_OBJECTS:
    raise ValueError(f"{name} must be a non-empty list of object counts in 1..{MAX_OBJECTS}, "
                     f"got {tuple(object_buckets)!r}")
  return buckets
