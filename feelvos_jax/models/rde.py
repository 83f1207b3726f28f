"""RDE-VOS (Li et al., CVPR 2022): STM plus a recurrent dynamic embedding,
`config.model.head = "rde"`.

The recurrent dynamic embedding (RDE) is one memory slot per object, (key [M, h, w, C_k],
value [M, h, w, C_v]), updated after every frame by the spatio-temporal aggregation module:

  aggregate(RDE_{t-1}, (k_t, v_t)):
    x = stack([RDE_{t-1}, encoding of frame t], time)            [N, 2, h, w, C]
    extract  x <- x + W(softmax-free non-local: theta(x) phi(x_pool)^T / N  g(x_pool))
             (1x1x1 convs theta, phi, g to C/2 and W back to C; phi and g max-pooled 1x2x2)
    enhance  x <- x + ASPP(x)  (1x3x3 convs, rates 1 (1x1x1), 2, 4, 6 to C/4 each, ReLU,
             concatenated, a 1x3x3 conv to C and ReLU; no bias)
    squeeze  RDE_t = Conv3d 2x3x3 (no temporal padding) of x      [N, 1, h, w, C]
    rescale  (norm "inputs") each position of RDE_t to the mean L2 norm of its two inputs
             there, so |RDE_t| never exceeds the largest frame encoding's (norm "none": the
             authors' unscaled output)
  one module for the keys and one for the values (authors' `MemCrompress`: `key_encoder`,
  `value_encoder`, `compress_key`, `compress_value`).

Initialisation: W of the non-local block at zero and the squeeze conv at the mean of its two
time steps (`temporal_mean_init`), so a fresh RDE is a running mean of its inputs and stays
bounded over any number of frames (why: docs/models.md).

`RDE` has STM's methods (`encode_query`, `encode_memory`, `read`, `decode`, `segment_memory`)
plus `aggregate`; `rde_forward` reads a query frame both ways, the STM read over the memory
frames and the read over (first memory frame, RDE of the others), and `__call__` (what
initialises every parameter) returns its RDE logits. Training reads every frame of its clip
both ways with these methods (`training.objectives.read_every_frame`). The inference memory
is the annotated frame(s) plus the RDE (`inference.memory_propagation`), so memory and time
per frame stay constant.
Losses (unbiased guidance, self-correction): `training.objectives.memory_loss`.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feelvos_jax.models.stm import STM

AFFINITIES = ("dot", "softmax")
"""The non-local affinities: the authors' dot product / N, or a softmax (docs/models.md)."""

NORMS = ("none", "inputs")
"""The RDE's scale after each aggregation: the squeeze conv's output as it is (the authors'),
or rescaled per position to the mean norm of the two inputs (`rescale_to_inputs`)."""

RESCALE_EPSILON = 1e-6
"""The smallest norm `rescale_to_inputs` divides by or scales to (keeps its gradient finite)."""

ASPP_RATES = (1, 2, 4, 6)
"""Rates of the four ASPP branches (1: a 1x1x1 conv), as the authors' `ASPP3D`."""


