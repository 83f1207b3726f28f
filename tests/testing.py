"""Shared test helpers: the one module that test modules (and benchmarks) import helpers from.

Test modules never import each other; what two of them share lives here. The module imports
neither TensorFlow nor TFDS at import time (the helpers that need them import them when called),
so the benchmarks that run where TensorFlow is not installed can use `random_batch`.

- Training: `tiny_config`, `fake_videos` (in-memory decoded videos) and `random_batch`.
- Propagation: `small_config`, `shared_setup` (session-cached model and propagators),
  `map_reading_variables` (a head with decisive masks), `make_video`, `annotations_of`, `run`,
  on `SIZE` x `SIZE` frames.
- Interactive sessions: `interactive_setup`, `random_variables`, `interactive_frames`,
  `box_mask`, `INTERACTIVE_SHAPE`.
- Compilation: `count_traces`, `count_compiles`, `unoptimized`.
- Dataset builders: `build`, `examples`, `assert_matches`, `MAX_MEAN_JPEG_ERROR`.
"""
import collections
import contextlib
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import synthetic
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax.inference import video_propagation
from feelvos_jax.training import train

SIZE = 32
"""Height and width of the propagation tests' videos (the tiny backbone needs no padding)."""

MAX_MEAN_JPEG_ERROR = 4.0
"""Mean |decoded - drawn| per video that a builder's JPEG frames (quality 95) may reach."""


def tiny_config() -> ml_collections.ConfigDict:
  """A few-second config: 32x32 crops, 2 objects, narrow heads, 4 steps, checkpoint every 2."""
  config = synthetic.get_config()
  config.batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  config.keep_checkpoints = 3
  config.optimizer.warmup_steps = 1
  config.loss.hard_mining_ramp_steps = 2
  config.model.decoder_channels = 8
  config.model.embedding_dim = 4
  config.model.max_objects = 2
  config.model.window = 2
  config.model.max_reference_pixels = 16
  config.model.head_channels = 8
  config.model.head_kernel_size = 3
  config.model.head_num_layers = 1
  config.dataset.crop_size = (32, 32)
  config.dataset.min_scale = 1.0
  config.dataset.max_scale = 1.2
  config.dataset.min_object_pixels = 1
  config.dataset.max_frame_gap = 1
  config.dataset.prefetch = 0
  return config


def fake_videos(num_videos=3, num_frames=4, height=36, width=40, seed=0):
  """Decoded videos (datasets/features.py spec) as a tf.data.Dataset: two moving squares
  (ids 3, 7) on noise. Imports TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (keeps this module TF-free)
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (num_videos, num_frames, height, width, 3), dtype=np.uint8)
  segmentations = np.zeros((num_videos, num_frames, height, width, 1), np.uint8)
  for v in range(num_videos):
    for t in range(num_frames):
      segmentations[v, t, 4 + t + v:18 + t + v, 4:18] = 3
      segmentations[v, t, 18:32, 20 + t:34 + t] = 7
      segmentations[v, t, 0, :] = IGNORE_LABEL
  frames[segmentations[..., 0] == 3] = (220, 40, 40)
  frames[segmentations[..., 0] == 7] = (40, 40, 220)
  return tf.data.Dataset.from_tensor_slices({
      "video": {"name": [f"video{v}" for v in range(num_videos)],
                "frames": frames, "segmentations": segmentations,
                "frame_names": [[f"{t:05d}" for t in range(num_frames)]] * num_videos},
      "objects": {"ids": np.tile(np.array([[3, 7]], np.int32), (num_videos, 1)),
                  "first_frame": np.zeros((num_videos, 2), np.int32)},
  })


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A global batch in the `train.TRAIN_KEYS` layout with random content, for smoke tests and
  benchmarks: config.batch_size samples of uniform random uint8 frames of
  config.dataset.crop_size, labels uniform in 0..config.model.max_objects with 10% of the
  pixels IGNORE_LABEL, and num_objects = max_objects; for STM and RDE also clip_frames
  [B, C, H, W, 3] and clip_labels [B, C, H, W] (C = `train.clip_frames(config)`)."""
  rng = np.random.default_rng(seed)
  crop = tuple(config.dataset.crop_size)
  size = config.batch_size

  def frames_and_labels(shape):
    frames = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    labels = rng.integers(0, config.model.max_objects + 1, shape)
    labels[rng.random(labels.shape) < 0.1] = IGNORE_LABEL
    return frames, labels.astype(np.int32)

  batch = {}
  for name in ("reference", "previous", "current"):
    batch[f"{name}_frame"], batch[f"{name}_labels"] = frames_and_labels((size,) + crop)
  clip = train.clip_frames(config)
  if clip:
    batch["clip_frames"], batch["clip_labels"] = frames_and_labels((size, clip) + crop)
  batch["num_objects"] = np.full((size,), config.model.max_objects, np.int32)
  return batch


