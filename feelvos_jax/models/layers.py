"""Convolution building blocks shared by the backbones and the DeepLabv3+ head.

Padding: every convolution pads explicitly and symmetrically by (effective kernel - 1) pixels,
`pad_total // 2` before and the rest after, with effective kernel `k + (k - 1) * (rate - 1)`.
For stride 1 and odd kernels that is TensorFlow's SAME padding; for stride 2 it is DeepLab's
`fixed_padding` (`conv2d_same`, `separable_conv2d_same`) and torchvision's `padding=rate*(k//2)`.
A stride-2 layer therefore maps a side of n pixels to ceil(n / 2), whatever the parity of n,
and pretrained weights see their pixels aligned as in the code they were trained with.

Depthwise convolutions (`DepthwiseConv`, made by `conv2d_same(depthwise_channels=C)`, and the
heads' `depthwise_conv`) go through `depthwise_conv_same` and 1x1 convolutions (`PointwiseConv`)
through `pointwise_conv`: each picks its form per platform (`lax.platform_dependent`, when the
computation is lowered): shifted slices / a matmul on CPU, XLA's convolution elsewhere. Why:
docs/models.md ("Platform-dependent kernels").

Batch norm: `ConvBN` and `SeparableConvBN` take `train` at call time; `train=True` normalises
with the batch statistics and updates the running averages in the `batch_stats` collection,
`train=False` uses the running averages and never writes them. FEELVOS decides what `train`
means for its DeepLab part (see `feelvos.py`: frozen batch norm passes `train=False`).
"""
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

Dtype = Any


def same_padding(kernel_size: int, rate: int = 1) -> tuple[int, int]:
  """(before, after) padding of one spatial axis for a kernel of `kernel_size` at `rate`."""
  effective = kernel_size + (kernel_size - 1) * (rate - 1)
  total = effective - 1
  return total // 2, total - total // 2


def _tap(padded: jax.Array, i: int, j: int, stride: int, rate: int,
         out_size: tuple[int, int]) -> jax.Array:
  """padded[:, i*rate + stride*y, j*rate + stride*x, :] for y, x < out_size: [B, h, w, C]."""
  height, width = out_size
  return lax.slice(padded, (0, i * rate, j * rate, 0),
                   (padded.shape[0], i * rate + (height - 1) * stride + 1,
                    j * rate + (width - 1) * stride + 1, padded.shape[3]),
                   (1, stride, stride, 1))


def _shifted_sum(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...],
                 stride: int, rate: int, out_size: tuple[int, int]) -> jax.Array:
  """sum over taps (i, j) of `_tap(pad(x), i, j)` * kernel[i, j, 0, :]: [B, h, w, C].

  x [B, H, W, C], kernel [k, k, 1, C]; `padding` ((top, bottom), (left, right)) with zeros;
  out_size (h, w). Products and sum in float32 (on XLA:CPU one fused loop reading each
  output's k*k inputs from cache), the result cast to x.dtype.
  """
  padded = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
  weights = kernel.astype(jnp.float32)
  total = None
  for i in range(kernel.shape[0]):
    for j in range(kernel.shape[1]):
      term = (_tap(padded, i, j, stride, rate, out_size).astype(jnp.float32)
              * weights[i, j, 0])
      total = term if total is None else total + term
  return total.astype(x.dtype)


