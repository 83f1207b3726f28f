"""Training objectives by `config.model.head`: each head's forward pass over a training batch
and its loss.

  loss_and_logits(apply_fn, variables, batch, step, rng, config)
      -> (loss [], (logits [B, h, w, K], batch_stats, fraction []))

- "feelvos": the current frame segmented against the reference and the previous frame (its
  ground truth as the previous prediction), bootstrapped cross-entropy
  (`losses.segmentation_loss`); fraction = pixels kept by the bootstrapping.
- "nearest_neighbor" (PML): the triplet loss on the current and reference embeddings
  (`losses.triplet_loss`); the logits of the nearest-neighbour vote, without gradient, give the
  training IoU; fraction = active triplets.
- "stm", "rde": a memory of T = 2 + C frames with their ground-truth masks, (reference, the
  batch's C clip frames, previous) (C = 0 when the batch has no clip); every frame after the
  reference and the current frame is a query, read from the frames before it
  (`read_every_frame`), cross-entropy averaged over the T queries; RDE's recurrent embedding
  aggregates the clip and the previous frame one by one as at inference, and RDE adds the
  cross-entropy of its recurrent reads (query t from the reference and the RDE of the frames
  before it), the unbiased guidance and the self-correction losses (`memory_loss`);
  fraction = 1.

The batch holds `train.TRAIN_KEYS` ([B, H, W, 3] frames, [B, H, W] labels, [B] num_objects;
for STM and RDE optionally clip_frames [B, C, H, W, 3] and clip_labels [B, C, H, W],
`train.clip_frames`).
"""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax.training import losses

def _embed_training_frames(module: flax.linen.Module, batch: dict[str, jax.Array],
                           num_slots: int) -> dict[str, jax.Array]:
  """The three frames embedded in one call: `segment`'s inputs for the current frame (all but
  `num_objects`), the previous frame's ground truth as its prediction (one-hot, all zeros
  where IGNORE_LABEL)."""
  batch_size = batch["current_frame"].shape[0]
  frames = jnp.concatenate(
      [batch["reference_frame"], batch["previous_frame"], batch["current_frame"]], axis=0)
  features, embeddings = module.embed(frames, train=True)
  reference_embedding, previous_embedding, current_embedding = jnp.split(embeddings, 3, axis=0)
  previous_labels = batch["previous_labels"][:, ::FEATURE_STRIDE, ::FEATURE_STRIDE]
  return dict(features=features[2 * batch_size:], embeddings=current_embedding,
              reference_embedding=reference_embedding,
              reference_labels=batch["reference_labels"][:, ::FEATURE_STRIDE, ::FEATURE_STRIDE],
              previous_embedding=previous_embedding, previous_labels=previous_labels,
              previous_probs=jax.nn.one_hot(previous_labels, num_slots))


def forward(module: flax.linen.Module, batch: dict[str, jax.Array],
             num_slots: int) -> jax.Array:
  """Training forward pass: the current frame segmented against the reference and the
  previous frame -> logits [B, h, w, K]."""
  inputs = _embed_training_frames(module, batch, num_slots)
  return module.segment(**inputs, num_objects=batch["num_objects"], train=True)


