"""The heads of MaskTrack R-CNN (Flax Linen), as mmdetection configures them for it.

- `RPNHead`: shared over levels: 3x3 conv + ReLU, then 1x1 to A objectness logits (sigmoid)
  and 1x1 to 4A box deltas.
- `BoxHead` (SharedFCBBoxHead): RoI features [R, 7, 7, C] flattened -> fc 1024 -> ReLU -> fc
  1024 -> ReLU -> class logits [R, K + 1] (0 = background) and class-specific deltas
  [R, K + 1, 4].
- `MaskHead` (FCNMaskHead): [R, 14, 14, C] -> 4 x (3x3 conv 256 + ReLU) -> 2x2 transposed conv
  stride 2 + ReLU -> 1x1 to K + 1 mask logits [R, 28, 28, K + 1] (one mask per class).
- `TrackHead`: [R, 7, 7, C] flattened -> fc 1024 -> ReLU -> fc 1024: the embedding f_i whose dot
  products with the remembered instances' embeddings are the matching logits (`match_logits`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RPNHead(nn.Module):
  """Per level [B, H, W, C] -> (objectness [B, H, W, A], deltas [B, H, W, A, 4])."""
  num_anchors: int = 3
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pyramid: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    conv = nn.Conv(self.channels, (3, 3), padding=1, dtype=self.dtype, name="conv")
    objectness = nn.Conv(self.num_anchors, (1, 1), dtype=self.dtype, name="objectness",
                         kernel_init=nn.initializers.normal(0.01))
    deltas = nn.Conv(4 * self.num_anchors, (1, 1), dtype=self.dtype, name="deltas",
                     kernel_init=nn.initializers.normal(0.01))
    outputs = []
    for level in pyramid:
      hidden = nn.relu(conv(level))
      box = deltas(hidden)
      outputs.append((objectness(hidden).astype(jnp.float32),
                      box.reshape(box.shape[:3] + (self.num_anchors, 4)).astype(jnp.float32)))
    return outputs


class BoxHead(nn.Module):
  """[R, 7, 7, C] -> (class logits [R, K + 1], deltas [R, K + 1, 4])."""
  num_classes: int
  fc_dim: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, rois: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = rois.reshape(rois.shape[0], -1)
    x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name="fc1")(x))
    x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name="fc2")(x))
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="classes",
                      kernel_init=nn.initializers.normal(0.01))(x)
    deltas = nn.Dense(4 * (self.num_classes + 1), dtype=self.dtype, name="deltas",
                      kernel_init=nn.initializers.normal(0.001))(x)
    return (logits.astype(jnp.float32),
            deltas.reshape(-1, self.num_classes + 1, 4).astype(jnp.float32))


class MaskHead(nn.Module):
  """[R, S, S, C] -> mask logits [R, 2S, 2S, K + 1]."""
  num_classes: int
  channels: int = 256
  num_convs: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, rois: jax.Array) -> jax.Array:
    x = rois
    for index in range(self.num_convs):
      x = nn.relu(nn.Conv(self.channels, (3, 3), padding=1, dtype=self.dtype,
                          name=f"conv{index + 1}")(x))
    x = nn.relu(nn.ConvTranspose(self.channels, (2, 2), strides=(2, 2), dtype=self.dtype,
                                 name="upsample")(x))
    return nn.Conv(self.num_classes + 1, (1, 1), dtype=self.dtype,
                   name="logits")(x).astype(jnp.float32)


class TrackHead(nn.Module):
  """[R, 7, 7, C] -> embeddings [R, D] (two fully connected layers, ReLU between)."""
  fc_dim: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, rois: jax.Array) -> jax.Array:
    init = nn.initializers.normal(0.01)  # The authors' init_weights.
    x = rois.reshape(rois.shape[0], -1)
    x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, kernel_init=init, name="fc1")(x))
    return nn.Dense(self.fc_dim, dtype=self.dtype, kernel_init=init,
                    name="fc2")(x).astype(jnp.float32)


def match_logits(queries: jax.Array, memory: jax.Array,
                 memory_valid: jax.Array) -> jax.Array:
  """Matching logits of each query against (new instance, memory instances 1..N).

  Args:
    queries: [R, D] embeddings of the detections f_i.
    memory: [N, D] embeddings of the remembered instances f_n.
    memory_valid: [N] bool; padded slots get -inf.
  Returns:
    [R, 1 + N]: column 0 is 0 (the "new instance" logit, a 1 in the softmax's numerator),
    column n is f_i . f_n; a softmax over a row is p_i(n) of the paper.
  """
  products = queries @ memory.T
  products = jnp.where(memory_valid[None, :], products, -jnp.inf)
  return jnp.concatenate([jnp.zeros((queries.shape[0], 1), products.dtype), products], axis=1)
