"""Interactive video object segmentation: clicks and scribbles on any frame, re-propagated
through the video without recomputing a single embedding.

    session = InteractiveSession(model, variables, frames, object_ids=[1])
    session.add_scribble(0, 1, [(120, 200), (130, 210)])   # two clicks on object 1, frame 0
    session.add_background_scribble(0, background_mask)    # a thin [H, W] bool stroke
    labels = session.propagate(0, direction="forward")     # [T, H, W] int32 object ids
    session.add_scribble(14, 1, correction_mask)           # fix frame 14 ...
    labels = session.propagate(14, direction="both")       # ... and re-propagate from it

Embeddings: the constructor pads the frames (bottom/right, `propagation.PAD_PIXEL`) to a
multiple of the backbone's output stride and runs the jitted `FEELVOS.embed` over them once,
`embed_batch_size` frames at a time (the last batch padded, so `embed` compiles once), writing
into two preallocated device buffers. It keeps, for the whole session,
  features   [T, h, w, D] and embeddings [T, h, w, E] in the model's compute dtype,
  h, w = Hp / 4, Wp / 4 (stride 4 of the padded frame), i.e. T x h x w x (D + E) values:
  with the paper's D = 256, E = 100 in float32, 100 frames of 480x854 (padded to 480x864,
  h x w = 120 x 216) take 100 x 120 x 216 x 356 x 4 bytes = 3.7 GB (`embedding_bytes`).
The frames themselves are not kept.

References: one stride-4 map per frame, [T, h, w] object ids (0 background, IGNORE_LABEL where
unmarked). A point (y, x) (pixel coordinates, fractions floored) marks the stride-4 cell
containing it, (y // 4, x // 4); a mask [H, W] bool (a thin scribble or a full object mask)
marks every cell of which at least one pixel is True (the mask's 4x4 blocks, `.any()`). A
later mark of a cell replaces an earlier one (on the boundary of two full masks, the one added
last wins). A video's objects are `object_ids` plus those registered with `add_object`; a
scribble for any other id is refused.

`propagate(from_frame, direction)`:
- The objects taking part are the registered objects with at least one marked cell (an object
  without one is predicted nowhere), in slots 1..n in registration order; the object axis is
  padded to a bucket of `object_buckets` as in video inference (`propagation.bucket_slots`).
- Global matching of every frame is against ALL marked cells of all frames, gathered into one
  reference row [1, P, E] with their slot labels [1, P], P padded with IGNORE_LABEL to a power
  of two (at least `MIN_REFERENCE_PIXELS`): the same nearest-pixel matching as stacking the
  marked frames along the height with IGNORE_LABEL on unmarked cells (the video inference
  buffer), at the cost of P reference pixels instead of R x h x w.
- The frame of interaction is segmented first, its "previous frame" being itself with its
  marked cells as labels (IGNORE_LABEL elsewhere) and their one-hot as probabilities (zero
  elsewhere); then every frame in the direction(s) is segmented with the frame before it in
  the direction as previous frame (its embedding, predicted stride-4 labels and softmax
  probabilities). 'forward' covers from_frame..T-1, 'backward' from_frame..0, 'both' all
  frames (both chains start from the frame of interaction's result).
- Each frame is global + local matching and the head on the stored features and embeddings,
  then, as in video inference, the logits upsampled bilinearly (`upsample_logits`) and
  their argmax: the labels are the model's prediction on every frame, the frame of
  interaction included (marks are not pasted).
- What does not depend on the references is computed once and kept: besides the embeddings,
  the squared embedding distances of local matching, `pair_distances` [(2k+1)^2, h, w] of
  each pair of neighbouring frames (t, t-1) (read from the other side for a backward step,
  `local_maps_from_distances`); and per frame the part of the head's first layer that
  depends on the features alone (`head_feature_part`: its depthwise conv, ReLU and
  pointwise conv of the D feature channels, the same for every slot). The frame of
  interaction is matched locally against its own marked cells directly
  (`local_maps_from_cells`, h w x M distances) when it holds at most `MAX_CELL_MATCHING`
  cells, else through the stored `pair_distances` of the frame with itself.
- Global matching is incremental: each frame keeps, per slot, the minimum squared distance
  to the marked cells it was last matched against (the global map is its transform), with
  the version of the references it was taken over. A frame whose stored minima were taken
  with the same objects taking part, over cells that are all still marked with the same
  object (cells only added since), is matched against the added cells alone and keeps the
  minimum of both; any other frame (a cell relabelled, an object newly taking part, no
  stored minima) against all marked cells. Either way the map equals matching every marked
  cell at once.
- A step then runs global matching against the new cells, the label-dependent minimum of
  local matching, and the rest of the head over all slots at once: the same maps and logits
  as `FEELVOS.segment`, one jitted call per frame (`cached_step`; at the frame of
  interaction after `local_maps_from_cells`). The stored distances are bounded by
  `distance_cache_bytes` (pairs beyond it are recomputed when needed): h x w x (2k+1)^2 x 4
  bytes a pair, 6480 x 961 x 4 = 25 MB at 240x432 with the paper's k = 15, 100 MB at
  480x864; the feature parts by `head_cache_bytes`: h x w x head_channels x 4 bytes a frame
  (6.6 MB at 240x432 with 256 channels); the minima by `minima_cache_bytes`: h x w x K x 4
  bytes a frame (K = 1 + object slots; 52 KB at 240x432 with one object).
  Models with CFBI matching options, PML or sharded matching (`caches_distances` False) run
  `interactive_step` instead: `propagation.segment_logits` on the stored embeddings (global
  matching against every marked cell), object slots chunked by `object_buckets`.
- Only jitted functions run, compiled once per (padded frame size, P bucket, slots) and
  shared by every session of a model. The session keeps the latest labels of every frame
  ([T, H, W] int32 object ids, background 0 until a frame is first propagated).

Bad input (an unknown object id, a point outside the frame, an empty scribble, a frame index
out of range, a mask of the wrong shape) raises a ValueError naming the argument, the frame and
the object, and leaves the session unchanged: everything is checked before any state changes.
"""
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import matching
from feelvos_jax.inference import propagation
from feelvos_jax.models import heads
from feelvos_jax.models.upsampling import upsample_logits

MIN_REFERENCE_PIXELS = 32
"""Smallest reference bucket: P is padded to max(this, the next power of two)."""

