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
               minima_cache_bytes: int = MINIMA_CACHE_BYTES):
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
    self._references[frame, :cells.shape[0], :cells.shape[1]][cells] = object_id

  def add_background_scribble(self, frame: int, mask_or_points: Any) -> None:
    """Marks background reference cells on `frame` (as `add_scribble` with object 0)."""
    self.add_scribble(frame, 0, mask_or_points)

  # ------------------------------------------------------------------ propagation
  def propagate(self, from_frame: int, direction: str = "forward") -> np.ndarray:
    """Re-segments the frames from `from_frame` in `direction` with the current references.

    Args:
      from_frame: the frame of interaction (it must hold marked cells).
      direction: 'forward' (from_frame..T-1), 'backward' (from_frame..0) or 'both' (both
        chains start from the frame of interaction's result).

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

    slots, slot_to_id = scribbles.slot_maps(self._references, present)
    objects_per_chunk, num_chunks = host_loop.bucket_slots(len(present),
                                                             self._object_buckets)
    chains = []
    if direction in ("forward", "both"):
      chains.append(range(from_frame + 1, self.num_frames))
    if direction in ("backward", "both"):
      chains.append(range(from_frame - 1, -1, -1))
    state, run = self._route.start(routes.Propagation(
        references=self._references, present=present, slots=slots,
        objects_per_chunk=objects_per_chunk, num_slots=objects_per_chunk * num_chunks,
        from_frame=from_frame, first_next=next((c[0] for c in chains if len(c)), None),
        valid_size=np.array([self.height, self.width], np.int32)))
    after_interaction, first = run(state, from_frame, from_frame)
    results = {from_frame: first}
    for chain in chains:
      state, previous = after_interaction, from_frame
      for frame in chain:
        state, results[frame] = run(state, frame, previous)
        previous = frame
    fetched = {frame: slot_to_id[np.asarray(labels)[:self.height, :self.width]]
               for frame, labels in results.items()}
    for frame, labels in fetched.items():
      self._labels[frame] = labels
    return self.labels
