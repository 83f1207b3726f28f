"""FEELVOS video propagation: one jitted step per frame, memory flat in the video's length.

The pure functions of a step (`start_video`, `propagation_step`, `add_reference`) and the host
loop that drives them over a video (`run_video`); `inference.VideoPropagator` compiles them for
a model and `export.ExportedModel` runs their serialized form. `segment_logits` and
`labels_and_probs` (logits -> labels and probabilities) are shared with the interactive session.

How a video runs (the semi-supervised protocol, YouTube-VOS style objects included):
- Objects are given by a label map at the frame where each first appears (`first_frame`). The
  propagation starts at the first of these frames, f0; earlier frames are predicted background.
- Internally objects take slots 1..N in order of first appearance (ties in label order), so the
  objects present at frame t are always slots 1..n(t) and `num_objects = n(t)` masks the rest.
- At f0 the given mask is the prediction; the frame's embedding and stride-4 labels become the
  first reference frame. Background reference: the background pixels of f0 only.
- At every later frame t: embed once, match globally against the reference buffer and locally
  against frame t-1, run the segmentation head per slot, softmax over slots (the stride-4
  probabilities for the next step), upsample the logits bilinearly to the padded frame
  (`upsample_logits`, logit (i, j) on pixel (4i, 4j)), argmax to labels. Objects whose
  first annotation is frame t are then pasted over the prediction (labels and one-hot
  probabilities), and frame t joins the reference buffer labelled with those objects only.
- Stride-4 labels for local matching are the argmax labels subsampled by `[::4, ::4]`, with
  padding pixels set to IGNORE_LABEL so that they never match.

Reference buffer: the R reference frames stacked along the height, embeddings [R*h, w, E] and
labels [R*h, w] (IGNORE_LABEL where a frame does not reference an object). Global matching
takes, per object, the nearest labelled reference pixel, so matching against the stack equals
matching each object against its own first frame. R grows by one at each frame where objects
first appear (never with the video's length: R <= N); DAVIS videos keep R = 1.

Static shapes: frames are padded (bottom/right, `PAD_PIXEL`) to a multiple of the backbone's
output stride; the object axis is padded to `objects_per_chunk` slots (a bucket). Videos with
more objects than a bucket run the objects in chunks inside the step: each chunk sees its own
objects as 1..m and the others as IGNORE_LABEL (never matched), shares the background, and the
chunks' logits are merged (background once) before the softmax. The step therefore compiles
once per (padded height, padded width, slots per chunk, chunks, reference frames).

Streaming: frames may be any iterable; only the current state (reference buffer, previous
embedding, labels and probabilities) is kept, and each frame's labels are fetched while the
next frame is being computed.

Many videos per step (`run_videos`): the videos of one plan are stepped together by the same
pure functions under `jax.vmap` over a leading video axis of the state (`start_videos`,
`propagation_steps`), each from its own first annotated frame; shorter videos repeat their
last frame with their outputs dropped, and a frame where some videos' objects first appear
grows every video's reference buffer, with a frame that never matches for the others
(`add_references`). Design notes: docs/inference.md.
"""
import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.models.upsampling import upsample_logits

PAD_PIXEL = 128
"""Value of padded frame pixels, as the input pipeline pads (`augmentation.PAD_PIXEL`)."""

MAX_OBJECTS = IGNORE_LABEL - 1
"""Most objects a video may have: ids 1..254 (255 is IGNORE_LABEL)."""

State = dict[str, jax.Array]
"""Propagation state: reference_embedding [R*h, w, E], reference_labels [R*h, w] int32,
previous_embedding [h, w, E], previous_labels [h, w] int32, previous_probs [h, w, 1+S] float32
(S = object slots of all chunks)."""


def _one_hot_probs(labels: jax.Array, num_classes: int) -> jax.Array:
  """One-hot [h, w] -> [h, w, num_classes] float32; IGNORE_LABEL gives all zeros."""
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def start_video(model: nn.Module, variables: Any, frame: jax.Array, given_labels: jax.Array,
                *, num_slots: int) -> State:
  """The state after the first annotated frame.

  Args:
    model: the FEELVOS module.
    variables: {'params', 'batch_stats'}.
    frame: [Hp, Wp, 3] uint8 padded frame.
    given_labels: [Hp, Wp] int32 slot labels of the annotation (0 background, IGNORE_LABEL
      for void and padding).
    num_slots: S, object slots of all chunks (static).

  Returns:
    The State with one reference frame.
  """
  _, embeddings = model.apply(variables, frame[None], train=False, method="embed")
  labels = given_labels[::FEATURE_STRIDE, ::FEATURE_STRIDE]
  return {
      "reference_embedding": embeddings[0],
      "reference_labels": labels,
      "previous_embedding": embeddings[0],
      "previous_labels": labels,
      "previous_probs": _one_hot_probs(labels, 1 + num_slots),
  }


