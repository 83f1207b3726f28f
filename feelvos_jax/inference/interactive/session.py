"""`InteractiveSession`: one video's embeddings, its marked cells and its latest labels.

    session = InteractiveSession(model, variables, frames, object_ids=[1])
    session.add_scribble(0, 1, [(120, 200), (130, 210)])   # two clicks on object 1, frame 0
    session.add_background_scribble(0, background_mask)    # a thin [H, W] bool stroke
    labels = session.propagate(0, direction="forward")     # [T, H, W] int32 object ids

Contract:
- The constructor embeds every frame once (padded bottom/right with `propagation.PAD_PIXEL` to
  a multiple of the output stride) and keeps features [T, h, w, D] and embeddings [T, h, w, E]
  at stride 4 of the padded frame (`embedding_bytes`); the frames are not kept.
- References: [T, h, w] object ids of the marked cells (`scribbles`); a later mark of a cell
  replaces an earlier one. The objects are `object_ids` plus those of `add_object`.
- `propagate(from_frame, direction)` segments the frame of interaction (its "previous frame"
  is itself with its marked cells as labels), then every frame in the direction from the one
  before it: global matching against all marked cells of all frames, local matching against
  the previous frame, the model's head, the labels of `propagation.labels_and_probs`. The
  objects taking part are those with a marked cell, in registration order. Marks are not
  pasted: every label is the model's prediction. Frames outside the direction keep their
  labels (background until first propagated).
- Models with `supports_incremental_matching` take the incremental route (`routes`), bounded
  by `distance_cache_bytes`, `head_cache_bytes` and `minima_cache_bytes`; the others (CFBI
  options, PML, sharded matching) the generic one. The labels do not depend on the route or
  the bounds.
- Bad input raises a ValueError naming the argument, the frame and the object, and leaves the
  session unchanged. Design notes: docs/interactive.md.
"""
import functools
import math
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import propagation
from feelvos_jax.inference.interactive import routes
from feelvos_jax.inference.interactive import scribbles
from feelvos_jax.inference.interactive import steps
from feelvos_jax.inference.interactive.cache import BoundedCache

DIRECTIONS = ("forward", "backward", "both")
"""The values of `propagate`'s `direction`."""

DISTANCE_CACHE_BYTES = 2**30
"""Default bound of the stored local-matching distances of a session (1 GiB)."""

HEAD_CACHE_BYTES = 2**30
"""Default bound of the stored feature parts of the head's first layer (1 GiB)."""

MINIMA_CACHE_BYTES = 2**28
"""Default bound of the stored global-matching minima (256 MiB)."""

_CONFLICT = -2
"""`_claims` value of a cell claimed by two labels in one interaction."""