def _kernel_gradient(x: jax.Array, grad: jax.Array, padding: tuple[tuple[int, int], ...],
                     stride: int, rate: int, kernel_size: int) -> jax.Array:
  """d loss / d kernel [k, k, 1, C] of `_shifted_sum` given d loss / d output `grad`
  [B, h, w, C]: entry (i, j, c) sums tap (i, j) times `grad` over batch and space."""
  padded = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
  grad = grad.astype(jnp.float32)
  taps = [jnp.sum(_tap(padded, i, j, stride, rate, grad.shape[1:3]).astype(jnp.float32)
                  * grad, axis=(0, 1, 2))
          for i in range(kernel_size) for j in range(kernel_size)]
  return jnp.stack(taps).reshape(kernel_size, kernel_size, 1, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int = 1,
                           rate: int = 1) -> jax.Array:
  """`depthwise_conv_same` as k x k shifted, scaled slices summed (fast on XLA:CPU).

  Its gradients are written out (custom VJP) in the same form: d/dx is the shifted sum of
  the output gradient (spread by the stride) with the kernel flipped, d/dkernel one
  reduction per tap; autodiff of the slices would pad a full-size array per tap instead.
  """
  padding = (same_padding(kernel.shape[0], rate),) * 2
  out_size = (-(-x.shape[1] // stride), -(-x.shape[2] // stride))
  return _shifted_sum(x, kernel, padding, stride, rate, out_size)


def _shifted_forward(x, kernel, stride, rate):
  return depthwise_conv_shifted(x, kernel, stride, rate), (x, kernel)


def _shifted_backward(stride, rate, residuals, grad):
  x, kernel = residuals
  k = kernel.shape[0]
  before, after = same_padding(k, rate)
  padding = ((before, after),) * 2
  # d/dx: output y reads input y*s + i*rate - before, so input p receives grad[y] * kernel[i]
  # for every such (y, i): the grad spread by the stride (s - 1 zeros between values), padded
  # by `after` on top/left and up to H + k_eff - 1 rows/columns, then the shifted sum with
  # the flipped kernel.
  spread = [(after, size + before - 1 - (grad.shape[axis] - 1) * stride, stride - 1)
            for axis, size in ((1, x.shape[1]), (2, x.shape[2]))]
  spread_grad = lax.pad(grad.astype(x.dtype), jnp.zeros((), x.dtype),
                        ((0, 0, 0), spread[0], spread[1], (0, 0, 0)))
  dx = _shifted_sum(spread_grad, kernel[::-1, ::-1], ((0, 0), (0, 0)), 1, rate,
                    tuple(x.shape[1:3]))
  dkernel = _kernel_gradient(x, grad, padding, stride, rate, k)
  return dx, dkernel.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_shifted_forward, _shifted_backward)


def depthwise_conv_native(x: jax.Array, kernel: jax.Array, stride: int = 1,
                          rate: int = 1) -> jax.Array:
  """`depthwise_conv_same` as XLA's grouped convolution (`feature_group_count` = C)."""
  padding = same_padding(kernel.shape[0], rate)
  return lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(stride, stride), padding=(padding, padding),
      rhs_dilation=(rate, rate), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1])


def depthwise_conv_same(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
                        rate: int = 1) -> jax.Array:
  """Depthwise conv with the padding of the module docstring, fastest form per platform.

  Args:
    x: [B, H, W, C].
    kernel: [k, k, 1, C], one k x k filter per channel (cast to x.dtype).
    stride: spatial stride.
    rate: atrous (dilation) rate.

  Returns:
    [B, ceil(H / stride), ceil(W / stride), C] in x.dtype.

  On CPU `depthwise_conv_shifted`, elsewhere (GPU, TPU) `depthwise_conv_native`, chosen by
  `lax.platform_dependent` when the computation is lowered (a multi-platform `jax.export`
  carries both); why: docs/models.md.
  """
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or (
      kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3]):
    raise ValueError(f"depthwise_conv_same: x must be [B, H, W, C] and kernel [k, k, 1, C], "
                     f"got x {x.shape} and kernel {kernel.shape}")
  if stride < 1 or rate < 1:
    raise ValueError(f"depthwise_conv_same: stride and rate must be >= 1, got stride={stride} "
                     f"rate={rate}")
  return lax.platform_dependent(
      x, kernel.astype(x.dtype),
      cpu=functools.partial(depthwise_conv_shifted, stride=stride, rate=rate),
      default=functools.partial(depthwise_conv_native, stride=stride, rate=rate))


def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
  """x [..., C] + bias [C] (float32), added in float32 and rounded once to x.dtype.

  In bfloat16 this keeps the bias gradient, a sum over every pixel of the output gradient,
  accumulating in float32 (a bfloat16 add would reduce it in bfloat16); in float32 it is the
  plain sum.
  """
  return (x.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (one filter per channel) by `depthwise_conv_same`.

  Params as `nn.Conv` with `feature_group_count` = C (same names, shapes and initialisation,
  so checkpoints and weight maps are shared): kernel [k, k, 1, C] and, with `use_bias`,
  bias [C]. Computes in `dtype`; parameters stay float32.
  """
  kernel_size: int = 3
  stride: int = 1
  rate: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), C]."""
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
    y = depthwise_conv_same(x.astype(self.dtype), kernel.astype(self.dtype),
                            stride=self.stride, rate=self.rate)
    if self.use_bias:
      y = add_bias(y, self.param("bias", nn.initializers.zeros, (channels,), jnp.float32))
    return y


def pointwise_conv_matmul(x: jax.Array, kernel: jax.Array, *, stride: int = 1) -> jax.Array:
  """1x1 conv as a matmul over the channels (einsum), `stride` by subsampling.

  x [B, H, W, C], kernel [1, 1, C, F] -> [B, ceil(H / stride), ceil(W / stride), F]: a 1x1
  conv with SAME (zero) padding at stride s reads pixels (s i, s j).
  """
  if stride > 1:
    x = x[:, ::stride, ::stride]
  return jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0])