DIRECTIONS = ("forward", "backward", "both")
"""The values of `propagate`'s `direction`."""

DISTANCE_CACHE_BYTES = 2**30
"""Default bound of the stored local-matching distances of a session (1 GiB)."""

HEAD_CACHE_BYTES = 2**30
"""Default bound of the stored feature parts of the head's first layer (1 GiB)."""

DENSE_REFERENCE_PIXELS = 64
"""A step matches at most this many new reference pixels (their bucket) densely
(`matching.nearest_squared_distance`), more with `matching.global_matching`."""

MAX_CELL_MATCHING = 256
"""The frame of interaction is matched locally against its marked cells directly
(`local_maps_from_cells`) when it holds at most this many, else through the stored
`pair_distances` of the frame with itself."""

MINIMA_CACHE_BYTES = 2**28
"""Default bound of the stored global-matching minima (256 MiB)."""

GLOBAL_CHUNK_ELEMENTS = 2**24
"""Distances [chunk, P] of one chunk of a step's global matching: at most this many (64 MiB
float32), unless the model's own `matching_chunk_size` is larger (`global_chunk_size`)."""

HEAD_MAPS = 3
"""Matching maps per slot of the plain FEELVOS head: global, previous probability, local."""


def embed_frames(model: nn.Module, variables: Any, features: jax.Array, embeddings: jax.Array,
                 frames: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Embeds a batch of frames into the session's buffers.

  Args:
    model: the FEELVOS module.
    variables: {'params', 'batch_stats'}.
    features: [Tp, h, w, D] buffer (donated when jitted).
    embeddings: [Tp, h, w, E] buffer (donated when jitted).
    frames: [B, Hp, Wp, 3] uint8 padded frames.
    start: int32 scalar, the buffer row of the first frame.

  Returns:
    The buffers with rows start..start+B-1 replaced by the frames' features and embeddings.
  """
  batch_features, batch_embeddings = model.apply(variables, frames, train=False,
                                                 method="embed")
  return (lax.dynamic_update_slice_in_dim(features, batch_features, start, axis=0),
          lax.dynamic_update_slice_in_dim(embeddings, batch_embeddings, start, axis=0))


def reference_rows(embeddings: jax.Array, reference_index: jax.Array,
                   reference_labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Marked cells as one reference row.

  Args:
    embeddings: [Tp, h, w, E] the session's embeddings.
    reference_index: [P] int32 flat indices into [Tp * h * w] of the marked cells (padding: 0).
    reference_labels: [P] int32 their slot labels (padding: IGNORE_LABEL).

  Returns:
    (reference_embedding [1, P, E], reference_labels [1, P]).
  """
  flat = embeddings.reshape(-1, embeddings.shape[-1])
  return flat[reference_index][None], reference_labels[None]


def previous_state(embeddings: jax.Array, frame: jax.Array, frame_labels: jax.Array, *,
                   num_slots: int) -> propagation.State:
  """The previous-frame part of the state at the frame of interaction: the frame itself,
  its marked cells as labels and their one-hot as probabilities.

  Args:
    embeddings: [Tp, h, w, E] the session's embeddings.
    frame: int32 scalar, the frame of interaction.
    frame_labels: [h, w] int32 slot labels of its marked cells, IGNORE_LABEL elsewhere.
    num_slots: S, object slots of all chunks (static).

  Returns:
    previous_embedding [h, w, E], previous_labels [h, w], previous_probs [h, w, 1 + S]
    (zero where unmarked).
  """
  return {
      "previous_embedding": lax.dynamic_index_in_dim(embeddings, frame, keepdims=False),
      "previous_labels": frame_labels,
      "previous_probs": jax.nn.one_hot(frame_labels, 1 + num_slots, dtype=jnp.float32),
  }


def start_state(embeddings: jax.Array, reference_index: jax.Array,
                reference_labels: jax.Array, frame: jax.Array, frame_labels: jax.Array, *,
                num_slots: int) -> propagation.State:
  """The propagation state at the frame of interaction (see `propagation.State`): the
  marked cells as the reference (`reference_rows`: [1, P, E] and [1, P]) and the
  `previous_state` of the frame."""
  reference_embedding, labels = reference_rows(embeddings, reference_index, reference_labels)
  return dict(previous_state(embeddings, frame, frame_labels, num_slots=num_slots),
              reference_embedding=reference_embedding, reference_labels=labels)


def marked_state(frame_labels: np.ndarray, *, num_slots: int) -> dict[str, np.ndarray]:
  """What `cached_step` reads of the state at the frame of interaction: `previous_state`
  without the embedding (the stored distances stand for it), in NumPy.

  Args:
    frame_labels: [h, w] int32 slot labels of the frame's marked cells, IGNORE_LABEL elsewhere.
    num_slots: S, object slots of all chunks.

  Returns:
    previous_labels [h, w] int32, previous_probs [h, w, 1 + S] float32 (the labels' one-hot,
    zero where unmarked).
  """
  return {"previous_labels": frame_labels.astype(np.int32),
          "previous_probs": (frame_labels[..., None] == np.arange(1 + num_slots)).astype(
              np.float32)}


def _next_state(state: propagation.State, logits: jax.Array, embedding: Optional[jax.Array],
                valid_size: jax.Array) -> tuple[propagation.State, jax.Array]:
  """A frame's stride-4 logits [h, w, K] and embedding [h, w, E] -> (the state with this frame
  as the previous one, labels [4h, 4w] uint8 slots, IGNORE_LABEL outside `valid_size` (height,
  width)). Without an embedding (None) the state holds none (`marked_state`)."""
  height, width = (FEATURE_STRIDE * n for n in logits.shape[:2])
  # Slot-major ([K, ...] planes, slots as the batch of `upsample_logits`), the argmax (the
  # first maximum, as jnp.argmax) and the softmax (exp(x - max) / sum) over the slots as
  # elementwise chains: XLA:CPU reduces a minor axis of K values far slower.
  planes = jnp.moveaxis(logits, -1, 0)
  upsampled = upsample_logits(planes[..., None], (height, width))[..., 0]
  best, labels = upsampled[0], jnp.zeros((height, width), jnp.int32)
  for slot in range(1, planes.shape[0]):
    better = upsampled[slot] > best
    best = jnp.where(better, upsampled[slot], best)
    labels = jnp.where(better, slot, labels)
  inside = ((jnp.arange(height) < valid_size[0])[:, None]
            & (jnp.arange(width) < valid_size[1])[None, :])
  labels = jnp.where(inside, labels, IGNORE_LABEL)
  top = functools.reduce(jnp.maximum, list(planes))
  exponentials = [jnp.exp(plane - top) for plane in planes]
  total = functools.reduce(jnp.add, exponentials)
  new_state = dict(state, previous_labels=labels[::FEATURE_STRIDE, ::FEATURE_STRIDE],
                   previous_probs=jnp.stack([e / total for e in exponentials], axis=-1))
  if embedding is not None:
    new_state["previous_embedding"] = embedding
  return new_state, labels.astype(jnp.uint8)


def interactive_step(model: nn.Module, variables: Any, state: propagation.State,
                     features: jax.Array, embeddings: jax.Array, frame: jax.Array,
                     num_objects: jax.Array, valid_size: jax.Array, *,
                     objects_per_chunk: int) -> tuple[propagation.State, jax.Array]:
  """Segments one frame from its stored features and embeddings and advances the state.

  Args:
    model: the FEELVOS module with `max_objects = objects_per_chunk`.
    variables: {'params', 'batch_stats'}.
    state: the State of the previous frame in the propagation direction.
    features: [Tp, h, w, D] the session's features.
    embeddings: [Tp, h, w, E] the session's embeddings.
    frame: int32 scalar, the frame to segment.
    num_objects: int32 scalar, objects taking part (slots 1..num_objects).
    valid_size: [2] int32, the frame's (height, width) before padding.
    objects_per_chunk: M (static).

  Returns:
    (state with this frame as previous frame, labels [Hp, Wp] uint8 slots, IGNORE_LABEL on
    padding).
  """
  frame_features = lax.dynamic_index_in_dim(features, frame, keepdims=True)
  frame_embeddings = lax.dynamic_index_in_dim(embeddings, frame, keepdims=True)
  logits = propagation.segment_logits(model, variables, state, frame_features,
                                      frame_embeddings, num_objects,
                                      objects_per_chunk=objects_per_chunk)
  return _next_state(state, logits, frame_embeddings[0], valid_size)


def local_offsets(window: int, dilation: int) -> tuple[tuple[int, int], ...]:
  """The local-matching offsets (dy, dx), row-major over {-window..window}^2, times dilation.
  Offset o and offset O - 1 - o are opposite (O = (2 window + 1)^2)."""
  steps = range(-window * dilation, window * dilation + 1, dilation)
  return tuple((dy, dx) for dy in steps for dx in steps)


def pair_distances(current: jax.Array, previous: jax.Array, *, window: int,
                   dilation: int, tile: int = 8) -> jax.Array:
  """Squared embedding distances of every pixel to the previous frame's pixels around it.

  Args:
    current: [h, w, E] embeddings of a frame.
    previous: [h, w, E] embeddings of its previous frame (or of itself).
    window, dilation: the local-matching window (`local_offsets`).
    tile: query pixels are taken in tile x tile blocks, each against its neighbourhood.

  Returns:
    [O, h, w] float32, offset-major (each offset's map contiguous, as
    `local_maps_from_distances` reads it): entry (o, p) = ||current[p] -
    previous[p + offset o]||^2 (computed as ||a||^2 + ||b||^2 - 2 a.b, clamped at 0), inf
    where p + offset o falls outside the frame. It depends on the embeddings only, never on
    labels.
  """
  height, width, channels = current.shape
  reach = window * dilation
  span = tile + 2 * reach
  rows, cols = -(-height // tile), -(-width // tile)
  current = current.astype(jnp.float32)
  previous = previous.astype(jnp.float32)
  blocks = jnp.pad(current, ((0, rows * tile - height), (0, cols * tile - width), (0, 0)))
  blocks = blocks.reshape(rows, tile, cols, tile, channels).transpose(0, 2, 1, 3, 4)
  blocks = blocks.reshape(rows, cols, tile * tile, channels)
  around = ((reach, reach + rows * tile - height), (reach, reach + cols * tile - width))
  padded = jnp.pad(previous, around + ((0, 0),))
  inside = jnp.pad(jnp.ones((height, width), bool), around)
  # Window entry o of block pixel (i, j) is neighbourhood pixel (i + dy + reach, j + dx + reach).
  offsets = np.array(local_offsets(window, dilation))
  block_i, block_j = np.divmod(np.arange(tile * tile), tile)
  entry = ((block_i[:, None] + offsets[:, 0] + reach) * span
           + block_j[:, None] + offsets[:, 1] + reach)  # [tile^2, O]
  columns = np.arange(cols)[:, None] * tile + np.arange(span)[None, :]  # [cols, span]

  def block_row(row: jax.Array) -> jax.Array:
    """[cols, tile^2, O] distances of one row of blocks."""
    band = lax.dynamic_slice_in_dim(padded, row * tile, span, axis=0)[:, columns]
    band = jnp.moveaxis(band, 1, 0).reshape(cols, span * span, channels)
    band_inside = lax.dynamic_slice_in_dim(inside, row * tile, span, axis=0)[:, columns]
    band_inside = jnp.moveaxis(band_inside, 1, 0).reshape(cols, span * span)
    query = blocks[row]
    cross = jnp.einsum("bqc,bnc->bqn", query, band, precision=lax.Precision.HIGHEST)
    squared = (jnp.sum(jnp.square(query), axis=-1)[..., None]
               + jnp.sum(jnp.square(band), axis=-1)[:, None, :] - 2.0 * cross)
    squared = jnp.where(band_inside[:, None, :], jnp.maximum(squared, 0.0), jnp.inf)
    return jnp.take_along_axis(squared, jnp.asarray(entry)[None], axis=-1)

  result = lax.map(block_row, jnp.arange(rows))  # [rows, cols, tile^2, O]
  result = result.reshape(rows, cols, tile, tile, -1).transpose(4, 0, 2, 1, 3)
  return result.reshape(-1, rows * tile, cols * tile)[:, :height, :width]


def local_maps_from_distances(distances: jax.Array, previous_labels: jax.Array,
                              backward: jax.Array, *, window: int, dilation: int,
                              num_slots: int) -> jax.Array:
  """Local matching maps [h, w, num_slots] from `pair_distances` (FEELVOS distance, 1.0 where
  no pixel of the slot lies in the window; labels outside 0..num_slots-1 never match).

  Args:
    distances: [O, h, w] `pair_distances(frame u, frame v)`.
    previous_labels: [h, w] int32 slot labels of the previous frame.
    backward: bool scalar. False: the frame is u and its previous frame v (distances as
      they are). True: the frame is v and its previous frame u; entry (o, p) is then read at
      (O - 1 - o, p + offset o), the same pair seen from the other side.
    window, dilation: as given to `pair_distances`.
    num_slots: K.
  """
  count, height, width = distances.shape
  reach = window * dilation
  side = 2 * window + 1
  labels = jnp.pad(previous_labels, reach, constant_values=-1)

  def row_minima(dy_index: jax.Array, running: jax.Array, back: bool) -> jax.Array:
    """`running` [h, w, num_slots] lowered, per slot, to the offsets (dy, every dx)."""
    top = dy_index * dilation
    label_rows = lax.dynamic_slice_in_dim(labels, top, height, axis=0)
    if back:
      # Entry (O - 1 - o, p + offset o): the opposite offsets of this dy are one contiguous
      # range, O - 1 - (dy side + dx) = first + side - 1 - dx, read shifted by the offset
      # (inf outside the frame). Padding only this range keeps the copy small.
      opposite = lax.dynamic_slice_in_dim(distances, count - (dy_index + 1) * side, side,
                                          axis=0)
      opposite = jnp.pad(opposite, ((0, 0), (reach, reach), (reach, reach)),
                         constant_values=jnp.inf)
      distance_rows = lax.dynamic_slice_in_dim(opposite, top, height, axis=1)
    else:
      distance_rows = lax.dynamic_slice_in_dim(distances, dy_index * side, side, axis=0)
    best = [running[..., slot] for slot in range(num_slots)]
    for dx_index in range(side):
      left = dx_index * dilation
      neighbour_labels = label_rows[:, left:left + width]
      if back:
        squared = distance_rows[side - 1 - dx_index, :, left:left + width]
      else:
        squared = distance_rows[dx_index]
      best = [jnp.minimum(best[slot], jnp.where(neighbour_labels == slot, squared, jnp.inf))
              for slot in range(num_slots)]
    return jnp.stack(best, axis=-1)

  def minima(back: bool) -> jax.Array:
    # A running minimum over the rows of offsets: no [2 window + 1, h, w, K] stack to reduce.
    return lax.fori_loop(0, side, functools.partial(row_minima, back=back),
                         jnp.full((height, width, num_slots), jnp.inf, distances.dtype))

  squared = lax.cond(backward, lambda: minima(True), lambda: minima(False))
  return matching.distance_from_squared(squared)


def local_maps_from_cells(embedding: jax.Array, cell_index: jax.Array, cell_labels: jax.Array,
                          *, window: int, dilation: int, num_slots: int) -> jax.Array:
  """Local matching maps [h, w, num_slots] of a frame against a few labelled cells of itself
  (the frame of interaction, whose previous frame is itself with only its marked cells
  labelled): the same maps as `local_maps_from_distances` on `pair_distances(frame, frame)`,
  at the cost of h w x M distances instead of h w x (2 window + 1)^2.

  Args:
    embedding: [h, w, E] the frame's embeddings.
    cell_index: [M] int32 flat indices into h x w of the labelled cells (padding: any).
    cell_labels: [M] int32 their slot labels (padding: IGNORE_LABEL; labels outside
      0..num_slots-1 never match).
    window, dilation: the local-matching window (`local_offsets`): a cell counts for pixel p
      if it is p + (dy, dx) dilation with |dy|, |dx| <= window.
    num_slots: K.
  """
  height, width, channels = embedding.shape
  pixels = embedding.reshape(-1, channels).astype(jnp.float32)
  cells = pixels[cell_index]
  cross = jnp.einsum("pc,mc->pm", pixels, cells, precision=lax.Precision.HIGHEST)
  squared = jnp.maximum(jnp.sum(jnp.square(pixels), axis=-1)[:, None]
                        + jnp.sum(jnp.square(cells), axis=-1)[None, :] - 2.0 * cross, 0.0)
  pixel_y, pixel_x = jnp.divmod(jnp.arange(height * width), width)
  cell_y, cell_x = jnp.divmod(cell_index, width)
  reach = window * dilation

  def in_window(pixel: jax.Array, cell: jax.Array) -> jax.Array:
    offset = cell[None, :] - pixel[:, None]
    return (jnp.abs(offset) <= reach) & (offset % dilation == 0)

  inside = in_window(pixel_y, cell_y) & in_window(pixel_x, cell_x)
  minima = jnp.stack([jnp.min(jnp.where(inside & (cell_labels == slot)[None, :], squared,
                                        jnp.inf), axis=-1)
                      for slot in range(num_slots)], axis=-1)
  return matching.distance_from_squared(minima).reshape(height, width, num_slots)


def segmentation_head(model: nn.Module) -> heads.DynamicSegmentationHead:
  """The dynamic segmentation head of one slot, as `FEELVOS` builds it (its parameters are
  the model's `params['segmentation_head']`, shared by the slots)."""
  return heads.DynamicSegmentationHead(num_layers=model.head_num_layers,
                                       channels=model.head_channels,
                                       kernel_size=model.head_kernel_size, dtype=model.dtype)


def head_feature_part(model: nn.Module, head_variables: Any, features: jax.Array,
                      frame: jax.Array) -> jax.Array:
  """The part of the head's first layer that depends on a frame's features alone.

  Args:
    model: the FEELVOS module.
    head_variables: {'params': the model's params['segmentation_head']}.
    features: [Tp, h, w, D] the session's features.
    frame: int32 scalar.

  Returns:
    [1, h, w, head_channels] in the compute dtype: the pointwise bias plus the features'
    depthwise -> ReLU -> pointwise contribution (`DynamicSegmentationHead`'s
    `feature_part_only`), the same for every slot and every propagation.
  """
  frame_features = lax.dynamic_index_in_dim(features, frame, keepdims=True)
  maps = jnp.zeros(frame_features.shape[:-1] + (HEAD_MAPS,), model.dtype)
  return segmentation_head(model).apply(head_variables, frame_features, maps,
                                        feature_part_only=True)


def global_chunk_size(model: nn.Module, reference_pixels: int) -> Optional[int]:
  """Query pixels per chunk of a step's global matching against P reference pixels: the
  model's `matching_chunk_size`, raised while a chunk's distances ([chunk, P] float32) stay
  within `GLOBAL_CHUNK_ELEMENTS` (clicks and scribbles give small P: fewer, larger chunks).
  The matching maps do not depend on it (`matching.global_matching`)."""
  if model.matching_chunk_size is None:
    return None
  return max(model.matching_chunk_size, GLOBAL_CHUNK_ELEMENTS // reference_pixels)


def cached_step(model: nn.Module, head_variables: Any, state: propagation.State,
                features: jax.Array, embeddings: jax.Array, frame: jax.Array,
                feature_part: jax.Array, cell_maps: jax.Array, distances: jax.Array,
                backward: jax.Array, from_cells: jax.Array,
                reference_embedding: jax.Array, reference_labels: jax.Array,
                minima: jax.Array, num_objects: jax.Array,
                valid_size: jax.Array) -> tuple[propagation.State, jax.Array, jax.Array]:
  """`interactive_step` with what does not depend on the new references computed beforehand.

  The same segmentation as `FEELVOS.segment` (plain FEELVOS matching: global against the
  reference pixels, local against the previous frame, the head over every slot at once),
  but:
  - global matching is incremental: `minima` [h, w, K] holds the frame's minimum squared
    distance per slot to the reference cells already matched (inf: none), and only the
    reference pixels added since (`reference_embedding` [1, P, E], `reference_labels` [1, P]
    slots, padding IGNORE_LABEL) are matched (densely for P <= DENSE_REFERENCE_PIXELS); the
    minimum of both is the minimum over all reference pixels, so the map equals matching
    them all at once;
  - local matching against the previous frame reads the `pair_distances` stored once per
    pair of frames (`distances` [O, h, w], `backward` as in `local_maps_from_distances`,
    against the state's previous labels), or, where `from_cells` (bool scalar) is True, the
    maps come in computed (`cell_maps` [h, w, K], `local_maps_from_cells` for the frame of
    interaction; the other operands are then unused, any arrays of their shapes): one
    compiled step for both;
  - the features' part of the head's first layer (`feature_part`, `head_feature_part`) comes
    in computed once per frame.
  `state` holds previous_labels and previous_probs (`marked_state`). `head_variables` =
  {'params': the model's params['segmentation_head']}; the frame's features only set the
  head's shapes.

  Returns:
    (state with this frame as previous frame, labels [Hp, Wp] uint8 slots, IGNORE_LABEL on
    padding, the frame's new minima [h, w, K] float32 over all reference pixels).
  """
  num_slots = state["previous_probs"].shape[-1]
  frame_features = lax.dynamic_index_in_dim(features, frame, keepdims=True)
  frame_embeddings = lax.dynamic_index_in_dim(embeddings, frame, keepdims=False)
  if reference_labels.shape[-1] <= DENSE_REFERENCE_PIXELS:
    height, width, channels = frame_embeddings.shape
    added = matching.nearest_squared_distance(
        frame_embeddings.reshape(-1, channels).astype(jnp.float32),
        reference_embedding[0].astype(jnp.float32), reference_labels[0], num_slots)
    added = added.reshape(height, width, num_slots)
  else:
    added = matching.global_matching(
        frame_embeddings.astype(jnp.float32), reference_embedding.astype(jnp.float32),
        reference_labels, num_slots, squared=True,
        chunk_size=global_chunk_size(model, reference_labels.shape[-1]))
  minima = jnp.minimum(minima, added)
  global_maps = matching.distance_from_squared(minima)
  local_maps = lax.cond(from_cells, lambda: cell_maps, lambda: local_maps_from_distances(
      distances, state["previous_labels"], backward, window=model.window,
      dilation=model.dilation, num_slots=num_slots))
  object_maps = jnp.stack([global_maps, state["previous_probs"], local_maps], axis=-1)
  head = segmentation_head(model)

  def slot_logits(maps: jax.Array) -> jax.Array:
    """[1, h, w, HEAD_MAPS] -> [1, h, w] logits of one slot."""
    return head.apply(head_variables, frame_features, maps, feature_part=feature_part)

  # As the model's `nn.vmap` over the slots: one set of weights, features broadcast.
  logits = jax.vmap(slot_logits, in_axes=3, out_axes=3)(
      object_maps[None].astype(model.dtype))[0]
  present = jnp.arange(num_slots) <= num_objects
  logits = jnp.where(present, logits.astype(jnp.float32), -jnp.inf)
  return _next_state(state, logits, None, valid_size) + (minima,)


def caches_distances(model: nn.Module) -> bool:
  """Whether `propagate` can use `cached_step`: plain FEELVOS matching and head (none of
  the CFBI options, no PML head, unsharded matching); other models run `interactive_step`."""
  return (getattr(model, "head", "feelvos") == "feelvos"
          and not getattr(model, "background_matching", False)
          and not getattr(model, "matching_bias", False)
          and not getattr(model, "local_windows", ())
          and getattr(model, "global_atrous_rate", 1) == 1
          and not getattr(model, "instance_attention", False)
          and not getattr(model, "matching_shard_mode", ""))


@functools.lru_cache(maxsize=16)
def _compiled_embed(model: nn.Module) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """Jitted `embed_frames` of a model, buffers donated (updated in place)."""
  return jax.jit(functools.partial(embed_frames, model), donate_argnums=(1, 2))


_start_state = jax.jit(start_state, static_argnames="num_slots")
_reference_rows = jax.jit(reference_rows)


@functools.lru_cache(maxsize=16)
def _compiled_distances(window: int, dilation: int) -> Callable[..., jax.Array]:
  """Jitted `pair_distances` of frames `u` and `v` of the session's embeddings."""
  def distances(embeddings, u, v):
    return pair_distances(lax.dynamic_index_in_dim(embeddings, u, keepdims=False),
                          lax.dynamic_index_in_dim(embeddings, v, keepdims=False),
                          window=window, dilation=dilation)
  return jax.jit(distances)


@functools.lru_cache(maxsize=16)
def _compiled_cell_maps(window: int, dilation: int, num_slots: int) -> Callable[..., jax.Array]:
  """Jitted `local_maps_from_cells` of frame `frame` of the session's embeddings."""
  def cell_maps(embeddings, frame, cell_index, cell_labels):
    return local_maps_from_cells(lax.dynamic_index_in_dim(embeddings, frame, keepdims=False),
                                 cell_index, cell_labels, window=window, dilation=dilation,
                                 num_slots=num_slots)
  return jax.jit(cell_maps)


@functools.lru_cache(maxsize=16)
def _compiled_head_feature_part(model: nn.Module) -> Callable[..., jax.Array]:
  """Jitted `head_feature_part` of a model."""
  return jax.jit(functools.partial(head_feature_part, model))


@functools.lru_cache(maxsize=16)
def _compiled_cached_step(model: nn.Module) -> Callable[..., tuple[propagation.State,
                                                                   jax.Array]]:
  """Jitted `cached_step` of a model."""
  return jax.jit(functools.partial(cached_step, model))


@functools.lru_cache(maxsize=16)
def _compiled_step(model: nn.Module) -> Callable[..., tuple[propagation.State, jax.Array]]:
  """Jitted `interactive_step` of a model (its max_objects = M)."""
  return jax.jit(functools.partial(interactive_step, model,
                                   objects_per_chunk=model.max_objects))


def reference_bucket(count: int) -> int:
  """Reference pixels P compiled for `count` marked cells: a power of two >= the minimum."""
  return max(MIN_REFERENCE_PIXELS, 1 << max(count - 1, 0).bit_length())


def mask_cells(mask: np.ndarray) -> np.ndarray:
  """[H, W] bool -> [ceil(H/4), ceil(W/4)] bool: cells holding at least one True pixel."""
  height, width = mask.shape
  h, w = -(-height // FEATURE_STRIDE), -(-width // FEATURE_STRIDE)
  padded = np.zeros((h * FEATURE_STRIDE, w * FEATURE_STRIDE), bool)
  padded[:height, :width] = mask
  return padded.reshape(h, FEATURE_STRIDE, w, FEATURE_STRIDE).any(axis=(1, 3))


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class InteractiveSession:
  """Interactive segmentation of one video (see the module docstring).

  Attributes:
    model: the FEELVOS module.
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
      model: the FEELVOS module (`models.build_model(config.model)`).
      variables: its {'params', 'batch_stats'}.
      frames: [T, H, W, 3] uint8 RGB frames.
      object_ids: the video's objects (ids in 1..254); more with `add_object`.
      embed_batch_size: frames per `embed` call (bounds the backbone's memory).
      object_buckets: object slots per compiled step (default: the model's max_objects), as
        `config.inference.object_buckets`.
      pad_multiple: frames are padded to a multiple of this (default: the output stride).
      distance_cache_bytes: most bytes of local-matching distances kept between propagations
        (`pair_distances`, h x w x (2 window + 1)^2 float32 per pair of frames); pairs beyond
        it are recomputed whenever needed. Unused for models `caches_distances` refuses.
      head_cache_bytes: most bytes of the head's per-frame feature parts kept between
        propagations (`head_feature_part`, h x w x head_channels values per frame); frames
        beyond it have theirs recomputed at each step. Unused as `distance_cache_bytes`.
      minima_cache_bytes: most bytes of per-frame global-matching minima kept between
        propagations (h x w x (1 + S) float32 per frame); frames beyond it are matched
        against every reference pixel at each propagation. Unused as `distance_cache_bytes`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
      raise ValueError(f"frames must be a non-empty [T, H, W, 3] video, got shape "
                       f"{frames.shape}")
    if frames.dtype != np.uint8:
      raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if not _is_int(embed_batch_size) or embed_batch_size < 1:
      raise ValueError(f"embed_batch_size must be an int >= 1, got {embed_batch_size!r}")
    for name, value in (("distance_cache_bytes", distance_cache_bytes),
                        ("head_cache_bytes", head_cache_bytes),
                        ("minima_cache_bytes", minima_cache_bytes)):
      if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    pad_multiple = max(FEATURE_STRIDE,
                       model.output_stride if pad_multiple is None else pad_multiple)
    if pad_multiple % FEATURE_STRIDE:
      raise ValueError(f"pad_multiple must be a multiple of {FEATURE_STRIDE}, "
                       f"got {pad_multiple}")
    self.model = model
    self._variables = jax.device_put(variables)
    self._object_buckets = propagation.check_object_buckets(
        object_buckets if object_buckets else (model.max_objects,), "object_buckets")
    self._object_ids: list[int] = []
    for object_id in (() if object_ids is None else object_ids):
      self._check_new_object(object_id, "object_ids")
      self._object_ids.append(int(object_id))

    self.num_frames, self.height, self.width = frames.shape[:3]
    self.padded_height = propagation.round_up(self.height, pad_multiple)
    self.padded_width = propagation.round_up(self.width, pad_multiple)
    self._features, self._embeddings = self._embed(frames, embed_batch_size)
    cells = (self.num_frames, self.padded_height // FEATURE_STRIDE,
             self.padded_width // FEATURE_STRIDE)
    self._references = np.full(cells, IGNORE_LABEL, np.uint8)
    self._labels = np.zeros((self.num_frames, self.height, self.width), np.int32)
    self._cache_distances = caches_distances(model)
    self._distance_cache: dict[tuple[int, int], jax.Array] = {}
    self._distance_cache_used = 0
    self._distance_cache_bytes = int(distance_cache_bytes)
    self._head_variables = ({"params": self._variables["params"]["segmentation_head"]}
                            if self._cache_distances else None)
    self._head_cache: dict[int, jax.Array] = {}
    self._head_cache_used = 0
    self._head_cache_bytes = int(head_cache_bytes)
    # Global-matching minima: frame -> (version, [h, w, K]); version -> (the objects taking
    # part, in slot order, and the references [T, h, w] the minima were taken over).
    self._minima: dict[int, tuple[int, jax.Array]] = {}
    self._minima_versions: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
    self._minima_cache_used = 0
    self._minima_cache_bytes = int(minima_cache_bytes)
    self._next_version = 0

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
    embed = _compiled_embed(self.model)
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
    return self._distance_cache_used

  @property
  def feature_part_bytes(self) -> int:
    """Bytes of the stored feature parts of the head (at most `head_cache_bytes`)."""
    return self._head_cache_used

  @property
  def minima_bytes(self) -> int:
    """Bytes of the stored global-matching minima (at most `minima_cache_bytes`)."""
    return self._minima_cache_used

  # ------------------------------------------------------------------ interactions
  def _check_new_object(self, object_id: Any, name: str) -> None:
    if not _is_int(object_id) or not 1 <= object_id <= propagation.MAX_OBJECTS:
      raise ValueError(f"{name}: object ids must be ints in 1..{propagation.MAX_OBJECTS} "
                       f"(0 is the background, {IGNORE_LABEL} ignore), got {object_id!r}")
    if int(object_id) in self._object_ids:
      raise ValueError(f"{name}: object {int(object_id)} is already an object of this video "
                       f"(objects: {self._object_ids})")

  def _check_frame(self, frame: Any, name: str) -> int:
    if not _is_int(frame) or not 0 <= frame < self.num_frames:
      raise ValueError(f"{name} must be a frame index in 0..{self.num_frames - 1}, "
                       f"got {frame!r}")
    return int(frame)

  def _cells(self, frame: int, mask_or_points: Any, what: str) -> np.ndarray:
    """[h, w] bool cells marked by a mask or points (see the module docstring)."""
    where = f"frame {frame}, {what}"
    try:
      values = np.asarray(mask_or_points)
    except ValueError as error:
      raise ValueError(f"{where}: mask_or_points must be an [H, W] bool mask or a list of "
                       f"(y, x) points, got {mask_or_points!r:.80}") from error
    cells = np.zeros(self._references.shape[1:], bool)
    if values.dtype == np.bool_:
      if values.shape != (self.height, self.width):
        raise ValueError(f"{where}: mask_or_points mask has shape {values.shape}, but the "
                         f"frames are {(self.height, self.width)}")
      if not values.any():
        raise ValueError(f"{where}: mask_or_points is an empty scribble (no True pixel)")
      marked = mask_cells(values)
      cells[:marked.shape[0], :marked.shape[1]] = marked
      return cells
    if values.size == 0:
      raise ValueError(f"{where}: mask_or_points is an empty scribble (no point)")
    if values.ndim != 2 or values.shape[1] != 2 or not np.issubdtype(values.dtype, np.number):
      raise ValueError(f"{where}: mask_or_points must be an [H, W] bool mask or a list of "
                       f"(y, x) points ([N, 2] numbers), got an array of shape "
                       f"{values.shape} and dtype {values.dtype}")
    points = values.astype(np.float64)
    outside = ~(np.isfinite(points).all(axis=1) & (points[:, 0] >= 0)
                & (points[:, 0] < self.height) & (points[:, 1] >= 0)
                & (points[:, 1] < self.width))
    if outside.any():
      raise ValueError(f"{where}: point(s) {values[outside].tolist()[:5]} (y, x) outside the "
                       f"{self.height}x{self.width} frame")
    pixels = np.floor(points).astype(np.int64) // FEATURE_STRIDE
    cells[pixels[:, 0], pixels[:, 1]] = True
    return cells

  def add_object(self, object_id: int) -> None:
    """Registers a new object (an id in 1..254 not yet used) for later scribbles."""
    self._check_new_object(object_id, "add_object")
    self._object_ids.append(int(object_id))

  def add_scribble(self, frame: int, object_id: int, mask_or_points: Any) -> None:
    """Marks reference cells of `object_id` (0: background) on `frame`.

    Args:
      frame: frame index in 0..T-1.
      object_id: a registered object, or 0 for the background.
      mask_or_points: clicks as a list of (y, x) pixel coordinates ([N, 2] numbers), or an
        [H, W] bool mask (a thin scribble or a whole object); marks stride-4 cells as the module
        docstring says.
    """
    frame = self._check_frame(frame, "frame")
    if not _is_int(object_id) or (object_id != 0 and object_id not in self._object_ids):
      raise ValueError(f"frame {frame}: object_id {object_id!r} is not an object of this video "
                       f"(objects: {self._object_ids}, 0 for the background); a new object "
                       f"must first be registered with add_object")
    cells = self._cells(frame, mask_or_points, f"object {int(object_id)}")
    self._references[frame][cells] = int(object_id)

  def add_background_scribble(self, frame: int, mask_or_points: Any) -> None:
    """Marks background reference cells on `frame` (as `add_scribble` with object 0)."""
    self.add_scribble(frame, 0, mask_or_points)

  # ------------------------------------------------------------------ propagation
  def propagate(self, from_frame: int, direction: str = "forward") -> np.ndarray:
    """Re-segments the frames from `from_frame` in `direction` with the current references.

    Args:
      from_frame: the frame of interaction (it must hold marked cells).
      direction: 'forward' (from_frame..T-1), 'backward' (from_frame..0) or 'both'.

    Returns:
      [T, H, W] int32 labels of every frame in object ids (a copy of `labels`); frames outside
      the direction keep their earlier labels.
    """
    from_frame = self._check_frame(from_frame, "from_frame")
    if direction not in DIRECTIONS:
      raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    present = [i for i in self._object_ids if (self._references == i).any()]
    if not present:
      raise ValueError(f"no object of this video (objects: {self._object_ids}) has a "
                       f"reference pixel yet: add_scribble an object before propagating")
    if (self._references[from_frame] == IGNORE_LABEL).all():
      raise ValueError(f"from_frame {from_frame} holds no scribble: propagate from a frame "
                       f"that has one (frames with scribbles: "
                       f"{self._marked_frames()})")

    id_to_slot = np.full(256, IGNORE_LABEL, np.int32)
    id_to_slot[0] = 0
    id_to_slot[present] = np.arange(1, len(present) + 1)
    slot_to_id = np.zeros(256, np.uint8)
    slot_to_id[1:len(present) + 1] = present
    slots = id_to_slot[self._references]  # [T, h, w]
    objects_per_chunk, num_chunks = propagation.bucket_slots(len(present),
                                                             self._object_buckets)
    num_slots = objects_per_chunk * num_chunks
    num_objects = np.int32(len(present))
    valid_size = np.array([self.height, self.width], np.int32)
    chains = []
    if direction in ("forward", "both"):
      chains.append(range(from_frame + 1, self.num_frames))
    if direction in ("backward", "both"):
      chains.append(range(from_frame - 1, -1, -1))
    if self._cache_distances:
      first_next = next((chain[0] for chain in chains if len(chain)), None)
      run = self._cached_run(tuple(present), slots, num_slots, num_objects, valid_size,
                             first_next)
      state = marked_state(slots[from_frame], num_slots=num_slots)
    else:
      index, labels = self._reference_index(slots, slots != IGNORE_LABEL)
      state = _start_state(self._embeddings, index, labels, np.int32(from_frame),
                           slots[from_frame], num_slots=num_slots)
      chunk_step = _compiled_step(self.model.clone(max_objects=objects_per_chunk))

      def run(state, frame, previous):
        del previous  # The state holds the previous frame's embedding.
        return chunk_step(self._variables, state, self._features, self._embeddings,
                          np.int32(frame), num_objects, valid_size)

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
    in_use = {version for version, _ in self._minima.values()}
    self._minima_versions = {version: entry for version, entry in self._minima_versions.items()
                             if version in in_use}
    return self.labels

  @staticmethod
  def _reference_index(slots: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices [P], slot labels [P]) of the `cells` (bool, the shape of `slots`) of the
    slot map `slots`, padded to `reference_bucket` (index 0, label IGNORE_LABEL)."""
    marked = np.flatnonzero(cells)
    size = reference_bucket(marked.size)
    index = np.zeros(size, np.int32)
    index[:marked.size] = marked
    labels = np.full(size, IGNORE_LABEL, np.int32)
    labels[:marked.size] = slots.reshape(-1)[marked]
    return index, labels

  def _cached_run(self, present: tuple[int, ...], slots: np.ndarray, num_slots: int,
                  num_objects: np.int32, valid_size: np.ndarray,
                  first_next: Optional[int]) -> Callable[..., Any]:
    """run(state, frame, previous) -> (state, labels) by `cached_step`, storing each frame's
    global-matching minima under a new version of the references. `first_next` is the frame
    the chains step to right after the frame of interaction (None: no chain).

    A frame whose stored minima were taken with the same objects taking part, over
    references that every present reference extends (cells only added, none relabelled),
    is matched against the added cells only; any other frame against all marked cells,
    from minima of inf."""
    version = self._next_version
    self._next_version += 1
    self._minima_versions[version] = (present, self._references.copy())
    marked = self._references != IGNORE_LABEL
    rows: dict[Optional[int], tuple[jax.Array, jax.Array]] = {}
    no_minima = jnp.full(slots.shape[1:] + (1 + num_slots,), jnp.inf, jnp.float32)
    no_maps = jnp.zeros_like(no_minima)
    step = _compiled_cached_step(self.model)
    window, dilation = self.model.window, self.model.dilation

    def local_maps(frame, previous):
      """`cached_step`'s local-matching operands (cell_maps, distances, backward, from_cells)
      of `frame` against `previous`: for the frame of interaction with at most
      MAX_CELL_MATCHING marked cells `local_maps_from_cells`, else the stored
      `pair_distances`. The step reads no distances beside cell maps, but needs an operand of
      their shape: the pair the chain reads next (stored for it now), or zeros without a
      chain."""
      if frame == previous:
        own = marked[frame]
        if np.count_nonzero(own) <= MAX_CELL_MATCHING:
          cell_maps = _compiled_cell_maps(window, dilation, 1 + num_slots)(
              self._embeddings, np.int32(frame), *self._reference_index(slots[frame], own))
          if first_next is None:
            side = 2 * window + 1
            unused = jnp.zeros((side * side,) + slots.shape[1:], jnp.float32)
          else:
            unused = self._distances(first_next, frame)[0]
          return cell_maps, unused, np.bool_(False), np.bool_(True)
      return (no_maps,) + self._distances(frame, previous) + (np.bool_(False),)

    extended: dict[int, bool] = {}

    def references(frame: int) -> tuple[Optional[int], jax.Array]:
      """(the version the frame's minima extend, or None; those minima)."""
      stored = self._minima.get(frame)
      if stored is None:
        return None, no_minima
      if stored[0] not in extended:
        old_present, old_references = self._minima_versions[stored[0]]
        old_marked = old_references != IGNORE_LABEL
        extended[stored[0]] = (old_present == present and np.array_equal(
            old_references[old_marked], self._references[old_marked]))
      return stored if extended[stored[0]] else (None, no_minima)

    def run(state, frame, previous):
      base, minima = references(frame)
      if base not in rows:
        cells = marked if base is None else (
            marked & (self._minima_versions[base][1] == IGNORE_LABEL))
        rows[base] = _reference_rows(self._embeddings, *self._reference_index(slots, cells))
      state, labels, minima = step(self._head_variables, state, self._features,
                                   self._embeddings, np.int32(frame), self._feature_part(frame),
                                   *local_maps(frame, previous), *rows[base], minima,
                                   num_objects, valid_size)
      self._store_minima(frame, version, minima)
      return state, labels
    return run

  def _store_minima(self, frame: int, version: int, minima: jax.Array) -> None:
    """Keeps a frame's minima (replacing its older ones) while the cache has room."""
    old = self._minima.pop(frame, None)
    if old is not None:
      self._minima_cache_used -= old[1].nbytes
    if self._minima_cache_used + minima.nbytes <= self._minima_cache_bytes:
      self._minima[frame] = (version, minima)
      self._minima_cache_used += minima.nbytes

  def _marked_frames(self) -> list[int]:
    return np.flatnonzero((self._references != IGNORE_LABEL).any(axis=(1, 2))).tolist()

  def _feature_part(self, frame: int) -> jax.Array:
    """`head_feature_part` of a frame, computed once while the cache has room."""
    part = self._head_cache.get(frame)
    if part is None:
      part = _compiled_head_feature_part(self.model)(self._head_variables, self._features,
                                                     np.int32(frame))
      if self._head_cache_used + part.nbytes <= self._head_cache_bytes:
        self._head_cache[frame] = part
        self._head_cache_used += part.nbytes
    return part

  def _distances(self, frame: int, previous: int) -> tuple[jax.Array, np.bool_]:
    """(`pair_distances` of the pair, backward flag) for `frame` matched locally against
    `previous` (itself, or a neighbour), computed once per pair while the cache has room."""
    if previous == frame - 1:
      key, backward = (frame, previous), False
    elif previous == frame + 1:
      key, backward = (previous, frame), True
    else:
      key, backward = (frame, frame), False
    distances = self._distance_cache.get(key)
    if distances is None:
      distances = _compiled_distances(self.model.window, self.model.dilation)(
          self._embeddings, np.int32(key[0]), np.int32(key[1]))
      if self._distance_cache_used + distances.nbytes <= self._distance_cache_bytes:
        self._distance_cache[key] = distances
        self._distance_cache_used += distances.nbytes
    return distances, np.bool_(backward)

