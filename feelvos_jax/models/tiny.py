"""A four-layer CNN backbone for tests and the synthetic demo (fast on a CPU, no weights).

Layout: four 3x3 conv + BN + ReLU layers of `widths` channels:
  conv1 stride 2 -> conv2 stride 2 (low-level features, stride 4) -> conv3 stride 2 (stride 8)
  -> conv4: stride 2 for output stride 16, or stride 1 at atrous rate 2 for output stride 8.
Not part of the paper; trained from scratch, hence batch norm with Flax's usual decay 0.99
instead of DeepLab's 0.9997.
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from feelvos_jax.models.layers import ConvBN


class TinyBackbone(nn.Module):
  """Frames [-1, 1] -> (low-level at stride 4, top at output_stride)."""
  output_stride: int = 16
  widths: tuple[int, int, int, int] = (16, 32, 64, 128)
  batch_norm_momentum: float = 0.99
  batch_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, 3] -> ([B, ceil(H/4), ceil(W/4), w2], [B, ceil(H/OS), ceil(W/OS), w4])."""
    if self.output_stride not in (8, 16):
      raise ValueError(f"tiny backbone output_stride must be 8 or 16, got {self.output_stride}")
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    x = ConvBN(self.widths[0], 3, stride=2, name="conv1", **norm)(x, train)
    low_level = ConvBN(self.widths[1], 3, stride=2, name="conv2", **norm)(x, train)
    x = ConvBN(self.widths[2], 3, stride=2, name="conv3", **norm)(low_level, train)
    stride, rate = (2, 1) if self.output_stride == 16 else (1, 2)
    x = ConvBN(self.widths[3], 3, stride=stride, rate=rate, name="conv4", **norm)(x, train)
    return low_level, x
