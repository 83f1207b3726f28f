"""Tests of feelvos_jax.models on the tiny backbone (32x32 frames); big backbones by shape only.

One tiny FEELVOS per module: its variables are drawn with NumPy in the shapes of
`jax.eval_shape(model.init)` (compiling the initialisers costs more than the tests), and its
jitted forward pass is shared by the tests that need it, all with the same input shapes, so it
compiles once (which one test checks).
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from feelvos_jax import IGNORE_LABEL, matching
from feelvos_jax.models import BACKBONES, build_model, heads, layers, resnet, xception

BATCH = 2
FRAME = 32
SIDE = FRAME // 4  # Stride-4 side of a 32x32 frame.
MAX_OBJECTS = 3
SLOTS = 1 + MAX_OBJECTS


def tiny_config(**overrides):
  """config.model for a small, fast FEELVOS on the tiny backbone."""
  config = common.get_base_config().model
  config.update(dict(backbone="tiny", decoder_channels=16, embedding_dim=8,
                     max_objects=MAX_OBJECTS, window=2, head_channels=8, head_kernel_size=3,
                     head_num_layers=2, max_reference_pixels=8, matching_chunk_size=0,
                     freeze_backbone_batch_norm=False))
  config.update(overrides)
  return config


def random_labels(rng, num_objects, ignore_fraction=0.1):
  """[B, SIDE, SIDE] labels in 0..num_objects[b] with some IGNORE_LABEL pixels."""
  labels = np.stack([rng.integers(0, n + 1, (SIDE, SIDE)) for n in num_objects])
  labels[rng.random(labels.shape) < ignore_fraction] = IGNORE_LABEL
  return labels.astype(np.int32)


def random_variables(abstract, rng):
  """Variables shaped like `abstract` (from jax.eval_shape(model.init)), drawn with NumPy.

  Cheaper than `model.init`, whose initialisers take seconds to compile on a loaded CPU:
  kernels ~ N(0, 1 / fan_in), scales and variances near 1, biases and means near 0.
  """
  def draw(path, leaf):
    name = path[-1].key
    if name.endswith("kernel"):
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = 1.0 + 0.1 * rng.random(leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return value.astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract)


def one_hot_probs(labels):
  """[B, h, w] labels -> [B, h, w, SLOTS] one-hot (all zeros at IGNORE_LABEL)."""
  return (labels[..., None] == np.arange(SLOTS)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
  """The tiny model, its variables, jitted embed/segment/__call__ and sample inputs."""
  model = build_model(tiny_config())
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, BATCH, FRAME, FRAME, 3)).astype(np.uint8)
  num_objects = np.array([2, 3], np.int32)
  reference_labels = random_labels(rng, num_objects)
  previous_labels = random_labels(rng, num_objects)
  dummy_embedding = np.zeros((BATCH, SIDE, SIDE, 8), np.float32)
  variables = random_variables(jax.eval_shape(
      model.init, {"params": jax.random.key(0)}, frames[2], dummy_embedding, reference_labels,
      dummy_embedding, previous_labels, one_hot_probs(previous_labels), num_objects), rng)
  embed = jax.jit(functools.partial(model.apply, method=model.embed))
  segment = jax.jit(functools.partial(model.apply, method=model.segment))
  traces = []

  def forward(variables, *args):
    traces.append(len(traces))
    return model.apply(variables, *args)

  _, reference_embedding = embed(variables, frames[0])
  _, previous_embedding = embed(variables, frames[1])
  inputs = dict(current_frame=frames[2], reference_embedding=reference_embedding,
                reference_labels=reference_labels, previous_embedding=previous_embedding,
                previous_labels=previous_labels, previous_probs=one_hot_probs(previous_labels),
                num_objects=num_objects)
  return types.SimpleNamespace(model=model, variables=variables, embed=embed, segment=segment,
                               call=jax.jit(forward), traces=traces, inputs=inputs)


def call_args(inputs):
  return tuple(inputs[key] for key in (
      "current_frame", "reference_embedding", "reference_labels", "previous_embedding",
      "previous_labels", "previous_probs", "num_objects"))


# --- NumPy references, written from the formulas -------------------------------------------

def numpy_conv(x, kernel, stride, rate, padding):
  """x [H, W, C], kernel [k, k, C, O] (or depthwise [k, k, 1, C]), explicit (before, after)
  padding -> [H', W', O]."""
  k = kernel.shape[0]
  depthwise = kernel.shape[2] == 1 and x.shape[-1] > 1
  padded = np.pad(x, (padding, padding, (0, 0)))
  out_h = (padded.shape[0] - rate * (k - 1) - 1) // stride + 1
  out_w = (padded.shape[1] - rate * (k - 1) - 1) // stride + 1
  out = np.zeros((out_h, out_w, kernel.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      for a in range(k):
        for b in range(k):
          pixel = padded[i * stride + a * rate, j * stride + b * rate]
          out[i, j] += pixel * kernel[a, b, 0] if depthwise else pixel @ kernel[a, b]
  return out


def numpy_separable_relu(x, params):
  """SeparableConvReLU from its definition: x [H, W, C] -> [H, W, F]."""
  depthwise = params["depthwise_kernel"]
  k, channels = depthwise.shape[0], x.shape[-1]
  padded = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  hidden = np.zeros(x.shape)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      for c in range(channels):
        hidden[i, j, c] = np.sum(padded[i:i + k, j:j + k, c] * depthwise[:, :, 0, c])
  hidden = np.maximum(hidden + params["depthwise_bias"], 0)
  return np.maximum(hidden @ params["pointwise_kernel"][0, 0] + params["pointwise_bias"], 0)


def numpy_head(params, head_input):
  """Dynamic segmentation head on one slot's input [H, W, D + 3] -> logits [H, W]."""
  params = jax.tree.map(np.asarray, params)
  x = head_input
  for index in range(len([name for name in params if name.startswith("layer_")])):
    x = numpy_separable_relu(x, params[f"layer_{index}"])
  return x @ params["logits"]["kernel"][0, 0, :, 0] + params["logits"]["bias"][0]


