"""DeepLabv3+ ASPP and decoder: backbone outputs -> stride-4 features for FEELVOS.

ASPP (DeepLab `extract_features`, variable scopes at the top level of its checkpoints):
  image_pooling  global average pool -> 1x1 conv + BN + ReLU -> broadcast back
  aspp0          1x1 conv + BN + ReLU
  aspp1..aspp3   3x3 separable convs (depthwise + BN + ReLU, pointwise + BN + ReLU) at the
                 atrous rates 6/12/18 (output stride 16) or 12/24/36 (output stride 8)
  concat_projection  1x1 conv + BN + ReLU over the concatenation in that order
Decoder (`refine_by_decoder`, scope `decoder`):
  feature_projection0  1x1 conv to 48 + BN + ReLU on the stride-4 low-level features
  concat[ASPP output upsampled bilinearly (corners aligned) to stride 4, projected features]
  decoder_conv0, decoder_conv1  3x3 separable convs + BN + ReLU to `channels`
All widths are `channels` (config.model.decoder_channels, 256 in the paper) except the 48.

Differences from DeepLab: image pooling always averages the whole feature map (DeepLab's
training pools a crop-sized window, the same thing when the crop is the whole input), and the
dropout (keep 0.9) after concat_projection is left out. Batch norm as DeepLab's head: decay
0.9997, epsilon 1e-5 (the decay is taken from the backbone, see `feelvos.py`).
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from feelvos_jax.models.layers import ConvBN, SeparableConvBN, resize_bilinear_align_corners

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
"""Atrous rates of the three separable ASPP branches per output stride."""

LOW_LEVEL_PROJECTION_CHANNELS = 48
"""Width of the decoder's 1x1 projection of the low-level features (DeepLab: 48)."""


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: [B, h, w, C] -> [B, h, w, channels]."""
  channels: int = 256
  output_stride: int = 16
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.output_stride not in ASPP_RATES:
      raise ValueError(f"config.model.output_stride must be one of {sorted(ASPP_RATES)}, "
                       f"got {self.output_stride}")
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = ConvBN(self.channels, 1, name="image_pooling", **norm)(pooled, train)
    branches = [jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)),
                ConvBN(self.channels, 1, name="aspp0", **norm)(x, train)]
    for index, rate in enumerate(ASPP_RATES[self.output_stride], 1):
      branches.append(SeparableConvBN(self.channels, 3, rate=rate, name=f"aspp{index}",
                                      **norm)(x, train))
    x = jnp.concatenate(branches, axis=-1)
    return ConvBN(self.channels, 1, name="concat_projection", **norm)(x, train)


class Decoder(nn.Module):
  """DeepLabv3+ decoder: (ASPP output, low-level features) -> [B, h4, w4, channels]."""
  channels: int = 256
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, high_level: jax.Array, low_level: jax.Array, train: bool) -> jax.Array:
    """high_level [B, h, w, C], low_level [B, h4, w4, C_low] -> [B, h4, w4, channels]."""
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    low_level = ConvBN(LOW_LEVEL_PROJECTION_CHANNELS, 1, name="feature_projection0",
                       **norm)(low_level, train)
    high_level = resize_bilinear_align_corners(high_level, low_level.shape[1:3])
    x = jnp.concatenate([high_level, low_level.astype(high_level.dtype)], axis=-1)
    x = SeparableConvBN(self.channels, 3, name="decoder_conv0", **norm)(x, train)
    return SeparableConvBN(self.channels, 3, name="decoder_conv1", **norm)(x, train)


class DeepLabV3PlusHead(nn.Module):
  """ASPP on the top features, decoder with the low-level ones: stride-4 features."""
  channels: int = 256
  output_stride: int = 16
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, low_level: jax.Array, high_level: jax.Array, train: bool) -> jax.Array:
    """low_level [B, h4, w4, C_low], high_level [B, h, w, C] -> [B, h4, w4, channels]."""
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    x = ASPP(self.channels, self.output_stride, name="aspp", **norm)(high_level, train)
    return Decoder(self.channels, name="decoder", **norm)(x, low_level, train)
