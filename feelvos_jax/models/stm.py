"""STM (Oh et al., ICCV 2019): space-time memory networks, `config.model.head = "stm"`.

  encode_query(frames [B, H, W, 3])  ->  {key [B, h16, w16, C_k], value [B, h16, w16, C_v],
      skip8 [B, H/8, W/8, C_8], skip4 [B, H/4, W/4, C_4]}
  encode_memory(frames [B, H, W, 3], probs [B, H, W, K])  ->  keys [B, M, h16, w16, C_k],
      values [B, M, h16, w16, C_v]: object slot o = 1..M encoded from the frame, its
      probability map and the clipped sum of the other objects' (official `memorize`)
  segment_memory(query, memory keys [B, T, M, h16, w16, C_k], values [B, T, M, h16, w16, C_v],
      valid [B, T], num_objects [B])  ->  logits [B, H/4, W/4, K], K = 1 + max_objects
      per object: the space-time memory read (`matching.memory_read`) over the T x h16 x w16
      positions of its memory, concatenated with the query value, decoded (refinement
      modules at stride 8 and 4, one decoder vmapped over the object slots) to two logits;
      p_o = softmax(...)[1], then STM's soft aggregation of the p_o (`soft_aggregation`).
  __call__(query frames, memory frames [B, T, H, W, 3], memory probs [B, T, H, W, K],
      num_objects)  ->  logits: encode_memory of every memory frame, then segment_memory.

Encoders (`STMEncoder`): a ResNet-50/101 stem and layer1..layer3 (stride 16, 1024 channels;
torchvision names, so `weights.py` loads torchvision files into them), or a narrow stand-in
of the same layout for `backbone = "tiny"`. The memory encoder adds `conv1_m(mask)` and
`conv1_o(others)` (7x7/2, no bias) to `conv1(frame)` before `bn1`, as the official code.
Key and value: 3x3 convs to C/8 and C/2 channels of the encoder's output (128 and 512 for
ResNet). Frames are normalised with the ImageNet mean and deviation (official code).

Padded slots (k > num_objects) get -inf; memory frames with valid = False are never read.
Design notes (what differs from the official code, memory management): docs/models.md.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feelvos_jax.matching import memory_read
from feelvos_jax.models.layers import ConvBN
from feelvos_jax.models.layers import conv2d_same
from feelvos_jax.models.resnet import Bottleneck
from feelvos_jax.models.resnet import LAYER_WIDTHS
from feelvos_jax.models.resnet import RESNET_DEPTHS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROBABILITY_CLIP = 1e-7
"""Soft aggregation clips probabilities to [c, 1 - c] before the logit (official code)."""

ENCODER_DEPTHS = {"resnet50": 50, "resnet101": 101, "tiny": 0}
"""STM encoders by `config.model.backbone` (0: the tiny stand-in)."""

TINY_WIDTHS = (16, 32, 64, 128)
"""Tiny encoder widths: stem, layer1 (stride 4), layer2 (stride 8), layer3 (stride 16)."""


def soft_aggregation(probs: jax.Array, present: jax.Array) -> jax.Array:
  """STM's merge of independent object probabilities into logits over K slots.

  Args:
    probs: [..., M] foreground probability of object slots 1..M.
    present: [..., M] bool (broadcastable), the slots that exist.

  Returns:
    [..., 1 + M] float32: logit(clip(q)) with q_0 = prod_o (1 - p_o) over present objects
    and q_o = p_o, clip to [1e-7, 1 - 1e-7] and logit(q) = log(q / (1 - q)); absent slots
    -inf.
  """
  probs = jnp.where(present, probs.astype(jnp.float32), 0.0)
  background = jnp.prod(1.0 - probs, axis=-1, keepdims=True)
  merged = jnp.clip(jnp.concatenate([background, probs], -1), PROBABILITY_CLIP,
                    1.0 - PROBABILITY_CLIP)
  logits = jnp.log(merged / (1.0 - merged))
  keep = jnp.concatenate([jnp.ones_like(present[..., :1]), present], -1)
  return jnp.where(keep, logits, -jnp.inf)


def normalise_frames(frames: jax.Array, dtype: Any) -> jax.Array:
  """[..., 3] values in [0, 255] -> ImageNet-normalised, in `dtype`."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return ((frames.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