def pointwise_conv_native(x: jax.Array, kernel: jax.Array, *, stride: int = 1) -> jax.Array:
  """`pointwise_conv_matmul` as XLA's convolution (same shapes and values)."""
  return lax.conv_general_dilated(x, kernel, window_strides=(stride, stride),
                                  padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pointwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1) -> jax.Array:
  """1x1 conv, x [B, H, W, C] and kernel [1, 1, C, F] (cast to x.dtype) ->
  [B, ceil(H / stride), ceil(W / stride), F], in the fastest form per platform.

  On CPU `pointwise_conv_matmul`, elsewhere `pointwise_conv_native`, chosen by
  `lax.platform_dependent` when the computation is lowered; why: docs/models.md.
  """
  if x.ndim != 4 or kernel.shape[:2] != (1, 1) or kernel.shape[2] != x.shape[3]:
    raise ValueError(f"pointwise_conv: x must be [B, H, W, C] and kernel [1, 1, C, F], got x "
                     f"{x.shape} and kernel {kernel.shape}")
  if stride < 1:
    raise ValueError(f"pointwise_conv: stride must be >= 1, got {stride}")
  return lax.platform_dependent(
      x, kernel.astype(x.dtype),
      cpu=functools.partial(pointwise_conv_matmul, stride=stride),
      default=functools.partial(pointwise_conv_native, stride=stride))


class PointwiseConv(nn.Module):
  """1x1 conv by `pointwise_conv` (a matmul on CPU, XLA's convolution elsewhere).

  Params as `nn.Conv` with kernel_size 1 (same names, shapes and initialisation, so
  checkpoints and weight maps are shared): kernel [1, 1, C, features] and, with `use_bias`,
  bias [features]. Output [B, ceil(H / stride), ceil(W / stride), features]. Computes in
  `dtype`; parameters stay float32.
  """
  features: int
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), features]."""
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    y = pointwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride)
    if self.use_bias:
      y = add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32))
    return y


def conv2d_same(features: int, kernel_size: int = 1, *, stride: int = 1, rate: int = 1,
                use_bias: bool = False, depthwise_channels: int | None = None,
                dtype: Dtype = jnp.float32, kernel_init=nn.initializers.lecun_normal(),
                name: str | None = None) -> nn.Module:
  """A square conv with the padding described in the module docstring.

  Args:
    features: output channels (for a depthwise conv: the input channels).
    kernel_size: square kernel side.
    stride: spatial stride.
    rate: atrous (dilation) rate.
    use_bias: add a bias (False before batch norm).
    depthwise_channels: if set, a depthwise conv over that many channels (one filter per
      channel, kernel [k, k, 1, C]: a `DepthwiseConv`); `features` must equal it.
    dtype: computation dtype (parameters stay float32).
    kernel_init: kernel initialiser.
    name: submodule name.

  Returns:
    An `nn.Conv`; for a depthwise conv a `DepthwiseConv` and for a 1x1 conv a
    `PointwiseConv` (the parameters of `nn.Conv`; faster on CPU).
  """
  if depthwise_channels is not None:
    if features != depthwise_channels:
      raise ValueError(f"conv2d_same {name!r}: a depthwise conv keeps the channels, but "
                       f"features={features} != depthwise_channels={depthwise_channels}")
    return DepthwiseConv(kernel_size, stride, rate, use_bias, dtype, kernel_init, name=name)
  if kernel_size == 1:
    return PointwiseConv(features, stride, use_bias, dtype, kernel_init, name=name)
  padding = same_padding(kernel_size, rate)
  return nn.Conv(
      features=features, kernel_size=(kernel_size, kernel_size), strides=stride,
      padding=(padding, padding), kernel_dilation=rate, use_bias=use_bias, dtype=dtype,
      param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


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
  Weights and blends in float32 (bfloat16 weights would not sum to one), the result in x.dtype.
  """
  low_h, high_h, weight_h = _align_corners_taps(x.shape[1], size[0])
  low_w, high_w, weight_w = _align_corners_taps(x.shape[2], size[1])
  weight_h = jnp.asarray(weight_h)[None, :, None, None]
  weight_w = jnp.asarray(weight_w)[None, None, :, None]
  y = x.astype(jnp.float32)
  y = y[:, low_h] * (1 - weight_h) + y[:, high_h] * weight_h
  y = y[:, :, low_w] * (1 - weight_w) + y[:, :, high_w] * weight_w
  return y.astype(x.dtype)