def numpy_state(state) -> dict:
  """A `train.TrainState` as a dict of numpy trees (step, params, batch_stats, opt_state, rng)."""
  return jax.tree.map(np.asarray, jax.device_get(
      {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
       "opt_state": state.opt_state, "rng": state.rng}))


def small_config() -> ml_collections.ConfigDict:
  """The synthetic config with narrow layers: seconds to compile on a CPU."""
  config = synthetic.get_config()
  config.model.decoder_channels = 8
  config.model.embedding_dim = 8
  config.model.max_objects = 5
  config.model.window = 3
  config.model.head_channels = 8
  config.model.head_kernel_size = 3
  config.model.head_num_layers = 2
  config.inference.object_buckets = (5,)
  return config


def init_variables(model, seed=0):
  """`model.init` on one SIZE x SIZE frame, compiled."""
  h = SIZE // 4
  embedding = jnp.zeros((1, h, h, model.embedding_dim))
  labels = jnp.zeros((1, h, h), jnp.int32)
  return jax.jit(model.init)({"params": jax.random.PRNGKey(seed)}, jnp.zeros((1, SIZE, SIZE, 3)),
                    embedding, labels, embedding, labels, jnp.zeros((1, h, h, model.num_slots)),
                    jnp.ones((1,), jnp.int32))


def map_reading_variables(variables, decoder_channels, gain=4.0):
  """`variables` with a hand-set two-layer segmentation head (of `small_config`'s head shape)
  whose logit of slot k is gain * (2 - global_k - local_k + probability_k / 2): it ignores the
  features and follows the matching maps, as a trained head mostly does, so that its masks
  follow the objects and its decisions have margins (a random head's slots nearly tie)."""
  head = jax.tree.map(np.array, variables["params"]["segmentation_head"])
  head = jax.tree.map(np.zeros_like, head)
  head["layer_0"]["depthwise_kernel"][1, 1, 0, decoder_channels:] = 1.0
  head["layer_0"]["pointwise_kernel"][0, 0, decoder_channels:, 0] = (-gain, gain / 2, -gain)
  head["layer_0"]["pointwise_bias"][0] = 2 * gain
  head["layer_1"]["depthwise_kernel"][1, 1, 0, 0] = 1.0
  head["layer_1"]["pointwise_kernel"][0, 0, 0, 0] = 1.0
  head["logits"]["kernel"][0, 0, 0, 0] = 1.0
  params = dict(variables["params"], segmentation_head=jax.tree.map(jnp.asarray, head))
  return dict(variables, params=params)


@functools.cache
def shared_setup():
  """(config, model, variables, propagator with buckets (5,), propagator with buckets (2,)) of
  `small_config`.

  Cached for the session, so that every test module reuses the compiled steps.
  """
  config = small_config()
  model = models.build_model(config.model)
  variables = init_variables(model)
  return (config, model, variables, video_propagation.VideoPropagator(model, variables),
          video_propagation.VideoPropagator(model, variables, object_buckets=(2,)))


def make_video(num_frames, num_objects, height=SIZE, width=SIZE, seed=0, appear=None):
  """Random frames and a label map per frame with one box per object (objects from `appear`)."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
  labels = np.zeros((num_frames, height, width), np.int32)
  appear = appear or [0] * num_objects
  for index in range(num_objects):
    top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
    box_h, box_w = rng.integers(5, 9, size=2)
    for t in range(appear[index], num_frames):
      labels[t, top:top + box_h, left:left + box_w] = index + 1
    frames[appear[index]:, top:top + box_h, left:left + box_w] = 40 * (index + 1)
  return frames, labels, list(appear)


def annotations_of(labels, first_frame):
  """The given masks {frame: labels[frame]} of the frames where objects first appear."""
  return {t: labels[t] for t in set(first_frame)}


def run(propagator, frames, labels, first_frame, object_ids=None):
  """All masks that `propagator` predicts for the video, stacked."""
  return np.stack(list(propagator.propagate(frames, annotations_of(labels, first_frame),
                                            first_frame, object_ids)))


@contextlib.contextmanager
def _count_events(name: str):
  """Counts the JAX monitoring duration events `name` by function name inside the context."""
  counts = collections.Counter()

  def listener(event, unused_duration, **kwargs):
    if event == name:
      counts[kwargs.get("fun_name")] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def count_traces():
  """Counts jit traces by function name while inside the context."""
  return _count_events("/jax/core/compile/jaxpr_trace_duration")


def count_compiles():
  """Counts XLA backend compiles by function name while inside the context (a call that
  misses the jit cache for any reason, shapes or argument placement, compiles again)."""
  return _count_events("/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def unoptimized():
  """Compiles inside the context with `jax_disable_most_optimizations` (XLA's CPU backend at
  -O0): about half the compile time of the tiny train step on 2 cores, but other rounding than
  optimised code. Only for plumbing (files, errors, control flow, runs compared with runs compiled
  the same way), never for numerics checked against NumPy or against optimised code."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