class SpatialConv(nn.Module):
  """A 1 x k x k conv of [N, T, h, w, C] (each time step alone), at `rate`, no bias."""
  features: int
  kernel_size: int = 3
  rate: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = self.rate * (self.kernel_size // 2)
    return nn.Conv(self.features, (1, self.kernel_size, self.kernel_size),
                   padding=((0, 0), (pad, pad), (pad, pad)),
                   kernel_dilation=(1, self.rate, self.rate), use_bias=self.use_bias,
                   dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)


class NonLocal(nn.Module):
  """x + W(A g(pool(x))) on [N, T, h, w, C], A = theta(x) phi(pool(x))^T / N with affinity
  "dot" (authors' `NONLocalBlock3D` with `bn_layer=False`) or softmax(theta(x) phi(pool(x))^T)
  over the pooled positions with "softmax" (Wang et al.'s embedded Gaussian); W starts at zero,
  so the block starts as the identity (module docstring)."""
  affinity: str = "dot"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, steps, height, width, channels = x.shape
    inner = max(1, channels // 2)

    def dense(name):
      return nn.Conv(inner, (1, 1, 1), dtype=self.dtype, param_dtype=jnp.float32, name=name)

    def pooled(y):
      return nn.max_pool(y, (1, 2, 2), strides=(1, 2, 2)) if min(height, width) >= 2 else y

    theta = dense("theta")(x).reshape(batch, -1, inner).astype(jnp.float32)
    phi = pooled(dense("phi")(x)).reshape(batch, -1, inner).astype(jnp.float32)
    g = pooled(dense("g")(x)).reshape(batch, -1, inner).astype(jnp.float32)
    affinity = jnp.einsum("bqc,bkc->bqk", theta, phi)
    if self.affinity == "softmax":
      affinity = jax.nn.softmax(affinity, axis=-1)
    else:
      affinity = affinity / phi.shape[1]
    y = jnp.einsum("bqk,bkc->bqc", affinity, g).reshape(batch, steps, height, width, inner)
    out = nn.Conv(channels, (1, 1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.zeros, name="W")
    return x + out(y.astype(self.dtype))


class ASPP3D(nn.Module):
  """Four ReLU branches (rates `ASPP_RATES`, C/4 each) -> concat -> 1x3x3 conv -> ReLU."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    inner = max(1, channels // 4)
    branches = [nn.relu(SpatialConv(inner, 1 if rate == 1 else 3, rate=rate, dtype=self.dtype,
                                    name=f"aspp{index}")(x))
                for index, rate in enumerate(ASPP_RATES, 1)]
    return nn.relu(SpatialConv(channels, 3, dtype=self.dtype, name="conv1")(
        jnp.concatenate(branches, -1)))


def temporal_mean_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32
                       ) -> jax.Array:
  """The squeeze conv's initial kernel [2, 3, 3, C, C]: the mean of the two time steps at the
  centre tap, so that a fresh RDE is the running mean of its inputs (module docstring)."""
  del key
  steps, height, width, channels, features = shape
  centre = jnp.eye(channels, features, dtype=dtype) / steps
  return jnp.zeros(shape, dtype).at[:, height // 2, width // 2].set(centre)


def _norm(x: jax.Array) -> jax.Array:
  """L2 norm over the last axis (kept), at least RESCALE_EPSILON: finite gradient at zero."""
  squared = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
  return jnp.sqrt(jnp.maximum(squared, RESCALE_EPSILON ** 2))


def rescale_to_inputs(output: jax.Array, inputs: jax.Array) -> jax.Array:
  """output [N, h, w, C] with each position's vector scaled to the mean over the time steps of
  the input vectors' L2 norms there (inputs [N, T, h, w, C]); float32. Norms below
  RESCALE_EPSILON count as RESCALE_EPSILON, so a zero output vector stays zero and the
  gradient stays finite."""
  target = jnp.mean(_norm(inputs), axis=1)
  return output.astype(jnp.float32) * (target / _norm(output))


class SpatioTemporalAggregation(nn.Module):
  """SAM + squeeze (+ rescale): [N, 2, h, w, C] -> [N, h, w, C] (module docstring);
  `affinity` as `NonLocal`'s, `norm` one of `NORMS`."""
  affinity: str = "dot"
  norm: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = NonLocal(affinity=self.affinity, dtype=self.dtype, name="non_local")(
        inputs.astype(self.dtype))
    x = x + ASPP3D(dtype=self.dtype, name="aspp")(x)
    squeezed = nn.Conv(x.shape[-1], (2, 3, 3), padding=((0, 0), (1, 1), (1, 1)),
                       dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=temporal_mean_init, name="compress")(x)[:, 0]
    if self.norm == "inputs":
      return rescale_to_inputs(squeezed, inputs).astype(squeezed.dtype)
    return squeezed


class RDE(STM):
  """RDE-VOS; see the module docstring. Attributes: those of `STM`, `affinity`, the
  non-local affinity of the aggregation modules (`AFFINITIES`, `NonLocal`), and `norm`, the
  RDE's scale after each aggregation (`NORMS`)."""
  affinity: str = "dot"
  norm: str = "none"
  recurrent_embedding = True

  def setup(self):
    super().setup()
    self.key_aggregation = SpatioTemporalAggregation(affinity=self.affinity, norm=self.norm,
                                                     dtype=self.dtype)
    self.value_aggregation = SpatioTemporalAggregation(affinity=self.affinity, norm=self.norm,
                                                       dtype=self.dtype)

  def aggregate(self, rde_keys: jax.Array, rde_values: jax.Array, keys: jax.Array,
                values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The next RDE: previous RDE and the new frame's encoding, keys [B, M, h, w, C_k] and
    values [B, M, h, w, C_v] each -> (keys, values) of the same shapes, float32."""
    def run(module, previous, current):
      batch, slots = previous.shape[:2]
      stacked = jnp.stack([previous, current], axis=2)  # [B, M, 2, h, w, C]
      out = module(stacked.reshape((batch * slots,) + stacked.shape[2:]))
      return out.reshape(previous.shape).astype(jnp.float32)
    return (run(self.key_aggregation, rde_keys, keys),
            run(self.value_aggregation, rde_values, values))

  def rde_forward(self, frames: jax.Array, memory_frames: jax.Array, memory_probs: jax.Array,
                  num_objects: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Training's forward pass: frames [B, H, W, 3], memory frames [B, T, H, W, 3] (T >= 2,
    so the RDE aggregates at least once) with probs [B, T, H, W, K], num_objects [B] ->
    {stm_logits, rde_logits [B, h4, w4, K],
    stm_read, rde_read [B, M, h16, w16, C_v], memory_values [B, T, M, h16, w16, C_v]}.

    The RDE starts as memory frame 0's encoding and aggregates frames 1..T-1; the RDE read
    is over (memory frame 0, the RDE), as the authors' training reads the first frame and the
    compressed memory."""
    batch, steps = memory_frames.shape[:2]
    keys, values = self.encode_memory(memory_frames.reshape((-1,) + memory_frames.shape[2:]),
                                      memory_probs.reshape((-1,) + memory_probs.shape[2:]),
                                      train=train)
    keys = keys.reshape((batch, steps) + keys.shape[1:])
    values = values.reshape((batch, steps) + values.shape[1:])
    rde_keys, rde_values = keys[:, 0].astype(jnp.float32), values[:, 0].astype(jnp.float32)
    for step in range(1, steps):
      rde_keys, rde_values = self.aggregate(rde_keys, rde_values, keys[:, step], values[:, step])
    query = self.encode_query(frames, train=train)
    valid = jnp.ones((batch, steps), bool)
    stm_read = self.read(query["key"], keys, values, valid)
    rde_memory_keys = jnp.stack([keys[:, 0].astype(jnp.float32), rde_keys], 1)
    rde_memory_values = jnp.stack([values[:, 0].astype(jnp.float32), rde_values], 1)
    rde_read = self.read(query["key"], rde_memory_keys, rde_memory_values, valid[:, :2])
    return dict(stm_logits=self.decode(query, stm_read, num_objects),
                rde_logits=self.decode(query, rde_read, num_objects),
                stm_read=stm_read, rde_read=rde_read, memory_values=values)

  def __call__(self, frames: jax.Array, memory_frames: jax.Array, memory_probs: jax.Array,
               num_objects: jax.Array, train: bool = False) -> jax.Array:
    """The RDE logits of `rde_forward` (also what initialises every parameter)."""
    return self.rde_forward(frames, memory_frames, memory_probs, num_objects,
                            train=train)["rde_logits"]
