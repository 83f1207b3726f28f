"""PML mode: pixels labelled by a k-nearest-neighbour vote in embedding space.

PML (Chen, Pont-Tuset, Montes and Van Gool, "Blazingly Fast Video Object Segmentation with
Pixel-Wise Metric Learning", CVPR 2018) has no segmentation head: a pixel takes the labels of
its nearest reference pixels in a learned embedding space. Selected by
`config.model.head = "nearest_neighbor"`; trained with `losses.triplet_loss`.

  embed(frames [B, H, W, 3])  ->  features [B, h, w, D], embeddings [B, h, w, E]
      the same backbone, DeepLabv3+ decoder and embedding head as `FEELVOS.embed` (same
      variable names, so pretrained weights load the same way).
  segment(...)  ->  logits [B, h, w, K], K = 1 + max_objects
      per pixel, the k = `nearest_neighbors` reference pixels nearest in squared Euclidean
      distance vote for their slots (`nearest_neighbor_votes`).

Reference pixels: the labelled pixels of the reference frame and, with
`previous_frame_references` (default, PML's online adaptation), also those of the previous
frame, labelled by its predicted masks in inference (the ground truth in training), so that
appearance changes are followed from frame to frame. Pixels labelled IGNORE_LABEL and labels
above the sample's `num_objects` never vote.

Logits: log(v_s + VOTE_SMOOTHING) per slot s, with v_s the weighted votes (each of the k
neighbours gives its slot 1 + 2**-(rank + 1), rank 0 the nearest). softmax gives the smoothed
vote fractions (v_s + c) / sum_s' (v_s' + c) over the present slots; argmax the slot with the
most votes, ties going to the slot whose nearest voter is nearest (the rank bonuses sum to less
than one vote and no two sets of ranks have the same bonus). Padded slots (k > num_objects)
get -inf as in FEELVOS. With k = 1 the label is the slot of the nearest reference pixel, i.e.
the per-slot minimum of global matching (`feelvos_jax.matching.global_matching`).

Object chunks in inference (`propagation.segment_logits`, videos with more objects than the
largest bucket): each chunk votes among the background and its own objects (the others are
IGNORE_LABEL in its labels), and the chunks' logits are merged; the result then differs from
one vote over all objects. Sharded matching (`config.matching.shard_axis`) is not supported.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp

from feelvos_jax.matching import distances
from feelvos_jax.models.embedding_network import EmbeddingNetwork

VOTE_SMOOTHING = 0.1
"""Added to each slot's votes before the log (softmax: smoothed vote fractions)."""


def vote_weights(k: int) -> jax.Array:
  """[k] float32 weight of the neighbour of each rank: 1 + 2**-(rank + 1)."""
  return 1.0 + jnp.exp2(-(jnp.arange(k, dtype=jnp.float32) + 1.0))