class STMEncoder(nn.Module):
  """Frames (and masks) -> (skip4 [B, H/4, W/4, C_4], skip8 [B, H/8, W/8, C_8], top
  [B, H/16, W/16, C]).

  depth 50 / 101: torchvision ResNet stem, layer1..layer3 (names `conv1`, `bn1`,
  `layer<l>_<b>` as `resnet.ResNet`); depth 0: the tiny stand-in (`conv1`, `bn1`, then one
  3x3 ConvBN per layer `layer1`..`layer3`). With `with_masks`, `conv1_m` and `conv1_o` take the
  object's and the other objects' masks.
  """
  depth: int = 50
  with_masks: bool = False
  batch_norm_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, masks: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, H, W, 3] normalised; masks [B, H, W, 2] (object, others) with `with_masks`."""
    stem = 64 if self.depth else TINY_WIDTHS[0]
    x = conv2d_same(stem, 7, stride=2, dtype=self.dtype, name="conv1")(x)
    if self.with_masks:
      masks = masks.astype(self.dtype)
      x = x + conv2d_same(stem, 7, stride=2, dtype=self.dtype, name="conv1_m")(masks[..., :1])
      x = x + conv2d_same(stem, 7, stride=2, dtype=self.dtype, name="conv1_o")(masks[..., 1:])
    x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                     epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = []
    for layer in range(1, 4):
      stride = 1 if layer == 1 else 2
      if self.depth == 0:
        x = ConvBN(TINY_WIDTHS[layer], 3, stride=stride, name=f"layer{layer}",
                   batch_norm_momentum=self.batch_norm_momentum, dtype=self.dtype)(x, train)
      else:
        for block in range(RESNET_DEPTHS[self.depth][layer - 1]):
          x = Bottleneck(LAYER_WIDTHS[layer - 1], stride=stride if block == 0 else 1,
                         downsample=block == 0, batch_norm_momentum=self.batch_norm_momentum,
                         dtype=self.dtype, name=f"layer{layer}_{block}")(x, train)
      outputs.append(x)
    return tuple(outputs)


class KeyValue(nn.Module):
  """[B, h, w, C] -> (key [B, h, w, key_dim], value [B, h, w, value_dim]): 3x3 convs with bias
  (official `KeyValue`: `Key`, `Value`)."""
  key_dim: int
  value_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    key = conv2d_same(self.key_dim, 3, use_bias=True, dtype=self.dtype, name="key")(x)
    value = conv2d_same(self.value_dim, 3, use_bias=True, dtype=self.dtype, name="value")(x)
    return key, value


class ResBlock(nn.Module):
  """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias (official `ResBlock`, same width)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    r = conv2d_same(width, 3, use_bias=True, dtype=self.dtype, name="conv1")(nn.relu(x))
    r = conv2d_same(width, 3, use_bias=True, dtype=self.dtype, name="conv2")(nn.relu(r))
    return x + r


def upsample2(x: jax.Array) -> jax.Array:
  """[B, h, w, C] -> [B, 2h, 2w, C], bilinear with half-pixel centres (align_corners=False)."""
  batch, height, width, channels = x.shape
  return jax.image.resize(x, (batch, 2 * height, 2 * width, channels), "bilinear")


