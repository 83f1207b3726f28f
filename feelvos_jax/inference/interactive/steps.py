"""The pure, jitted functions of an interactive session: embedding, the start state and the two
per-frame steps.

- `generic_step`: the model's whole chunked `segment` step (`propagation.segment_logits`) on
  the stored features and embeddings; any model (CFBI options, PML).
- `incremental_step`: the same maps and logits for plain FEELVOS matching, with what does not
  depend on the references computed beforehand (`feelvos_jax.matching.incremental`,
  `head_feature_part`) and global matching against the added reference cells only.
Both end with `propagation.labels_and_probs`, as video propagation. The `compiled_*` functions
jit them once per model (or window), shared by every session.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import matching
from feelvos_jax.inference import propagation
from feelvos_jax.matching import incremental
from feelvos_jax.models import heads

DENSE_REFERENCE_PIXELS = 64
"""A step matches at most this many new reference pixels (their bucket) densely
(`matching.nearest_squared_distance`), more with `matching.global_matching`."""

GLOBAL_CHUNK_ELEMENTS = 2**24
"""Distances [chunk, P] of one chunk of a step's global matching: at most this many (64 MiB
float32), unless the model's own `matching_chunk_size` is larger (`global_chunk_size`)."""

HEAD_MAPS = 3
"""Matching maps per slot of the plain FEELVOS head: global, previous probability, local."""


def embed_frames(model: nn.Module, variables: Any, features: jax.Array, embeddings: jax.Array,
                 frames: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Embeds a batch of frames into the session's buffers.

  Args:
    model: the FEELVOS-family module.
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


def marked_state(frame_labels: np.ndarray, *, num_slots: int) -> dict[str, np.ndarray]:
  """The previous-frame labels and probabilities at the frame of interaction: the frame
  itself with its marked cells as labels and their one-hot as probabilities (NumPy).

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


def start_state(embeddings: jax.Array, reference_index: jax.Array,
                reference_labels: jax.Array, frame: jax.Array,
                marked: dict[str, jax.Array]) -> propagation.State:
  """The `generic_step` state at the frame of interaction (`propagation.State`): the marked
  cells as the reference (`reference_rows`: [1, P, E] and [1, P]), the frame's own embedding
  [h, w, E] as the previous one and its `marked_state` as previous labels and probabilities."""
  reference_embedding, labels = reference_rows(embeddings, reference_index, reference_labels)
  return dict(marked, previous_embedding=lax.dynamic_index_in_dim(embeddings, frame,
                                                                  keepdims=False),
              reference_embedding=reference_embedding, reference_labels=labels)


def next_state(state: propagation.State, logits: jax.Array, valid_size: jax.Array,
               **previous: jax.Array) -> tuple[propagation.State, jax.Array]:
  """A frame's logits [h, w, K] -> (the state with this frame as the previous one, its labels
  [4h, 4w] uint8 slots, IGNORE_LABEL outside `valid_size`), by `propagation.labels_and_probs`.
  `previous` holds what else the state takes from the frame (its previous_embedding)."""
  labels, probs = propagation.labels_and_probs(logits, valid_size)
  new_state = dict(state, previous_labels=labels[::FEATURE_STRIDE, ::FEATURE_STRIDE],
                   previous_probs=probs, **previous)
  return new_state, labels.astype(jnp.uint8)


def fuse_predictions(new_probs: jax.Array, old_probs: jax.Array, new_weight: jax.Array,
                     num_objects: jax.Array,
                     valid_size: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A frame's new prediction fused with its earlier one, as MiVOS and IPN fuse rounds.

  Args:
    new_probs: [h, w, K] float32 slot probabilities of this propagation.
    old_probs: [h, w, K] float32 the frame's earlier probabilities in the same slots.
    new_weight: float32 scalar in [0, 1], the new prediction's weight.
    num_objects: int32 scalar, objects taking part (slots 1..num_objects; the rest absent).
    valid_size: [2] int32, the frame's (height, width) before padding.

  Returns:
    (labels [4h, 4w] uint8 slots, IGNORE_LABEL outside `valid_size`: the argmax of the fused
    probabilities' logarithm upsampled as `propagation.labels_and_probs` upsamples logits;
    fused probs [h, w, K] float32, new_weight x new + (1 - new_weight) x old, renormalised).
  """
  fused = new_weight * new_probs + (1.0 - new_weight) * old_probs
  present = jnp.arange(fused.shape[-1]) <= num_objects
  logits = jnp.where(present, jnp.log(jnp.maximum(fused, 1e-30)), -jnp.inf)
  labels, probs = propagation.labels_and_probs(logits, valid_size)
  return labels.astype(jnp.uint8), probs


