"""ResNet-50/101 (bottleneck, v1) as a DeepLab backbone, laid out like torchvision.

Layout (names as torchvision's `resnet50`/`resnet101` state dicts, '.' -> '_' between a layer
and its block index, so `layer1.0.downsample.0` is `layer1_0/downsample_0`):
  conv1 7x7/2 (64) -> bn1 -> ReLU -> 3x3/2 max pool
  layer1..layer4: 3, 4, 6|23, 3 bottlenecks of width 64, 128, 256, 512 (output 4x the width);
  bottleneck: conv1 1x1 -> bn1 -> ReLU -> conv2 3x3 (stride, dilation) -> bn2 -> ReLU ->
  conv3 1x1 -> bn3, plus a shortcut (identity or downsample_0 1x1 conv + downsample_1 BN),
  then ReLU.
The stride sits on the 3x3 conv (torchvision's "v1.5", what its weights were trained with;
the original v1 strides the first 1x1). Output stride 16 or 8 as torchvision's
`replace_stride_with_dilation` (DeepLab's atrous ResNet): layer4 (OS 16) or layer3 and layer4
(OS 8) trade their stride for dilation, the first block of a dilated layer keeping the previous
dilation. Max pooling pads with -inf like torchvision; convs pad as described in `layers.py`,
which equals torchvision's padding, so every stride-2 step maps n to ceil(n / 2).

Outputs: layer1 (256 channels, stride 4) as DeepLab's low-level features, and layer4
(2048 channels at the output stride). Batch norm: torchvision's momentum 0.1 (decay 0.9),
epsilon 1e-5.
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from feelvos_jax.models.layers import conv2d_same

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
"""Bottlenecks per layer."""

LAYER_WIDTHS = (64, 128, 256, 512)
"""Bottleneck widths of layer1..layer4; outputs are 4x."""


def layer_schedule(output_stride: int) -> list[tuple[int, int, int]]:
  """(stride, dilation of the first block, dilation of the other blocks) for layer1..4."""
  dilate = {16: (False, False, False, True), 8: (False, False, True, True)}
  if output_stride not in dilate:
    raise ValueError(f"ResNet output_stride must be 8 or 16, got {output_stride}")
  schedule, dilation = [], 1
  for layer, layer_dilates in enumerate(dilate[output_stride]):
    stride = 1 if layer == 0 else 2
    previous = dilation
    if layer_dilates:
      dilation *= stride
      stride = 1
    schedule.append((stride, previous, dilation))
  return schedule


class Bottleneck(nn.Module):
  """torchvision Bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (4x width) + shortcut."""
  width: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  batch_norm_momentum: float = 0.9
  batch_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  def _bn(self, name: str, train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                        epsilon=self.batch_norm_epsilon, dtype=self.dtype,
                        param_dtype=jnp.float32, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), 4 * width]."""
    out = conv2d_same(self.width, 1, dtype=self.dtype, name="conv1")(x)
    out = nn.relu(self._bn("bn1", train)(out))
    out = conv2d_same(self.width, 3, stride=self.stride, rate=self.dilation, dtype=self.dtype,
                      name="conv2")(out)
    out = nn.relu(self._bn("bn2", train)(out))
    out = conv2d_same(4 * self.width, 1, dtype=self.dtype, name="conv3")(out)
    out = self._bn("bn3", train)(out)
    if self.downsample:
      x = conv2d_same(4 * self.width, 1, stride=self.stride, dtype=self.dtype,
                      name="downsample_0")(x)
      x = self._bn("downsample_1", train)(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """Atrous ResNet-50/101: frames [-1, 1] -> (layer1 at stride 4, layer4 at output_stride)."""
  depth: int = 50
  output_stride: int = 16
  batch_norm_momentum: float = 0.9
  batch_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, 3] -> ([B, ceil(H/4), ceil(W/4), 256], [B, ceil(H/OS), ceil(W/OS), 2048])."""
    if self.depth not in RESNET_DEPTHS:
      raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {self.depth}")
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    x = conv2d_same(64, 7, stride=2, dtype=self.dtype, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                     epsilon=self.batch_norm_epsilon, dtype=self.dtype,
                     param_dtype=jnp.float32, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    low_level = None
    layers = zip(RESNET_DEPTHS[self.depth], LAYER_WIDTHS, layer_schedule(self.output_stride))
    for layer, (num_blocks, width, (stride, first_dilation, dilation)) in enumerate(layers, 1):
      for block in range(num_blocks):
        x = Bottleneck(width, stride=stride if block == 0 else 1,
                       dilation=first_dilation if block == 0 else dilation,
                       downsample=block == 0, name=f"layer{layer}_{block}", **norm)(x, train)
      if layer == 1:
        low_level = x
    return low_level, x