def build(builder_class, manual_dir, data_dir, config: str):
  """Prepares `builder_class(config)` from `manual_dir` into `data_dir`, never downloading."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top (keeps this TF-free)
  builder = builder_class(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False))
  return builder


def examples(builder, split: str) -> dict:
  """Video name -> decoded example of one split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top (keeps this TF-free)
  return {example["video"]["name"].decode(): example
          for example in tfds.as_numpy(builder.as_dataset(split=split))}


def assert_matches(builder, truth) -> None:
  """Both splits hold exactly the fake videos of `truth` (fake_layouts' records), decoded."""
  for split in ("train", "validation"):
    decoded = examples(builder, split)
    assert sorted(decoded) == sorted(name for name, video in truth.items()
                                     if video.split == split)
    for name, example in decoded.items():
      expected = truth[name]
      frames = example["video"]["frames"]
      assert frames.shape == expected.frames.shape
      assert np.abs(frames.astype(float) - expected.frames).mean() < MAX_MEAN_JPEG_ERROR
      np.testing.assert_array_equal(example["video"]["segmentations"][..., 0],
                                    expected.segmentations)
      assert [n.decode() for n in example["video"]["frame_names"]] == expected.frame_names
      assert example["objects"]["ids"].tolist() == expected.ids
      assert example["objects"]["first_frame"].tolist() == expected.first_frame


def save_checkpoint(config: ml_collections.ConfigDict, model, variables, workdir: str,
                    step: int) -> None:
  """Saves `variables` of `model` as the training checkpoint `step` in `workdir`, with a fresh
  optimizer state (what `restore_variables`, `export` and `segment --workdir` read)."""
  # Imported here: the training modules pull in Orbax, which most test modules never need.
  import os  # pylint: disable=g-import-not-at-top
  from feelvos_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from feelvos_jax.training import optimizers  # pylint: disable=g-import-not-at-top
  from feelvos_jax.training import train  # pylint: disable=g-import-not-at-top
  tx = optimizers.create_optimizer(config.optimizer, config.learning_rate,
                                   config.num_train_steps)[0]
  state = train.TrainState(step=jnp.array(step), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(0),
                           apply_fn=model.apply, tx=tx)
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=1)
  checkpointer.save(step, state, config)
  checkpointer.close()


# ------------------------------------------------------------------ interactive sessions
INTERACTIVE_SHAPE = (5, 30, 29)
"""(frames, height, width) of the interactive sessions' videos (`interactive_frames`)."""


@functools.cache
def interactive_setup():
  """(model, variables): the narrow model of `small_config`, `random_variables`."""
  model = models.build_model(small_config().model)
  return model, random_variables(model)


def random_variables(model, seed=0):
  """Random weights without compiling `model.init` (seconds instead of half a minute): shapes
  from `jax.eval_shape`, values from NumPy: kernels N(0, 2 / fan_in), biases N(0, 0.1^2),
  batch-norm scales 1 and running statistics mean 0, variance 1."""
  shapes = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)},
                          *models.example_inputs(model))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    if name == "mean":
      return np.zeros(leaf.shape, np.float32)
    if name.endswith("kernel"):
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(
          np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def interactive_frames(seed=0, height=INTERACTIVE_SHAPE[1]):
  """[T, height, 29, 3] uint8 noise with a bright box moving right by one pixel per frame."""
  rng = np.random.default_rng(seed)
  num_frames, _, width = INTERACTIVE_SHAPE
  frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
  for t in range(num_frames):
    frames[t, 8:20, 6 + t:16 + t] = 230
  return frames


def box_mask(top, left, bottom, right, height=INTERACTIVE_SHAPE[1]):
  """[height, INTERACTIVE_SHAPE[2]] bool, True on rows top..bottom-1, columns left..right-1."""
  mask = np.zeros((height, INTERACTIVE_SHAPE[2]), bool)
  mask[top:bottom, left:right] = True
  return mask
