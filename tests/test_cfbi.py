"""Tests of the CFBI options (feelvos_jax/matching/cfbi.py and their wiring into FEELVOS).

Each function against NumPy loops written from its formula (tiny random inputs); the model's
head inputs with the options on against the same loops; each option off leaves the model as it
was; all options on build, train one step and propagate a video (tiny backbone, 32x32 frames).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs import synthetic
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import matching
from feelvos_jax import models
from feelvos_jax.inference import video_propagation
from feelvos_jax.matching import cfbi
from feelvos_jax.models import heads
from feelvos_jax.training import optimizers
from feelvos_jax.training import train

FRAME = 32
SIDE = FRAME // 4
MAX_OBJECTS = 2
SLOTS = 1 + MAX_OBJECTS
EMBEDDING = 4
DECODER = 8


def random_labels(rng, shape, num_slots, ignore_fraction=0.15):
  labels = rng.integers(0, num_slots, shape)
  labels[rng.random(shape) < ignore_fraction] = IGNORE_LABEL
  return labels.astype(np.int32)


def feelvos_distance(squared):
  """1 - 2 / (1 + exp(d2)), the paper's formula (1.0 at d2 = inf)."""
  with np.errstate(over="ignore"):
    return 1.0 - 2.0 / (1.0 + np.exp(np.asarray(squared, np.float64)))


def loop_min_squared(query, reference, labels, num_slots, allowed):
  """[H, W, K]: min over reference pixels q with allowed(p, q) and label k of ||e_p - e_q||^2."""
  height, width = query.shape[:2]
  best = np.full((height, width, num_slots), np.inf)
  for i in range(height):
    for j in range(width):
      for y in range(reference.shape[0]):
        for x in range(reference.shape[1]):
          k = labels[y, x]
          if k < num_slots and allowed(i, j, y, x):
            d2 = float(np.sum((query[i, j].astype(np.float64) - reference[y, x]) ** 2))
            best[i, j, k] = min(best[i, j, k], d2)
  return best


def loop_other_slots_min(values):
  """[..., K]: per slot k, min over slots j != k (inf if none)."""
  out = np.full(values.shape, np.inf)
  for k in range(values.shape[-1]):
    for j in range(values.shape[-1]):
      if j != k:
        out[..., k] = np.minimum(out[..., k], values[..., j])
  return out


def loop_pooled(embedding, labels, num_slots):
  """([K, E] mean of slot-k pixels, [K, E] mean of the other labelled pixels); zeros if none."""
  foreground = np.zeros((num_slots, embedding.shape[-1]))
  background = np.zeros((num_slots, embedding.shape[-1]))
  for k in range(num_slots):
    mine = [embedding[y, x] for y in range(labels.shape[0]) for x in range(labels.shape[1])
            if labels[y, x] == k]
    others = [embedding[y, x] for y in range(labels.shape[0]) for x in range(labels.shape[1])
              if labels[y, x] < num_slots and labels[y, x] != k]
    if mine:
      foreground[k] = np.mean(mine, axis=0)
    if others:
      background[k] = np.mean(others, axis=0)
  return foreground, background


# ------------------------------------------------------------------ pure functions
@pytest.mark.parametrize("num_slots", [1, 2, 5])
def test_background_minima_matches_loops(num_slots):
  rng = np.random.default_rng(num_slots)
  values = rng.random((3, 4, num_slots)).astype(np.float32)
  values[rng.random(values.shape) < 0.3] = np.inf
  values[0, 0] = 0.5  # Ties between slots.
  np.testing.assert_array_equal(cfbi.background_minima(values), loop_other_slots_min(values))


def test_background_minima_is_min_over_pixels_not_of_the_slot():
  rng = np.random.default_rng(1)
  query, reference = rng.normal(size=(3, 4, 5)), rng.normal(size=(4, 5, 5))
  labels = random_labels(rng, (4, 5), 4)
  per_slot = matching.global_matching(query, reference, labels, 4, squared=True)
  direct = np.full((3, 4, 4), np.inf)
  for k in range(4):
    not_k = np.where((labels != k) & (labels != IGNORE_LABEL), 0, IGNORE_LABEL).astype(np.int32)
    direct[..., k] = loop_min_squared(query, reference, not_k, 1, lambda *_: True)[..., 0]
  np.testing.assert_allclose(cfbi.background_minima(per_slot), direct, rtol=1e-5, atol=1e-5)


