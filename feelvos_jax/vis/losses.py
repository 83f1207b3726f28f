"""MaskTrack R-CNN's training targets and losses for one (query frame, reference frame) pair.

As the authors' mmdetection config (`masktrack_rcnn_r50_fpn_1x_youtubevos.py`), with static
shapes so that the whole step jits:
- RPN: anchors inside the image (allowed_border 0) are positive at IoU >= 0.7 with a box,
  negative below 0.3, and each box's best anchors (IoU >= 0.3) positive too; 64 anchors sampled
  per image, at most half positive; sigmoid cross-entropy and smooth L1 (beta 1/9), both
  averaged over the sampled anchors.
- Box head: the RPN's proposals plus the true boxes; positive at IoU >= 0.5, else negative;
  128 sampled, at most 25 % positive (`max_positives` slots, negatives fill the rest);
  softmax cross-entropy over K + 1 classes and smooth L1 (beta 1) on the true class's deltas
  (stds 0.1, 0.1, 0.2, 0.2), averaged over the sampled RoIs.
- Mask head: the positives' 28 x 28 logits of their true class against the true mask resampled
  into the RoI (RoIAlign of the mask, >= 0.5); per-pixel sigmoid cross-entropy.
- Tracking head: each positive's embedding against the reference frame's true boxes'
  embeddings (`heads.match_logits`: "new" at logit 0); target = the reference index + 1 of the
  same instance, 0 if the instance is not in the reference frame; cross-entropy over positives.
"""
import dataclasses

import jax
import jax.numpy as jnp

from feelvos_jax.vis import boxes as box_ops
from feelvos_jax.vis import roi_align


@dataclasses.dataclass(frozen=True)
class TargetConfig:
  """Sampling and assignment knobs (the authors' values as defaults)."""
  rpn_positive_iou: float = 0.7
  rpn_negative_iou: float = 0.3
  rpn_min_positive_iou: float = 0.3
  rpn_samples: int = 64
  rpn_positive_fraction: float = 0.5
  rcnn_positive_iou: float = 0.5
  rcnn_samples: int = 128
  rcnn_positive_fraction: float = 0.25
  mask_size: int = 28

  @property
  def max_positives(self) -> int:
    """RoI slots for positives (mask and tracking heads run on these)."""
    return int(self.rcnn_samples * self.rcnn_positive_fraction)