def generic_step(model: nn.Module, variables: Any, state: propagation.State,
                 features: jax.Array, embeddings: jax.Array, frame: jax.Array,
                 num_objects: jax.Array, valid_size: jax.Array, *,
                 objects_per_chunk: int) -> tuple[propagation.State, jax.Array]:
  """Segments one frame from its stored features and embeddings and advances the state.

  Args:
    model: the FEELVOS-family module with `max_objects = objects_per_chunk`.
    variables: {'params', 'batch_stats'}.
    state: the State of the previous frame in the propagation direction (`start_state`).
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
  return next_state(state, logits, valid_size, previous_embedding=frame_embeddings[0])


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


def incremental_step(model: nn.Module, head_variables: Any, state: propagation.State,
                     features: jax.Array, embeddings: jax.Array, frame: jax.Array,
                     feature_part: jax.Array, cell_maps: jax.Array, pair: jax.Array,
                     backward: jax.Array, from_cells: jax.Array,
                     reference_embedding: jax.Array, reference_labels: jax.Array,
                     minima: jax.Array, num_objects: jax.Array,
                     valid_size: jax.Array) -> tuple[propagation.State, jax.Array, jax.Array]:
  """`generic_step` for a model with `supports_incremental_matching`, with what does not depend
  on the new references computed beforehand.

  The same segmentation as `FEELVOS.segment` (global matching against the reference pixels,
  local against the previous frame, the head over every slot at once), but:
  - global matching is incremental: `minima` [h, w, K] holds the frame's minimum squared
    distance per slot to the reference cells already matched (inf: none), and only the
    reference pixels added since (`reference_embedding` [1, P, E], `reference_labels` [1, P]
    slots, padding IGNORE_LABEL) are matched (densely for P <= DENSE_REFERENCE_PIXELS); the
    minimum of both is the minimum over all reference pixels, so the map equals matching
    them all at once;
  - local matching against the previous frame reads the `pair_distances` stored once per
    pair of frames (`pair` [O, h, w], `backward` as in `local_maps_from_distances`, against
    the state's previous labels), or, where `from_cells` (bool scalar) is True, the maps come
    in computed (`cell_maps` [h, w, K], `local_maps_from_cells` for the frame of interaction;
    the other operands are then unused, any arrays of their shapes): one compiled step for
    both;
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
  local_maps = lax.cond(from_cells, lambda: cell_maps, lambda: (
      incremental.local_maps_from_distances(pair, state["previous_labels"], backward,
                                            window=model.window, dilation=model.dilation,
                                            num_slots=num_slots)))
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
  return next_state(state, logits, valid_size) + (minima,)


@functools.lru_cache(maxsize=16)
def compiled_embed(model: nn.Module) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """Jitted `embed_frames` of a model, buffers donated (updated in place)."""
  return jax.jit(functools.partial(embed_frames, model), donate_argnums=(1, 2))


compiled_start_state = jax.jit(start_state)
compiled_fuse_predictions = jax.jit(fuse_predictions)
compiled_reference_rows = jax.jit(reference_rows)


@functools.lru_cache(maxsize=16)
def compiled_generic_step(model: nn.Module) -> Callable[..., tuple[propagation.State,
                                                                   jax.Array]]:
  """Jitted `generic_step` of a model (its max_objects = M)."""
  return jax.jit(functools.partial(generic_step, model, objects_per_chunk=model.max_objects))


@functools.lru_cache(maxsize=16)
def compiled_incremental_step(model: nn.Module) -> Callable[..., tuple[propagation.State,
                                                                       jax.Array, jax.Array]]:
  """Jitted `incremental_step` of a model."""
  return jax.jit(functools.partial(incremental_step, model))


@functools.lru_cache(maxsize=16)
def compiled_head_feature_part(model: nn.Module) -> Callable[..., jax.Array]:
  """Jitted `head_feature_part` of a model."""
  return jax.jit(functools.partial(head_feature_part, model))


@functools.lru_cache(maxsize=16)
def compiled_pair_distances(window: int, dilation: int) -> Callable[..., jax.Array]:
  """Jitted `pair_distances` of frames `u` and `v` of the session's embeddings."""
  def frame_pair_distances(embeddings, u, v):
    return incremental.pair_distances(lax.dynamic_index_in_dim(embeddings, u, keepdims=False),
                                      lax.dynamic_index_in_dim(embeddings, v, keepdims=False),
                                      window=window, dilation=dilation)
  return jax.jit(frame_pair_distances)


@functools.lru_cache(maxsize=16)
def compiled_cell_maps(window: int, dilation: int, num_slots: int) -> Callable[..., jax.Array]:
  """Jitted `local_maps_from_cells` of frame `frame` of the session's embeddings."""
  def frame_cell_maps(embeddings, frame, cell_index, cell_labels):
    return incremental.local_maps_from_cells(
        lax.dynamic_index_in_dim(embeddings, frame, keepdims=False), cell_index, cell_labels,
        window=window, dilation=dilation, num_slots=num_slots)
  return jax.jit(frame_cell_maps)


def chain_weights(from_frame: int, num_frames: int, direction: str, interacted: set[int],
                  predicted: set[int], stop_at_interacted: bool) -> list[dict[int, float]]:
  """The weight of the new prediction of each frame a propagation visits (MiVOS-style fusion
  with the stored one): per chain ('forward': from_frame + 1 .. T - 1, 'backward':
  from_frame - 1 .. 0, 'both': the two), {frame: weight} in stepping order. The anchors of a
  chain are the earlier frames of interaction (`interacted`) on it; a frame t with a stored
  prediction (in `predicted`) gets |t - a| / (|t - a| + |t - from_frame|), a the anchor nearest
  to t (ahead of it or passed), so the new interaction fades out towards every earlier one and
  an anchor keeps its prediction (0); a frame without a stored prediction, or on a chain with
  no anchor, gets 1. `stop_at_interacted` ends a chain before its first anchor (the frames up
  to it are still fused with the weight towards it)."""
  chains = []
  if direction in ("forward", "both"):
    chains.append(range(from_frame + 1, num_frames))
  if direction in ("backward", "both"):
    chains.append(range(from_frame - 1, -1, -1))
  weights = []
  for chain in chains:
    anchors = [frame for frame in chain if frame in interacted]
    if stop_at_interacted and anchors:
      chain, anchors = chain[:chain.index(anchors[0])], anchors[:1]
    weights_of_chain = {}
    for frame in chain:
      if not anchors or frame not in predicted:
        weights_of_chain[frame] = 1.0
        continue
      behind = min(abs(frame - anchor) for anchor in anchors)
      weights_of_chain[frame] = behind / (behind + abs(frame - from_frame))
    weights.append(weights_of_chain)
  return weights