def test_biased_distance_matches_formula():
  rng = np.random.default_rng(2)
  squared = (3 * rng.random((2, 3, 4))).astype(np.float32)
  squared[0, 0, 1] = np.inf
  biased = cfbi.add_matching_bias(squared, jnp.float32(-0.7), jnp.float32(0.4))
  bias = np.array([0.4, -0.7, -0.7, -0.7])
  np.testing.assert_allclose(matching.distance_from_squared(biased),
                             feelvos_distance(squared + bias), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(cfbi.add_matching_bias(squared, 0.0, 0.0), squared)


@pytest.mark.parametrize("dilation, windows", [(1, (2, 0, 1, 9)), (2, (1, 2))])
def test_multi_local_matching_matches_loops_and_local_matching(dilation, windows):
  rng = np.random.default_rng(dilation)
  height, width, num_slots = 7, 9, 3
  query = rng.normal(size=(height, width, 3)).astype(np.float32)
  previous = rng.normal(size=(height, width, 3)).astype(np.float32)
  labels = random_labels(rng, (height, width), num_slots)
  squared = cfbi.multi_local_matching(query, previous, labels, num_slots, windows=windows,
                                      dilation=dilation, squared=True)
  distances = cfbi.multi_local_matching(query, previous, labels, num_slots, windows=windows,
                                        dilation=dilation)
  assert squared.shape == (height, width, len(windows), num_slots)
  for index, radius in enumerate(windows):
    def inside(i, j, y, x, radius=radius):
      dy, dx = y - i, x - j
      return (dy % dilation == 0 and dx % dilation == 0
              and max(abs(dy), abs(dx)) <= radius * dilation)
    expected = loop_min_squared(query, previous, labels, num_slots, inside)
    np.testing.assert_allclose(squared[:, :, index], expected, rtol=1e-5, atol=1e-5)
    separate = matching.local_matching(query, previous, labels, num_slots, window=radius,
                                       dilation=dilation)
    np.testing.assert_allclose(distances[:, :, index], separate, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(windows=()), "windows"), (dict(windows=(2, -1)), "windows"),
    (dict(dilation=0), "dilation"), (dict(previous=np.zeros((4, 6, 3))), "query and previous"),
    (dict(previous_labels=np.zeros((4, 4), np.int32)), "previous_labels"),
    (dict(previous_labels=np.full((4, 5), 7, np.int32)), "label id 7")])
def test_multi_local_matching_rejects_bad_input(change, message):
  args = dict(query=np.zeros((4, 5, 3), np.float32), previous=np.zeros((4, 5, 3), np.float32),
              previous_labels=np.zeros((4, 5), np.int32), num_objects=3, windows=(1, 2),
              dilation=1)
  args.update(change)
  with pytest.raises(ValueError, match=message):
    cfbi.multi_local_matching(**args)


