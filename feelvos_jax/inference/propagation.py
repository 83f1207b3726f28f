"""The pure per-frame steps of FEELVOS video propagation, shared by in-process inference, exported
bundles and the interactive session.

- `start_video` (first annotated frame -> State), `propagation_step` (State, frame -> State,
  labels [Hp, Wp]), `add_reference` (a frame where objects first appear joins the reference
  buffer), and their batched forms over a leading video axis (`start_videos`,
  `propagation_steps`, `add_references`).
- `segment_logits` (matching + head over the object slots, chunked) and `labels_and_probs`
  (logits -> labels and stride-4 probabilities), also used by the interactive session.

State: the reference buffer (embeddings [R*h, w, E] and labels [R*h, w] of the R frames where
objects first appear, stacked along the height), the previous frame's embedding, stride-4
labels and probabilities. The host loop that drives these steps over a video is `host_loop`;
how a video runs, the reference buffer, object chunks and batching: docs/inference.md.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  reference buffer: R -> R + 1. `paste_labels` [Hp, Wp] as given to `propagation_step`.
  A memory model's state (`memory_propagation`) is returned unchanged: its step already wrote
  the frame into its memory."""
  if "memory_keys" in state:
    return state
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
  reference frames. Memory-model states are returned unchanged, as by `add_reference`.
  """
  if "memory_keys" in states:
    return states
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