class Refine(nn.Module):
  """Refinement module: ResFS(convFS(skip)) + upsample2(coarse), then ResMM (official
  `Refine`)."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, skip: jax.Array, coarse: jax.Array) -> jax.Array:
    s = conv2d_same(self.channels, 3, use_bias=True, dtype=self.dtype, name="convFS")(skip)
    s = ResBlock(dtype=self.dtype, name="ResFS")(s)
    coarse = upsample2(coarse)[:, :s.shape[1], :s.shape[2]]
    return ResBlock(dtype=self.dtype, name="ResMM")(s + coarse)


class Decoder(nn.Module):
  """One object: (read ++ query value [B, h16, w16, 2 C_v], skip8, skip4) -> two logits
  [B, H/4, W/4, 2] (background, object), float32 (official `Decoder` without the final x4
  upsampling)."""
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, memory_out: jax.Array, skip8: jax.Array, skip4: jax.Array) -> jax.Array:
    m4 = conv2d_same(self.channels, 3, use_bias=True, dtype=self.dtype,
                     name="convFM")(memory_out.astype(self.dtype))
    m4 = ResBlock(dtype=self.dtype, name="ResMM")(m4)
    m3 = Refine(self.channels, dtype=self.dtype, name="RF3")(skip8, m4)
    m2 = Refine(self.channels, dtype=self.dtype, name="RF2")(skip4, m3)
    return conv2d_same(2, 3, use_bias=True, dtype=jnp.float32, name="pred2")(
        nn.relu(m2).astype(jnp.float32))


ObjectDecoder = nn.vmap(
    Decoder,
    variable_axes={"params": None},
    split_rngs={"params": False},
    in_axes=(1, None, None),
    out_axes=1)
"""Decoder over object slots: (memory_out [B, M, h16, w16, 2 C_v], skip8, skip4) -> logits
[B, M, H/4, W/4, 2], one set of weights."""


class STM(nn.Module):
  """STM; see the module docstring.

  Attributes:
    backbone: "resnet50", "resnet101" or "tiny" (`ENCODER_DEPTHS`).
    decoder_channels: decoder width (paper: 256).
    max_objects: object slots besides the background; K = 1 + max_objects.
    memory_frames: frames the inference memory keeps besides the previous frame (read by
      `inference.memory_propagation`).
    memory_every: every N-th frame joins the inference memory (paper: 5).
    key_dim: key channels C_k (0: C/8 of the encoder's output, STM's 128 for ResNet-50;
      RDE-VOS uses 64).
    matching_chunk_size: query positions per step of the memory read (None: all).
    freeze_backbone_batch_norm: encoder batch norm uses running averages in training.
    dtype: compute dtype (parameters float32; the read and the logits in float32).
    matching_mesh, matching_shard_mode: sharded memory read (`memory_read_sharded`), as
      FEELVOS's global matching.
  """
  backbone: str = "resnet50"
  decoder_channels: int = 256
  max_objects: int = 10
  memory_frames: int = 20
  memory_every: int = 5
  key_dim: int = 0
  matching_chunk_size: int | None = 4096
  freeze_backbone_batch_norm: bool = True
  dtype: Any = jnp.float32
  matching_mesh: jax.sharding.Mesh | None = None
  matching_shard_mode: str = ""

  output_stride = 16
  is_memory_model = True
  recurrent_embedding = False

  @property
  def num_slots(self) -> int:
    return 1 + self.max_objects

  @property
  def supports_incremental_matching(self) -> bool:
    """False: an interactive session has no FEELVOS matching to split here."""
    return False

  def setup(self):
    depth = ENCODER_DEPTHS[self.backbone]
    momentum = 0.9 if depth else 0.99
    self.query_encoder = STMEncoder(depth, batch_norm_momentum=momentum, dtype=self.dtype)
    self.memory_encoder = STMEncoder(depth, with_masks=True, batch_norm_momentum=momentum,
                                     dtype=self.dtype)
    channels = 1024 if depth else TINY_WIDTHS[3]
    key_dim = self.key_dim or channels // 8
    self.query_key_value = KeyValue(key_dim, channels // 2, dtype=self.dtype)
    self.memory_key_value = KeyValue(key_dim, channels // 2, dtype=self.dtype)
    self.decoder = ObjectDecoder(self.decoder_channels, dtype=self.dtype)

  def _bn_train(self, train: bool) -> bool:
    return train and not self.freeze_backbone_batch_norm

  def encode_query(self, frames: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """frames [B, H, W, 3] in [0, 255] (H, W multiples of 16) -> {key, value, skip8, skip4}
    (module docstring)."""
    skip4, skip8, top = self.query_encoder(normalise_frames(frames, self.dtype),
                                           train=self._bn_train(train))
    key, value = self.query_key_value(top)
    return dict(key=key, value=value, skip8=skip8, skip4=skip4)

  def encode_memory(self, frames: jax.Array, probs: jax.Array,
                    train: bool = False) -> tuple[jax.Array, jax.Array]:
    """frames [B, H, W, 3], probs [B, H, W, K] (slot probabilities at full resolution) ->
    (keys [B, M, h16, w16, C_k], values [B, M, h16, w16, C_v]), M = K - 1."""
    batch, height, width, _ = frames.shape
    objects = probs[..., 1:].astype(jnp.float32)
    slots = objects.shape[-1]
    others = jnp.clip(jnp.sum(objects, -1, keepdims=True) - objects, 0.0, 1.0)
    masks = jnp.stack([objects, others], -1)  # [B, H, W, M, 2]
    masks = jnp.moveaxis(masks, 3, 1).reshape(batch * slots, height, width, 2)
    images = jnp.repeat(normalise_frames(frames, self.dtype), slots, axis=0)
    _, _, top = self.memory_encoder(images, masks, train=self._bn_train(train))
    key, value = self.memory_key_value(top)
    return (key.reshape((batch, slots) + key.shape[1:]),
            value.reshape((batch, slots) + value.shape[1:]))

  def read(self, query_key: jax.Array, memory_keys: jax.Array, memory_values: jax.Array,
           memory_valid: jax.Array) -> jax.Array:
    """Space-time memory read per sample and object.

    query_key [B, h, w, C_k], memory_keys [B, T, M, h', w', C_k], memory_values
    [B, T, M, h', w', C_v], memory_valid [B, T] bool -> [B, M, h, w, C_v] float32.
    """
    batch, height, width, key_dim = query_key.shape
    slots = memory_keys.shape[2]
    queries = query_key.reshape(batch, -1, key_dim).astype(jnp.float32)
    keys = jnp.moveaxis(memory_keys, 2, 1).reshape(batch, slots, -1, key_dim)
    values = jnp.moveaxis(memory_values, 2, 1).reshape(batch, slots, -1,
                                                       memory_values.shape[-1])
    positions = memory_keys.shape[3] * memory_keys.shape[4]
    valid = jnp.repeat(memory_valid, positions, axis=1)  # [B, T * h' * w']
    keys, values = keys.astype(jnp.float32), values.astype(jnp.float32)
    if self.matching_shard_mode:
      # One shard_map per sample and object: shard_map's collectives do not batch under vmap.
      read = functools.partial(
          memory_read.memory_read_sharded, mesh=self.matching_mesh,
          axis_name=self.matching_mesh.axis_names[0], mode=self.matching_shard_mode,
          chunk_size=self.matching_chunk_size)
      out = jnp.stack([jnp.stack([read(queries[b], keys[b, o], values[b, o], valid[b])
                                  for o in range(slots)]) for b in range(batch)])
    else:
      read = functools.partial(memory_read.memory_read, chunk_size=self.matching_chunk_size)
      per_object = jax.vmap(read, in_axes=(None, 0, 0, None))
      out = jax.vmap(per_object)(queries, keys, values, valid)
    return out.reshape(batch, slots, height, width, -1)

  def decode(self, query: dict[str, jax.Array], memory_out: jax.Array,
             num_objects: jax.Array) -> jax.Array:
    """query (`encode_query`), memory_out [B, M, h16, w16, C] (read values, or the
    concatenation RDE feeds), num_objects [B] -> logits [B, H/4, W/4, K] float32 after soft
    aggregation."""
    slots = memory_out.shape[1]
    value = jnp.broadcast_to(query["value"][:, None].astype(jnp.float32),
                             memory_out.shape[:4] + query["value"].shape[-1:])
    logits = self.decoder(jnp.concatenate([memory_out, value], -1), query["skip8"],
                          query["skip4"])  # [B, M, h4, w4, 2]
    probs = jax.nn.softmax(logits, axis=-1)[..., 1]
    probs = jnp.moveaxis(probs, 1, -1)  # [B, h4, w4, M]
    present = (jnp.arange(1, slots + 1)[None, :] <= num_objects[:, None])[:, None, None, :]
    return soft_aggregation(probs, present)

  def segment_memory(self, query: dict[str, jax.Array], memory_keys: jax.Array,
                     memory_values: jax.Array, memory_valid: jax.Array,
                     num_objects: jax.Array) -> jax.Array:
    """Logits [B, H/4, W/4, K] of the query frame from its memory (module docstring)."""
    memory_out = self.read(query["key"], memory_keys, memory_values, memory_valid)
    return self.decode(query, memory_out, num_objects)

  def __call__(self, frames: jax.Array, memory_frames: jax.Array, memory_probs: jax.Array,
               num_objects: jax.Array, train: bool = False) -> jax.Array:
    """frames [B, H, W, 3], memory_frames [B, T, H, W, 3], memory_probs [B, T, H, W, K],
    num_objects [B] -> logits [B, H/4, W/4, K] (training's forward pass)."""
    batch, steps = memory_frames.shape[:2]
    keys, values = self.encode_memory(memory_frames.reshape((-1,) + memory_frames.shape[2:]),
                                      memory_probs.reshape((-1,) + memory_probs.shape[2:]),
                                      train=train)
    keys = keys.reshape((batch, steps) + keys.shape[1:])
    values = values.reshape((batch, steps) + values.shape[1:])
    query = self.encode_query(frames, train=train)
    return self.segment_memory(query, keys, values, jnp.ones((batch, steps), bool), num_objects)