def _chunk_labels(labels: jax.Array, first_slot: jax.Array, slots: int) -> jax.Array:
  """Slot labels -> labels of one chunk: its slots first_slot+1.. become 1..slots, the
  background stays 0 and every other object becomes IGNORE_LABEL."""
  in_chunk = (labels > first_slot) & (labels <= first_slot + slots)
  return jnp.where(labels == 0, 0, jnp.where(in_chunk, labels - first_slot, IGNORE_LABEL))


def segment_logits(model: nn.Module, variables: Any, state: State, features: jax.Array,
                   embeddings: jax.Array, num_objects: jax.Array, *,
                   objects_per_chunk: int) -> jax.Array:
  """Stride-4 logits of every slot of every chunk, merged: [h, w, 1 + S].

  Args:
    model, variables: as in `start_video`.
    state: the State of the previous frame.
    features: [1, h, w, D] decoder features of the current frame.
    embeddings: [1, h, w, E] embeddings of the current frame.
    num_objects: int32 scalar, objects present (slots 1..num_objects); later slots get -inf.
    objects_per_chunk: M, object slots of the model (its `max_objects`).

  Returns:
    [h, w, 1 + S] logits: slot 0 the background (from the first chunk), then chunk c's
    objects at 1 + c*M ... (c+1)*M.
  """
  num_slots = state["previous_probs"].shape[-1] - 1
  if num_slots % objects_per_chunk:
    raise ValueError(f"state holds {num_slots} object slots, not a multiple of "
                     f"objects_per_chunk={objects_per_chunk}")
  num_chunks = num_slots // objects_per_chunk
  probs = state["previous_probs"]

  def chunk(index: jax.Array) -> jax.Array:
    first_slot = index * objects_per_chunk
    chunk_probs = jnp.concatenate([
        probs[..., :1],
        jax.lax.dynamic_slice_in_dim(probs, 1 + first_slot, objects_per_chunk, axis=-1)], -1)
    count = jnp.clip(num_objects - first_slot, 0, objects_per_chunk)
    logits = model.apply(
        variables, features, embeddings,
        state["reference_embedding"][None],
        _chunk_labels(state["reference_labels"], first_slot, objects_per_chunk)[None],
        state["previous_embedding"][None],
        _chunk_labels(state["previous_labels"], first_slot, objects_per_chunk)[None],
        chunk_probs[None], count[None].astype(jnp.int32), train=False, method="segment")
    return logits[0].astype(jnp.float32)

  chunk_logits = jax.lax.map(chunk, jnp.arange(num_chunks))  # [C, h, w, 1 + M]
  height, width = chunk_logits.shape[1:3]
  objects = jnp.transpose(chunk_logits[..., 1:], (1, 2, 0, 3)).reshape(height, width, num_slots)
  return jnp.concatenate([chunk_logits[0, ..., :1], objects], axis=-1)


