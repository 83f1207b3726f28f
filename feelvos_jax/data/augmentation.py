"""Training augmentation: one random scale + crop + flip window, applied by separable resampling.

Images are resampled bilinearly (rounded back to uint8) and labels by nearest neighbour, both
with corners aligned as in DeepLab; positions past the rescaled frame are padding (PAD_PIXEL for
images, IGNORE_LABEL for labels). All randomness is stateless (tf.random.stateless_*), so a
sample is a pure function of its seed (see `input_pipeline`).
"""
import dataclasses

import tensorflow as tf

from feelvos_jax import IGNORE_LABEL

PAD_PIXEL = 128
"""Image padding value: the uint8 closest to the mean 127.5 (about 0 after x / 127.5 - 1)."""



@dataclasses.dataclass(frozen=True)
class CropWindow:
  """Where a crop lies in a rescaled frame; all fields are scalar int32 tensors except `flip`.

  The frame of H x W is rescaled to scaled_height x scaled_width (corners aligned: scaled pixel
  (a, b) samples source position (a (H-1)/(scaled_height-1), b (W-1)/(scaled_width-1))); the crop
  takes scaled rows top.. and columns left.., positions past the scaled frame are padding, and
  `flip` (bool) mirrors the crop horizontally.
  """
  scaled_height: tf.Tensor
  scaled_width: tf.Tensor
  top: tf.Tensor
  left: tf.Tensor
  flip: tf.Tensor