@pytest.mark.parametrize("rate", [1, 2, 3])
def test_atrous_global_matching_matches_loops(rate):
  rng = np.random.default_rng(rate)
  query, reference = rng.normal(size=(3, 4, 5)), rng.normal(size=(7, 8, 5))
  labels = random_labels(rng, (7, 8), 3)
  strided, strided_labels = cfbi.atrous_reference(reference, labels, rate)
  assert strided.shape == (-(-7 // rate), -(-8 // rate), 5)
  got = matching.global_matching(query, strided, strided_labels, 3, squared=True)
  expected = loop_min_squared(query, reference, labels, 3,
                              lambda i, j, y, x: y % rate == 0 and x % rate == 0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="global_atrous_rate"):
    cfbi.atrous_reference(reference, labels, 0)


def test_instance_guidance_matches_loops():
  rng = np.random.default_rng(3)
  reference, previous = rng.normal(size=(5, 6, 4)), rng.normal(size=(4, 3, 4))
  reference_labels = random_labels(rng, (5, 6), 3)
  previous_labels = random_labels(rng, (4, 3), 3)
  previous_labels[previous_labels == 3 - 1] = 0  # Slot 2 absent from the previous frame.
  guidance = cfbi.instance_guidance(reference, reference_labels, previous, previous_labels, 4)
  expected = np.concatenate(loop_pooled(reference, reference_labels, 4)
                            + loop_pooled(previous, previous_labels, 4), axis=-1)
  assert guidance.shape == (4, 16)
  np.testing.assert_allclose(guidance, expected, rtol=1e-5, atol=1e-6)


def test_gates_scale_the_input_channels():
  rng = np.random.default_rng(4)
  first, second = rng.normal(size=(2, 6, 5, 3)), rng.normal(size=(2, 6, 5, 2))
  gates = rng.uniform(0, 2, (2, 5))
  layer = heads.SeparableConvReLU(4, kernel_size=3)
  params = layer.init(jax.random.key(0), first, second)
  gated = layer.apply(params, first, second, gates=gates)
  concatenated = np.concatenate([first, second], -1) * gates[:, None, None, :]
  expected = layer.apply(params, concatenated[..., :3], concatenated[..., 3:])
  np.testing.assert_allclose(gated, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the model
def tiny_config(**options):
  config = common.get_base_config().model
  config.update(dict(backbone="tiny", decoder_channels=DECODER, embedding_dim=EMBEDDING,
                     max_objects=MAX_OBJECTS, window=1, head_channels=4, head_kernel_size=3,
                     head_num_layers=2, max_reference_pixels=8, matching_chunk_size=0))
  config.update(options)
  return config


def segment_inputs(seed=0):
  """Random segment() inputs: batch 2 at stride-4 side SIDE."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(2, SIDE, SIDE, DECODER)).astype(np.float32)
  embeddings = [(0.4 * rng.normal(size=(2, SIDE, SIDE, EMBEDDING))).astype(np.float32)
                for _ in range(3)]
  reference_labels = random_labels(rng, (2, SIDE, SIDE), SLOTS)
  previous_labels = random_labels(rng, (2, SIDE, SIDE), SLOTS)
  probs = rng.dirichlet(np.ones(SLOTS), (2, SIDE, SIDE)).astype(np.float32)
  return (features, embeddings[0], embeddings[1], reference_labels, embeddings[2],
          previous_labels, probs, np.array([2, 1], np.int32))


def param_shapes(model):
  inputs = segment_inputs()
  frames = np.zeros((2, FRAME, FRAME, 3), np.float32)
  abstract = jax.eval_shape(model.init, {"params": jax.random.key(0)}, frames, *inputs[2:])
  return abstract["params"]


def flat(tree):
  """{'a/b/c': shape} of a tree of arrays or ShapeDtypeStructs."""
  return {"/".join(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_options_off_keep_the_model_and_on_add_only_their_params():
  plain = flat(param_shapes(models.build_model(tiny_config())))
  explicit_off = flat(param_shapes(models.build_model(tiny_config(
      background_matching=False, matching_bias=False, local_windows=(), global_atrous_rate=1,
      instance_attention=False))))
  assert explicit_off == plain
  first = "segmentation_head/layer_0/"
  expected_maps = {"background_matching": 5, "local_windows": 5, "global_atrous_rate": 3,
                   "matching_bias": 3, "instance_attention": 3}
  values = {"background_matching": True, "local_windows": (1, 2, 3), "global_atrous_rate": 2,
            "matching_bias": True, "instance_attention": True}
  for key, value in values.items():
    shapes = flat(param_shapes(models.build_model(tiny_config(**{key: value}))))
    added = {name: shape for name, shape in shapes.items() if name not in plain}
    channels = DECODER + expected_maps[key]
    assert shapes[first + "depthwise_kernel"] == (3, 3, 1, channels), key
    assert {n: s for n, s in shapes.items() if n in plain and not n.startswith(first)} == {
        n: s for n, s in plain.items() if not n.startswith(first)}, key
    if key == "matching_bias":
      assert added == {"matching_foreground_bias": (), "matching_background_bias": ()}
    elif key == "instance_attention":
      assert added == {
          "segmentation_head/attention_0/kernel": (4 * EMBEDDING, channels),
          "segmentation_head/attention_0/bias": (channels,),
          "segmentation_head/attention_1/kernel": (4 * EMBEDDING, 4),
          "segmentation_head/attention_1/bias": (4,)}
    else:
      assert added == {}, key


def random_variables(shapes, rng):
  return jax.tree.map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), shapes)


def test_head_inputs_match_loops():
  """background matching + biases + multi-local + atrous 2 + attention: every head input map
  and the guidance against NumPy loops."""
  windows = (2, 1)
  model = models.build_model(tiny_config(background_matching=True, matching_bias=True,
                                         local_windows=windows, global_atrous_rate=2,
                                         instance_attention=True))
  params = random_variables(param_shapes(model), np.random.default_rng(5))
  params["matching_foreground_bias"] = np.float32(-0.6)
  params["matching_background_bias"] = np.float32(0.3)
  inputs = segment_inputs(seed=6)

  def head_arguments(params):
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
      outputs = next_fun(*args, **kwargs)
      if context.method_name == "_head_inputs":
        captured["outputs"] = outputs
      return outputs

    with nn.intercept_methods(interceptor):
      model.apply({"params": params}, *inputs, method="segment")
    return captured["outputs"]

  object_maps, guidance = jax.jit(head_arguments)(params)
  (_, query, reference, reference_labels, previous, previous_labels, probs, _) = inputs
  bias = np.array([0.3] + [-0.6] * MAX_OBJECTS)
  for b in range(2):
    global_sq = loop_min_squared(query[b], reference[b], reference_labels[b], SLOTS,
                                 lambda i, j, y, x: y % 2 == 0 and x % 2 == 0) + bias
    local_sq = [loop_min_squared(query[b], previous[b], previous_labels[b], SLOTS,
                                 lambda i, j, y, x, r=r: max(abs(y - i), abs(x - j)) <= r) + bias
                for r in windows]
    expected = ([feelvos_distance(global_sq), probs[b]]
                + [feelvos_distance(sq) for sq in local_sq]
                + [feelvos_distance(loop_other_slots_min(global_sq))]
                + [feelvos_distance(loop_other_slots_min(sq)) for sq in local_sq])
    np.testing.assert_allclose(object_maps[b], np.stack(expected, axis=-1), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(
        guidance[b], np.concatenate(loop_pooled(reference[b], reference_labels[b], SLOTS)
                                    + loop_pooled(previous[b], previous_labels[b], SLOTS), -1),
        rtol=1e-5, atol=1e-5)


def test_bias_and_attention_start_as_the_plain_model():
  """At initialisation (biases 0, attention Dense 0) the options give the plain logits."""
  plain = models.build_model(tiny_config())
  options = models.build_model(tiny_config(matching_bias=True, instance_attention=True))
  rng = np.random.default_rng(7)
  plain_params = random_variables(param_shapes(plain), rng)
  zeros = jax.tree.map(np.zeros_like, random_variables(param_shapes(options), rng))
  option_params = dict(zeros, **plain_params)
  option_params["segmentation_head"] = dict(zeros["segmentation_head"],
                                            **plain_params["segmentation_head"])
  inputs = segment_inputs(seed=8)
  plain_logits = jax.jit(lambda p: plain.apply({"params": p}, *inputs, method="segment"))(
      plain_params)
  option_logits = jax.jit(lambda p: options.apply({"params": p}, *inputs, method="segment"))(
      option_params)
  np.testing.assert_allclose(option_logits, plain_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.unoptimized
def test_all_options_train_one_step_and_propagate():
  config = synthetic.get_config()
  config.model.update(tiny_config(background_matching=True, matching_bias=True,
                                  local_windows=(1, 2), global_atrous_rate=2,
                                  instance_attention=True))
  config.batch_size, config.num_train_steps = 2, 2
  config.optimizer.warmup_steps = 0
  model = models.build_model(config.model)
  tx, _ = optimizers.create_optimizer(config.optimizer, config.learning_rate,
                                      config.num_train_steps)
  rng = np.random.default_rng(9)
  frames = np.zeros((2, FRAME, FRAME, 3), np.float32)
  abstract = jax.eval_shape(model.init, {"params": jax.random.key(0)}, frames,
                            *segment_inputs()[2:])
  params = random_variables(abstract["params"], rng)  # Cheaper than compiling the initialisers.
  batch_stats = jax.tree.map(lambda x: np.ones(x.shape, np.float32), abstract["batch_stats"])
  state = train.TrainState(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                           opt_state=tx.init(params), rng=jax.random.PRNGKey(0),
                           apply_fn=model.apply, tx=tx)
  batch = {f"{name}_frame": rng.integers(0, 256, (2, FRAME, FRAME, 3)).astype(np.uint8)
           for name in ("reference", "previous", "current")}
  batch.update({f"{name}_labels": random_labels(rng, (2, FRAME, FRAME), SLOTS)
                for name in ("reference", "previous", "current")})
  batch["num_objects"] = np.array([2, 2], np.int32)
  new_state, metrics = jax.jit(functools.partial(train.train_step, config=config))(state, batch)
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
  for name in ("matching_foreground_bias", "matching_background_bias"):
    assert new_state.params[name] != state.params[name], name
  attention = new_state.params["segmentation_head"]["attention_0"]["kernel"]
  assert np.any(np.asarray(attention) != 0)

  variables = {"params": new_state.params, "batch_stats": new_state.batch_stats}
  frames = rng.integers(0, 256, (3, FRAME, FRAME, 3)).astype(np.uint8)
  first = np.zeros((FRAME, FRAME), np.int32)
  first[4:14, 4:14], first[18:28, 16:30] = 1, 2
  labels = list(video_propagation.propagate_video(model, variables, frames, {0: first}, [0, 0]))
  assert len(labels) == 3 and labels[1].shape == (FRAME, FRAME)
  assert set(np.unique(labels[2])) <= {0, 1, 2}


@pytest.mark.parametrize("shard_mode", ["query", pytest.param("reference", marks=pytest.mark.slow)])
def test_options_with_sharded_global_matching_equal_unsharded(shard_mode):
  model = models.build_model(tiny_config(background_matching=True, matching_bias=True,
                                         global_atrous_rate=2))
  params = random_variables(param_shapes(model), np.random.default_rng(10))
  params["matching_foreground_bias"] = np.float32(0.5)
  inputs = segment_inputs(seed=11)
  sharded = video_propagation.sharded_matching_model(model, shard_mode)
  logits = [jax.jit(lambda p, m=m: m.apply({"params": p}, *inputs, method="segment"))(params)
            for m in (model, sharded)]
  np.testing.assert_allclose(logits[1], logits[0], rtol=1e-5, atol=1e-5)