def labels_and_probs(logits: jax.Array, valid_size: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A frame's prediction from its merged stride-4 logits: what every runner returns and what
  the next step reads (video propagation and the interactive session alike).

  Args:
    logits: [h, w, K] float32 (`segment_logits`; -inf on absent slots).
    valid_size: [2] int32, the frame's (height, width) before padding.

  Returns:
    (labels [4h, 4w] int32: the argmax (the first maximum) of the logits upsampled bilinearly
    (`upsample_logits`), IGNORE_LABEL outside `valid_size`; probs [h, w, K] float32: the
    softmax over the slots, exp(x - max) / sum).
  """
  height, width = (FEATURE_STRIDE * n for n in logits.shape[:2])
  # The argmax and the softmax over the slots as elementwise chains over the slot planes:
  # XLA:CPU reduces a minor axis of K values far slower.
  planes = list(jnp.moveaxis(logits, -1, 0))
  upsampled = upsample_logits(logits[None], (height, width))[0]
  best, labels = upsampled[..., 0], jnp.zeros((height, width), jnp.int32)
  for slot in range(1, len(planes)):
    better = upsampled[..., slot] > best
    best = jnp.where(better, upsampled[..., slot], best)
    labels = jnp.where(better, slot, labels)
  inside = ((jnp.arange(height) < valid_size[0])[:, None]
            & (jnp.arange(width) < valid_size[1])[None, :])
  top = functools.reduce(jnp.maximum, planes)
  exponentials = [jnp.exp(plane - top) for plane in planes]
  total = functools.reduce(jnp.add, exponentials)
  return (jnp.where(inside, labels, IGNORE_LABEL),
          jnp.stack([e / total for e in exponentials], axis=-1))


def propagation_step(model: nn.Module, variables: Any, state: State, frame: jax.Array,
                     paste_labels: jax.Array, num_objects: jax.Array, valid_size: jax.Array, *,
                     objects_per_chunk: int) -> tuple[State, jax.Array]:
  """Segments one frame and advances the state (see the module docstring).

  Args:
    model, variables: as in `start_video`.
    state: the State after the previous frame.
    frame: [Hp, Wp, 3] uint8 padded frame.
    paste_labels: [Hp, Wp] int32: slots of objects first annotated in this frame where their
      mask is, IGNORE_LABEL elsewhere (all IGNORE_LABEL on most frames).
    num_objects: int32 scalar, objects present before this frame (slots 1..num_objects).
    valid_size: [2] int32, the frame's (height, width) before padding.
    objects_per_chunk: M (static).

  Returns:
    (new state, labels [Hp, Wp] int32 slot labels; padding rows/columns hold IGNORE_LABEL).
  """
  features, embeddings = model.apply(variables, frame[None], train=False, method="embed")
  logits = segment_logits(model, variables, state, features, embeddings, num_objects,
                          objects_per_chunk=objects_per_chunk)
  labels, probs = labels_and_probs(logits, valid_size)
  # Pasted inside the frame only (labels hold IGNORE_LABEL on padding alone).
  labels = jnp.where((paste_labels != IGNORE_LABEL) & (labels != IGNORE_LABEL), paste_labels,
                     labels)
  pasted = paste_labels[::FEATURE_STRIDE, ::FEATURE_STRIDE]
  probs = jnp.where((pasted != IGNORE_LABEL)[..., None],
                    _one_hot_probs(pasted, probs.shape[-1]), probs)
  new_state = dict(state, previous_embedding=embeddings[0],
                   previous_labels=labels[::FEATURE_STRIDE, ::FEATURE_STRIDE],
                   previous_probs=probs)
  return new_state, labels


def add_reference(state: State, paste_labels: jax.Array) -> State:
  """Appends the last frame (its embedding, the pasted objects' stride-4 labels) to the
  reference buffer: R -> R + 1. `paste_labels` [Hp, Wp] as given to `propagation_step`."""
  labels = paste_labels[::FEATURE_STRIDE, ::FEATURE_STRIDE]
  return dict(
      state,
      reference_embedding=jnp.concatenate(
          [state["reference_embedding"], state["previous_embedding"]], axis=0),
      reference_labels=jnp.concatenate([state["reference_labels"], labels], axis=0))


def start_videos(model: nn.Module, variables: Any, frames: jax.Array, given_labels: jax.Array,
                 *, num_slots: int) -> State:
  """`start_video` of B videos at once (`jax.vmap` over a leading video axis): frames
  [B, Hp, Wp, 3] uint8, given_labels [B, Hp, Wp] int32 -> each video's State, with a leading
  axis B on every entry."""
  start = functools.partial(start_video, model, variables, num_slots=num_slots)
  return jax.vmap(start)(frames, given_labels)


def propagation_steps(model: nn.Module, variables: Any, states: State, frames: jax.Array,
                      paste_labels: jax.Array, num_objects: jax.Array, valid_size: jax.Array,
                      *, objects_per_chunk: int) -> tuple[State, jax.Array]:
  """`propagation_step` of B videos at once (`jax.vmap` over a leading video axis of every
  argument but the model and variables): states with a leading axis B, frames [B, Hp, Wp, 3],
  paste_labels [B, Hp, Wp], num_objects [B], valid_size [B, 2] -> (states, labels
  [B, Hp, Wp]). Each video's math is its own step's."""
  step = functools.partial(propagation_step, model, variables,
                           objects_per_chunk=objects_per_chunk)
  return jax.vmap(step)(states, frames, paste_labels, num_objects, valid_size)


@jax.jit
def add_references(states: State, paste_labels: jax.Array, adds: jax.Array) -> State:
  """`add_reference` of B videos at once: every reference buffer grows R -> R + 1.

  states with a leading axis B, paste_labels [B, Hp, Wp], adds [B] bool. A video with
  adds[b] appends its last frame as `add_reference` does; the others append a frame of zero
  embeddings labelled IGNORE_LABEL, which no matching, vote or pool reads (zeros also leave
  the power-of-two rescaling of matching unchanged), so their maps stay those of their own R
  reference frames.
  """
  def append(state: State, paste: jax.Array, add: jax.Array) -> State:
    previous = state["previous_embedding"]
    labels = jnp.where(add, paste[::FEATURE_STRIDE, ::FEATURE_STRIDE], IGNORE_LABEL)
    return dict(
        state,
        reference_embedding=jnp.concatenate(
            [state["reference_embedding"], jnp.where(add, previous, jnp.zeros_like(previous))],
            axis=0),
        reference_labels=jnp.concatenate([state["reference_labels"], labels], axis=0))

  return jax.vmap(append)(states, paste_labels, adds)


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one video runs: its padded size, its object slots and the two compiled functions.

  Attributes:
    height, width: padded frame size.
    objects_per_chunk: M, slots per chunk.
    num_chunks: C; the state holds S = C * M object slots.
    start: (frame [Hp, Wp, 3] uint8, given_labels [Hp, Wp] int32) -> State.
    step: (state, frame, paste_labels, num_objects, valid_size) -> (State, labels [Hp, Wp]).

  The plans of `run_videos` have batched functions instead: the same arguments and results
  with a leading video axis (`start_videos`, `propagation_steps`).
  """
  height: int
  width: int
  objects_per_chunk: int
  num_chunks: int
  start: Callable[..., State]
  step: Callable[..., tuple[State, jax.Array]]


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
          state = add_reference(state, paste)
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
      state = add_references(state, paste, adds)
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
