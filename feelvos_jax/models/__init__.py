"""FEELVOS models (Flax Linen): `build_model(config.model)` and the backbone registry.

Modules: `layers` (padded convs, conv + BN blocks, aligned bilinear resize), `xception`
(DeepLabv3+ Xception-65), `resnet` (atrous ResNet-50/101), `tiny` (a small CNN for tests and the
synthetic demo), `deeplab` (ASPP + decoder), `heads` (embedding and dynamic segmentation heads),
`embedding_network` (features and embeddings: the part both models share), `feelvos` (the
network and its `embed` / `segment` / `__call__` API, with the CFBI options of
`matching/cfbi.py`), `nearest_neighbor` (PML: the same embeddings, a k-nearest-neighbour vote
instead of the head, same API), `upsampling` (stride-4 logits to the label grid), `stm` (STM:
memory encoders, space-time memory read, decoder, soft aggregation), `rde` (RDE-VOS: STM plus
the recurrent dynamic embedding).
Design notes: docs/models.md.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from feelvos_jax import config_checks
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax.models.feelvos import FEELVOS
from feelvos_jax.models.nearest_neighbor import NearestNeighborVOS
from feelvos_jax.models.rde import AFFINITIES as RDE_AFFINITIES
from feelvos_jax.models.rde import NORMS as RDE_NORMS
from feelvos_jax.models.rde import RDE
from feelvos_jax.models.resnet import ResNet
from feelvos_jax.models.stm import ENCODER_DEPTHS as STM_ENCODER_DEPTHS
from feelvos_jax.models.stm import STM
from feelvos_jax.models.tiny import TinyBackbone
from feelvos_jax.models.xception import Xception65

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "xception65": Xception65,
    "resnet50": functools.partial(ResNet, depth=50),
    "resnet101": functools.partial(ResNet, depth=101),
    "tiny": TinyBackbone,
}
"""Backbone constructors by `config.model.backbone`; called with output_stride and dtype."""

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
"""Compute dtypes by `config.model.dtype`."""


HEADS = ("feelvos", "nearest_neighbor", "stm", "rde")
"""The models by `config.model.head`."""


def build_model(model_config: ml_collections.ConfigDict
                ) -> FEELVOS | NearestNeighborVOS | STM | RDE:
  """The module configured by `config.model` (see configs/common.py): `FEELVOS`,
  `NearestNeighborVOS` (PML) for `config.model.head = "nearest_neighbor"`, `STM` for "stm",
  `RDE` for "rde"."""
  config_checks.one_of(model_config, "model.backbone", sorted(BACKBONES))
  config_checks.one_of(model_config, "model.output_stride", (8, 16))
  config_checks.one_of(model_config, "model.dtype", sorted(DTYPES))
  config_checks.one_of(model_config, "model.head", HEADS)
  for key in ("decoder_channels", "embedding_dim", "max_objects"):
    config_checks.positive_int(model_config, f"model.{key}")
  if model_config.head in ("stm", "rde"):
    return _memory_model(model_config)
  if model_config.head == "nearest_neighbor":
    return _nearest_neighbor_model(model_config)
  for key in ("head_channels", "head_kernel_size", "head_num_layers", "dilation",
              "global_atrous_rate"):
    config_checks.positive_int(model_config, f"model.{key}")
  config_checks.int_at_least(model_config, "model.window", 0)
  config_checks.int_tuple(model_config, "model.local_windows", low=0)
  return FEELVOS(
      **_embedding_network_options(model_config),
      window=model_config.window,
      dilation=model_config.dilation,
      max_reference_pixels=model_config.max_reference_pixels or None,
      head_channels=model_config.head_channels,
      head_kernel_size=model_config.head_kernel_size,
      head_num_layers=model_config.head_num_layers,
      background_matching=model_config.background_matching,
      matching_bias=model_config.matching_bias,
      local_windows=tuple(model_config.local_windows),
      global_atrous_rate=model_config.global_atrous_rate,
      instance_attention=model_config.instance_attention)


def example_inputs(model: nn.Module) -> tuple[jax.Array, ...]:
  """Small zero inputs in the argument order of `FEELVOS.__call__`, for `model.init`: frames
  [1, S, S, 3] (S = 4 x max(4, output stride)), embeddings, labels and probabilities at stride 4,
  num_objects [1]; for a memory model (`STM.__call__`) frames, two memory frames
  [1, 2, S, S, 3] with their probabilities [1, 2, S, S, K] and num_objects. The parameters do
  not depend on the spatial size, so one size serves every run (training initialises with it
  too)."""
  size = 4 * max(FEATURE_STRIDE, model.output_stride)
  if getattr(model, "is_memory_model", False):
    frames = jnp.zeros((1, size, size, 3), jnp.float32)
    memory = jnp.zeros((1, 2, size, size, 3), jnp.float32)
    return (frames, memory, jnp.zeros((1, 2, size, size, model.num_slots), jnp.float32),
            jnp.ones((1,), jnp.int32))
  h = size // FEATURE_STRIDE
  embedding = jnp.zeros((1, h, h, model.embedding_dim), jnp.float32)
  labels = jnp.zeros((1, h, h), jnp.int32)
  return (jnp.zeros((1, size, size, 3), jnp.float32), embedding, labels, embedding, labels,
          jnp.zeros((1, h, h, model.num_slots), jnp.float32), jnp.ones((1,), jnp.int32))


def _nearest_neighbor_model(model_config: ml_collections.ConfigDict) -> NearestNeighborVOS:
  """The PML module of `config.model` (the keys both models read already checked)."""
  config_checks.positive_int(model_config, "model.nearest_neighbors")
  cfbi_defaults = dict(background_matching=False, matching_bias=False, local_windows=(),
                       global_atrous_rate=1, instance_attention=False)
  for key, default in cfbi_defaults.items():
    value = model_config.get(key, default)
    if (tuple(value) if key == "local_windows" else value) != default:
      raise ValueError(f"config.model.{key}={value!r} is a FEELVOS head option; "
                       f"config.model.head='nearest_neighbor' needs {default!r}")
  return NearestNeighborVOS(**_embedding_network_options(model_config),
                            nearest_neighbors=model_config.nearest_neighbors)


def _memory_model(model_config: ml_collections.ConfigDict) -> STM | RDE:
  """The STM or RDE module of `config.model` (the keys every model reads already checked)."""
  config_checks.one_of(model_config, "model.backbone", sorted(STM_ENCODER_DEPTHS))
  if model_config.output_stride != 16:
    raise ValueError(f"config.model.output_stride={model_config.output_stride}: "
                     f"config.model.head={model_config.head!r} encodes at stride 16")
  config_checks.positive_int(model_config, "model.memory_frames")
  config_checks.positive_int(model_config, "model.memory_every")
  config_checks.int_at_least(model_config, "model.memory_key_dim", 0)
  options = dict(backbone=model_config.backbone, decoder_channels=model_config.decoder_channels,
                 max_objects=model_config.max_objects, memory_frames=model_config.memory_frames,
                 memory_every=model_config.memory_every, key_dim=model_config.memory_key_dim,
                 matching_chunk_size=model_config.matching_chunk_size or None,
                 freeze_backbone_batch_norm=model_config.freeze_backbone_batch_norm,
                 dtype=DTYPES[model_config.dtype])
  if model_config.head == "stm":
    return STM(**options)
  return RDE(**options,
             affinity=config_checks.one_of(model_config, "model.rde_affinity", RDE_AFFINITIES),
             norm=config_checks.one_of(model_config, "model.rde_norm", RDE_NORMS))


def _embedding_network_options(model_config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments both models take (`EmbeddingNetwork`'s, plus matching_chunk_size)."""
  dtype = DTYPES[model_config.dtype]
  return dict(
      backbone=BACKBONES[model_config.backbone](output_stride=model_config.output_stride,
                                                dtype=dtype),
      output_stride=model_config.output_stride,
      decoder_channels=model_config.decoder_channels,
      embedding_dim=model_config.embedding_dim,
      max_objects=model_config.max_objects,
      matching_chunk_size=model_config.matching_chunk_size or None,
      freeze_backbone_batch_norm=model_config.freeze_backbone_batch_norm,
      dtype=dtype)


__all__ = ["BACKBONES", "FEELVOS", "HEADS", "NearestNeighborVOS", "RDE", "STM", "build_model",
           "example_inputs"]
