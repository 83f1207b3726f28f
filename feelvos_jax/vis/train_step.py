"""MaskTrack R-CNN's training step: the losses of a batch of (query, reference) frame pairs.

Batch layout (the VIS input pipeline's, `vis/input_pipeline.py`), B pairs, G box slots:
  image, reference_image      [B, H, W, 3] float32 in [-1, 1], H and W multiples of 32
  image_size                  [B, 2] int32: (height, width) of the frames inside the padding
  boxes, reference_boxes      [B, G, 4] float32 (x1, y1, x2, y2) pixels
  labels, reference_labels    [B, G] int32 category 1..K, 0 for an empty slot
  masks                       [B, H, W, G] uint8 0/1, the query frame's instance masks
  reference_index             [B, G] int32: for each query instance, 1 + its slot in the
                              reference frame, or 0 when it is not there ("new")
Loss = RPN (classification + regression) + box head (classification + regression) + mask +
tracking cross-entropy, all with weight 1 (the authors' config), averaged over the batch.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from feelvos_jax.vis import anchors as anchor_ops
from feelvos_jax.vis import detect
from feelvos_jax.vis import fpn
from feelvos_jax.vis import heads
from feelvos_jax.vis import losses
from feelvos_jax.vis.model import MaskTrackRCNN

LOSS_TERMS = ("rpn_classification", "rpn_regression", "box_classification", "box_regression",
              "mask", "track")
"""The summed loss terms (each also reported as a metric)."""


def _image_losses(model: MaskTrackRCNN, variables: dict, rng: jax.Array, pyramid, reference_pyramid,
                  rpn_outputs, level_anchors, example: dict[str, jax.Array],
                  config: losses.TargetConfig, proposal_options: dict) -> dict[str, jax.Array]:
  """All loss terms of one pair (pyramids, RPN outputs and example entries of one image)."""
  rpn_rng, roi_rng = jax.random.split(rng)
  valid = example["labels"] > 0
  objectness = jnp.concatenate([o.reshape(-1) for o, _ in rpn_outputs])
  deltas = jnp.concatenate([d.reshape(-1, 4) for _, d in rpn_outputs])
  terms = losses.rpn_loss(rpn_rng, objectness, deltas, jnp.concatenate(level_anchors),
                          example["boxes"], valid, example["image_size"], config)
  proposal_boxes, _, proposal_valid = detect.proposals(
      jax.lax.stop_gradient(rpn_outputs), level_anchors, example["image_size"],
      **proposal_options)
  samples = losses.sample_rois(roi_rng, proposal_boxes, proposal_valid, example["boxes"],
                               example["labels"], valid, config)
  apply = functools.partial(model.apply, variables)
  rois = apply(pyramid, samples.boxes, method=MaskTrackRCNN.box_rois)
  class_logits, box_deltas = apply(rois, method=MaskTrackRCNN.classify)
  terms.update(losses.box_loss(class_logits, box_deltas, samples))
  num_positive = config.max_positives
  positive_boxes = samples.boxes[:num_positive]
  positive_valid = samples.valid[:num_positive]
  positive_labels = samples.labels[:num_positive]
  mask_logits = apply(apply(pyramid, positive_boxes, method=MaskTrackRCNN.mask_rois),
                      method=MaskTrackRCNN.segment)
  targets = losses.mask_targets(example["masks"], positive_boxes, samples.assigned,
                                config.mask_size)
  terms["mask"] = losses.mask_loss(mask_logits, targets, positive_labels, positive_valid)
  query_embeddings = apply(rois[:num_positive], method=MaskTrackRCNN.embed)
  reference_rois = apply(reference_pyramid, example["reference_boxes"],
                         method=MaskTrackRCNN.box_rois)
  reference_embeddings = apply(reference_rois, method=MaskTrackRCNN.embed)
  logits = heads.match_logits(query_embeddings, reference_embeddings,
                              example["reference_labels"] > 0)
  track_targets = example["reference_index"][samples.assigned]
  terms.update(losses.track_loss(logits, track_targets, positive_valid))
  terms["positives"] = positive_valid.sum().astype(jnp.float32)
  return terms


def compute_losses(model: MaskTrackRCNN, variables: dict, batch: dict[str, jax.Array],
                   rng: jax.Array, config: losses.TargetConfig = losses.TargetConfig(),
                   proposal_options: dict | None = None) -> tuple[jax.Array, dict]:
  """(total loss, {term or metric: batch mean}) of a batch (see the module docstring)."""
  proposal_options = proposal_options or {}
  batch_size = batch["image"].shape[0]
  both = jnp.concatenate([batch["image"], batch["reference_image"]])
  pyramid = model.apply(variables, both, method=MaskTrackRCNN.pyramid)
  query = [level[:batch_size] for level in pyramid]
  reference = [level[batch_size:] for level in pyramid]
  rpn_outputs = model.apply(variables, query, method=MaskTrackRCNN.rpn)
  level_anchors = anchor_ops.pyramid_anchors([level.shape[1:3] for level in query],
                                             fpn.PYRAMID_STRIDES)
  keys = ("image_size", "boxes", "labels", "masks", "reference_boxes", "reference_labels",
          "reference_index")
  examples = {key: batch[key] for key in keys}
  per_image = jax.vmap(
      lambda r, p, q, o, e: _image_losses(model, variables, r, p, q, o, level_anchors, e, config,
                                          proposal_options))(
      jax.random.split(rng, batch_size), query, reference, rpn_outputs, examples)
  metrics = {name: value.mean() for name, value in per_image.items()}
  total = sum(metrics[name] for name in LOSS_TERMS)
  metrics["loss"] = total
  return total, metrics


def train_step(state: Any, batch: dict[str, jax.Array], *, model: MaskTrackRCNN,
               schedule: optax.Schedule, config: losses.TargetConfig = losses.TargetConfig(),
               proposal_options: dict | None = None) -> tuple[Any, dict[str, jax.Array]]:
  """One update of a `training.train.TrainState` (batch_stats frozen): (new state, metrics:
  the loss terms, accuracies, loss, learning_rate, grad_norm)."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    return compute_losses(model, {"params": params, "batch_stats": state.batch_stats}, batch,
                          rng, config, proposal_options)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  metrics["learning_rate"] = schedule(state.step)
  metrics["grad_norm"] = optax.global_norm(grads)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics
