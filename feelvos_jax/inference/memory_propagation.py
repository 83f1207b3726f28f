"""The pure per-frame steps of memory-model propagation (STM, RDE-VOS): the same signatures as
`propagation.start_video` / `propagation_step` and their batched forms, so the host loop, the
in-process propagator and exported bundles drive them alike.

State (every shape fixed for a video, so the step compiles once):
  memory_keys [T, S, h, w, C_k], memory_values [T, S, h, w, C_v] float32: a fixed-capacity
    buffer of T = model.memory_frames frames (h, w at stride 16, S object slots of all chunks);
  memory_valid [T] bool, memory_annotated [T] bool (frames where objects were given, never
    dropped), memory_time [T] int32 (the frame count when written);
  extra_keys [S, h, w, C_k], extra_values [S, h, w, C_v], extra_valid [] bool: STM's previous
    frame, or RDE's recurrent dynamic embedding;
  time [] int32: frames since the first annotated one.

After segmenting frame t its prediction (soft probabilities at full resolution, objects given
there pasted as one-hot) is encoded by the memory encoder and
  STM: written into the buffer when objects were given at t or t is a multiple of
    model.memory_every (then extra_valid is False), else kept as the previous frame (extra);
  RDE: written into the buffer only when objects were given at t; the RDE is aggregated with
    it (`RDE.aggregate`) every frame.
A write goes to the first empty entry, else replaces the oldest entry not annotated (none:
the frame is not written, STM keeps it as the previous frame only). The host
loop refuses a video with more annotated frames than T (`host_loop.Plan.max_annotated_frames`).
Objects go through the model in chunks of M slots as FEELVOS's (`propagation.segment_logits`):
the background logit is the first chunk's, and a chunk's memory encoder sees only its own
objects as "other objects". Design notes: docs/models.md.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference.propagation import State
from feelvos_jax.inference.propagation import labels_and_probs
from feelvos_jax.models.upsampling import upsample_logits


def is_memory_model(model: nn.Module) -> bool:
  """Whether `model` propagates with this module (STM, RDE) rather than `propagation`."""
  return bool(getattr(model, "is_memory_model", False))


def _chunked(array: jax.Array, index: jax.Array, size: int, axis: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(array, index * size, size, axis=axis)


def _encode(model: nn.Module, variables: Any, frame: jax.Array, probs: jax.Array,
            objects_per_chunk: int) -> tuple[jax.Array, jax.Array]:
  """Memory encoding of one frame [Hp, Wp, 3] with slot probabilities [Hp, Wp, 1 + S]:
  (keys [S, h, w, C_k], values [S, h, w, C_v]) float32, chunk by chunk."""
  num_slots = probs.shape[-1] - 1

  def chunk(index):
    chunk_probs = jnp.concatenate(
        [probs[..., :1], _chunked(probs[..., 1:], index, objects_per_chunk, -1)], -1)
    keys, values = model.apply(variables, frame[None], chunk_probs[None], train=False,
                               method="encode_memory")
    return keys[0].astype(jnp.float32), values[0].astype(jnp.float32)

  keys, values = jax.lax.map(chunk, jnp.arange(num_slots // objects_per_chunk))
  return (keys.reshape((num_slots,) + keys.shape[2:]),
          values.reshape((num_slots,) + values.shape[2:]))


def start_video(model: nn.Module, variables: Any, frame: jax.Array, given_labels: jax.Array,
                *, num_slots: int) -> State:
  """The state after the first annotated frame (arguments as `propagation.start_video`): the
  buffer holds that frame, encoded with the one-hot of `given_labels`."""
  probs = jax.nn.one_hot(given_labels, 1 + num_slots, dtype=jnp.float32)
  keys, values = _encode(model, variables, frame, probs, model.max_objects)
  capacity = model.memory_frames
  first = jnp.arange(capacity) == 0
  rde = model.recurrent_embedding
  return {
      "memory_keys": jnp.zeros((capacity,) + keys.shape, jnp.float32).at[0].set(keys),
      "memory_values": jnp.zeros((capacity,) + values.shape, jnp.float32).at[0].set(values),
      "memory_valid": first,
      "memory_annotated": first,
      "memory_time": jnp.zeros((capacity,), jnp.int32),
      "extra_keys": keys if rde else jnp.zeros_like(keys),
      "extra_values": values if rde else jnp.zeros_like(values),
      "extra_valid": jnp.asarray(rde),
      "time": jnp.zeros((), jnp.int32),
  }


def _segment(model: nn.Module, variables: Any, state: State, frame: jax.Array,
             num_objects: jax.Array, objects_per_chunk: int) -> jax.Array:
  """Stride-4 logits [h4, w4, 1 + S] of `frame` read from the state's memory, merged over
  the chunks as `propagation.segment_logits`."""
  num_slots = state["extra_keys"].shape[0]
  query = model.apply(variables, frame[None], train=False, method="encode_query")
  keys = jnp.concatenate([state["memory_keys"], state["extra_keys"][None]], 0)
  values = jnp.concatenate([state["memory_values"], state["extra_values"][None]], 0)
  valid = jnp.concatenate([state["memory_valid"], state["extra_valid"][None]], 0)

  def chunk(index):
    count = jnp.clip(num_objects - index * objects_per_chunk, 0, objects_per_chunk)
    logits = model.apply(
        variables, query, _chunked(keys, index, objects_per_chunk, 1)[None],
        _chunked(values, index, objects_per_chunk, 1)[None], valid[None],
        count[None].astype(jnp.int32), method="segment_memory")
    return logits[0]

  chunk_logits = jax.lax.map(chunk, jnp.arange(num_slots // objects_per_chunk))
  height, width = chunk_logits.shape[1:3]
  objects = jnp.transpose(chunk_logits[..., 1:], (1, 2, 0, 3)).reshape(height, width, num_slots)
  return jnp.concatenate([chunk_logits[0, ..., :1], objects], axis=-1)


def _write(state: State, keys: jax.Array, values: jax.Array, write: jax.Array,
           annotated: jax.Array, time: jax.Array) -> State:
  """The buffer with (keys, values) written where the module docstring says, if `write` and
  an entry is empty or not annotated (else, every entry annotated, nothing is written)."""
  valid, kept = state["memory_valid"], state["memory_annotated"]
  capacity = valid.shape[0]
  big = jnp.iinfo(jnp.int32).max
  empty = jnp.argmin(valid)
  replaceable = jnp.where(valid & ~kept, state["memory_time"], big)
  target = jnp.where(~jnp.all(valid), empty, jnp.argmin(replaceable))
  possible = ~jnp.all(valid & kept)
  hit = (jnp.arange(capacity) == target) & write & possible
  shape = (capacity,) + (1,) * keys.ndim
  return dict(
      state,
      memory_keys=jnp.where(hit.reshape(shape), keys[None], state["memory_keys"]),
      memory_values=jnp.where(hit.reshape(shape), values[None], state["memory_values"]),
      memory_valid=valid | hit,
      memory_annotated=jnp.where(hit, annotated, kept),
      memory_time=jnp.where(hit, time, state["memory_time"]))


def propagation_step(model: nn.Module, variables: Any, state: State, frame: jax.Array,
                     paste_labels: jax.Array, num_objects: jax.Array, valid_size: jax.Array, *,
                     objects_per_chunk: int) -> tuple[State, jax.Array]:
  """Segments one frame and updates the memory (arguments and results as
  `propagation.propagation_step`)."""
  logits = _segment(model, variables, state, frame, num_objects, objects_per_chunk)
  labels, _ = labels_and_probs(logits, valid_size)
  pasted = paste_labels != IGNORE_LABEL
  labels = jnp.where(pasted & (labels != IGNORE_LABEL), paste_labels, labels)
  height, width = paste_labels.shape
  probs = jax.nn.softmax(upsample_logits(logits[None], (height, width))[0], axis=-1)
  probs = jnp.where(pasted[..., None], jax.nn.one_hot(paste_labels, probs.shape[-1]), probs)
  keys, values = _encode(model, variables, frame, probs, objects_per_chunk)
  time = state["time"] + 1
  annotated = jnp.any(pasted)
  if model.recurrent_embedding:
    state = _write(state, keys, values, annotated, annotated, time)
    rde_keys, rde_values = jax.lax.map(
        lambda index: model.apply(
            variables, _chunked(state["extra_keys"], index, objects_per_chunk, 0)[None],
            _chunked(state["extra_values"], index, objects_per_chunk, 0)[None],
            _chunked(keys, index, objects_per_chunk, 0)[None],
            _chunked(values, index, objects_per_chunk, 0)[None], method="aggregate"),
        jnp.arange(keys.shape[0] // objects_per_chunk))
    new_state = dict(state, extra_keys=rde_keys.reshape(keys.shape),
                     extra_values=rde_values.reshape(values.shape),
                     extra_valid=jnp.asarray(True), time=time)
  else:
    keep = annotated | (time % model.memory_every == 0)
    state = _write(state, keys, values, keep, annotated, time)
    new_state = dict(state, extra_keys=keys, extra_values=values, extra_valid=~keep, time=time)
  return new_state, labels


def start_videos(model: nn.Module, variables: Any, frames: jax.Array, given_labels: jax.Array,
                 *, num_slots: int) -> State:
  """`start_video` of B videos at once (a leading video axis, as `propagation.start_videos`)."""
  start = functools.partial(start_video, model, variables, num_slots=num_slots)
  return jax.vmap(start)(frames, given_labels)


def propagation_steps(model: nn.Module, variables: Any, states: State, frames: jax.Array,
                      paste_labels: jax.Array, num_objects: jax.Array, valid_size: jax.Array,
                      *, objects_per_chunk: int) -> tuple[State, jax.Array]:
  """`propagation_step` of B videos at once (as `propagation.propagation_steps`)."""
  step = functools.partial(propagation_step, model, variables,
                           objects_per_chunk=objects_per_chunk)
  return jax.vmap(step)(states, frames, paste_labels, num_objects, valid_size)
