"""Convolution building blocks shared by the backbones and the DeepLabv3+ head.

Padding: every convolution pads explicitly and symmetrically by (effective kernel - 1) pixels,
`pad_total // 2` before and the rest after, with effective kernel `k + (k - 1) * (rate - 1)`.
For stride 1 and odd kernels that is TensorFlow's SAME padding; for stride 2 it is DeepLab's
`fixed_padding` (`conv2d_same`, `separable_conv2d_same`) and torchvision's `padding=rate*(k//2)`.
A stride-2 layer therefore maps a side of n pixels to ceil(n / 2), whatever the parity of n,
and pretrained weights see their pixels aligned as in the code they were trained with.

Batch norm: `ConvBN` and `SeparableConvBN` take `train` at call time; `train=True` normalises
with the batch statistics and updates the running averages in the `batch_stats` collection,
`train=False` uses the running averages and never writes them. FEELVOS decides what `train`
means for its DeepLab part (see `feelvos.py`: frozen batch norm passes `train=False`).
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

Dtype = Any


def same_padding(kernel_size: int, rate: int = 1) -> tuple[int, int]:
  """(before, after) padding of one spatial axis for a kernel of `kernel_size` at `rate`."""
  effective = kernel_size + (kernel_size - 1) * (rate - 1)
  total = effective - 1
  return total // 2, total - total // 2


def conv2d_same(features: int, kernel_size: int = 1, *, stride: int = 1, rate: int = 1,
                use_bias: bool = False, depthwise_channels: int | None = None,
                dtype: Dtype = jnp.float32, kernel_init=nn.initializers.lecun_normal(),
                name: str | None = None) -> nn.Conv:
  """A square `nn.Conv` with the padding described in the module docstring.

  Args:
    features: output channels (for a depthwise conv: the input channels).
    kernel_size: square kernel side.
    stride: spatial stride.
    rate: atrous (dilation) rate.
    use_bias: add a bias (False before batch norm).
    depthwise_channels: if set, a depthwise conv over that many channels (one filter per
      channel, kernel [k, k, 1, C]); `features` must equal it.
    dtype: computation dtype (parameters stay float32).
    kernel_init: kernel initialiser.
    name: submodule name.
  """
  padding = same_padding(kernel_size, rate)
  return nn.Conv(
      features=features, kernel_size=(kernel_size, kernel_size), strides=stride,
      padding=(padding, padding), kernel_dilation=rate, use_bias=use_bias,
      feature_group_count=depthwise_channels or 1, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=kernel_init, name=name)


class ConvBN(nn.Module):
  """conv k x k (no bias) -> batch norm -> optional ReLU.

  Params: conv/kernel [k, k, C_in, features] (depthwise: [k, k, 1, C_in]), bn/scale, bn/bias;
  batch_stats: bn/mean, bn/var. A depthwise ConvBN keeps the channel count.
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  rate: int = 1
  depthwise: bool = False
  relu: bool = True
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, C_in] -> [B, ceil(H / stride), ceil(W / stride), features]."""
    channels = x.shape[-1]
    if self.depthwise and self.features != channels:
      raise ValueError(f"depthwise ConvBN {self.name!r}: features={self.features} must equal "
                       f"the input channels {channels} (input shape {x.shape})")
    x = conv2d_same(self.features, self.kernel_size, stride=self.stride, rate=self.rate,
                    depthwise_channels=channels if self.depthwise else None,
                    dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                     epsilon=self.batch_norm_epsilon, dtype=self.dtype,
                     param_dtype=jnp.float32, name="bn")(x)
    return nn.relu(x) if self.relu else x


class SeparableConvBN(nn.Module):
  """Depthwise k x k (stride, rate) -> BN [-> ReLU] -> pointwise 1x1 -> BN [-> ReLU].

  DeepLab's split separable conv (`<scope>_depthwise`, `<scope>_pointwise` in TF checkpoints):
  batch norm after both convolutions; `relu` puts a ReLU after each batch norm (DeepLab's ASPP
  and decoder, Xception's exit flow), `relu=False` leaves both linear (Xception modules apply
  the ReLU to their input instead).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  rate: int = 1
  relu: bool = True
  batch_norm_momentum: float = 0.9997
  batch_norm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, C_in] -> [B, ceil(H / stride), ceil(W / stride), features]."""
    norm = dict(batch_norm_momentum=self.batch_norm_momentum,
                batch_norm_epsilon=self.batch_norm_epsilon, dtype=self.dtype)
    x = ConvBN(x.shape[-1], self.kernel_size, stride=self.stride, rate=self.rate,
               depthwise=True, relu=self.relu, name="depthwise", **norm)(x, train)
    return ConvBN(self.features, 1, relu=self.relu, name="pointwise", **norm)(x, train)


def _align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
  """Indices (low, high) and weight of `high` for each output position of one axis."""
  if out_size == 1 or in_size == 1:
    position = np.zeros(out_size)
  else:
    position = np.arange(out_size) * ((in_size - 1) / (out_size - 1))
  low = np.minimum(np.floor(position).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, (position - low).astype(np.float32)


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of [B, H, W, C] to [B, size[0], size[1], C] with corners aligned.

  Output pixel i of an axis samples input position i * (in - 1) / (out - 1), as TF's
  `resize_bilinear(..., align_corners=True)` that DeepLab uses to upsample the ASPP output.
  """
  low_h, high_h, weight_h = _align_corners_taps(x.shape[1], size[0])
  low_w, high_w, weight_w = _align_corners_taps(x.shape[2], size[1])
  weight_h = jnp.asarray(weight_h, x.dtype)[None, :, None, None]
  weight_w = jnp.asarray(weight_w, x.dtype)[None, None, :, None]
  x = x[:, low_h] * (1 - weight_h) + x[:, high_h] * weight_h
  return x[:, :, low_w] * (1 - weight_w) + x[:, :, high_w] * weight_w
