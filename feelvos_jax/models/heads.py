"""FEELVOS heads: the pixel embedding and the dynamic segmentation head.

Both are built from `SeparableConvReLU`: depthwise k x k conv + bias -> ReLU -> pointwise 1x1
conv + bias -> ReLU, with no batch norm (as the official code; why: docs/models.md).

- `EmbeddingHead` (official scope `embedding/split_separable_conv2d`): one SeparableConvReLU,
  3x3, [B, h, w, D] decoder features -> [B, h, w, E] non-negative embeddings (E = 100 in the
  paper); identity-plus-noise initialisation as the official code.
- `DynamicSegmentationHead` (scopes `embedding_seg/split_separable_conv2d_{n}` and
  `logits/semantic`): `num_layers` SeparableConvReLU layers (paper: 4 of depthwise 7x7 ->
  pointwise 256) and a 1x1 conv to one logit, for one object slot. Its input is
  concat[features (D), global matching map, previous-frame probability, local matching map]
  (D + 3 = 259 channels in the paper), in that order; FEELVOS's CFBI options append further
  maps (`FEELVOS.segment`) and may add instance-level attention gates.
- `ObjectSegmentationHead` / `GatedObjectSegmentationHead`: that head under `nn.vmap` over the
  object axis (one set of parameters, features broadcast to every slot), its first layer
  computed group by group so that the feature part runs once per frame, not once per object
  (the result equals the convolution of the concatenation).
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from feelvos_jax import config_checks
from feelvos_jax.models.layers import PointwiseConv
from feelvos_jax.models.layers import add_bias
from feelvos_jax.models.layers import depthwise_conv_same
from feelvos_jax.models.layers import pointwise_conv_matmul

Initializer = Callable[..., jax.Array]


def identity_init(depthwise: bool, stddev: float = 0.03) -> Initializer:
  """Conv kernel [k, k, C_in, C_out] = centred identity + truncated normal(stddev) noise.

  Depthwise kernels [k, k, 1, C] get a centred 1 in every channel; full kernels get
  kernel[c, c, i, i] = 1 for i < min(C_in, C_out).
  """
  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    height, width, inputs, outputs = shape
    identity = np.zeros(shape, np.float32)
    if depthwise:
      identity[height // 2, width // 2, 0, :] = 1.0
    else:
      diagonal = np.arange(min(inputs, outputs))
      identity[height // 2, width // 2, diagonal, diagonal] = 1.0
    noise = stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return jnp.asarray(identity, dtype) + noise
  return init


class SeparableConvReLU(nn.Module):
  """Depthwise k x k + bias -> ReLU -> pointwise 1x1 + bias -> ReLU on concat(*inputs).

  Params: depthwise_kernel [k, k, 1, C], depthwise_bias [C], pointwise_kernel
  [1, 1, C, features], pointwise_bias [features], C the summed channels of the inputs. The
  inputs ([B, H, W, C_i], same B, H, W) are never concatenated: each group is convolved with
  its slice of the kernels and the pointwise contributions are summed.

  Optional `gates` [B, C] scale the input channels (CFBI's instance-level attention). A
  depthwise conv is linear per channel and a per-channel gate is constant over space, so the
  gate multiplies the depthwise output before the bias: conv(g * x) = g * conv(x) (the zero
  padding stays zero). An input shared by every object slot is thus convolved once.

  `first_only` returns, instead of the layer's output, the pointwise bias plus the
  contribution of inputs[0] ([B, H, W, features], before the final ReLU): the part of the
  layer that depends on inputs[0] alone. Passing that value back as `first_part` skips
  inputs[0]'s depthwise and pointwise convs (inputs[0] then only sets the channel split) and
  gives the same output, computed in the same order. Neither combines with `gates`.

  Computes in `dtype`; the biases are added in float32 and rounded once (`layers.add_bias`).
  """
  features: int
  kernel_size: int = 3
  depthwise_init: Initializer = nn.initializers.truncated_normal(0.33)
  pointwise_init: Initializer = nn.initializers.truncated_normal(0.06)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, *inputs: jax.Array, gates: jax.Array | None = None,
               first_part: jax.Array | None = None, first_only: bool = False) -> jax.Array:
    """inputs [B, H, W, C_i] (gates [B, sum C_i] or None) -> [B, H, W, features]."""
    if gates is not None and (first_part is not None or first_only):
      raise ValueError("SeparableConvReLU: first_part / first_only do not combine with gates")
    if first_part is not None and first_only:
      raise ValueError("SeparableConvReLU: give first_part or first_only, not both")
    sizes = [x.shape[-1] for x in inputs]
    channels = sum(sizes)
    k = self.kernel_size
    depthwise_kernel = self.param("depthwise_kernel", self.depthwise_init, (k, k, 1, channels))
    depthwise_bias = self.param("depthwise_bias", nn.initializers.zeros, (channels,))
    pointwise_kernel = self.param("pointwise_kernel", self.pointwise_init,
                                  (1, 1, channels, self.features))
    pointwise_bias = self.param("pointwise_bias", nn.initializers.zeros, (self.features,))
    output = None
    start = 0
    for index, (x, size) in enumerate(zip(inputs, sizes)):
      group = slice(start, start + size)
      start += size
      if index == 0 and first_part is not None:
        output = first_part.astype(self.dtype)
        continue
      hidden = depthwise_conv_same(x.astype(self.dtype),
                                   depthwise_kernel[..., group].astype(self.dtype))
      if gates is not None:
        hidden = hidden * gates[:, None, None, group].astype(self.dtype)
      hidden = nn.relu(add_bias(hidden, depthwise_bias[group]))
      contribution = pointwise_conv_matmul(hidden,
                                           pointwise_kernel[:, :, group].astype(self.dtype))
      output = (add_bias(contribution, pointwise_bias) if output is None
                else output + contribution)
      if first_only:
        return output
    return nn.relu(output)


class EmbeddingHead(nn.Module):
  """Decoder features [B, h, w, D] -> non-negative embeddings [B, h, w, embedding_dim]."""
  embedding_dim: int = 100
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    return SeparableConvReLU(self.embedding_dim, self.kernel_size,
                             depthwise_init=identity_init(depthwise=True),
                             pointwise_init=identity_init(depthwise=False), dtype=self.dtype,
                             name="separable_conv")(features)


class DynamicSegmentationHead(nn.Module):
  """One object slot: (features [B, h, w, D], maps [B, h, w, M]) -> logits [B, h, w] float32
  (the layers compute in `dtype`, the final 1x1 logits layer in float32).

  `object_maps` holds the slot's M matching maps; FEELVOS: the global matching map, the
  previous-frame probability and the local matching map, in this order (M = 3); the CFBI
  options of `FEELVOS` add maps after them (see `FEELVOS.segment`). The first layer's input
  width D + M follows the inputs' shapes.

  Instance-level attention (`guidance` [B, G] given, CFBI's collaborative ensembler gates):
  before each separable layer i, the layer's input channels are scaled by
  1 + tanh(Dense_i(guidance)) (CFBI's `IA_gate`), one Dense per layer (params `attention_{i}`,
  shared by the slots, initialised at zero so that every gate starts at 1, i.e. the plain head).
  CFBI also predicts its final logit layer from the guidance; here the logits layer stays fixed.

  The features are the same for every slot: `feature_part_only=True` returns the part of
  layer 0 that depends on them alone ([B, h, w, channels], `SeparableConvReLU`'s `first_only`;
  object_maps then only set the layer's width), and `feature_part=` that value skips its
  computation with the same logits (interactive re-propagation computes it once per frame).
  Neither combines with `guidance`.
  """
  num_layers: int = 4
  channels: int = 256
  kernel_size: int = 7
  dtype: Any = jnp.float32

  def _gates(self, index: int, guidance: jax.Array | None, channels: int) -> jax.Array | None:
    """[B, channels] gates 1 + tanh(Dense(guidance)) of layer `index`, or None."""
    if guidance is None:
      return None
    dense = nn.Dense(channels, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                     param_dtype=jnp.float32, name=f"attention_{index}")
    return 1.0 + jnp.tanh(dense(guidance.astype(self.dtype)))

  @nn.compact
  def __call__(self, features: jax.Array, object_maps: jax.Array,
               guidance: jax.Array | None = None, *, feature_part: jax.Array | None = None,
               feature_part_only: bool = False) -> jax.Array:
    config_checks.check_int(self.num_layers, "config.model.head_num_layers", 1)
    if guidance is not None and (feature_part is not None or feature_part_only):
      raise ValueError("DynamicSegmentationHead: feature_part / feature_part_only do not "
                       "combine with guidance (instance attention gates the features)")
    gates = self._gates(0, guidance, features.shape[-1] + object_maps.shape[-1])
    x = SeparableConvReLU(self.channels, self.kernel_size, dtype=self.dtype,
                          name="layer_0")(features, object_maps, gates=gates,
                                          first_part=feature_part,
                                          first_only=feature_part_only)
    if feature_part_only:
      return x
    for index in range(1, self.num_layers):
      gates = self._gates(index, guidance, self.channels)
      x = SeparableConvReLU(self.channels, self.kernel_size, dtype=self.dtype,
                            name=f"layer_{index}")(x, gates=gates)
    # In float32 whatever the compute dtype: bfloat16 would round every logit to 8
    # significant bits before the softmax; one output channel, so the cost is negligible.
    logits = PointwiseConv(1, use_bias=True, dtype=jnp.float32,
                           kernel_init=nn.initializers.truncated_normal(0.01),
                           name="logits")(x)
    return logits[..., 0]


ObjectSegmentationHead = nn.vmap(
    DynamicSegmentationHead,
    variable_axes={"params": None},
    split_rngs={"params": False},
    in_axes=(None, 3),
    out_axes=3)
"""DynamicSegmentationHead over slots: (features [B, h, w, D], maps [B, h, w, K, M]) ->
logits [B, h, w, K], one set of weights shared by every slot."""

GatedObjectSegmentationHead = nn.vmap(
    DynamicSegmentationHead,
    variable_axes={"params": None},
    split_rngs={"params": False},
    in_axes=(None, 3, 1),
    out_axes=3)
"""The same with instance-level attention: (features [B, h, w, D], maps [B, h, w, K, M],
guidance [B, K, G]) -> logits [B, h, w, K]; same parameter names plus `attention_{i}`."""
