"""The FEELVOS network: DeepLabv3+ features, pixel embeddings, matching, dynamic head.

  embed(frames [B, H, W, 3])  ->  features [B, h, w, D], embeddings [B, h, w, E]
      frames / 127.5 - 1 -> backbone -> ASPP + decoder (stride-4 features, D channels)
      -> embedding head (E channels)                     h, w = ceil(H / 4), ceil(W / 4)
  segment(features, embeddings, reference and previous embeddings/labels, previous_probs,
          num_objects)  ->  logits [B, h, w, K], K = 1 + max_objects
      global matching of the embeddings against the reference frame's (per slot),
      local matching against the previous frame's (window, dilation), and per slot k the head
      input concat[features, global_k, previous_probs_k, local_k]; one head, vmapped over the
      slots; slots k > num_objects[b] get -inf.

CFBI options (Yang et al., ECCV 2020; `feelvos_jax/matching/cfbi.py`), each off by default; with all
off the network and its parameter tree are FEELVOS's. `background_matching` adds per slot the
distances to the pixels not of the slot, `matching_bias` learnable fg/bg biases inside the
distance, `local_windows` one local map per radius, `global_atrous_rate` global matching on a
strided grid of reference pixels, `instance_attention` channel gates of the head. With options
on, the per-slot head input is concat[features, global, previous probability, local map per
radius (one without `local_windows`), then with background matching the global background map
and a local background map per radius] (CFBI appends its background maps after the others too).
Background maps see the slots the model is given: when inference runs objects in chunks
(`inference.propagation`), a chunk's background map ignores the objects of the other chunks.

As the official code: background is slot 0 and is matched like any object; in training
(`train=True`) global matching uses at most `max_reference_pixels` random reference pixels per
slot (rng stream 'matching').

`embed`, `__call__` and the DeepLab part (the only one with batch norm; see its frozen-statistics
rule there) come from `embedding_network.EmbeddingNetwork`, shared with PML's model.

Precision: `dtype` is the compute dtype (float32 or bfloat16); parameters stay float32. In
bfloat16 the backbone, DeepLab part, embedding head and dynamic head compute in bfloat16
(float32 accumulation in their matmuls and convolutions, float32 batch-norm statistics), global
and plain local matching take bfloat16 matmul inputs with float32 squared norms, products,
minima and tanh (`matching`'s `dtype`), the head's last 1x1 layer and the returned logits are
float32. CFBI multi-local matching and instance guidance stay float32. Why and the measured
error: docs/models.md. Where the paper and the official code differ (the official code is
followed): docs/models.md.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from feelvos_jax import config_checks
from feelvos_jax import matching
from feelvos_jax.matching import cfbi
from feelvos_jax.models.embedding_network import EmbeddingNetwork
from feelvos_jax.models.heads import GatedObjectSegmentationHead
from feelvos_jax.models.heads import ObjectSegmentationHead


class FEELVOS(EmbeddingNetwork):
  """FEELVOS (Voigtlaender et al., CVPR 2019); see the module docstring.

  Attributes (besides those of `EmbeddingNetwork`: backbone, output_stride, decoder_channels,
  embedding_dim, max_objects, freeze_backbone_batch_norm, dtype, matching_mesh):
    window: local matching window radius (offsets in [-window, window]^2, times dilation).
    dilation: local matching dilation.
    max_reference_pixels: reference pixels per slot in training global matching (None: all).
    matching_chunk_size: query pixels per chunk in global matching (None: no chunking).
    head_channels, head_kernel_size, head_num_layers: the dynamic segmentation head.
    matching_shard_mode: "" (unsharded), "query" (query rows split over the mesh's first axis)
      or "reference" (reference pixels split, minima combined with `lax.pmin`); see
      `matching.global_matching_sharded`. The result equals the unsharded one.
    background_matching: CFBI: per slot also the global and local distances to the pixels
      NOT of that slot (`cfbi.background_minima`), as extra head input maps.
    matching_bias: CFBI: learnable scalar biases inside the distance,
      D = tanh((||e_p - e_q||^2 + b) / 2); params `matching_foreground_bias` (object slots)
      and `matching_background_bias` (slot 0), both initialised at 0 (`cfbi.add_matching_bias`).
    local_windows: CFBI multi-local matching: one local map per radius (one pass,
      `cfbi.multi_local_matching`); () keeps the single `window` map.
    global_atrous_rate: CFBI atrous matching: global matching uses the reference pixels on a
      grid of this stride (`cfbi.atrous_reference`), in training and inference. Inference's
      multi-frame reference buffer (frames stacked along the height) is gridded as one image:
      every frame keeps the same grid when its stride-4 height is a multiple of the rate (true
      for rates 1, 2, 4 with frames padded to the output stride).
    instance_attention: CFBI instance-level attention: per-slot channel gates of the head from
      the pooled fg/bg embeddings of the reference and previous frames (`cfbi.instance_guidance`,
      `heads.DynamicSegmentationHead`).
  """
  window: int = 15
  dilation: int = 1
  max_reference_pixels: int | None = 1024
  matching_chunk_size: int | None = 4096
  head_channels: int = 256
  head_kernel_size: int = 7
  head_num_layers: int = 4
  background_matching: bool = False
  matching_bias: bool = False
  local_windows: tuple[int, ...] = ()
  global_atrous_rate: int = 1
  instance_attention: bool = False

  @property
  def supports_incremental_matching(self) -> bool:
    """Whether an interactive session may split this model's step into stored, label-free
    parts (`feelvos_jax.inference.interactive`): plain FEELVOS matching and head, unsharded;
    False with any CFBI option or sharded matching (the session then runs the whole step)."""
    return not (self.background_matching or self.matching_bias or self.local_windows
                or self.global_atrous_rate != 1 or self.instance_attention
                or self.matching_shard_mode)

  def setup(self):
    super().setup()
    head = GatedObjectSegmentationHead if self.instance_attention else ObjectSegmentationHead
    self.segmentation_head = head(
        num_layers=self.head_num_layers, channels=self.head_channels,
        kernel_size=self.head_kernel_size, dtype=self.dtype)
    config_checks.check_int_tuple(self.local_windows, "config.model.local_windows", low=0)
    config_checks.check_int(self.global_atrous_rate, "config.model.global_atrous_rate", 1)
    if self.matching_bias:
      self.matching_foreground_bias = self.param("matching_foreground_bias",
                                                 nn.initializers.zeros, ())
      self.matching_background_bias = self.param("matching_background_bias",
                                                 nn.initializers.zeros, ())

  def segment(self, features: jax.Array, embeddings: jax.Array,
              reference_embedding: jax.Array, reference_labels: jax.Array,
              previous_embedding: jax.Array, previous_labels: jax.Array,
              previous_probs: jax.Array, num_objects: jax.Array,
              train: bool = False) -> jax.Array:
    """Logits [B, h, w, K] (float32) of the frame whose features and embeddings are given.

    Args:
      features: [B, h, w, D] decoder features of the current frame.
      embeddings: [B, h, w, E] its embeddings.
      reference_embedding: [B, h', w', E] embeddings of the reference frame.
      reference_labels: [B, h', w'] int stride-4 reference labels (0..N, 255 ignored).
      previous_embedding: [B, h, w, E] embeddings of the previous frame.
      previous_labels: [B, h, w] int stride-4 labels of the previous frame.
      previous_probs: [B, h, w, K] previous-frame probabilities per slot.
      num_objects: [B] int objects per sample, excluding the background.
      train: subsample the reference pixels of global matching (rng stream 'matching').
    """
    self.check_segment_inputs(features, embeddings, reference_embedding, reference_labels,
                              previous_embedding, previous_labels, previous_probs, num_objects)

    object_maps, guidance = self._head_inputs(
        embeddings, reference_embedding, reference_labels, previous_embedding, previous_labels,
        previous_probs, train)
    if guidance is None:
      logits = self.segmentation_head(features, object_maps)
    else:
      logits = self.segmentation_head(features, object_maps, guidance)
    present = jnp.arange(self.num_slots)[None, :] <= num_objects[:, None]
    return jnp.where(present[:, None, None, :], logits.astype(jnp.float32), -jnp.inf)

  def _head_inputs(self, embeddings: jax.Array, reference_embedding: jax.Array,
                   reference_labels: jax.Array, previous_embedding: jax.Array,
                   previous_labels: jax.Array, previous_probs: jax.Array,
                   train: bool) -> tuple[jax.Array, jax.Array | None]:
    """(object_maps [B, h, w, K, M] in the compute dtype, guidance [B, K, 4E] float32 or None).

    Maps per slot: global, previous probability, local (one per radius), then with
    background matching the global and per-radius local background maps; the guidance only
    with instance attention. Arguments as in `segment`.
    """
    squared = self.background_matching or self.matching_bias
    global_references, global_labels = reference_embedding, reference_labels
    if self.global_atrous_rate > 1:
      global_references, global_labels = cfbi.atrous_reference(
          reference_embedding, reference_labels, self.global_atrous_rate)
    global_maps = self._global_matching(embeddings, global_references, global_labels, train,
                                        squared)
    local_maps = self._local_matching(embeddings, previous_embedding, previous_labels, squared)
    if squared:
      global_maps, global_background = self._distances(global_maps)
      local_maps, local_background = self._distances(local_maps)
    num_windows = local_maps.shape[-2]
    maps = [global_maps, previous_probs.astype(jnp.float32)]
    maps += [local_maps[..., i, :] for i in range(num_windows)]
    if self.background_matching:
      maps += [global_background] + [local_background[..., i, :] for i in range(num_windows)]
    object_maps = jnp.stack(maps, axis=-1).astype(self.dtype)
    if not self.instance_attention:
      return object_maps, None
    guidance = jax.vmap(functools.partial(cfbi.instance_guidance, num_objects=self.num_slots))(
        reference_embedding.astype(jnp.float32), reference_labels,
        previous_embedding.astype(jnp.float32), previous_labels)
    return object_maps, guidance

  def _distances(self, squared: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """[..., K] minimum squared distances -> (distance maps [..., K], background-matching
    maps [..., K] or None), with the learnable biases when `matching_bias`."""
    if self.matching_bias:
      squared = cfbi.add_matching_bias(squared, self.matching_foreground_bias,
                                       self.matching_background_bias)
    background = None
    if self.background_matching:
      background = matching.distance_from_squared(cfbi.background_minima(squared))
    return matching.distance_from_squared(squared), background

  def _local_matching(self, embeddings: jax.Array, previous_embedding: jax.Array,
                      previous_labels: jax.Array, squared: bool) -> jax.Array:
    """[B, h, w, L, K] local matching maps, one per window radius (L = 1 without
    `local_windows`); minimum squared distances if `squared`."""
    queries = embeddings.astype(jnp.float32)
    previous = previous_embedding.astype(jnp.float32)
    if self.local_windows:
      return jax.vmap(lambda query, prev, labels: cfbi.multi_local_matching(
          query, prev, labels, self.num_slots, windows=self.local_windows,
          dilation=self.dilation, squared=squared))(queries, previous, previous_labels)
    maps = jax.vmap(lambda query, prev, labels: matching.local_matching(
        query, prev, labels, self.num_slots, window=self.window, dilation=self.dilation,
        dtype=self.dtype, squared=squared))(queries, previous, previous_labels)
    return maps[..., None, :]

  def _global_matching(self, embeddings: jax.Array, reference_embedding: jax.Array,
                       reference_labels: jax.Array, train: bool,
                       squared: bool = False) -> jax.Array:
    """[B, h, w, K] global matching maps (minimum squared distances if `squared`),
    reference pixels subsampled when training."""
    subsample = train and self.max_reference_pixels is not None
    rngs = (jax.random.split(self.make_rng("matching"), embeddings.shape[0]) if subsample
            else None)

    def match(query, reference, labels, rng):
      options = dict(max_reference_pixels=self.max_reference_pixels if subsample else None,
                     rng=rng, chunk_size=self.matching_chunk_size, dtype=self.dtype,
                     squared=squared)
      if self.matching_shard_mode:
        return matching.global_matching_sharded(
            query, reference, labels, self.num_slots, mesh=self.matching_mesh,
            axis_name=self.matching_mesh.axis_names[0], mode=self.matching_shard_mode,
            **options)
      return matching.global_matching(query, reference, labels, self.num_slots, **options)

    queries = embeddings.astype(jnp.float32)
    references = reference_embedding.astype(jnp.float32)
    if self.matching_shard_mode:
      # One shard_map per sample: shard_map's pmin path does not batch under vmap.
      return jnp.stack([
          match(queries[b], references[b], reference_labels[b],
                rngs[b] if subsample else None) for b in range(queries.shape[0])])
    return jax.vmap(match, in_axes=(0, 0, 0, 0 if subsample else None))(
        queries, references, reference_labels, rngs)