def nearest_neighbor_votes(query: jax.Array, reference: jax.Array, reference_labels: jax.Array,
                           num_slots: int, *, k: int,
                           chunk_size: int | None = None) -> jax.Array:
  """Weighted k-nearest-neighbour votes of every query pixel.

  Args:
    query: [Q, E] embeddings.
    reference: [R, E] embeddings of the reference pixels.
    reference_labels: [R] int slots 0..num_slots-1; any other value never votes.
    num_slots: K, the number of slots (static).
    k: neighbours per query pixel (static, >= 1); with fewer than k voting reference pixels
      only those vote.
    chunk_size: query pixels per step (None: all at once); memory chunk_size x R. The
      result does not depend on it.

  Returns:
    [Q, K] float32: per slot, the sum of `vote_weights(k)[rank]` over the slot's pixels among
    the k nearest in squared Euclidean distance (ties to the lower reference index).
  """
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  reference_labels = jnp.asarray(reference_labels)
  distances.check_int("k (config.model.nearest_neighbors)", k, 1)
  if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
    raise ValueError(f"query and reference must be [Q, E] and [R, E], got {query.shape} and "
                     f"{reference.shape}")
  if reference_labels.shape != reference.shape[:1]:
    raise ValueError(f"reference_labels must be [R] = {reference.shape[:1]}, got "
                     f"{reference_labels.shape}")
  num_queries, num_pixels = query.shape[0], reference.shape[0]
  k = min(k, num_pixels)
  labels = reference_labels.astype(jnp.int32)
  votes_ok = (labels >= 0) & (labels < num_slots)
  # matching's squared-distance pieces (power-of-two rescaling against overflow, float32
  # matmul), used to the end of this function.
  exponent = distances.scale_exponent(query, reference)
  reference, reference_sq = distances.rescale(reference, exponent, jnp.float32)
  query, _ = distances.rescale(query, exponent, jnp.float32)
  # ||x - y||^2 - ||x||^2: the query's own norm does not change its ranking.
  reference_sq = jnp.where(votes_ok, reference_sq, jnp.inf)
  weights = vote_weights(k)

  def chunk_votes(rows: jax.Array) -> jax.Array:
    squared = reference_sq[None, :] - 2.0 * distances.dot(rows, reference, "qc,rc->qr")
    _, nearest = lax.top_k(-squared, k)
    voters = jnp.where(votes_ok[nearest], labels[nearest], -1)
    return jnp.einsum("qnk,n->qk", jax.nn.one_hot(voters, num_slots, dtype=jnp.float32),
                      weights)

  chunk = num_queries if chunk_size is None else min(chunk_size, num_queries)
  num_chunks = -(-num_queries // chunk)
  padded = jnp.pad(query, ((0, num_chunks * chunk - num_queries), (0, 0)))
  votes = lax.map(chunk_votes, padded.reshape(num_chunks, chunk, -1))
  return votes.reshape(num_chunks * chunk, num_slots)[:num_queries]


class NearestNeighborVOS(EmbeddingNetwork):
  """PML's nearest-neighbour segmentation on FEELVOS's embedding network; see the module
  docstring. Same public API as `FEELVOS` (`embed`, `segment`, `__call__`, `num_slots`).

  Attributes (besides those of `EmbeddingNetwork`: backbone, output_stride, decoder_channels,
  embedding_dim, max_objects, freeze_backbone_batch_norm, dtype):
    nearest_neighbors: k, reference pixels voting for each pixel.
    previous_frame_references: the previous frame's labelled pixels vote too (PML's online
      adaptation); otherwise only the reference frame's.
    matching_chunk_size: query pixels per step of the vote (None: all at once).
    matching_mesh, matching_shard_mode: accepted so that `video_propagation.sharded_matching_model`
      can clone the model; a non-empty shard mode is refused by `segment`.
  """
  nearest_neighbors: int = 5
  previous_frame_references: bool = True
  matching_chunk_size: int | None = 4096

  @property
  def supports_incremental_matching(self) -> bool:
    """False: the vote has no FEELVOS matching or head to split, so an interactive session
    runs the whole `segment` step (`feelvos_jax.inference.interactive`)."""
    return False

  def segment(self, features: jax.Array, embeddings: jax.Array,
              reference_embedding: jax.Array, reference_labels: jax.Array,
              previous_embedding: jax.Array, previous_labels: jax.Array,
              previous_probs: jax.Array, num_objects: jax.Array,
              train: bool = False) -> jax.Array:
    """Logits [B, h, w, K] (float32) of the k-nearest-neighbour vote (module docstring).

    Args:
      features: [B, h, w, D] decoder features of the current frame (shape-checked only).
      embeddings: [B, h, w, E] its embeddings.
      reference_embedding: [B, h', w', E] embeddings of the reference frame.
      reference_labels: [B, h', w'] int stride-4 reference labels (0..N, 255 ignored).
      previous_embedding: [B, h, w, E] embeddings of the previous frame.
      previous_labels: [B, h, w] int stride-4 labels of the previous frame.
      previous_probs: [B, h, w, K] (shape-checked only: the vote does not read it).
      num_objects: [B] int objects per sample, excluding the background.
      train: unused (the vote has no parameters and uses every reference pixel); part of the
        shared model API.
    """
    del train
    if self.matching_shard_mode:
      raise ValueError(f"config.matching.shard_axis={self.matching_shard_mode!r} is not "
                       f"supported with config.model.head='nearest_neighbor'; use ''.")
    batch, height, width, dim = self.check_segment_inputs(
        features, embeddings, reference_embedding, reference_labels, previous_embedding,
        previous_labels, previous_probs, num_objects)

    references = reference_embedding.reshape(batch, -1, dim)
    labels = reference_labels.reshape(batch, -1).astype(jnp.int32)
    if self.previous_frame_references:
      references = jnp.concatenate([references, previous_embedding.reshape(batch, -1, dim)], 1)
      labels = jnp.concatenate([labels, previous_labels.reshape(batch, -1).astype(jnp.int32)], 1)
    labels = jnp.where(labels <= num_objects[:, None], labels, -1)
    vote = functools.partial(nearest_neighbor_votes, num_slots=self.num_slots,
                             k=self.nearest_neighbors, chunk_size=self.matching_chunk_size)
    votes = jax.vmap(vote)(embeddings.reshape(batch, -1, dim).astype(jnp.float32),
                           references.astype(jnp.float32), labels)
    logits = jnp.log(votes + VOTE_SMOOTHING).reshape(batch, height, width, self.num_slots)
    present = jnp.arange(self.num_slots)[None, :] <= num_objects[:, None]
    return jnp.where(present[:, None, None, :], logits, -jnp.inf)
