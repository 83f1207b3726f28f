"""Fixed-size, jit-friendly non-maximum suppression.

Greedy NMS as torchvision's `nms`: visit boxes by decreasing score, keep a box unless it
overlaps an already kept box by IoU > `iou_threshold`. Here the IoU matrix of all N candidates
is computed once ([N, N], so N of a few thousand at most) and the greedy pass is a
`lax.fori_loop` over the sorted boxes; the output has a static size `max_outputs` (indices
padded with -1), so the whole detector jits with static shapes.
"""
import jax
import jax.numpy as jnp

from feelvos_jax.vis import boxes as box_ops


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_outputs: int,
        valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS with a static output size.

  Args:
    boxes: [N, 4] (x1, y1, x2, y2).
    scores: [N]; ties keep the lower index first.
    iou_threshold: a box overlapping a kept, higher-scored box by more is suppressed.
    max_outputs: K, the output size.
    valid: [N] bool, candidates taking part (default all); invalid ones are never kept.
  Returns:
    (indices [K] int32 into the N boxes, by decreasing score, -1 after the last kept box;
     kept [K] bool, indices >= 0).
  """
  num_boxes = boxes.shape[0]
  if valid is None:
    valid = jnp.ones((num_boxes,), bool)
  order = jnp.argsort(-scores, stable=True)
  sorted_boxes = boxes[order]
  sorted_valid = valid[order]
  overlaps = box_ops.pairwise_iou(sorted_boxes, sorted_boxes) > iou_threshold

  def visit(i, keep):
    suppressed = jnp.any(keep & overlaps[i] & (jnp.arange(num_boxes) < i))
    return keep.at[i].set(sorted_valid[i] & ~suppressed)

  keep = jax.lax.fori_loop(0, num_boxes, visit, jnp.zeros((num_boxes,), bool))
  # Kept positions first, in score order: sort by (not kept, position).
  positions = jnp.argsort(jnp.where(keep, 0, num_boxes) + jnp.arange(num_boxes))
  kept = keep[positions]
  indices = jnp.where(kept, order[positions], -1).astype(jnp.int32)
  if max_outputs > num_boxes:
    padding = max_outputs - num_boxes
    indices = jnp.concatenate([indices, jnp.full((padding,), -1, jnp.int32)])
    kept = jnp.concatenate([kept, jnp.zeros((padding,), bool)])
  return indices[:max_outputs], kept[:max_outputs]