class InteractiveSession:
  """Interactive segmentation of one video (see the module docstring).

  Attributes:
    model: the FEELVOS-family module.
    num_frames, height, width: the video's T, H, W.
    padded_height, padded_width: Hp, Wp (multiples of `pad_multiple`).
  """

  def __init__(self, model: nn.Module, variables: Any, frames: np.ndarray, *,
               object_ids: Optional[Sequence[int]] = None, embed_batch_size: int = 4,
               object_buckets: Optional[Sequence[int]] = None,
               pad_multiple: Optional[int] = None,
               distance_cache_bytes: int = DISTANCE_CACHE_BYTES,
               head_cache_bytes: int = HEAD_CACHE_BYTES,
               minima_cache_bytes: int = MINIMA_CACHE_BYTES,
               background_prior: str = "far"):
    """Embeds every frame once.

    Args:
      model: the model (`models.build_model(config.model)`: FEELVOS, its CFBI options, PML).
      variables: its {'params', 'batch_stats'}.
      frames: [T, H, W, 3] uint8 RGB frames.
      object_ids: the video's objects (ids in 1..254); more with `add_object`.
      embed_batch_size: frames per `embed` call (bounds the backbone's memory).
      object_buckets: object slots per compiled step (default: the model's max_objects), as
        `config.inference.object_buckets`.
      pad_multiple: frames are padded to a multiple of this (default: the output stride).
      distance_cache_bytes: most bytes of local-matching distances kept between propagations
        (`pair_distances`, h x w x (2 window + 1)^2 float32 per pair of frames); pairs beyond
        it are recomputed whenever needed. Unused by the generic route.
      head_cache_bytes: most bytes of the head's per-frame feature parts kept between
        propagations (`head_feature_part`, h x w x head_channels values per frame); frames
        beyond it have theirs recomputed at each step. Unused by the generic route.
      minima_cache_bytes: most bytes of per-frame global-matching minima kept between
        propagations (h x w x (1 + S) float32 per frame); frames beyond it are matched
        against every reference pixel at each propagation. Unused by the generic route.
      background_prior: on a frame holding object marks, which unmarked cells are matched
        as background until marked otherwise: 'far' (those far
        from every object mark), 'border' (the frame's outer ring away from the object marks)
        or 'none' (`scribbles.with_background_prior`). Never shown in `references`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
      raise ValueError(f"frames must be a non-empty [T, H, W, 3] video, got shape "
                       f"{frames.shape}")
    if frames.dtype != np.uint8:
      raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if not scribbles.is_int(embed_batch_size) or embed_batch_size < 1:
      raise ValueError(f"embed_batch_size must be an int >= 1, got {embed_batch_size!r}")
    budgets = {"distance_cache_bytes": distance_cache_bytes,
               "head_cache_bytes": head_cache_bytes, "minima_cache_bytes": minima_cache_bytes}
    for name, value in budgets.items():
      if not scribbles.is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if background_prior not in scribbles.BACKGROUND_PRIORS:
      raise ValueError(f"background_prior must be one of {scribbles.BACKGROUND_PRIORS}, got "
                       f"{background_prior!r}")
    self.background_prior = background_prior
    pad_multiple = max(FEATURE_STRIDE,
                       model.output_stride if pad_multiple is None else pad_multiple)
    if pad_multiple % FEATURE_STRIDE:
      raise ValueError(f"pad_multiple must be a multiple of {FEATURE_STRIDE}, "
                       f"got {pad_multiple}")
    self.model = model
    self._variables = jax.device_put(variables)
    self._object_buckets = host_loop.check_object_buckets(
        object_buckets if object_buckets else (model.max_objects,), "object_buckets")
    self._object_ids: list[int] = []
    for object_id in (() if object_ids is None else object_ids):
      self._object_ids.append(scribbles.check_new_object(object_id, self._object_ids,
                                                         "object_ids"))

    self.num_frames, self.height, self.width = frames.shape[:3]
    self.padded_height = host_loop.round_up(self.height, pad_multiple)
    self.padded_width = host_loop.round_up(self.width, pad_multiple)
    self._features, self._embeddings = self._embed(frames, embed_batch_size)
    cells = (self.num_frames, self.padded_height // FEATURE_STRIDE,
             self.padded_width // FEATURE_STRIDE)
    self._references = np.full(cells, IGNORE_LABEL, np.uint8)
    self._labels = np.zeros((self.num_frames, self.height, self.width), np.int32)
    self._claims: Optional[np.ndarray] = None  # [T, h, w] int16 labels of this interaction.
    self._interaction_start: Optional[np.ndarray] = None  # The references before it.
    self._probs: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
    self._interacted: list[int] = []
    self.timings: list[dict[str, Any]] = []
    self._distances = BoundedCache(int(distance_cache_bytes))
    self._feature_parts = BoundedCache(int(head_cache_bytes))
    self._minima = BoundedCache(int(minima_cache_bytes))
    if model.supports_incremental_matching:
      self._route = routes.IncrementalRoute(
          model, self._variables, self._features, self._embeddings, distances=self._distances,
          feature_parts=self._feature_parts, minima=self._minima)
    else:
      self._route = routes.GenericRoute(model, self._variables, self._features,
                                        self._embeddings)

  def _embed(self, frames: np.ndarray, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Features [Tp, h, w, D] and embeddings [Tp, h, w, E] of the padded video."""
    num_batches = math.ceil(self.num_frames / batch_size)
    batch_size = math.ceil(self.num_frames / num_batches)  # Least padding, same call count.
    padded_shape = (batch_size, self.padded_height, self.padded_width, 3)
    features_shape, embeddings_shape = jax.eval_shape(
        functools.partial(self.model.apply, train=False, method="embed"), self._variables,
        jax.ShapeDtypeStruct(padded_shape, jnp.uint8))
    total = num_batches * batch_size
    features = jnp.zeros((total,) + features_shape.shape[1:], features_shape.dtype)
    embeddings = jnp.zeros((total,) + embeddings_shape.shape[1:], embeddings_shape.dtype)
    embed = steps.compiled_embed(self.model)
    for start in range(0, total, batch_size):
      batch = np.full(padded_shape, propagation.PAD_PIXEL, np.uint8)
      chunk = frames[start:start + batch_size]
      batch[:len(chunk), :self.height, :self.width] = chunk
      features, embeddings = embed(self._variables, features, embeddings, batch,
                                   np.int32(start))
    return features, embeddings

  # ------------------------------------------------------------------ read-only state
  @property
  def object_ids(self) -> tuple[int, ...]:
    """The video's objects, in registration order."""
    return tuple(self._object_ids)

  @property
  def references(self) -> np.ndarray:
    """[T, h, w] uint8 (a copy): object id of each marked stride-4 cell, 0 background,
    IGNORE_LABEL unmarked."""
    return self._references.copy()

  @property
  def interacted_frames(self) -> tuple[int, ...]:
    """The frames propagated from so far (since the last `clear_references`), in order."""
    return tuple(self._interacted)

  @property
  def labels(self) -> np.ndarray:
    """[T, H, W] int32 (a copy): the latest labels of every frame, in object ids."""
    return self._labels.copy()

  @property
  def features(self) -> jax.Array:
    """[T, h, w, D] stride-4 decoder features of the padded frames."""
    return self._features[:self.num_frames]

  @property
  def embeddings(self) -> jax.Array:
    """[T, h, w, E] stride-4 embeddings of the padded frames."""
    return self._embeddings[:self.num_frames]

  @property
  def embedding_bytes(self) -> int:
    """Bytes of the kept features and embeddings: T x h x w x (D + E) x dtype size (plus
    the padding rows of the last embed batch)."""
    return self._features.nbytes + self._embeddings.nbytes

  @property
  def distance_bytes(self) -> int:
    """Bytes of the stored local-matching distances (at most `distance_cache_bytes`)."""
    return self._distances.used_bytes

  @property
  def feature_part_bytes(self) -> int:
    """Bytes of the stored feature parts of the head (at most `head_cache_bytes`)."""
    return self._feature_parts.used_bytes

  @property
  def minima_bytes(self) -> int:
    """Bytes of the stored global-matching minima (at most `minima_cache_bytes`)."""
    return self._minima.used_bytes

  # ------------------------------------------------------------------ interactions
  def add_object(self, object_id: int) -> None:
    """Registers a new object (an id in 1..254 not yet used) for later scribbles."""
    self._object_ids.append(scribbles.check_new_object(object_id, self._object_ids,
                                                       "add_object"))

  def add_scribble(self, frame: int, object_id: int, mask_or_points: Any) -> None:
    """Marks reference cells of `object_id` (0: background) on `frame`.

    Args:
      frame: frame index in 0..T-1.
      object_id: a registered object, or 0 for the background.
      mask_or_points: clicks as a list of (y, x) pixel coordinates ([N, 2] numbers), or an
        [H, W] bool mask (a thin scribble or a whole object); marks stride-4 cells as
        `scribbles.marked_cells` says.
    """
    frame = scribbles.check_frame(frame, self.num_frames, "frame")
    object_id = scribbles.check_object(frame, object_id, self._object_ids)
    cells = scribbles.marked_cells(mask_or_points, (self.height, self.width),
                                   f"frame {frame}, object {object_id}")
    self._claim(frame, object_id, cells)

  def add_scribbles(self, scribbles_data: Any) -> list[int]:
    """Marks the strokes of scribbles in the DAVIS interactive format.

    Args:
      scribbles_data: {"scribbles": [T lists of {"path": [[x, y], ...], "object_id": k}]},
        coordinates normalised to [0, 1] (`scribbles.davis_strokes`); object ids registered
        (or 0, the background). Each path is rasterised as a connected stroke and marks cells
        as `add_scribble`'s masks do.

    Returns:
      The frames holding a stroke, in order (where to `propagate` from).

    Raises:
      ValueError naming the frame and the object (frame count, unknown object, path outside
      [0, 1]); the session is then unchanged.
    """
    strokes = scribbles.davis_strokes(scribbles_data, self.num_frames,
                                      (self.height, self.width), self._object_ids)
    marked = [(frame, object_id, scribbles.mask_cells(stroke))
              for frame, object_id, stroke in strokes]
    for frame, object_id, cells in marked:
      self._claim(frame, object_id, cells)
    return sorted({frame for frame, _, _ in marked})

  def _claim(self, frame: int, label: int, cells: np.ndarray) -> None:
    """Marks `cells` ([ceil(H/4), ceil(W/4)] bool) of `frame` with `label`. A cell already
    claimed by another label in this interaction (since the last propagation) is left as it
    was before the interaction; a later interaction replaces earlier marks."""
    if self._claims is None:
      self._claims = np.full(self._references.shape, -1, np.int16)
      self._interaction_start = self._references.copy()
    rows, cols = cells.shape
    claims = self._claims[frame, :rows, :cols]
    references = self._references[frame, :rows, :cols]
    conflict = cells & (claims != -1) & (claims != label)
    claims[cells] = label
    claims[conflict] = _CONFLICT
    references[cells] = label
    references[claims == _CONFLICT] = self._interaction_start[frame, :rows, :cols][
        claims == _CONFLICT]

  def end_interaction(self) -> None:
    """Closes the current interaction without propagating: later marks replace these instead
    of conflicting with them (`propagate` closes it too)."""
    self._claims = self._interaction_start = None

  def clear_references(self) -> None:
    """Drops every mark, label and stored probability: a new scribble set on the same
    embeddings. The embeddings, the objects and the label-free caches are kept."""
    self._references.fill(IGNORE_LABEL)
    self._labels.fill(0)
    self._claims = self._interaction_start = None
    self._probs.clear()
    self._interacted.clear()

  def add_background_scribble(self, frame: int, mask_or_points: Any) -> None:
    """Marks background reference cells on `frame` (as `add_scribble` with object 0)."""
    self.add_scribble(frame, 0, mask_or_points)

  # ------------------------------------------------------------------ propagation
  def propagate(self, from_frame: int, direction: str = "forward", *,
                stop_at_interacted: bool = False) -> np.ndarray:
    """Re-segments the frames from `from_frame` in `direction` with the current references.

    The frame of interaction starts from its current labels and probabilities (once it has
    any), overridden on its marked cells; every other frame t of a chain that holds an
    earlier prediction is fused with it when the chain meets a previously interacted frame
    (new weight |t - a| / (|t - a| + |t - from_frame|), a the interacted frame of the chain
    nearest to t), and overwritten on a chain that meets none. See docs/interactive.md.

    Args:
      from_frame: the frame of interaction (it must hold marked cells).
      direction: 'forward' (from_frame..T-1), 'backward' (from_frame..0) or 'both' (both
        chains start from the frame of interaction's result).
      stop_at_interacted: end each chain before the nearest previously interacted frame.

    Returns:
      [T, H, W] int32 labels of every frame in object ids (a copy of `labels`); frames outside
      the direction keep their earlier labels.
    """
    from_frame = scribbles.check_frame(from_frame, self.num_frames, "from_frame")
    if direction not in DIRECTIONS:
      raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    present = tuple(i for i in self._object_ids if (self._references == i).any())
    if not present:
      raise ValueError(f"no object of this video (objects: {self._object_ids}) has a "
                       f"reference pixel yet: add_scribble an object before propagating")
    if (self._references[from_frame] == IGNORE_LABEL).all():
      marked_frames = np.flatnonzero((self._references != IGNORE_LABEL).any(axis=(1, 2)))
      raise ValueError(f"from_frame {from_frame} holds no scribble: propagate from a frame "
                       f"that has one (frames with scribbles: {marked_frames.tolist()})")
    began = time.perf_counter()
    references = self.effective_references()
    slots, slot_to_id = scribbles.slot_maps(references, present)
    objects_per_chunk, num_chunks = host_loop.bucket_slots(len(present),
                                                             self._object_buckets)
    num_slots = objects_per_chunk * num_chunks
    weights = steps.chain_weights(from_frame, self.num_frames, direction,
                                  set(self._interacted) - {from_frame}, set(self._probs),
                                  stop_at_interacted)
    chains = [list(chain) for chain in weights]
    start, from_marks = self._start(from_frame, slots[from_frame], present, num_slots)
    state, run = self._route.start(routes.Propagation(
        references=references, present=present, slots=slots,
        objects_per_chunk=objects_per_chunk, num_slots=num_slots,
        from_frame=from_frame, first_next=next((c[0] for c in chains if c), None),
        valid_size=np.array([self.height, self.width], np.int32), start=start,
        from_marks=from_marks))
    after_interaction, first = run(state, from_frame, from_frame)
    results = {from_frame: (first, after_interaction["previous_probs"], 1.0)}
    for chain in weights:
      state, previous = after_interaction, from_frame
      for frame, weight in chain.items():
        state, labels = run(state, frame, previous)
        results[frame] = (labels, state["previous_probs"], weight)
        previous = frame
    for frame, (labels, probs, weight) in results.items():
      if weight == 0.0:  # A previously interacted frame keeps its prediction.
        continue
      if weight < 1.0:
        labels, probs = steps.compiled_fuse_predictions(
            probs, self._slot_probs(frame, present, num_slots), np.float32(weight),
            np.int32(len(present)), np.array([self.height, self.width], np.int32))
      self._labels[frame] = slot_to_id[np.asarray(labels)[:self.height, :self.width]]
      self._probs[frame] = (present, np.asarray(probs)[..., :1 + len(present)])
    if from_frame not in self._interacted:
      self._interacted.append(from_frame)
    self._claims = self._interaction_start = None
    self.timings.append({
        "from_frame": from_frame, "direction": direction, "frames": len(results),
        "reference_cells": int(np.count_nonzero(references != IGNORE_LABEL)),
        "objects": len(present), "seconds": time.perf_counter() - began})
    return self.labels

  def _start(self, frame: int, frame_slots: np.ndarray, present: tuple[int, ...],
             num_slots: int) -> tuple[dict[str, np.ndarray], bool]:
    """(the state at the frame of interaction, whether it holds the marks alone): its current
    labels (sampled at stride 4) and probabilities, overridden by the one-hot of its marked
    cells; only the marks while the frame has no prediction yet."""
    marked = steps.marked_state(frame_slots, num_slots=num_slots)
    if frame not in self._probs:
      return marked, True
    id_to_slot = np.full(256, IGNORE_LABEL, np.int32)
    id_to_slot[0] = 0
    id_to_slot[list(present)] = np.arange(1, len(present) + 1)
    labels = np.full(frame_slots.shape, IGNORE_LABEL, np.int32)
    sampled = self._labels[frame, ::FEATURE_STRIDE, ::FEATURE_STRIDE]
    labels[:sampled.shape[0], :sampled.shape[1]] = id_to_slot[sampled]
    probs = self._slot_probs(frame, present, num_slots)
    cells = frame_slots != IGNORE_LABEL
    labels[cells] = frame_slots[cells]
    probs[cells] = marked["previous_probs"][cells]
    return {"previous_labels": labels, "previous_probs": probs}, False

  def _slot_probs(self, frame: int, present: tuple[int, ...], num_slots: int) -> np.ndarray:
    """[h, w, 1 + S] float32: the frame's stored probabilities in this propagation's slots
    (0 for an object it did not hold)."""
    ids, stored = self._probs[frame]
    probs = np.zeros(stored.shape[:2] + (1 + num_slots,), np.float32)
    probs[..., 0] = stored[..., 0]
    for slot, object_id in enumerate(present, start=1):
      if object_id in ids:
        probs[..., slot] = stored[..., 1 + ids.index(object_id)]
    return probs

  def effective_references(self) -> np.ndarray:
    """[T, h, w] uint8: the references plus the background prior's cells (0) where unmarked on
    every frame holding object marks (`scribbles.with_background_prior`)."""
    return scribbles.with_background_prior(self._references, (self.height, self.width),
                                           self.background_prior)

  def warm_up(self, max_reference_pixels: int, num_objects: int) -> float:
    """Compiles every step a propagation may take, up front: for each reference bucket up to
    that of `max_reference_pixels` marked cells (background prior included) and each object
    bucket of 1..`num_objects` objects, one frame of interaction from marks, one from labels
    and one chain step, on stand-in marks. Leaves the marks, labels and stored minima as they
    were (the label-free caches may gain entries).

    Returns:
      The seconds it took.
    """
    if not scribbles.is_int(max_reference_pixels) or max_reference_pixels < 1:
      raise ValueError(f"max_reference_pixels must be an int >= 1, got "
                       f"{max_reference_pixels!r}")
    if not scribbles.is_int(num_objects) or not 1 <= num_objects <= self.model.max_objects:
      raise ValueError(f"num_objects must be an int in 1..{self.model.max_objects}, got "
                       f"{num_objects!r}")
    began = time.perf_counter()
    shape = self._references.shape
    buckets = []
    bucket = scribbles.MIN_REFERENCE_PIXELS
    while bucket <= min(scribbles.reference_bucket(max_reference_pixels),
                        scribbles.reference_bucket(self._references.size)):
      buckets.append(min(bucket, self._references.size))
      bucket *= 2
    slot_buckets = sorted({host_loop.bucket_slots(n, self._object_buckets)
                           for n in range(1, num_objects + 1)})
    minima_before = dict(self._minima.items())
    valid = np.array([self.height, self.width], np.int32)
    for objects_per_chunk, num_chunks in slot_buckets:
      num_slots = objects_per_chunk * num_chunks
      present = tuple(range(1, num_slots + 1))
      for count in buckets:
        references = np.full(shape, IGNORE_LABEL, np.uint8)
        references.reshape(-1)[:count] = np.arange(count) % (1 + len(present))
        slots = references.astype(np.int32)
        slots[references == IGNORE_LABEL] = IGNORE_LABEL
        marked = steps.marked_state(slots[0], num_slots=num_slots)
        from_labels = {"previous_labels": np.zeros(shape[1:], np.int32),
                       "previous_probs": np.full(shape[1:] + (1 + num_slots,),
                                                 1.0 / (1 + num_slots), np.float32)}
        for start, from_marks in ((marked, True), (from_labels, False)):
          state, run = self._route.start(routes.Propagation(
              references=references, present=present, slots=slots,
              objects_per_chunk=objects_per_chunk, num_slots=num_slots, from_frame=0,
              first_next=1 if self.num_frames > 1 else None, valid_size=valid, start=start,
              from_marks=from_marks))
          state, _ = run(state, 0, 0)
          if self.num_frames > 1:
            state, _ = run(state, 1, 0)
          jax.block_until_ready(state)
      # As in propagate: a step's output probabilities fused with stored (host) ones.
      jax.block_until_ready(steps.compiled_fuse_predictions(
          state["previous_probs"], np.zeros(shape[1:] + (1 + num_slots,), np.float32),
          np.float32(0.5), np.int32(len(present)), valid))
    for frame in (0, 1):
      self._minima.pop(frame)
      if frame in minima_before:
        self._minima.put(frame, minima_before[frame])
    return time.perf_counter() - began
