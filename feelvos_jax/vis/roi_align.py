"""RoIAlign (Mask R-CNN) in JAX: bilinear samples averaged per output bin, and FPN levels.

`roi_align` follows the "aligned" RoIAlign of Detectron2 / torchvision (`aligned=True`): a box
(x1, y1, x2, y2) in image pixels maps to feature coordinates x / stride - 0.5 (pixel centres
at integer positions), is split into out_h x out_w bins, and each bin averages
sampling_ratio^2 bilinear samples at the centres of a regular sub-grid. A sample more than one
cell outside the map contributes 0; one within a cell of the border is clamped to it (Caffe2's
rule, what every RoIAlign kernel does). MaskTrack R-CNN's mmdetection kernel is the older,
unaligned variant (no -0.5 shift, bins at least one cell wide); with FPN features trained from
scratch or fine-tuned the two are interchangeable, and aligned is the one today's detectors use.

`multilevel_roi_align` picks one FPN level per box as mmdetection's SingleRoIExtractor:
level = floor(log2(sqrt(w h) / 56 + 1e-6)) clipped to the levels given (P2 for boxes under
112 pixels, P3 under 224, P4 under 448, P5 above), and gathers from that level only.
"""
import jax
import jax.numpy as jnp

FINEST_SCALE = 56.0
"""Box side below which (doubled) a box reads the finest level (mmdetection's finest_scale)."""


def _axis_samples(start: jax.Array, length: jax.Array, out_size: int, sampling_ratio: int,
                  size: jax.Array):
  """Bilinear taps along one axis for boxes starting at `start` [R] of extent `length` [R]
  (feature units) on an axis of `size` cells ([R] or scalar): (low [R, P], high [R, P],
  weight of high [R, P], inside [R, P]) with P = out_size x sampling_ratio samples."""
  samples = out_size * sampling_ratio
  grid = (jnp.arange(samples, dtype=jnp.float32) + 0.5) / sampling_ratio  # in bins
  coord = start[:, None] + grid[None, :] * (length / out_size)[:, None]
  size = jnp.broadcast_to(jnp.asarray(size), start.shape)[:, None]
  inside = (coord >= -1.0) & (coord <= size)
  coord = jnp.maximum(coord, 0.0)
  low = jnp.minimum(jnp.floor(coord).astype(jnp.int32), size - 1)
  high = jnp.minimum(low + 1, size - 1)
  coord = jnp.where(low >= size - 1, low.astype(coord.dtype), coord)
  return low, high, coord - low, inside


def _bilinear_bins(flat_features: jax.Array, offset: jax.Array, width: jax.Array,
                   y_taps, x_taps, output_size: tuple[int, int],
                   sampling_ratio: int) -> jax.Array:
  """Samples of `flat_features` [N, C] (one or several maps flattened row-major, the box's map
  starting at row `offset` [R] with `width` [R] columns) averaged per bin: [R, oh, ow, C]."""
  y_low, y_high, y_frac, y_in = y_taps
  x_low, x_high, x_frac, x_in = x_taps

  def gather(rows, cols):  # [R, Py], [R, Px] -> [R, Py, Px, C]
    index = offset[:, None, None] + rows[:, :, None] * width[:, None, None] + cols[:, None, :]
    return flat_features[index]

  wy = y_frac[:, :, None, None]
  wx = x_frac[:, None, :, None]
  values = ((1 - wy) * (1 - wx) * gather(y_low, x_low) + (1 - wy) * wx * gather(y_low, x_high)
            + wy * (1 - wx) * gather(y_high, x_low) + wy * wx * gather(y_high, x_high))
  values = values * (y_in[:, :, None, None] & x_in[:, None, :, None]).astype(values.dtype)
  num_rois, channels = values.shape[0], values.shape[-1]
  out_h, out_w = output_size
  values = values.reshape(num_rois, out_h, sampling_ratio, out_w, sampling_ratio, channels)
  return values.mean(axis=(2, 4))


def _box_taps(boxes: jax.Array, scale: jax.Array, height, width,
              output_size: tuple[int, int], sampling_ratio: int):
  start = boxes * scale[:, None] - 0.5
  y_taps = _axis_samples(start[:, 1], start[:, 3] - start[:, 1], output_size[0],
                         sampling_ratio, height)
  x_taps = _axis_samples(start[:, 0], start[:, 2] - start[:, 0], output_size[1],
                         sampling_ratio, width)
  return y_taps, x_taps


def roi_align(features: jax.Array, boxes: jax.Array, stride: float,
              output_size: tuple[int, int] = (7, 7), sampling_ratio: int = 2) -> jax.Array:
  """Aligned RoIAlign on one feature map.

  Args:
    features: [H, W, C], cell (i, j) centred on image pixel ((j + 0.5) stride, (i + 0.5) stride).
    boxes: [R, 4] (x1, y1, x2, y2) in image pixels.
    stride: image pixels per feature cell.
    output_size: (out_h, out_w) bins.
    sampling_ratio: bilinear samples per bin along each axis.
  Returns:
    [R, out_h, out_w, C], in the features' dtype.
  """
  height, width, channels = features.shape
  num_rois = boxes.shape[0]
  scale = jnp.full((num_rois,), 1.0 / stride, jnp.float32)
  y_taps, x_taps = _box_taps(boxes.astype(jnp.float32), scale, height, width, output_size,
                             sampling_ratio)
  flat = features.reshape(height * width, channels)
  out = _bilinear_bins(flat, jnp.zeros((num_rois,), jnp.int32),
                       jnp.full((num_rois,), width, jnp.int32), y_taps, x_taps, output_size,
                       sampling_ratio)
  return out.astype(features.dtype)


def roi_levels(boxes: jax.Array, num_levels: int) -> jax.Array:
  """[R] int32 level index (0 = the finest map given) of each box [R, 4], mmdetection's rule."""
  side = jnp.sqrt(jnp.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0.0))
  level = jnp.floor(jnp.log2(side / FINEST_SCALE + 1e-6))
  return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)


def multilevel_roi_align(features: list[jax.Array], boxes: jax.Array, strides: tuple[int, ...],
                         output_size: tuple[int, int] = (7, 7),
                         sampling_ratio: int = 2) -> jax.Array:
  """RoIAlign of each box on its FPN level (`roi_levels`).

  Args:
    features: per level [H_l, W_l, C], finest first (P2..P5).
    boxes: [R, 4] in image pixels.
    strides: per level, e.g. (4, 8, 16, 32).
  Returns:
    [R, out_h, out_w, C]: for each box, `roi_align` on its level.
  """
  if len(features) != len(strides):
    raise ValueError(f"multilevel_roi_align: {len(features)} maps but {len(strides)} strides")
  channels = features[0].shape[-1]
  heights = jnp.asarray([f.shape[0] for f in features], jnp.int32)
  widths = jnp.asarray([f.shape[1] for f in features], jnp.int32)
  sizes = [f.shape[0] * f.shape[1] for f in features]
  offsets = jnp.asarray([sum(sizes[:i]) for i in range(len(sizes))], jnp.int32)
  flat = jnp.concatenate([f.reshape(-1, channels) for f in features])
  level = roi_levels(boxes, len(features))
  scale = 1.0 / jnp.asarray(strides, jnp.float32)[level]
  y_taps, x_taps = _box_taps(boxes.astype(jnp.float32), scale, heights[level], widths[level],
                             output_size, sampling_ratio)
  out = _bilinear_bins(flat, offsets[level], widths[level], y_taps, x_taps, output_size,
                       sampling_ratio)
  return out.astype(features[0].dtype)
