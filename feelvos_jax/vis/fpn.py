"""Feature pyramids: a ResNet (torchvision layout, `models/resnet.py`'s blocks) or a tiny CNN
giving C2..C5, and the FPN (Lin et al., 2017) turning them into P2..P6.

FPN as mmdetection's (MaskTrack R-CNN's neck): 1x1 laterals to `channels`, top-down nearest
upsampling x2 and sum, a 3x3 conv on each sum (P2..P5), and P6 = max pooling of P5 with
kernel 1 and stride 2. Inputs are padded to a multiple of 32 (`SIZE_DIVISOR`), so level l has
exactly H / 2^l x W / 2^l cells.

The ResNet's batch norm is frozen (running statistics, never updated), as mmdetection trains
detectors from an ImageNet/COCO checkpoint; the tiny CNN (tests, synthetic demo, from scratch)
uses group norm, so neither writes a `batch_stats` collection while training.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feelvos_jax.models import resnet
from feelvos_jax.models.layers import conv2d_same

SIZE_DIVISOR = 32
"""Images are padded to a multiple of this (the stride of C5; mmdetection's size_divisor)."""

PYRAMID_STRIDES = (4, 8, 16, 32, 64)
"""Strides of P2..P6."""


class PyramidResNet(nn.Module):
  """ResNet-50/101 with frozen batch norm: [B, H, W, 3] in [-1, 1] -> [C2, C3, C4, C5] at
  strides 4..32 (256, 512, 1024, 2048 channels); parameter names as `models/resnet.py`."""
  depth: int = 50
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    x = conv2d_same(64, 7, stride=2, dtype=self.dtype, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=self.dtype,
                     param_dtype=jnp.float32, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = []
    for layer, (num_blocks, width) in enumerate(
        zip(resnet.RESNET_DEPTHS[self.depth], resnet.LAYER_WIDTHS), 1):
      for block in range(num_blocks):
        x = resnet.Bottleneck(width, stride=2 if block == 0 and layer > 1 else 1,
                              downsample=block == 0, dtype=self.dtype,
                              name=f"layer{layer}_{block}")(x, False)
      outputs.append(x)
    return outputs


class TinyPyramid(nn.Module):
  """Five 3x3 conv + group norm + ReLU layers, the last four giving C2..C5 (strides 4..32)."""
  widths: tuple[int, ...] = (16, 32, 48, 64, 96)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outputs = []
    for index, width in enumerate(self.widths):
      x = conv2d_same(width, 3, stride=2, dtype=self.dtype, name=f"conv{index + 1}")(x)
      x = nn.relu(nn.GroupNorm(num_groups=8, dtype=self.dtype, name=f"norm{index + 1}")(x))
      if index >= 1:
        outputs.append(x)
    return outputs


class FPN(nn.Module):
  """[C2..C5] -> [P2..P6], each [B, H / s, W / s, channels] for s in `PYRAMID_STRIDES`."""
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: list[jax.Array]) -> list[jax.Array]:
    laterals = [nn.Conv(self.channels, (1, 1), dtype=self.dtype, name=f"lateral{i + 2}")(f)
                for i, f in enumerate(features)]
    for i in range(len(laterals) - 1, 0, -1):
      coarse = laterals[i]
      up = jnp.repeat(jnp.repeat(coarse, 2, axis=1), 2, axis=2)
      finer = laterals[i - 1]
      laterals[i - 1] = finer + up[:, :finer.shape[1], :finer.shape[2]]
    outputs = [nn.Conv(self.channels, (3, 3), padding=1, dtype=self.dtype,
                       name=f"output{i + 2}")(lateral) for i, lateral in enumerate(laterals)]
    outputs.append(outputs[-1][:, ::2, ::2])  # P6: max pool, kernel 1, stride 2.
    return outputs
