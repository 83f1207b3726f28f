"""Memory models (STM, RDE-VOS): soft aggregation against NumPy, the memory buffer's rules, the
RDE state's constant size, config errors, and train -> restore -> evaluate -> export -> bundle
for each mode."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax import models
from feelvos_jax.inference import export as export_lib
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import memory_propagation
from feelvos_jax.inference import video_propagation
from feelvos_jax.models import stm
from tests import testing


def np_soft_aggregation(probs, num_objects):
  """STM's Soft_aggregation: q_0 = prod(1 - p), q_o = p_o, clipped, logit; in float32 as the
  official code (1 - 1e-7 rounds to 1 - 2^-23 there)."""
  probs = np.asarray(probs, np.float32)[..., :num_objects]
  merged = np.concatenate([np.prod(1 - probs, -1, keepdims=True), probs], -1)
  merged = np.clip(merged, np.float32(1e-7), np.float32(1 - 1e-7))
  return np.log(merged / (1 - merged))


def test_soft_aggregation_matches_numpy():
  rng = np.random.default_rng(0)
  probs = rng.random((5, 6, 4)).astype(np.float32)
  probs[0, 0] = [1.0, 0.0, 1e-9, 0.5]  # Clipped at both ends.
  for count in (1, 3, 4):
    present = np.arange(1, 5) <= count
    got = np.asarray(stm.soft_aggregation(probs, present))
    np.testing.assert_allclose(got[..., :1 + count], np_soft_aggregation(probs, count),
                               rtol=2e-5, atol=2e-5)
    assert np.all(np.isneginf(got[..., 1 + count:]))


def _buffer_state(capacity, slots=2):
  keys = jnp.zeros((capacity, slots, 1, 1, 2))
  return {"memory_keys": keys, "memory_values": keys, "memory_valid": jnp.zeros(capacity, bool),
          "memory_annotated": jnp.zeros(capacity, bool),
          "memory_time": jnp.zeros(capacity, jnp.int32)}


def test_memory_buffer_fills_then_drops_the_oldest_frame_not_annotated():
  state = _buffer_state(3)
  writes = [(0, True), (5, False), (7, True), (10, False), (15, False)]
  for time, annotated in writes:
    value = jnp.full((2, 1, 1, 2), float(time))
    state = memory_propagation._write(state, value, value, jnp.asarray(True),
                                      jnp.asarray(annotated), jnp.asarray(time))
  assert sorted(np.asarray(state["memory_time"]).tolist()) == [0, 7, 15]
  assert np.asarray(state["memory_valid"]).all()
  kept = dict(zip(np.asarray(state["memory_time"]).tolist(),
                  np.asarray(state["memory_annotated"]).tolist()))
  assert kept == {0: True, 7: True, 15: False}
  np.testing.assert_array_equal(np.asarray(state["memory_keys"])[:, 0, 0, 0, 0],
                                np.asarray(state["memory_time"]))
  unchanged = memory_propagation._write(state, value + 1, value + 1, jnp.asarray(False),
                                        jnp.asarray(False), jnp.asarray(20))
  for key in state:
    np.testing.assert_array_equal(unchanged[key], state[key])
  full = dict(state, memory_annotated=jnp.ones(3, bool))
  kept = memory_propagation._write(full, value + 1, value + 1, jnp.asarray(True),
                                   jnp.asarray(False), jnp.asarray(20))
  np.testing.assert_array_equal(kept["memory_keys"], full["memory_keys"])


def _memory_config(head):
  config = testing.tiny_config()
  config.model.head = head
  config.model.memory_frames = 2
  config.model.memory_every = 2
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.num_eval_videos = 1
  config.dataset.max_skip = 3
  config.dataset.max_skip_ramp_steps = 2
  config.inference.object_buckets = (1, 2)
  config.export.buckets = ((48, 48, 3),)
  config.export.platforms = ("cpu",)
  return config


@pytest.mark.parametrize("key, value, message", [
    ("head", "stn", "config.model.head"),
    ("backbone", "xception65", "config.model.backbone"),
    ("output_stride", 8, "config.model.output_stride"),
    ("memory_frames", 0, "config.model.memory_frames"),
])
def test_bad_memory_model_config_names_the_key(key, value, message):
  config = _memory_config("stm").model
  config[key] = value
  with pytest.raises(ValueError, match=message):
    models.build_model(config)


def test_memory_cap_below_the_annotated_frames_is_refused():
  config = _memory_config("stm")
  config.export.max_reference_frames = 3
  with pytest.raises(ValueError, match="config.model.memory_frames=2 is below"):
    export_lib.export_buckets(config)
  plan = host_loop.Plan(height=32, width=32, objects_per_chunk=2, num_chunks=1,
                        start=None, step=None, max_annotated_frames=2)
  frames, labels, first_frame = testing.make_video(4, 3, seed=1, appear=[0, 1, 2])
  with pytest.raises(ValueError, match=r"given in 3 frames.*config.model.memory_frames=2"):
    list(host_loop.run_video(lambda *_: plan, frames, testing.annotations_of(labels, first_frame),
                             first_frame))


@pytest.mark.parametrize("affinity", ["dot", "softmax"])
def test_non_local_block_matches_numpy(affinity):
  """x + W(A g(pool x)), A = theta(x) phi(pool x)^T / N ("dot") or its softmax over the
  pooled positions, 1x1x1 convs with bias, pool = 1x2x2 max pool; random weights."""
  from feelvos_jax.models import rde  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 2, 4, 6, 6)).astype(np.float32)
  module = rde.NonLocal(affinity=affinity)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.5, jnp.float32),
                        module.init(jax.random.key(0), jnp.asarray(x))["params"])
  got = module.apply({"params": params}, jnp.asarray(x))

  def conv(name, y):
    return y @ np.asarray(params[name]["kernel"][0, 0, 0]) + np.asarray(params[name]["bias"])

  def pool(y):  # [B, T, H, W, C] -> [B, T * H/2 * W/2, C]
    b, t, h, w, c = y.shape
    return y.reshape(b, t, h // 2, 2, w // 2, 2, c).max(axis=(3, 5)).reshape(b, -1, c)

  theta = conv("theta", x).reshape(2, -1, 3)
  phi, g = pool(conv("phi", x)), pool(conv("g", x))
  affinities = np.einsum("bqc,bkc->bqk", theta, phi)
  if affinity == "softmax":
    affinities = np.exp(affinities - affinities.max(-1, keepdims=True))
    affinities /= affinities.sum(-1, keepdims=True)
  else:
    affinities /= phi.shape[1]
  y = np.einsum("bqk,bkc->bqc", affinities, g).reshape(2, 2, 4, 6, 3)
  np.testing.assert_allclose(got, x + conv("W", y), rtol=1e-4, atol=1e-4)


def test_unknown_rde_affinity_is_refused_naming_the_key():
  config = _memory_config("rde").model
  config.rde_affinity = "cosine"
  with pytest.raises(ValueError, match="config.model.rde_affinity"):
    models.build_model(config)


def test_fresh_rde_aggregation_is_a_bounded_running_mean():
  """At initialisation the RDE stays near the scale of its inputs over many frames (the
  authors' default initialisation grows it cubically) and starts as the mean of the two
  inputs plus a non-negative ASPP residual."""
  from feelvos_jax.models import rde  # pylint: disable=g-import-not-at-top
  module = rde.SpatioTemporalAggregation()
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(60, 1, 2, 4, 4, 8)), jnp.float32)
  variables = module.init(jax.random.key(0), inputs[0])
  kernel = variables["params"]["compress"]["kernel"]
  np.testing.assert_array_equal(kernel[:, 1, 1], np.stack([np.eye(8) / 2] * 2))
  assert not np.asarray(variables["params"]["non_local"]["W"]["kernel"]).any()
  apply = jax.jit(module.apply)
  state = inputs[0, :, 0]
  for frame in inputs[1:]:
    state = apply(variables, jnp.stack([state, frame[:, 1]], axis=1))
  assert np.isfinite(state).all() and np.abs(state).max() < 10 * np.abs(inputs).max()


def test_rescale_to_inputs_matches_numpy():
  from feelvos_jax.models import rde  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  output = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  output[0, 0, 0] = 0.0
  inputs = rng.normal(size=(2, 2, 3, 4, 5)).astype(np.float32) * 3.0
  got = np.asarray(rde.rescale_to_inputs(jnp.asarray(output), jnp.asarray(inputs)))
  target = np.linalg.norm(inputs, axis=-1).mean(axis=1)[..., None]
  norm = np.linalg.norm(output, axis=-1, keepdims=True)
  expected = np.where(norm > 0, output / np.where(norm > 0, norm, 1.0) * target, 0.0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  gradients = jax.grad(lambda o, i: jnp.sum(rde.rescale_to_inputs(o, i)), argnums=(0, 1))(
      jnp.asarray(output), jnp.zeros_like(jnp.asarray(inputs)))
  assert all(np.isfinite(np.asarray(g)).all() for g in gradients)  # Zero vectors included.


def test_rescaled_rde_stays_bounded_where_a_high_gain_one_diverges():
  """An aggregation whose squeeze conv triples its input (as training can learn, since only a
  few aggregations per sample are trained) grows without bound over 200 frames; with
  norm="inputs" no position exceeds the largest input norm."""
  from feelvos_jax.models import rde  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  inputs = jnp.asarray(rng.normal(size=(200, 1, 2, 4, 4, 8)), jnp.float32)
  peak = float(jnp.linalg.norm(inputs, axis=-1).max())
  finals = {}
  for norm in rde.NORMS:
    module = rde.SpatioTemporalAggregation(affinity="softmax", norm=norm)
    variables = module.init(jax.random.key(0), inputs[0])
    params = dict(variables["params"])
    params["compress"] = {"kernel": params["compress"]["kernel"] * 6.0,
                          "bias": params["compress"]["bias"]}
    apply = jax.jit(module.apply)
    state = inputs[0, :, 0]
    for frame in inputs[1:]:
      state = apply({"params": params}, jnp.stack([state, frame[:, 1]], axis=1))
    finals[norm] = np.asarray(jnp.linalg.norm(state, axis=-1))
  assert not (np.isfinite(finals["none"]).all() and finals["none"].max() < 1e6)
  assert np.isfinite(finals["inputs"]).all() and finals["inputs"].max() <= peak * (1 + 1e-5)
  assert finals["inputs"].min() > 0


def test_unknown_rde_norm_is_refused_naming_the_key():
  config = _memory_config("rde").model
  config.rde_norm = "layer"
  with pytest.raises(ValueError, match="config.model.rde_norm"):
    models.build_model(config)


@pytest.mark.slow
def test_rde_state_has_one_size_after_10_and_1000_frames():
  config = _memory_config("rde")
  model = models.build_model(config.model).clone(max_objects=2)
  variables = jax.jit(model.init)(jax.random.key(0), *models.example_inputs(model))
  frames = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
  labels = np.zeros((16, 16), np.int32)
  labels[2:7, 2:7], labels[9:15, 8:15] = 1, 2
  paste = np.full((16, 16), 255, np.int32)
  keys = jnp.ones((1, 2, 3, 2, 16))
  values = jnp.ones((1, 2, 3, 2, 64))
  aggregated = model.apply(variables, keys, values, 2 * keys, 2 * values, method="aggregate")
  assert [x.shape for x in aggregated] == [keys.shape, values.shape]

  def step(_, state):
    return memory_propagation.propagation_step(
        model, variables, state, frames, paste, jnp.int32(2), jnp.array([16, 16]),
        objects_per_chunk=2)[0]

  @jax.jit
  def run(num_frames):
    start = memory_propagation.start_video(model, variables, frames, labels, num_slots=2)
    return jax.lax.fori_loop(0, num_frames, step, start)

  states = [run(n) for n in (10, 1000)]
  first = np.abs(np.asarray(run(0)["extra_values"])).max()
  assert np.abs(np.asarray(states[1]["extra_values"])).max() < 10 * first  # Bounded.
  sizes = [{k: (v.shape, v.dtype) for k, v in state.items()} for state in states]
  assert sizes[0] == sizes[1]
  assert sizes[0]["extra_keys"][0] == (2, 1, 1, 16)  # [S, h16, w16, C_k]: one RDE slot.
  assert int(states[1]["time"]) == 1000 and int(jnp.sum(states[1]["memory_valid"])) == 1


@pytest.mark.slow
@pytest.mark.unoptimized
@pytest.mark.parametrize("head", ["stm", "rde"])
def test_train_restore_evaluate_export_and_bundle(head, tmp_path, monkeypatch):
  from feelvos_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from feelvos_jax.training import train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train, "_load_videos",
                      lambda dataset_config, split, decoders=None: testing.fake_videos(2, 5))
  config = _memory_config(head)
  workdir = os.fspath(tmp_path / "run")
  state = train.train_and_evaluate(config, workdir, evaluate=True)
  assert int(state.step) == 2
  model = models.build_model(config.model)
  variables, step = checkpointing.restore_variables(config, workdir, model)
  assert step == 2
  frames, labels, first_frame = testing.make_video(6, 3, height=40, width=36, seed=2,
                                                   appear=[0, 0, 3])
  propagator = video_propagation.propagator_from_config(model, variables, config)
  expected = testing.run(propagator, frames, labels, first_frame)
  assert expected.shape == (6, 40, 36)
  if head == "stm":  # Videos stepped together (vmap) give each video's own masks.
    other_frames, other_labels, other_first = testing.make_video(4, 3, height=40, width=36,
                                                                 seed=3)
    batch = list(propagator.propagate_batch([
        host_loop.Video(frames, testing.annotations_of(labels, first_frame), first_frame),
        host_loop.Video(other_frames, testing.annotations_of(other_labels, other_first),
                        other_first)]))
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_array_equal(batch[1],
                                  testing.run(propagator, other_frames, other_labels, other_first))
  bundle = export_lib.load(export_lib.export(config, workdir))
  assert sorted(bundle._files["48x48x3"]["steps"]) == ["1"]
  np.testing.assert_array_equal(testing.run(bundle, frames, labels, first_frame), expected)
  other = config.copy_and_resolve_references()
  other.model.head = "rde" if head == "stm" else "stm"
  with pytest.raises(ValueError, match=f"trained with config.model.head='{head}'"):
    checkpointing.restore_variables(other, workdir, models.build_model(other.model))


@pytest.mark.slow
@pytest.mark.unoptimized  # Sharded and unsharded compiled alike, compared.
@pytest.mark.parametrize("mode", ["query", "reference"])
def test_sharded_memory_read_in_the_model_equals_unsharded(mode):
  assert jax.device_count() == 8
  config = _memory_config("stm")
  config.model.matching_chunk_size = 3
  model = models.build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(1), *models.example_inputs(model))
  sharded = video_propagation.sharded_matching_model(model, mode)
  rng = np.random.default_rng(3)
  frames = rng.integers(0, 256, (1, 48, 32, 3)).astype(np.float32)
  memory = rng.integers(0, 256, (1, 3, 48, 32, 3)).astype(np.float32)
  probs = jax.nn.one_hot(rng.integers(0, 3, (1, 3, 48, 32)), 3)
  num_objects = jnp.array([2])
  expected = jax.jit(model.apply)(variables, frames, memory, probs, num_objects)
  got = jax.jit(sharded.apply)(variables, frames, memory, probs, num_objects)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_max_skip_curriculum_grows_the_gap_limit():
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top (TF)
  config = testing.tiny_config().dataset
  config.max_frame_gap, config.max_skip, config.max_skip_ramp_steps = 1, 5, 10
  settings = input_pipeline.train_settings(config)
  assert [int(settings.gap_limit(step)) for step in (0, 5, 9, 10, 100)] == [1, 3, 4, 5, 5]
  config.max_skip = 0
  assert int(input_pipeline.train_settings(config).gap_limit(100)) == 1


def test_clip_indices_are_the_annotated_frames_before_the_previous_one():
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top (TF)
  annotated = np.array([True, False, True, True, False, True])
  def indices(previous, clip_frames):
    return input_pipeline._clip_indices(annotated, previous, clip_frames).numpy().tolist()
  assert indices(5, 2) == [2, 3]
  assert indices(5, 4) == [0, 0, 2, 3]
  assert indices(3, 3) == [0, 0, 2]
  assert indices(0, 2) == [0, 0]


def test_rde_samples_carry_the_clip_before_the_previous_frame():
  """Object 7 of `fake_videos` starts at column 20 + t in frame t: without rescaling or flips,
  the clip's labels show it at the columns of the two frames before the previous one."""
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top (TF)
  config = testing.tiny_config().dataset
  config.crop_size, config.max_scale, config.random_flip = (36, 40), 1.0, False
  samples = input_pipeline.make_train_samples(
      config, testing.fake_videos(2, 6), max_objects=2, seed=0, clip_frames=2)

  def frame_of(labels):  # Frame index of labels [h, w] from object 7's (slot 2) first column.
    return int(np.argmax((labels == 2).any(axis=0))) - 20

  seen = set()
  for sample in samples.take(12).as_numpy_iterator():
    assert sample["clip_frames"].shape == (2, 36, 40, 3)
    assert sample["clip_labels"].shape == (2, 36, 40)
    previous = frame_of(sample["previous_labels"])
    assert [frame_of(labels) for labels in sample["clip_labels"]] == [
        max(previous - 2, 0), max(previous - 1, 0)]
    seen.add(previous)
  assert len(seen) > 2
  assert "clip_frames" not in next(input_pipeline.make_train_samples(
      config, testing.fake_videos(1, 3), max_objects=2, seed=0).as_numpy_iterator())


@pytest.mark.parametrize("head", ["stm", "rde"])
def test_clip_frames_reach_memory_model_training_only(head):
  from feelvos_jax.training import train  # pylint: disable=g-import-not-at-top
  config = _memory_config(head)
  assert train.clip_frames(config) == 2
  config.model.head = "feelvos"
  assert train.clip_frames(config) == 0
  config.model.head, config.dataset.clip_frames = head, -1
  with pytest.raises(ValueError, match="config.dataset.clip_frames"):
    train.validate_config(config)


def _training_memory_lengths(config, monkeypatch):
  """Memory frames of every STM read in one traced training loss on a random batch (positions
  of the keys `memory_read.memory_read` sees / positions per frame)."""
  from feelvos_jax.matching import memory_read  # pylint: disable=g-import-not-at-top
  from feelvos_jax.training import objectives  # pylint: disable=g-import-not-at-top
  lengths, read = [], memory_read.memory_read
  positions = (config.dataset.crop_size[0] // 16) * (config.dataset.crop_size[1] // 16)

  def spy(query_keys, memory_keys, *args, **kwargs):
    lengths.append(memory_keys.shape[0] // positions)
    return read(query_keys, memory_keys, *args, **kwargs)

  model = models.build_model(config.model)
  variables = jax.eval_shape(model.init, jax.random.key(0), *models.example_inputs(model))
  monkeypatch.setattr(memory_read, "memory_read", spy)
  batch = testing.random_batch(config)
  jax.eval_shape(lambda v, b: objectives.loss_and_logits(model.apply, v, b, 0,
                                                         jax.random.key(1), config),
                 variables, batch)
  return lengths


@pytest.mark.parametrize("clip", [0, 3])
def test_stm_training_reads_a_memory_of_reference_clip_and_previous(clip, monkeypatch):
  config = _memory_config("stm")
  config.batch_size, config.dataset.clip_frames = 2, clip
  assert _training_memory_lengths(config, monkeypatch) == [2 + clip]


@pytest.mark.slow
def test_static_frames_warp_the_reference_frame():
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top (TF)
  config = testing.tiny_config().dataset
  config.static_frames = True
  samples = input_pipeline.make_train_samples(config, testing.fake_videos(2, 3), max_objects=2,
                                              seed=0, clip_frames=2)
  for sample in samples.take(3).as_numpy_iterator():
    reference = set(np.unique(sample["reference_labels"]).tolist())
    warps = [(sample[f"{name}_frame"], sample[f"{name}_labels"])
             for name in ("previous", "current")] + list(zip(sample["clip_frames"],
                                                             sample["clip_labels"]))
    for frame, labels in warps:
      assert set(np.unique(labels).tolist()) <= reference | {255}
      assert not np.array_equal(frame, sample["reference_frame"])
    assert not np.array_equal(sample["clip_frames"][0], sample["clip_frames"][1])
    assert (sample["current_labels"] == 1).any()


@pytest.mark.parametrize("head", ["stm", "rde"])
def test_training_reads_every_frame_from_the_frames_before_it(head):
  """`read_every_frame` (running-average batch norm, so that the batch does not matter): query
  t equals the model's own training forward pass on memory frames 0..t-1 (RDE: `rde_forward`,
  whose RDE aggregates frames 1..t-1, from t = 2), the current frame the one on all T
  frames."""
  from feelvos_jax.training import objectives  # pylint: disable=g-import-not-at-top
  config = _memory_config(head)
  config.batch_size, config.model.freeze_backbone_batch_norm = 2, True
  model = models.build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), *models.example_inputs(model))
  batch = testing.random_batch(config)
  frames = np.concatenate([batch["reference_frame"][:, None], batch["clip_frames"],
                           batch["previous_frame"][:, None]], 1)
  probs = jax.nn.one_hot(np.concatenate([batch["reference_labels"][:, None],
                                         batch["clip_labels"], batch["previous_labels"][:, None]],
                                        1), model.num_slots)
  outputs, _ = model.apply(variables, frames, probs, batch["current_frame"],
                           batch["num_objects"], method=objectives.read_every_frame,
                           mutable=["batch_stats"])
  assert outputs["stm_logits"].shape[:2] == (2, 4)
  queries = list(np.moveaxis(frames[:, 1:], 1, 0)) + [batch["current_frame"]]
  for t, query in enumerate(queries, start=1):
    if head == "rde" and t == 1:  # rde_forward needs two memory frames.
      continue
    expected, _ = model.apply(variables, query, frames[:, :t], probs[:, :t],
                              batch["num_objects"], train=True, mutable=["batch_stats"],
                              **({"method": "rde_forward"} if head == "rde" else {}))
    expected = expected if head == "rde" else {"stm_logits": expected}
    for key, value in expected.items():
      if key in ("stm_logits", "rde_logits"):
        np.testing.assert_allclose(outputs[key][:, t - 1], value, atol=1e-4, err_msg=key)