def smooth_l1(difference: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth L1: 0.5 x^2 / beta below beta, |x| - 0.5 beta above."""
  absolute = jnp.abs(difference)
  return jnp.where(absolute < beta, 0.5 * absolute ** 2 / beta, absolute - 0.5 * beta)


def _rank(rng: jax.Array, selectable: jax.Array) -> jax.Array:
  """[N] int32: a uniformly random order of the `selectable` entries (0, 1, ...), the others
  after them."""
  keys = jax.random.uniform(rng, selectable.shape) + jnp.where(selectable, 0.0, 2.0)
  return jnp.argsort(jnp.argsort(keys)).astype(jnp.int32)


def sample(rng: jax.Array, positive: jax.Array, negative: jax.Array, num_samples: int,
           positive_fraction: float) -> tuple[jax.Array, jax.Array]:
  """mmdetection's RandomSampler: at most num_samples x positive_fraction random positives,
  negatives filling up to num_samples. Returns (positive_rank, negative_rank) [N] int32, the
  chosen ones being those with rank < their count (see `chosen`)."""
  positive_rng, negative_rng = jax.random.split(rng)
  positive_rank = _rank(positive_rng, positive)
  negative_rank = _rank(negative_rng, negative)
  num_positive = jnp.minimum(positive.sum(), int(num_samples * positive_fraction))
  num_negative = jnp.minimum(negative.sum(), num_samples - num_positive)
  return (jnp.where(positive & (positive_rank < num_positive), positive_rank, -1),
          jnp.where(negative & (negative_rank < num_negative), negative_rank, -1))


def _slots(rank: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """(indices [count], valid [count]) of the entries of rank 0..count-1 (rank -1: not chosen)."""
  order = jnp.argsort(jnp.where(rank >= 0, rank, rank.shape[0] + 1))[:count]
  return order, rank[order] >= 0


def _assign(ious: jax.Array, positive_iou: float, negative_iou: float,
            min_positive_iou: float, candidate_valid: jax.Array):
  """MaxIoUAssigner: (positive [N], negative [N], assigned box [N]) from ious [N, G] (-1 for
  padded boxes)."""
  ious = jnp.where(candidate_valid[:, None], ious, -1.0)
  best_iou = ious.max(axis=1)
  assigned = ious.argmax(axis=1)
  positive = best_iou >= positive_iou
  negative = (best_iou >= 0.0) & (best_iou < negative_iou)
  box_best = ious.max(axis=0)  # [G]
  is_box_best = (ious == box_best[None, :]) & (box_best[None, :] >= min_positive_iou)
  is_box_best &= candidate_valid[:, None]
  forced = is_box_best.any(axis=1)
  assigned = jnp.where(forced, jnp.argmax(is_box_best, axis=1), assigned)
  positive |= forced
  return positive, negative & ~positive, assigned


def rpn_loss(rng: jax.Array, objectness: jax.Array, deltas: jax.Array, anchor_boxes: jax.Array,
             gt_boxes: jax.Array, gt_valid: jax.Array, image_size: jax.Array,
             config: TargetConfig) -> dict[str, jax.Array]:
  """One image's RPN losses: objectness [N], deltas [N, 4] over all anchors [N, 4] of all
  levels; true boxes [G, 4] with gt_valid [G]; image_size [2] (height, width)."""
  height, width = image_size[0], image_size[1]
  inside = ((anchor_boxes[:, 0] >= 0) & (anchor_boxes[:, 1] >= 0)
            & (anchor_boxes[:, 2] <= width) & (anchor_boxes[:, 3] <= height))
  ious = jnp.where(gt_valid[None, :], box_ops.pairwise_iou(anchor_boxes, gt_boxes), -1.0)
  positive, negative, assigned = _assign(ious, config.rpn_positive_iou, config.rpn_negative_iou,
                                         config.rpn_min_positive_iou, inside)
  positive_rank, negative_rank = sample(rng, positive, negative, config.rpn_samples,
                                        config.rpn_positive_fraction)
  chosen_positive, chosen_negative = positive_rank >= 0, negative_rank >= 0
  num_sampled = jnp.maximum((chosen_positive | chosen_negative).sum(), 1)
  labels = chosen_positive.astype(jnp.float32)
  classification = jnp.where(chosen_positive | chosen_negative,
                             _sigmoid_cross_entropy(objectness, labels), 0.0).sum() / num_sampled
  targets = box_ops.encode(anchor_boxes, gt_boxes[assigned], box_ops.RPN_STDS)
  regression = jnp.where(chosen_positive[:, None], smooth_l1(deltas - targets, 1.0 / 9.0),
                         0.0).sum() / num_sampled
  return {"rpn_classification": classification, "rpn_regression": regression}


def _sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@dataclasses.dataclass(frozen=True)
class RoiSamples:
  """The RoIs of one image sampled for the heads: positives first (P = max_positives slots),
  then negatives (rcnn_samples slots).

  boxes [P + S, 4], valid [P + S], labels [P + S] (0 for negatives), assigned [P] true box of
  each positive slot, target deltas [P, 4].
  """
  boxes: jax.Array
  valid: jax.Array
  labels: jax.Array
  assigned: jax.Array
  target_deltas: jax.Array


def sample_rois(rng: jax.Array, proposal_boxes: jax.Array, proposal_valid: jax.Array,
                gt_boxes: jax.Array, gt_labels: jax.Array, gt_valid: jax.Array,
                config: TargetConfig) -> RoiSamples:
  """Proposals [P, 4] plus the true boxes [G, 4] (labels [G] in 1..K) assigned and sampled."""
  candidates = jnp.concatenate([proposal_boxes, gt_boxes])
  candidate_valid = jnp.concatenate([proposal_valid, gt_valid])
  ious = jnp.where(gt_valid[None, :], box_ops.pairwise_iou(candidates, gt_boxes), -1.0)
  positive, negative, assigned = _assign(ious, config.rcnn_positive_iou,
                                         config.rcnn_positive_iou, config.rcnn_positive_iou,
                                         candidate_valid)
  positive_rank, negative_rank = sample(rng, positive, negative, config.rcnn_samples,
                                        config.rcnn_positive_fraction)
  positive_index, positive_valid = _slots(positive_rank, config.max_positives)
  negative_index, negative_valid = _slots(negative_rank, config.rcnn_samples)
  positive_boxes = candidates[positive_index]
  positive_assigned = assigned[positive_index]
  targets = box_ops.encode(positive_boxes, gt_boxes[positive_assigned], box_ops.RCNN_STDS)
  return RoiSamples(
      boxes=jnp.concatenate([positive_boxes, candidates[negative_index]]),
      valid=jnp.concatenate([positive_valid, negative_valid]),
      labels=jnp.concatenate([jnp.where(positive_valid, gt_labels[positive_assigned], 0),
                              jnp.zeros((config.rcnn_samples,), jnp.int32)]),
      assigned=positive_assigned,
      target_deltas=targets)


def box_loss(class_logits: jax.Array, deltas: jax.Array,
             samples: RoiSamples) -> dict[str, jax.Array]:
  """Softmax cross-entropy over the sampled RoIs and smooth L1 (beta 1) of the positives'
  true-class deltas, both over the number of sampled RoIs. class_logits [R, K + 1], deltas
  [R, K + 1, 4], R = P + S."""
  num_positive_slots = samples.target_deltas.shape[0]
  num_sampled = jnp.maximum(samples.valid.sum(), 1)
  log_probabilities = jax.nn.log_softmax(class_logits)
  picked = jnp.take_along_axis(log_probabilities, samples.labels[:, None], axis=1)[:, 0]
  classification = -jnp.where(samples.valid, picked, 0.0).sum() / num_sampled
  positive_deltas = jnp.take_along_axis(
      deltas[:num_positive_slots], samples.labels[:num_positive_slots, None, None], axis=1)[:, 0]
  regression = jnp.where(samples.valid[:num_positive_slots, None],
                         smooth_l1(positive_deltas - samples.target_deltas, 1.0),
                         0.0).sum() / num_sampled
  accuracy = jnp.where(samples.valid, class_logits.argmax(-1) == samples.labels, False).sum()
  return {"box_classification": classification, "box_regression": regression,
          "box_accuracy": accuracy / num_sampled}


def mask_targets(gt_masks: jax.Array, boxes: jax.Array, assigned: jax.Array,
                 mask_size: int) -> jax.Array:
  """[P, M, M] float 0/1: each positive's true mask (gt_masks [H, W, G], channel
  assigned [P]) resampled into its box [P, 4] by RoIAlign and thresholded at 0.5."""
  resampled = roi_align.roi_align(gt_masks.astype(jnp.float32), boxes, 1.0,
                                  (mask_size, mask_size), sampling_ratio=2)  # [P, M, M, G]
  picked = jnp.take_along_axis(resampled, assigned[:, None, None, None], axis=3)[..., 0]
  return (picked >= 0.5).astype(jnp.float32)


def mask_loss(mask_logits: jax.Array, targets: jax.Array, labels: jax.Array,
              valid: jax.Array) -> jax.Array:
  """Mean per-pixel sigmoid cross-entropy of the positives' true-class masks: mask_logits
  [P, M, M, K + 1], targets [P, M, M], labels [P], valid [P]."""
  logits = jnp.take_along_axis(mask_logits, labels[:, None, None, None], axis=3)[..., 0]
  per_roi = _sigmoid_cross_entropy(logits, targets).mean(axis=(1, 2))
  return jnp.where(valid, per_roi, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def track_loss(match_logits: jax.Array, targets: jax.Array,
               valid: jax.Array) -> dict[str, jax.Array]:
  """Cross-entropy of the positives' matching logits [P, 1 + G] against targets [P] (0: new,
  n: the reference frame's instance n), and the matching accuracy."""
  log_probabilities = jax.nn.log_softmax(match_logits, axis=-1)
  picked = jnp.take_along_axis(log_probabilities, targets[:, None], axis=1)[:, 0]
  count = jnp.maximum(valid.sum(), 1)
  accuracy = jnp.where(valid, match_logits.argmax(-1) == targets, False).sum() / count
  return {"track": -jnp.where(valid, picked, 0.0).sum() / count, "track_accuracy": accuracy}
