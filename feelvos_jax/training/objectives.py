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
- "stm", "rde": the current frame read from a memory of 2 + C frames with their ground-truth
  masks, (reference, the batch's C clip frames, previous) (C = 0 when the batch has no clip),
  cross-entropy; RDE's recurrent embedding aggregates the clip and the previous frame one by
  one as at inference, and RDE adds the cross-entropy of its recurrent read, the unbiased
  guidance and the self-correction losses (`memory_loss`); fraction = 1.

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


def forward_memory(module: flax.linen.Module, batch: dict[str, jax.Array], num_slots: int,
                    rng: jax.Array) -> dict[str, jax.Array]:
  """Memory-model training forward pass (STM, RDE): memory = (reference, previous) frames with
  their ground-truth masks (one-hot, all zeros where IGNORE_LABEL), with the clip frames
  between them when the batch has them, query = the current frame.

  STM: {logits}. RDE: `RDE.rde_forward`'s entries with the reference mask perturbed
  (`losses.perturb_masks`, self-correction) plus true_reference_values, the reference
  encoded from its true mask."""
  def memory(kind, clip_key):  # [B, T, ...], T = 2 + clip length.
    clip = [batch[clip_key]] if clip_key in batch else []
    return jnp.concatenate([batch[f"reference_{kind}"][:, None], *clip,
                            batch[f"previous_{kind}"][:, None]], axis=1)

  frames = memory("frame", "clip_frames")
  probs = jax.nn.one_hot(memory("labels", "clip_labels"), num_slots)
  if not module.recurrent_embedding:
    return {"logits": module(batch["current_frame"], frames, probs, batch["num_objects"],
                             train=True)}
  perturbed = losses.perturb_masks(probs[:, 0], rng)
  outputs = module.rde_forward(batch["current_frame"], frames,
                               probs.at[:, 0].set(perturbed), batch["num_objects"], train=True)
  _, outputs["true_reference_values"] = module.encode_memory(batch["reference_frame"],
                                                             probs[:, 0], train=True)
  return outputs


def memory_loss(outputs: dict[str, jax.Array], labels: jax.Array,
                 config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(loss, logits for the metrics) of `forward_memory`'s outputs: STM's cross-entropy; for
  RDE the cross-entropy of the STM and the RDE readings, plus the unbiased guidance loss (the
  RDE read drawn to the STM read) and the self-correction loss (the perturbed reference's
  values drawn to the true ones), weighted by config.loss.rde_*_weight."""
  if "rde_logits" not in outputs:
    return losses.cross_entropy_loss(outputs["logits"], labels, config.loss), outputs["logits"]
  loss = (losses.cross_entropy_loss(outputs["stm_logits"], labels, config.loss)
          + losses.cross_entropy_loss(outputs["rde_logits"], labels, config.loss))
  loss += config.loss.rde_guidance_weight * losses.channel_kl_divergence(
      outputs["rde_read"], outputs["stm_read"])
  loss += config.loss.rde_correction_weight * losses.channel_kl_divergence(
      outputs["memory_values"][:, 0], outputs["true_reference_values"])
  return loss, outputs["rde_logits"]


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
    loss, logits = memory_loss(outputs, batch["current_labels"], config)
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
