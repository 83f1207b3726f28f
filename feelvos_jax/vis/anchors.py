"""FPN anchors: at every level, `len(scales) x len(ratios)` boxes centred on each feature cell.

MaskTrack R-CNN (mmdetection's RPNHead on FPN): strides (4, 8, 16, 32, 64) for P2..P6, one
scale 8 (an anchor of side 8 x stride at ratio 1) and ratios (0.5, 1, 2) (ratio = height /
width, area kept). Cell (i, j) of a level of stride s is centred at ((j + 0.5) s, (i + 0.5) s).
"""
import jax.numpy as jnp
import numpy as np

STRIDES = (4, 8, 16, 32, 64)
"""Strides of P2..P6 (MaskTrack R-CNN's `anchor_strides`)."""

SCALES = (8.0,)
"""Anchor sides in units of the level's stride (MaskTrack R-CNN's `anchor_scales`)."""

RATIOS = (0.5, 1.0, 2.0)
"""Anchor height / width ratios (MaskTrack R-CNN's `anchor_ratios`)."""


def cell_anchors(stride: int, scales=SCALES, ratios=RATIOS) -> np.ndarray:
  """[A, 4] anchors (x1, y1, x2, y2) centred at (0, 0), ratio-major, A = len(ratios) x
  len(scales)."""
  anchors = []
  for ratio in ratios:
    for scale in scales:
      side = scale * stride
      width, height = side / np.sqrt(ratio), side * np.sqrt(ratio)
      anchors.append([-width / 2, -height / 2, width / 2, height / 2])
  return np.asarray(anchors, np.float32)


def level_anchors(height: int, width: int, stride: int, scales=SCALES,
                  ratios=RATIOS) -> jnp.ndarray:
  """[height * width * A, 4]: the anchors of a level of `height` x `width` cells, ordered
  (row, column, anchor), the order of a head's [H, W, A] outputs flattened."""
  shifts_x = (np.arange(width, dtype=np.float32) + 0.5) * stride
  shifts_y = (np.arange(height, dtype=np.float32) + 0.5) * stride
  grid_y, grid_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
  shifts = np.stack([grid_x, grid_y, grid_x, grid_y], -1)  # [H, W, 4]
  anchors = shifts[:, :, None, :] + cell_anchors(stride, scales, ratios)[None, None]
  return jnp.asarray(anchors.reshape(-1, 4))


def pyramid_anchors(level_shapes, strides=STRIDES, scales=SCALES,
                    ratios=RATIOS) -> list[jnp.ndarray]:
  """Per level (shapes [(H_l, W_l)], one stride each) the `level_anchors`, [H_l W_l A, 4]."""
  if len(level_shapes) != len(strides):
    raise ValueError(f"pyramid_anchors: {len(level_shapes)} levels but {len(strides)} strides")
  return [level_anchors(h, w, s, scales, ratios) for (h, w), s in zip(level_shapes, strides)]
