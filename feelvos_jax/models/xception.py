"""Xception-65 as DeepLabv3+ uses it (the FEELVOS backbone).

Layout (DeepLab's `xception_65`, the one its COCO/VOC checkpoints hold):
  entry_flow/conv1_1   3x3 conv, 32, stride 2, BN, ReLU
  entry_flow/conv1_2   3x3 conv, 64, BN, ReLU
  entry_flow/block1    1 Xception module (128, 128, 128), conv shortcut, stride 2
  entry_flow/block2    1 module (256, 256, 256), conv shortcut, stride 2
  entry_flow/block3    1 module (728, 728, 728), conv shortcut, stride 2
  middle_flow/block1   16 modules (728, 728, 728), identity shortcut
  exit_flow/block1     1 module (728, 1024, 1024), conv shortcut, stride 2
  exit_flow/block2     1 module (1536, 1536, 2048), no shortcut, ReLU inside the separable convs
An Xception module is three 3x3 separable convs (depthwise -> BN -> pointwise -> BN; the stride
sits on the third one) plus the shortcut (1x1 conv + BN, or identity, or none). Modules other
than exit_flow/block2 apply ReLU to the input of each separable conv and none inside it.

Output stride: as DeepLab's `stack_blocks_dense`, once the target stride is reached each later
unit runs with stride 1 and the atrous rate multiplies by the stride it gave up, the new rate
applying from the following unit on (`unit_schedule`). OS 16: exit_flow/block2 at rate 2;
OS 8: entry_flow/block3 with stride 1, middle flow and exit_flow/block1 at rate 2,
exit_flow/block2 at rate 4.

Outputs: the low-level features that DeepLab's decoder reads,
`entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise` (after its batch norm,
before any ReLU; 256 channels at stride 4), and the exit-flow output (2048 channels at the
output stride). Batch norm as DeepLab's feature extractor: decay 0.9997, epsilon 1e-3.
Not kept from DeepLab: multi-grid rates (always 1, 1, 1) and the classification head.
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from feelvos_jax.models.layers import ConvBN, SeparableConvBN

XCEPTION65_BLOCKS = (
    # (TF scope, depths of the three separable convs, shortcut, stride, units, ReLU inside)
    ("entry_flow/block1", (128, 128, 128), "conv", 2, 1, False),
    ("entry_flow/block2", (256, 256, 256), "conv", 2, 1, False),
    ("entry_flow/block3", (728, 728, 728), "conv", 2, 1, False),
    ("middle_flow/block1", (728, 728, 728), "sum", 1, 16, False),
    ("exit_flow/block1", (728, 1024, 1024), "conv", 2, 1, False),
    ("exit_flow/block2", (1536, 1536, 2048), "none", 1, 1, True),
)
"""The Xception-65 block table, named by the TF variable scopes of DeepLab's checkpoints."""

LOW_LEVEL_BLOCK = "entry_flow/block2"
"""The block whose first unit's second separable conv gives the stride-4 decoder features."""


def unit_module_name(block_scope: str, unit: int) -> str:
  """Flax name of unit `unit` (1-based) of a block, e.g. 'entry_flow_block1_unit_1'."""
  return f"{block_scope.replace('/', '_')}_unit_{unit}"


def unit_schedule(output_stride: int) -> list[tuple[str, int, int, int]]:
  """(block scope, unit, stride, atrous rate) of every Xception unit, DeepLab's rule.

  `output_stride` counts the stride-2 entry conv, so the blocks must reach output_stride / 2.
  """
  if output_stride not in (8, 16):
    raise ValueError(f"Xception-65 output_stride must be 8 or 16, got {output_stride}")
  target = output_stride // 2
  current_stride, rate = 1, 1
  schedule = []
  for scope, _, _, stride, num_units, _ in XCEPTION65_BLOCKS:
    for unit in range(1, num_units + 1):
      if current_stride == target:
        schedule.append((scope, unit, 1, rate))
        rate *= stride
      else:
        schedule.append((scope, unit, stride, 1))
        current_stride *= stride
  return schedule


class XceptionModule(nn.Module):
  """Three separable convs plus shortcut; returns (output, output of the second conv)."""
  depths: tuple[int, int, int]
  shortcut: str
  stride: int = 1
  rate: int = 1
  relu_inside: bool = False
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, C] -> ([B, ceil(H/s), ceil(W/s), depths[2]], [B, H, W, depths[1]])."""
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    residual = x
    second = residual
    for index, depth in enumerate(self.depths):
      if not self.relu_inside:
        residual = nn.relu(residual)
      residual = SeparableConvBN(depth, 3, stride=self.stride if index == 2 else 1,
                                 rate=self.rate, relu=self.relu_inside,
                                 name=f"separable_conv{index + 1}", **norm)(residual, train)
      if index == 1:
        second = residual
    if self.shortcut == "conv":
      residual = residual + ConvBN(self.depths[2], 1, stride=self.stride, relu=False,
                                   name="shortcut", **norm)(x, train)
    elif self.shortcut == "sum":
      residual = residual + x
    return residual, second


class Xception65(nn.Module):
  """DeepLabv3+ Xception-65: frames [-1, 1] -> (low-level stride 4, top at output_stride)."""
  output_stride: int = 16
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, 3] -> ([B, ceil(H/4), ceil(W/4), 256], [B, ceil(H/OS), ceil(W/OS), 2048])."""
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    x = ConvBN(32, 3, stride=2, name="entry_flow_conv1_1", **norm)(x, train)
    x = ConvBN(64, 3, name="entry_flow_conv1_2", **norm)(x, train)
    blocks = {scope: (depths, shortcut, relu_inside)
              for scope, depths, shortcut, _, _, relu_inside in XCEPTION65_BLOCKS}
    low_level = None
    for scope, unit, stride, rate in unit_schedule(self.output_stride):
      depths, shortcut, relu_inside = blocks[scope]
      x, second = XceptionModule(depths, shortcut, stride=stride, rate=rate,
                                 relu_inside=relu_inside, name=unit_module_name(scope, unit),
                                 **norm)(x, train)
      if scope == LOW_LEVEL_BLOCK and unit == 1:
        low_level = second
    return low_level, x