# --- Layers and heads against the references -------------------------------------------------

@pytest.mark.parametrize("size,stride,rate,depthwise", [
    (6, 2, 1, False), (7, 2, 1, False), (6, 1, 2, False), (6, 2, 2, True), (5, 1, 3, True)])
def test_conv2d_same_pads_symmetrically_like_deeplab(size, stride, rate, depthwise):
  rng = np.random.default_rng(1)
  channels = 3
  x = rng.normal(size=(1, size, size, channels)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1 if depthwise else channels, channels)).astype(np.float32)
  conv = layers.conv2d_same(channels, 3, stride=stride, rate=rate,
                            depthwise_channels=channels if depthwise else None)
  out = conv.apply({"params": {"kernel": kernel}}, x)
  total = 2 * rate  # Effective kernel 2 * rate + 1, padded half before, half after.
  expected = numpy_conv(x[0], kernel, stride, rate, (total // 2, total - total // 2))
  assert out.shape == (1, -(-size // stride), -(-size // stride), channels)
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


def test_resize_bilinear_align_corners_matches_formula():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
  out = np.asarray(layers.resize_bilinear_align_corners(jnp.asarray(x), (5, 7)))
  expected = np.zeros((5, 7, 2))
  for i in range(5):
    for j in range(7):
      y, z = i * (3 - 1) / (5 - 1), j * (4 - 1) / (7 - 1)
      y0, z0 = int(np.floor(y)), int(np.floor(z))
      y1, z1 = min(y0 + 1, 2), min(z0 + 1, 3)
      fy, fz = y - y0, z - z0
      expected[i, j] = ((1 - fy) * (1 - fz) * x[0, y0, z0] + (1 - fy) * fz * x[0, y0, z1]
                        + fy * (1 - fz) * x[0, y1, z0] + fy * fz * x[0, y1, z1])
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[0, 0, 0], x[0, 0, 0])
  np.testing.assert_allclose(out[0, -1, -1], x[0, -1, -1])


def test_vmapped_head_shares_weights_and_matches_reference():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(1, 5, 6, 4)).astype(np.float32)
  object_maps = rng.random((1, 5, 6, 3, 3)).astype(np.float32)  # 3 slots.
  head = heads.ObjectSegmentationHead(num_layers=2, channels=5, kernel_size=3)
  params = random_variables(
      jax.eval_shape(head.init, jax.random.key(0), features, object_maps), rng)["params"]
  assert params["layer_0"]["depthwise_kernel"].shape == (3, 3, 1, 4 + 3)
  assert params["layer_0"]["pointwise_kernel"].shape == (1, 1, 4 + 3, 5)
  logits = jax.jit(head.apply)({"params": params}, features, object_maps)
  assert logits.shape == (1, 5, 6, 3)
  for slot in range(3):
    head_input = np.concatenate([features[0], object_maps[0, :, :, slot]], axis=-1)
    np.testing.assert_allclose(logits[0, ..., slot], numpy_head(params, head_input),
                               rtol=1e-4, atol=1e-4)


def test_embedding_head_is_non_negative_and_starts_near_identity():
  rng = np.random.default_rng(4)
  features = np.abs(rng.normal(size=(1, 6, 6, 12))).astype(np.float32)
  head = heads.EmbeddingHead(embedding_dim=5)
  variables = jax.jit(head.init)(jax.random.key(1), features)
  embeddings = jax.jit(head.apply)(variables, features)
  assert embeddings.shape == (1, 6, 6, 5)
  assert np.all(np.asarray(embeddings) >= 0)
  params = variables["params"]["separable_conv"]
  np.testing.assert_allclose(params["depthwise_kernel"][1, 1, 0], np.ones(12), atol=0.061)
  np.testing.assert_allclose(params["pointwise_kernel"][0, 0], np.eye(12, 5), atol=0.061)
  np.testing.assert_allclose(embeddings[0], numpy_separable_relu(features[0], jax.tree.map(
      np.asarray, params)), rtol=1e-4, atol=1e-5)


# --- The FEELVOS network on the tiny backbone ------------------------------------------------

@pytest.mark.parametrize("num_objects", [[1, 1], [3, 3], [1, 3], [2, 0]])
def test_logits_shape_and_padded_slots(tiny, num_objects):
  inputs = dict(tiny.inputs, num_objects=np.array(num_objects, np.int32))
  logits = np.asarray(tiny.call(tiny.variables, *call_args(inputs)))
  assert logits.shape == (BATCH, SIDE, SIDE, SLOTS) and logits.dtype == np.float32
  for b, n in enumerate(num_objects):
    assert np.all(np.isfinite(logits[b, ..., :n + 1]))
    assert np.all(logits[b, ..., n + 1:] == -np.inf)
    assert np.max(np.argmax(logits[b], axis=-1)) <= n


def test_jit_compiles_once_for_varying_num_objects(tiny):
  for num_objects in ([1, 2], [3, 0], [2, 3]):
    inputs = dict(tiny.inputs, num_objects=np.array(num_objects, np.int32))
    tiny.call(tiny.variables, *call_args(inputs)).block_until_ready()
  assert len(tiny.traces) == 1


def test_object_logits_do_not_change_when_an_object_is_added(tiny):
  rng = np.random.default_rng(5)
  reference_labels = np.asarray(tiny.inputs["reference_labels"]).copy()
  previous_labels = np.asarray(tiny.inputs["previous_labels"]).copy()
  reference_labels[reference_labels == 3] = 0
  previous_labels[previous_labels == 3] = 0
  # Object 3 takes pixels that are ignored when it is absent.
  new_object_reference = rng.random(reference_labels.shape) < 0.2
  new_object_previous = rng.random(previous_labels.shape) < 0.2
  with_object = dict(
      tiny.inputs, reference_labels=np.where(new_object_reference, 3, reference_labels),
      previous_labels=np.where(new_object_previous, 3, previous_labels),
      num_objects=np.array([3, 3], np.int32))
  without_object = dict(
      tiny.inputs,
      reference_labels=np.where(new_object_reference, IGNORE_LABEL, reference_labels),
      previous_labels=np.where(new_object_previous, IGNORE_LABEL, previous_labels),
      num_objects=np.array([2, 2], np.int32))
  for inputs in (with_object, without_object):
    inputs["previous_probs"] = one_hot_probs(inputs["previous_labels"])
  logits_with = np.asarray(tiny.call(tiny.variables, *call_args(with_object)))
  logits_without = np.asarray(tiny.call(tiny.variables, *call_args(without_object)))
  np.testing.assert_allclose(logits_with[..., :3], logits_without[..., :3], rtol=1e-6,
                             atol=1e-6)
  assert np.all(np.isfinite(logits_with[..., 3])) and np.all(logits_without[..., 3] == -np.inf)


def test_embed_then_segment_equals_call(tiny):
  inputs = tiny.inputs
  features, embeddings = tiny.embed(tiny.variables, inputs["current_frame"])
  assert features.shape == (BATCH, SIDE, SIDE, 16)
  assert embeddings.shape == (BATCH, SIDE, SIDE, 8)
  assert np.all(np.asarray(embeddings) >= 0)
  logits = tiny.segment(tiny.variables, features, embeddings, *call_args(inputs)[1:])
  np.testing.assert_allclose(logits, tiny.call(tiny.variables, *call_args(inputs)),
                             rtol=1e-6, atol=1e-6)


def test_segment_feeds_features_global_previous_local_to_one_head(tiny):
  inputs = tiny.inputs
  features, embeddings = tiny.embed(tiny.variables, inputs["current_frame"])
  logits = np.asarray(tiny.segment(tiny.variables, features, embeddings,
                                   *call_args(inputs)[1:]))
  model = tiny.model

  @jax.jit
  def matching_maps(query, reference, reference_labels, previous, previous_labels):
    global_maps = jax.vmap(lambda q, r, l: matching.global_matching(q, r, l, SLOTS))(
        query, reference, reference_labels)
    local_maps = jax.vmap(lambda q, p, l: matching.local_matching(
        q, p, l, SLOTS, window=model.window, dilation=model.dilation))(
            query, previous, previous_labels)
    return global_maps, local_maps

  global_maps, local_maps = matching_maps(
      embeddings, inputs["reference_embedding"], inputs["reference_labels"],
      inputs["previous_embedding"], inputs["previous_labels"])
  head_params = tiny.variables["params"]["segmentation_head"]
  for b, n in enumerate(inputs["num_objects"]):
    for slot in range(n + 1):
      head_input = np.concatenate(
          [features[b], global_maps[b, ..., slot, None],
           inputs["previous_probs"][b, ..., slot, None], local_maps[b, ..., slot, None]], -1)
      np.testing.assert_allclose(logits[b, ..., slot], numpy_head(head_params, head_input),
                                 rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.unoptimized
def test_training_gradients_are_finite_and_batch_stats_update(tiny):
  model, variables = tiny.model, tiny.variables
  num_objects = np.asarray(tiny.inputs["num_objects"])
  rng = np.random.default_rng(6)
  labels = np.stack([rng.integers(0, n + 1, (SIDE, SIDE)) for n in num_objects])
  labels[0, 0, :3] = IGNORE_LABEL
  labels = labels.astype(np.int32)

  def loss_fn(params):
    logits, mutated = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        *call_args(tiny.inputs), train=True, rngs={"matching": jax.random.key(7)},
        mutable=["batch_stats"])
    valid = labels != IGNORE_LABEL
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / np.sum(valid), mutated["batch_stats"]

  (loss, batch_stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables["params"])
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for part in ("backbone", "deeplab", "embedding", "segmentation_head"):
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads[part])), part
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         batch_stats, variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_frozen_batch_norm_keeps_batch_stats_and_matches_evaluation(tiny):
  frozen = build_model(tiny_config(freeze_backbone_batch_norm=True, max_reference_pixels=0))
  apply = jax.jit(functools.partial(frozen.apply, train=True, mutable=["batch_stats"]))
  logits, mutated = apply(tiny.variables, *call_args(tiny.inputs))
  jax.tree.map(np.testing.assert_array_equal, mutated["batch_stats"],
               tiny.variables["batch_stats"])
  np.testing.assert_allclose(logits, tiny.call(tiny.variables, *call_args(tiny.inputs)),
                             rtol=1e-5, atol=1e-5)


