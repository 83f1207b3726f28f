"""Boxes: pairwise IoU, clipping and the R-CNN box coder (deltas relative to a reference box).

Boxes are [..., 4] float32 (x1, y1, x2, y2) in continuous pixel coordinates of the (resized)
image: a box covering pixels 0..w-1 is (0, 0, w, h), width x2 - x1 (no "+1" convention).
The coder is Faster R-CNN's: for a reference box (anchor or proposal) of centre (px, py) and
size (pw, ph) and a target of centre (gx, gy), size (gw, gh):
  dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph),
each divided by its `stds` (MaskTrack R-CNN: 1 for the RPN, (0.1, 0.1, 0.2, 0.2) for the box
head; means 0). Decoding clips dw, dh at log(1000 / 16) as mmdetection and Detectron do.
"""
import math

import jax
import jax.numpy as jnp

BBOX_CLIP = math.log(1000.0 / 16.0)
"""Largest decoded log-scale change (a box grows at most 62.5x its reference)."""

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
"""Delta scales of the RPN (MaskTrack R-CNN's `target_stds` of `rpn_head`)."""

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
"""Delta scales of the box head (MaskTrack R-CNN's `target_stds` of `bbox_head`)."""


def box_area(boxes: jax.Array) -> jax.Array:
  """[..., 4] -> [...]: width x height, 0 for degenerate boxes."""
  width = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  height = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return width * height


def pairwise_iou(boxes_a: jax.Array, boxes_b: jax.Array) -> jax.Array:
  """IoU of every pair: [N, 4], [M, 4] -> [N, M] in [0, 1] (0 where both areas are 0)."""
  top_left = jnp.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
  bottom_right = jnp.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
  size = jnp.maximum(bottom_right - top_left, 0.0)
  intersection = size[..., 0] * size[..., 1]
  union = box_area(boxes_a)[:, None] + box_area(boxes_b)[None, :] - intersection
  return jnp.where(union > 0, intersection / jnp.maximum(union, 1e-12), 0.0)


def clip_boxes(boxes: jax.Array, height: float, width: float) -> jax.Array:
  """[..., 4] boxes clipped to the image [0, width] x [0, height]."""
  limits = jnp.asarray([width, height, width, height], boxes.dtype)
  return jnp.clip(boxes, 0.0, limits)


def _centre_size(boxes: jax.Array) -> tuple[jax.Array, ...]:
  width = boxes[..., 2] - boxes[..., 0]
  height = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


def encode(reference: jax.Array, target: jax.Array,
           stds: tuple[float, ...] = RPN_STDS) -> jax.Array:
  """Deltas [..., 4] (dx, dy, dw, dh) / stds that turn `reference` [..., 4] into `target`
  [..., 4] (both broadcast). Reference widths and heights must be positive; degenerate
  targets are floored at 1e-6 pixels so that the log stays finite."""
  px, py, pw, ph = _centre_size(reference)
  gx, gy, gw, gh = _centre_size(target)
  gw, gh = jnp.maximum(gw, 1e-6), jnp.maximum(gh, 1e-6)
  deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], -1)
  return deltas / jnp.asarray(stds, deltas.dtype)


def decode(reference: jax.Array, deltas: jax.Array,
           stds: tuple[float, ...] = RPN_STDS) -> jax.Array:
  """Boxes [..., 4] from `reference` [..., 4] and `deltas` [..., 4] (the inverse of `encode`,
  with dw, dh clipped at `BBOX_CLIP`)."""
  deltas = deltas * jnp.asarray(stds, deltas.dtype)
  px, py, pw, ph = _centre_size(reference)
  cx = px + deltas[..., 0] * pw
  cy = py + deltas[..., 1] * ph
  width = pw * jnp.exp(jnp.minimum(deltas[..., 2], BBOX_CLIP))
  height = ph * jnp.exp(jnp.minimum(deltas[..., 3], BBOX_CLIP))
  return jnp.stack([cx - 0.5 * width, cy - 0.5 * height, cx + 0.5 * width, cy + 0.5 * height],
                   -1)