def forward_nearest_neighbor(module: flax.linen.Module, batch: dict[str, jax.Array],
                              num_slots: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PML training forward pass: (current embeddings [B, h, w, E], reference embeddings
  [B, h, w, E], vote logits [B, h, w, K] of the current frame for the metrics, computed
  without gradient)."""
  inputs = _embed_training_frames(module, batch, num_slots)
  current_embedding, reference_embedding = inputs["embeddings"], inputs["reference_embedding"]
  for key in ("embeddings", "reference_embedding", "previous_embedding"):
    inputs[key] = jax.lax.stop_gradient(inputs[key])
  logits = module.segment(**inputs, num_objects=batch["num_objects"], train=True)
  return current_embedding, reference_embedding, logits


def read_every_frame(module: flax.linen.Module, memory_frames: jax.Array,
                     memory_probs: jax.Array, current_frame: jax.Array,
                     num_objects: jax.Array) -> dict[str, jax.Array]:
  """The memory model's training reads of every frame after the first, as STM and RDE-VOS
  train on every frame of their clips.

  memory_frames [B, T, H, W, 3] with memory_probs [B, T, H, W, K], current_frame
  [B, H, W, 3], num_objects [B] -> {stm_logits [B, T, h4, w4, K], stm_read
  [B, T, M, h16, w16, C_v], memory_values [B, T, M, h16, w16, C_v]}, query t (memory frames
  1..T-1, then the current frame) read from memory frames 0..t-1 (the current frame from all
  T); RDE adds rde_logits and rde_read, query t read from (memory frame 0, the RDE of frames
  1..t-1) (frame 0's encoding for t = 1), as inference reads (annotated frame, RDE). The memory
  is encoded once; the T queries share one batched read with the later memory frames masked
  out."""
  batch, steps = memory_frames.shape[:2]
  keys, values = module.encode_memory(
      memory_frames.reshape((-1,) + memory_frames.shape[2:]),
      memory_probs.reshape((-1,) + memory_probs.shape[2:]), train=True)
  keys = keys.reshape((batch, steps) + keys.shape[1:])
  values = values.reshape((batch, steps) + values.shape[1:])

  def tile(x):  # [B, ...] -> [T * B, ...], query-major.
    return jnp.tile(x, (steps,) + (1,) * (x.ndim - 1))

  queries = jnp.concatenate([memory_frames[:, 1:], current_frame[:, None]], axis=1)
  query = module.encode_query(jnp.moveaxis(queries, 1, 0).reshape((-1,) + queries.shape[2:]),
                              train=True)
  counts = tile(num_objects)
  valid = jnp.arange(steps)[None, :] < jnp.arange(1, steps + 1)[:, None]  # [query, memory]
  stm_read = module.read(query["key"], tile(keys), tile(values), jnp.repeat(valid, batch, 0))
  outputs = dict(stm_logits=module.decode(query, stm_read, counts), stm_read=stm_read)
  if module.recurrent_embedding:
    first_keys, first_values = keys[:, 0].astype(jnp.float32), values[:, 0].astype(jnp.float32)
    rde_keys, rde_values = [first_keys], [first_values]
    for step in range(1, steps):
      next_keys, next_values = module.aggregate(rde_keys[-1], rde_values[-1], keys[:, step],
                                                values[:, step])
      rde_keys.append(next_keys)
      rde_values.append(next_values)
    rde_read = module.read(
        query["key"], jnp.stack([tile(first_keys), jnp.concatenate(rde_keys)], 1),
        jnp.stack([tile(first_values), jnp.concatenate(rde_values)], 1),
        jnp.ones((steps * batch, 2), bool))
    outputs.update(rde_logits=module.decode(query, rde_read, counts), rde_read=rde_read)
  outputs = {key: jnp.moveaxis(value.reshape((steps, batch) + value.shape[1:]), 0, 1)
             for key, value in outputs.items()}
  outputs["memory_values"] = values
  return outputs


def forward_memory(module: flax.linen.Module, batch: dict[str, jax.Array], num_slots: int,
                    rng: jax.Array) -> dict[str, jax.Array]:
  """Memory-model training forward pass (STM, RDE): memory = (reference, clip, previous)
  frames with their ground-truth masks (one-hot, all zeros where IGNORE_LABEL), T = 2 + C
  frames (C = 0 when the batch has no clip); queries = every memory frame after the reference
  and the current frame (`read_every_frame`).

  -> `read_every_frame`'s entries ([B, T, ...]); RDE's with the reference mask perturbed
  (`losses.perturb_masks`, self-correction) plus true_reference_values [B, M, h16, w16, C_v],
  the reference encoded from its true mask."""
  def memory(kind, clip_key):  # [B, T, ...], T = 2 + clip length.
    clip = [batch[clip_key]] if clip_key in batch else []
    return jnp.concatenate([batch[f"reference_{kind}"][:, None], *clip,
                            batch[f"previous_{kind}"][:, None]], axis=1)

  frames = memory("frame", "clip_frames")
  probs = jax.nn.one_hot(memory("labels", "clip_labels"), num_slots)
  if not module.recurrent_embedding:
    return read_every_frame(module, frames, probs, batch["current_frame"], batch["num_objects"])
  perturbed = losses.perturb_masks(probs[:, 0], rng)
  outputs = read_every_frame(module, frames, probs.at[:, 0].set(perturbed),
                             batch["current_frame"], batch["num_objects"])
  _, outputs["true_reference_values"] = module.encode_memory(batch["reference_frame"],
                                                             probs[:, 0], train=True)
  return outputs


def memory_loss(outputs: dict[str, jax.Array], labels: jax.Array,
                 config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(loss, logits [B, h4, w4, K] of the current frame for the metrics) of `forward_memory`'s
  outputs against labels [B, T, H, W] (memory frames 1..T-1, current frame): STM's
  cross-entropy over the T queries; for RDE the cross-entropy of the STM and the RDE readings,
  plus the unbiased guidance loss (the RDE read drawn to the STM read) and the self-correction
  loss (the perturbed reference's values drawn to the true ones), weighted by
  config.loss.rde_*_weight."""
  def flat(x):  # [B, T, ...] -> [B * T, ...]
    return x.reshape((-1,) + x.shape[2:])

  loss = losses.cross_entropy_loss(flat(outputs["stm_logits"]), flat(labels), config.loss)
  if "rde_logits" not in outputs:
    return loss, outputs["stm_logits"][:, -1]
  loss += losses.cross_entropy_loss(flat(outputs["rde_logits"]), flat(labels), config.loss)
  loss += config.loss.rde_guidance_weight * losses.channel_kl_divergence(
      outputs["rde_read"], outputs["stm_read"])
  loss += config.loss.rde_correction_weight * losses.channel_kl_divergence(
      outputs["memory_values"][:, 0], outputs["true_reference_values"])
  return loss, outputs["rde_logits"][:, -1]


def loss_and_logits(apply_fn: Callable[..., Any], variables: Any, batch: dict[str, jax.Array],
                    step: jax.Array, matching_rng: jax.Array, config: ml_collections.ConfigDict
                    ) -> tuple[jax.Array, tuple[jax.Array, Any, jax.Array]]:
  """The loss of `config.model.head` on `batch` (module docstring) and, for the metrics and the
  update, (logits [B, h, w, K], the updated batch_stats, fraction []). `apply_fn` is the
  model's `apply`, `step` the training step (bootstrapping schedule), `matching_rng` the step's
  key (matching subsampling, triplet anchors, RDE's mask perturbation)."""
  num_slots = 1 + config.model.max_objects
  if config.model.head in ("stm", "rde"):
    outputs, mutated = apply_fn(
        variables, batch, num_slots, jax.random.fold_in(matching_rng, 2),
        method=forward_memory, mutable=["batch_stats"])
    clip = [batch["clip_labels"]] if "clip_labels" in batch else []
    labels = jnp.concatenate(clip + [batch["previous_labels"][:, None],
                                     batch["current_labels"][:, None]], axis=1)
    loss, logits = memory_loss(outputs, labels, config)
    fraction = jnp.float32(1.0)
  elif config.model.head == "nearest_neighbor":
    (current, reference, logits), mutated = apply_fn(
        variables, batch, num_slots, method=forward_nearest_neighbor,
        mutable=["batch_stats"], rngs={"matching": matching_rng})
    loss, fraction = losses.triplet_loss(
        current, batch["current_labels"][:, ::FEATURE_STRIDE, ::FEATURE_STRIDE], reference,
        batch["reference_labels"][:, ::FEATURE_STRIDE, ::FEATURE_STRIDE],
        jax.random.fold_in(matching_rng, 1), num_slots=num_slots,
        margin=config.loss.triplet_margin,
        anchors_per_object=config.loss.triplet_anchors_per_object)
  else:
    logits, mutated = apply_fn(
        variables, batch, num_slots,
        method=forward, mutable=["batch_stats"], rngs={"matching": matching_rng})
    loss, fraction = losses.segmentation_loss(logits, batch["current_labels"], step,
                                              config.loss)
  return loss, (logits, mutated.get("batch_stats", variables["batch_stats"]), fraction)