# --- Configuration and input errors (trace time, nothing compiled) --------------------------

def test_unknown_backbone_names_config_key_and_choices():
  with pytest.raises(ValueError, match=r"config\.model\.backbone='vgg16'.*resnet101.*tiny"):
    build_model(tiny_config(backbone="vgg16"))
  assert sorted(BACKBONES) == ["resnet101", "resnet50", "tiny", "xception65"]


@pytest.mark.parametrize("key,value", [("output_stride", 32), ("dtype", "float16"),
                                       ("head_num_layers", 0), ("window", -1)])
def test_bad_model_config_is_rejected(key, value):
  with pytest.raises(ValueError, match=rf"config\.model\.{key}"):
    build_model(tiny_config(**{key: value}))


@pytest.mark.parametrize("name,shape,message", [
    ("previous_probs", (BATCH, SIDE, SIDE, SLOTS - 1), r"previous_probs.*\(2, 8, 8, 3\)"),
    ("previous_labels", (BATCH, SIDE, SIDE - 1), r"previous_labels.*\(2, 8, 7\)"),
    ("previous_embedding", (BATCH, SIDE + 1, SIDE, 8), r"previous_embedding.*\(2, 9, 8, 8\)"),
    ("reference_labels", (BATCH, SIDE, SIDE + 2), r"reference_labels.*\(2, 8, 10\)"),
    ("reference_embedding", (BATCH, SIDE, SIDE, 5), r"reference_embedding.*\(2, 8, 8, 5\)"),
    ("num_objects", (BATCH + 1,), r"num_objects.*\(3,\)"),
    ("current_frame", (BATCH, FRAME, FRAME), r"frames.*\[B, H, W, 3\].*\(2, 32, 32\)"),
    ("current_frame", (BATCH, FRAME, FRAME, 4), r"frames.*\(2, 32, 32, 4\)"),
])
def test_bad_inputs_raise_naming_argument_and_shape(tiny, name, shape, message):
  inputs = dict(tiny.inputs)
  inputs[name] = jax.ShapeDtypeStruct(shape, np.asarray(inputs[name]).dtype)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(tiny.model.apply, tiny.variables, *call_args(inputs))


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  model = build_model(tiny_config(dtype="bfloat16"))
  variables = jax.eval_shape(model.init, {"params": jax.random.key(0)},
                             *call_args(tiny.inputs))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  features, embeddings = jax.eval_shape(functools.partial(model.apply, method=model.embed),
                                        variables, tiny.inputs["current_frame"])
  assert features.dtype == embeddings.dtype == jnp.bfloat16
  logits = jax.eval_shape(model.apply, variables, *call_args(tiny.inputs))
  assert logits.dtype == jnp.float32 and logits.shape == (BATCH, SIDE, SIDE, SLOTS)