def sample_crop_window(key: tf.Tensor, height: tf.Tensor, width: tf.Tensor, *,
                       min_scale: float, max_scale: float, crop_size: tuple[int, int],
                       random_flip: bool) -> CropWindow:
  """A random scale in [min_scale, max_scale], crop position and flip (if random_flip) for a
  frame of height x width; key: [2] stateless seed."""
  scale_key, top_key, left_key, flip_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4))
  scale = tf.random.stateless_uniform([], scale_key, min_scale, max_scale)
  scaled_height = tf.maximum(tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32), 1)
  scaled_width = tf.maximum(tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32), 1)
  crop_height, crop_width = crop_size
  top = tf.random.stateless_uniform(
      [], top_key, 0, tf.maximum(scaled_height - crop_height, 0) + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform(
      [], left_key, 0, tf.maximum(scaled_width - crop_width, 0) + 1, dtype=tf.int32)
  flip = tf.logical_and(tf.constant(random_flip),
                        tf.random.stateless_uniform([], flip_key) < 0.5)
  return CropWindow(scaled_height, scaled_width, top, left, flip)


def _source_positions(start: tf.Tensor, size: int, scaled: tf.Tensor, source: tf.Tensor,
                      flip: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Source coordinates [size] float32 of crop positions start..start+size-1, and their validity."""
  positions = start + tf.range(size, dtype=tf.int32)
  positions = tf.where(flip, tf.reverse(positions, [0]), positions)
  factor = (tf.cast(source - 1, tf.float32) / tf.cast(tf.maximum(scaled - 1, 1), tf.float32))
  return tf.cast(positions, tf.float32) * factor, positions < scaled


def _bilinear_taps(coords: tf.Tensor, source: tf.Tensor):
  low = tf.clip_by_value(tf.cast(tf.floor(coords), tf.int32), 0, source - 1)
  high = tf.minimum(low + 1, source - 1)
  weight = tf.clip_by_value(coords - tf.cast(low, tf.float32), 0.0, 1.0)
  return low, high, weight


def augment_frame(image: tf.Tensor, labels: tf.Tensor, window: CropWindow,
                  crop_size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
  """Rescales, crops and flips one frame.

  Args:
    image: [H, W, 3] uint8.
    labels: [H, W] integer labels.
    window: where the crop lies (see `CropWindow`).
    crop_size: (crop_height, crop_width).

  Returns:
    image [crop_height, crop_width, 3] uint8 (bilinear, rounded; PAD_PIXEL outside the frame) and
    labels [crop_height, crop_width] int32 (nearest: source index floor(coordinate + 0.5);
    IGNORE_LABEL outside the frame).
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  rows, row_valid = _source_positions(window.top, crop_size[0], window.scaled_height, height,
                                      tf.constant(False))
  cols, col_valid = _source_positions(window.left, crop_size[1], window.scaled_width, width,
                                      window.flip)
  valid = tf.logical_and(row_valid[:, None], col_valid[None, :])

  top, bottom, row_weight = _bilinear_taps(rows, height)
  left, right, col_weight = _bilinear_taps(cols, width)
  pixels = tf.cast(image, tf.float32)
  upper, lower = tf.gather(pixels, top, axis=0), tf.gather(pixels, bottom, axis=0)
  pixels = upper + (lower - upper) * row_weight[:, None, None]
  left_pixels, right_pixels = tf.gather(pixels, left, axis=1), tf.gather(pixels, right, axis=1)
  pixels = left_pixels + (right_pixels - left_pixels) * col_weight[None, :, None]
  pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
  image_out = tf.where(valid[..., None], pixels, tf.constant(PAD_PIXEL, tf.uint8))

  nearest_rows = tf.clip_by_value(tf.cast(tf.floor(rows + 0.5), tf.int32), 0, height - 1)
  nearest_cols = tf.clip_by_value(tf.cast(tf.floor(cols + 0.5), tf.int32), 0, width - 1)
  label_out = tf.gather(tf.gather(tf.cast(labels, tf.int32), nearest_rows, axis=0),
                        nearest_cols, axis=1)
  label_out = tf.where(valid, label_out, IGNORE_LABEL)
  return image_out, label_out


def random_affine(image: tf.Tensor, labels: tf.Tensor, key: tf.Tensor, *,
                  max_rotation: float = 0.26, max_shear: float = 0.15,
                  max_scale_change: float = 0.15,
                  max_shift: float = 0.1) -> tuple[tf.Tensor, tf.Tensor]:
  """A random affine warp of one frame about its centre (STM's static-image pre-training).

  Args:
    image: [H, W, 3] uint8.
    labels: [H, W] integer labels.
    key: [2] stateless seed.
    max_rotation: rotation angle uniform in [-max_rotation, max_rotation] radians.
    max_shear: horizontal shear factor uniform in [-max_shear, max_shear].
    max_scale_change: scale uniform in [1 - c, 1 + c].
    max_shift: translation uniform in [-max_shift, max_shift] of each side.

  Returns:
    image [H, W, 3] uint8 (bilinear; PAD_PIXEL where the warp leaves the frame) and labels
    [H, W] int32 (nearest; IGNORE_LABEL there).
  """
  angle, shear, scale, shift_y, shift_x = tf.unstack(tf.random.stateless_uniform(
      [5], key, -1.0, 1.0))
  angle, shear = angle * max_rotation, shear * max_shear
  scale = 1.0 + scale * max_scale_change
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
  # Output (x, y) reads input A (x - c) + c + t, A = rotation @ shear / scale.
  cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
  a00, a01 = cos, cos * shear - sin
  a10, a11 = sin, sin * shear + cos
  shift_x, shift_y = shift_x * max_shift * width, shift_y * max_shift * height
  offset_x = centre_x + shift_x - a00 * centre_x - a01 * centre_y
  offset_y = centre_y + shift_y - a10 * centre_x - a11 * centre_y
  transform = tf.stack([a00, a01, offset_x, a10, a11, offset_y, 0.0, 0.0])[None]
  size = tf.shape(image)[:2]

  def warp(x, interpolation, fill):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform, output_shape=size, fill_value=fill,
        interpolation=interpolation, fill_mode="CONSTANT")[0]

  pixels = warp(tf.cast(image, tf.float32), "BILINEAR", float(PAD_PIXEL))
  image_out = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
  label_out = warp(tf.cast(labels, tf.float32)[..., None], "NEAREST", float(IGNORE_LABEL))
  return image_out, tf.cast(label_out[..., 0], tf.int32)
