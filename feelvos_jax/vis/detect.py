"""From head outputs to boxes, one image at a time (vmap over a batch), all with static shapes.

- `proposals`: the RPN's boxes as MaskTrack R-CNN's `test_cfg.rpn` (used in training too): per
  level the `pre_nms` best anchors, decoded and clipped, NMS at IoU 0.7 keeping `post_nms`;
  then the `max_proposals` best over all levels.
- `detections`: the box head's per-class scores and boxes as its `test_cfg.rcnn`: softmax,
  class-specific boxes, scores under 0.05 dropped, NMS at IoU 0.5 per class, the 10 best
  detections kept.
- `paste_masks`: 28 x 28 mask probabilities pasted into their boxes on a full-size canvas.
"""
import jax
import jax.numpy as jnp

from feelvos_jax.vis import boxes as box_ops
from feelvos_jax.vis import nms as nms_ops


def proposals(rpn_outputs: list[tuple[jax.Array, jax.Array]], level_anchors: list[jax.Array],
              image_size: jax.Array, pre_nms: int = 200, post_nms: int = 200,
              max_proposals: int = 200, nms_threshold: float = 0.7,
              min_size: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RPN proposals of one image.

  Args:
    rpn_outputs: per level (objectness logits [H_l, W_l, A], deltas [H_l, W_l, A, 4]).
    level_anchors: per level [H_l W_l A, 4] (`anchors.pyramid_anchors`).
    image_size: [2] (height, width) of the image inside its padding; boxes are clipped to it.
  Returns:
    (boxes [P, 4], objectness probabilities [P], valid [P] bool), P = max_proposals, by
    decreasing score.
  """
  all_boxes, all_scores, all_valid = [], [], []
  height, width = image_size[0].astype(jnp.float32), image_size[1].astype(jnp.float32)
  for (objectness, deltas), anchor_boxes in zip(rpn_outputs, level_anchors):
    scores = jax.nn.sigmoid(objectness.reshape(-1))
    count = min(pre_nms, scores.shape[0])
    top_scores, top = jax.lax.top_k(scores, count)
    decoded = box_ops.decode(anchor_boxes[top], deltas.reshape(-1, 4)[top], box_ops.RPN_STDS)
    decoded = box_ops.clip_boxes(decoded, height, width)
    valid = ((decoded[:, 2] - decoded[:, 0]) > min_size) & (
        (decoded[:, 3] - decoded[:, 1]) > min_size)
    keep, kept = nms_ops.nms(decoded, top_scores, nms_threshold, min(post_nms, count), valid)
    all_boxes.append(decoded[jnp.maximum(keep, 0)])
    all_scores.append(jnp.where(kept, top_scores[jnp.maximum(keep, 0)], -1.0))
    all_valid.append(kept)
  boxes, scores, valid = (jnp.concatenate(x) for x in (all_boxes, all_scores, all_valid))
  count = min(max_proposals, scores.shape[0])
  best_scores, best = jax.lax.top_k(jnp.where(valid, scores, -1.0), count)
  boxes, valid = boxes[best], valid[best]
  if count < max_proposals:
    padding = max_proposals - count
    boxes = jnp.concatenate([boxes, jnp.zeros((padding, 4), boxes.dtype)])
    best_scores = jnp.concatenate([best_scores, jnp.full((padding,), -1.0)])
    valid = jnp.concatenate([valid, jnp.zeros((padding,), bool)])
  return boxes, best_scores, valid


def detections(class_logits: jax.Array, deltas: jax.Array, proposal_boxes: jax.Array,
               proposal_valid: jax.Array, image_size: jax.Array, score_threshold: float = 0.05,
               nms_threshold: float = 0.5, max_detections: int = 10,
               max_candidates: int = 1000) -> dict[str, jax.Array]:
  """Final detections of one image.

  Args:
    class_logits: [P, K + 1]; deltas: [P, K + 1, 4] (box head outputs).
    proposal_boxes: [P, 4]; proposal_valid: [P] bool.
    image_size: [2] (height, width) to clip to.
    max_candidates: (proposal, class) pairs above the threshold that enter the NMS, best first.
  Returns:
    {"boxes": [D, 4], "scores": [D], "labels": [D] int32 in 1..K, "valid": [D] bool}, by
    decreasing score, D = max_detections (class-wise NMS: boxes of different classes never
    suppress each other).
  """
  num_classes = class_logits.shape[1] - 1
  probabilities = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # [P, K]
  height, width = image_size[0].astype(jnp.float32), image_size[1].astype(jnp.float32)
  boxes = box_ops.decode(proposal_boxes[:, None, :], deltas[:, 1:], box_ops.RCNN_STDS)
  boxes = box_ops.clip_boxes(boxes, height, width).reshape(-1, 4)
  labels = jnp.tile(jnp.arange(1, num_classes + 1, dtype=jnp.int32), proposal_boxes.shape[0])
  scores = probabilities.reshape(-1)
  valid = (scores > score_threshold) & jnp.repeat(proposal_valid, num_classes)
  count = min(max_candidates, scores.shape[0])
  top_scores, top = jax.lax.top_k(jnp.where(valid, scores, -1.0), count)
  boxes, labels, valid = boxes[top], labels[top], valid[top]
  offset = (jnp.maximum(height, width) + 1.0) * labels.astype(jnp.float32)
  keep, kept = nms_ops.nms(boxes + offset[:, None], top_scores, nms_threshold, max_detections,
                           valid)
  index = jnp.maximum(keep, 0)
  return {"boxes": jnp.where(kept[:, None], boxes[index], 0.0),
          "scores": jnp.where(kept, top_scores[index], 0.0),
          "labels": jnp.where(kept, labels[index], 0), "valid": kept}


def _paste_weights(start: jax.Array, end: jax.Array, mask_size: int, size: int) -> jax.Array:
  """[D, size, mask_size] bilinear weights of each output pixel's centre on a mask spanning
  [start, end] ([D] each), zero outside the box."""
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  extent = jnp.maximum(end - start, 1e-3)[:, None]
  position = (centres[None, :] - start[:, None]) / extent * mask_size - 0.5  # [D, size]
  inside = (position >= -0.5) & (position <= mask_size - 0.5)
  position = jnp.clip(position, 0.0, mask_size - 1.0)
  taps = jnp.arange(mask_size, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(position[..., None] - taps))
  return weights * inside[..., None]


def paste_masks(masks: jax.Array, boxes: jax.Array, height: int, width: int) -> jax.Array:
  """Masks [D, M, M] (probabilities) resized into boxes [D, 4] on an [H, W] canvas: [D, H, W],
  0 outside each box (bilinear inside it)."""
  rows = _paste_weights(boxes[:, 1], boxes[:, 3], masks.shape[1], height)  # [D, H, M]
  cols = _paste_weights(boxes[:, 0], boxes[:, 2], masks.shape[2], width)  # [D, W, M]
  return jnp.einsum("dhm,dmn,dwn->dhw", rows, masks, cols)