# --- Big backbones: shapes and strides only (jax.eval_shape, nothing compiled) --------------

@pytest.mark.parametrize("backbone", [
    xception.Xception65, functools.partial(resnet.ResNet, depth=50),
    functools.partial(resnet.ResNet, depth=101)])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_backbone_output_strides(backbone, output_stride):
  module = backbone(output_stride=output_stride)
  frames = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
  (low_level, high_level), _ = jax.eval_shape(module.init_with_output, jax.random.key(0),
                                              frames)
  assert low_level.shape == (1, 17, 17, 256)
  side = -(-65 // output_stride)
  assert high_level.shape == (1, side, side, 2048)


def test_xception65_unit_schedule_follows_deeplab():
  schedule_16 = {(scope, unit): (stride, rate)
                 for scope, unit, stride, rate in xception.unit_schedule(16)}
  assert len(schedule_16) == 3 + 16 + 2
  assert schedule_16[("entry_flow/block3", 1)] == (2, 1)
  assert schedule_16[("middle_flow/block1", 16)] == (1, 1)
  assert schedule_16[("exit_flow/block1", 1)] == (1, 1)
  assert schedule_16[("exit_flow/block2", 1)] == (1, 2)
  schedule_8 = {(scope, unit): (stride, rate)
                for scope, unit, stride, rate in xception.unit_schedule(8)}
  assert schedule_8[("entry_flow/block2", 1)] == (2, 1)
  assert schedule_8[("entry_flow/block3", 1)] == (1, 1)
  assert schedule_8[("middle_flow/block1", 1)] == (1, 2)
  assert schedule_8[("exit_flow/block1", 1)] == (1, 2)
  assert schedule_8[("exit_flow/block2", 1)] == (1, 4)


def test_resnet_layer_schedule_follows_torchvision_dilation():
  assert resnet.layer_schedule(16) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2)]
  assert resnet.layer_schedule(8) == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]


def test_paper_configuration_shapes():
  model = build_model(common.get_base_config().model)
  frames = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.uint8)
  side, slots = 17, 11
  embedding = jax.ShapeDtypeStruct((1, side, side, 100), jnp.float32)
  labels = jax.ShapeDtypeStruct((1, side, side), jnp.int32)
  args = (frames, embedding, labels, embedding, labels,
          jax.ShapeDtypeStruct((1, side, side, slots), jnp.float32),
          jax.ShapeDtypeStruct((1,), jnp.int32))
  logits, variables = jax.eval_shape(model.init_with_output, {"params": jax.random.key(0)},
                                     *args)
  assert logits.shape == (1, side, side, slots)
  head = variables["params"]["segmentation_head"]
  assert head["layer_0"]["depthwise_kernel"].shape == (7, 7, 1, 259)
  assert head["layer_3"]["pointwise_kernel"].shape == (1, 1, 256, 256)
  assert variables["params"]["embedding"]["separable_conv"]["pointwise_kernel"].shape == (
      1, 1, 256, 100)
  assert isinstance(model.backbone, xception.Xception65)
