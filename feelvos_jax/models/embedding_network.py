"""What FEELVOS and PML share: DeepLabv3+ features, pixel embeddings and the segment API.

`EmbeddingNetwork` holds the backbone, the ASPP + decoder (`deeplab`) and the embedding head
(`embedding`), so both models have the same variable names for that part and pretrained
weights load the same way. Subclasses add `segment` (FEELVOS: matching + dynamic head; PML: a
k-nearest-neighbour vote) and call `check_segment_inputs` first.

Batch norm: only the DeepLab part has it. With `freeze_backbone_batch_norm` (the paper) it uses
the running averages even when `train=True` and never changes `batch_stats`; otherwise
`train=True` normalises with batch statistics and updates the running averages (then
`mutable=['batch_stats']` is required).
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from feelvos_jax.models.deeplab import DeepLabV3PlusHead
from feelvos_jax.models.heads import EmbeddingHead


def check_shape(name: str, array: jax.Array, expected: tuple[int | None, ...],
                layout: str) -> None:
  """Raises ValueError unless `array` has rank len(expected) and the given sizes (None: any)."""
  shape = tuple(array.shape)
  if len(shape) != len(expected) or any(
      size is not None and size != actual for size, actual in zip(expected, shape)):
    wanted = tuple("?" if size is None else size for size in expected)
    raise ValueError(f"{name} must have shape {layout} = {wanted}, got {shape}")


class EmbeddingNetwork(nn.Module):
  """Frames -> (stride-4 features, embeddings); the base of `FEELVOS` and `NearestNeighborVOS`.

  Attributes:
    backbone: the feature extractor, called as backbone(frames in [-1, 1], train) ->
      (low-level features at stride 4, top features at output_stride); it has a
      `batch_norm_momentum` attribute that the ASPP and decoder share.
    output_stride: the backbone's output stride (8 or 16), which sets the ASPP rates.
    decoder_channels: ASPP and decoder width D.
    embedding_dim: embedding dimension E.
    max_objects: object slots besides the background; K = 1 + max_objects.
    freeze_backbone_batch_norm: DeepLab batch norm uses running averages even in training.
    dtype: compute dtype (parameters stay float32).
    matching_mesh: mesh for sharded global matching (None: unsharded, one device).
    matching_shard_mode: "" (unsharded), "query" or "reference"; see
      `matching.global_matching_sharded` (a subclass may refuse it).
  """
  backbone: nn.Module
  output_stride: int = 16
  decoder_channels: int = 256
  embedding_dim: int = 100
  max_objects: int = 10
  freeze_backbone_batch_norm: bool = True
  dtype: Any = jnp.float32
  matching_mesh: jax.sharding.Mesh | None = None
  matching_shard_mode: str = ""

  @property
  def num_slots(self) -> int:
    """K: the background slot plus max_objects object slots."""
    return 1 + self.max_objects

  def setup(self):
    self.deeplab = DeepLabV3PlusHead(
        self.decoder_channels, self.output_stride,
        batch_norm_momentum=self.backbone.batch_norm_momentum, dtype=self.dtype)
    self.embedding = EmbeddingHead(self.embedding_dim, dtype=self.dtype)

  def embed(self, frames: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """frames [B, H, W, 3] in [0, 255] -> (features [B, h, w, D], embeddings [B, h, w, E]).

    Both in the compute dtype; h, w = ceil(H / 4), ceil(W / 4).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f"frames must be RGB images of shape [B, H, W, 3], got {frames.shape}")
    x = (frames.astype(jnp.float32) / 127.5 - 1.0).astype(self.dtype)
    batch_norm_train = train and not self.freeze_backbone_batch_norm
    low_level, high_level = self.backbone(x, train=batch_norm_train)
    features = self.deeplab(low_level, high_level, train=batch_norm_train)
    return features, self.embedding(features)

  def check_segment_inputs(self, features: jax.Array, embeddings: jax.Array,
                           reference_embedding: jax.Array, reference_labels: jax.Array,
                           previous_embedding: jax.Array, previous_labels: jax.Array,
                           previous_probs: jax.Array,
                           num_objects: jax.Array) -> tuple[int, int, int, int]:
    """ValueError naming the argument unless the shapes are those of `segment`'s docstring;
    returns (B, h, w, E)."""
    check_shape("features", features, (None,) * 4, "[B, h, w, D]")
    batch, height, width = features.shape[:3]
    check_shape("embeddings", embeddings, (batch, height, width, None), "[B, h, w, E]")
    dim = embeddings.shape[-1]
    check_shape("reference_embedding", reference_embedding, (batch, None, None, dim),
                "[B, h', w', E]")
    check_shape("reference_labels", reference_labels,
                (batch,) + tuple(reference_embedding.shape[1:3]), "[B, h', w']")
    check_shape("previous_embedding", previous_embedding, (batch, height, width, dim),
                "[B, h, w, E]")
    check_shape("previous_labels", previous_labels, (batch, height, width), "[B, h, w]")
    check_shape("previous_probs", previous_probs, (batch, height, width, self.num_slots),
                "[B, h, w, K = 1 + config.model.max_objects]")
    check_shape("num_objects", num_objects, (batch,), "[B]")
    return batch, height, width, dim

  def __call__(self, current_frame: jax.Array, reference_embedding: jax.Array,
               reference_labels: jax.Array, previous_embedding: jax.Array,
               previous_labels: jax.Array, previous_probs: jax.Array,
               num_objects: jax.Array, train: bool = False) -> jax.Array:
    """embed(current_frame) then the subclass's segment: logits [B, ceil(H/4), ceil(W/4), K]
    (float32)."""
    features, embeddings = self.embed(current_frame, train=train)
    return self.segment(features, embeddings, reference_embedding, reference_labels,
                        previous_embedding, previous_labels, previous_probs, num_objects,
                        train=train)
