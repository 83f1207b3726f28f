"""Upsampling of stride-4 logits to the label grid, shared by the loss and by inference."""
from typing import Tuple

import jax
from jax import lax
import jax.numpy as jnp

from feelvos_jax import FEATURE_STRIDE


def _upsample_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  """Linear FEATURE_STRIDE-times upsampling of `x` along `axis` to `size` entries: entry y
  reads coordinate y / FEATURE_STRIDE, i.e. x[i] + f (x[i + 1] - x[i]) with i = y // stride,
  f = (y % stride) / stride, and x[i + 1] = x[i] past the last entry (the edge holds)."""
  n = x.shape[axis]
  following = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis),
                               lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
  step = following - x
  phases = jnp.stack([x + (r / FEATURE_STRIDE) * step for r in range(FEATURE_STRIDE)],
                     axis=axis + 1)
  shape = x.shape[:axis] + (n * FEATURE_STRIDE,) + x.shape[axis + 1:]
  return lax.slice_in_dim(phases.reshape(shape), 0, size, axis=axis)


def upsample_logits(logits: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Bilinear upsampling of stride-4 logits [B, h, w, K] to the label grid [B, H, W, K].

  Logit (i, j) sits on pixel (4i, 4j), the pixel that `labels[::4, ::4]` samples, so output pixel
  (y, x) reads logit coordinate (y / 4, x / 4); beyond the last logit row/column the edge value
  holds (also on the last rows of a grid of exactly 4h rows). Computed as two 2-tap linear
  interpolations, rows then columns (pixel (4i, 4j) is logit (i, j) exactly). Padded slots (-inf
  everywhere) stay -inf; the interpolation never multiplies an infinity. H <= 4h, W <= 4w.
  """
  height, width = size
  if not (0 < height <= FEATURE_STRIDE * logits.shape[1]
          and 0 < width <= FEATURE_STRIDE * logits.shape[2]):
    raise ValueError(f"upsample_logits: size {tuple(size)} must be within "
                     f"{FEATURE_STRIDE} x the logits' {logits.shape[1:3]}")
  finite = jnp.isfinite(logits)
  padded_slot = jnp.all(~finite, axis=(1, 2), keepdims=True)
  resized = _upsample_axis(_upsample_axis(jnp.where(finite, logits, 0.0), 1, height), 2, width)
  return jnp.where(padded_slot, -jnp.inf, resized)
