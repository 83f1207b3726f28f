"""bfloat16 end to end (`config.model.dtype = "bfloat16"`): the same variables run in float32
and in bfloat16 give close matching maps, logits, probabilities and masks.

The tiny model of `testing.small_config` (random weights) on 32x32 videos. The bounds and why:
- matching maps: 1e-2, the matching functions' bfloat16 contract (docs/matching.md), plus the
  head input's bfloat16 rounding of maps in [0, 1] (at most 2**-9);
- logits: 3% of the largest |logit|: bfloat16 keeps 8 significant bits (relative rounding
  2**-9, about 0.2%) and the roughly ten rounded layers of backbone, decoder, embedding head and
  segmentation head add up to about 2%;
- probabilities: half the largest logit difference (plus float32 rounding), the softmax's
  Lipschitz bound (|d p_i| <= 2 p_i (1 - p_i) max |d z| <= max |d z| / 2);
- labels: exact wherever the float32 margin between the two best slots exceeds twice the
  largest logit difference (upsampling is a convex combination, so it cannot enlarge it).
  A random head's slots differ far less than their logits' size, so most pixels are near ties
  there; the propagated masks are therefore compared with a hand-set head that reads only the
  matching maps (`testing.map_reading_variables`): they must agree on 99% of the pixels.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax.inference import propagation
from feelvos_jax.inference import video_propagation
from feelvos_jax.models import upsampling
from tests import testing

_OBJECTS = 3
"""Objects of the test videos (slots 1..3 of the 5-slot bucket)."""


@functools.cache
def _models():
  """(float32 model, bfloat16 model, float32 variables shared by both)."""
  config, model, variables, _, _ = testing.shared_setup()
  config = config.copy_and_resolve_references()
  config.model.dtype = "bfloat16"
  return model, models.build_model(config.model), variables


def _with_head(variables, head):
  return dict(variables, params=dict(variables["params"], segmentation_head=head))


def _scaled_logits(variables, gain):
  """The variables with the head's logits kernel times `gain`."""
  head = dict(variables["params"]["segmentation_head"])
  head["logits"] = dict(head["logits"], kernel=head["logits"]["kernel"] * gain)
  return _with_head(variables, head)


def _first_step(model, variables, frames, labels):
  """(state after frame 0, state after frame 1, frame 1's labels [H, W], its merged stride-4
  logits [h, w, 6]) of a video whose objects all appear in frame 0."""
  plan = video_propagation.VideoPropagator(model, variables).plan(*labels.shape[1:], _OBJECTS)
  start = plan.start(frames[0], labels[0])
  paste = np.full(labels.shape[1:], IGNORE_LABEL, np.int32)
  after, frame_labels = plan.step(start, frames[1], paste, np.int32(_OBJECTS),
                                  np.array(labels.shape[1:], np.int32))
  features, embeddings = jax.jit(functools.partial(model.apply, method="embed"))(
      variables, frames[1][None])
  logits = jax.jit(functools.partial(propagation.segment_logits, model,
                                     objects_per_chunk=plan.objects_per_chunk))(
      variables, start, features, embeddings, np.int32(_OBJECTS))
  return start, after, frame_labels, logits


def test_matching_maps_of_the_bfloat16_model_within_1e2_of_float32():
  """Global and local maps of `FEELVOS` (6 slots) on random embeddings with near matches."""
  full, half, variables = _models()
  rng = np.random.default_rng(0)
  size, dim = 8, full.embedding_dim
  query = 0.4 * rng.normal(size=(1, size, size, dim))
  reference = 0.4 * rng.normal(size=(1, size, size, dim))
  reference[:, :3] = query[:, :3] + 0.05 * rng.normal(size=(1, 3, size, dim))
  labels = rng.integers(0, full.num_slots, (1, size, size)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = IGNORE_LABEL
  probs = np.asarray(jax.nn.one_hot(labels, full.num_slots))

  def head_inputs(model):
    maps, _ = model.apply(variables, query.astype(np.float32), reference.astype(np.float32),
                          labels, reference.astype(np.float32), labels, probs, False,
                          method=lambda module, *args: module._head_inputs(*args))
    return np.asarray(maps.astype(jnp.float32))

  expected, got = head_inputs(full), head_inputs(half)
  assert got.shape == (1, size, size, full.num_slots, 3)
  for channel, name in ((0, "global"), (2, "local")):
    error = np.abs(got[..., channel] - expected[..., channel]).max()
    assert error < 1e-2, f"{name} maps differ by {error}"
    assert expected[..., channel].min() < 0.5, f"{name}: no near match covered"


def test_first_step_logits_probabilities_and_labels_close():
  full, half, variables = _models()
  frames, labels, _ = testing.make_video(2, _OBJECTS, seed=1)
  # Random heads give logits of ~1e-4; scaled to a trained model's spread of several units.
  _, _, _, logits = _first_step(full, variables, frames, labels)
  variables = _scaled_logits(variables, 4.0 / float(jnp.std(logits[..., :1 + _OBJECTS])))
  start, expected_state, expected_labels, expected = _first_step(full, variables, frames,
                                                                 labels)
  start_half, state, got_labels, got = _first_step(half, variables, frames, labels)

  present = slice(0, 1 + _OBJECTS)
  expected, got = np.asarray(expected[..., present]), np.asarray(got[..., present])
  logit_error = np.abs(got - expected).max()
  assert np.abs(expected).max() > 4.0
  assert logit_error <= 0.03 * np.abs(expected).max()
  probs_error = np.abs(state["previous_probs"] - expected_state["previous_probs"]).max()
  assert probs_error <= logit_error / 2 + 1e-6
  upsampled = np.asarray(upsampling.upsample_logits(expected[None], labels.shape[1:]))[0]
  ranked = np.sort(upsampled, axis=-1)
  decided = ranked[..., -1] - ranked[..., -2] > 2 * logit_error
  np.testing.assert_array_equal(np.asarray(got_labels)[decided],
                                np.asarray(expected_labels)[decided])
  # The carried state: probabilities float32, labels int32, embeddings as `embed` gives them
  # (the compute dtype: bfloat16 matching rounds them to bfloat16 anyway, so float32 copies
  # would double the reference buffer and change no map).
  for carried in (start_half, state):
    assert carried["previous_probs"].dtype == jnp.float32
    assert carried["previous_labels"].dtype == carried["reference_labels"].dtype == jnp.int32
    assert carried["reference_embedding"].dtype == jnp.bfloat16
    assert carried["previous_embedding"].dtype == jnp.bfloat16
  assert start["previous_probs"].dtype == jnp.float32


def test_propagated_masks_agree_on_99_percent_of_pixels():
  """Eight frames, an object appearing at frame 3, the hand-set map-reading head."""
  full, half, variables = _models()
  variables = testing.map_reading_variables(variables, full.decoder_channels)
  for seed in (0, 1):
    frames, labels, first_frame = testing.make_video(8, _OBJECTS, seed=seed, appear=[0, 0, 3])
    expected = testing.run(video_propagation.VideoPropagator(full, variables), frames, labels,
                           first_frame)
    got = testing.run(video_propagation.VideoPropagator(half, variables), frames, labels,
                      first_frame)
    assert np.mean(expected == labels) > 0.9  # The float32 masks follow the objects.
    assert np.mean(got == expected) >= 0.99


@pytest.mark.slow
def test_bfloat16_gradients_are_float32_and_follow_float32():
  """A training gradient through the bfloat16 model (backbone, matching, head): float32 and
  finite; per module (backbone, DeepLab, embedding head, segmentation head) its cosine with
  the float32 gradient above 0.9 (bfloat16 rounding, ReLU gates of near-zero inputs flipped,
  compounds backwards through a random network's layers), the segmentation head's above 0.999
  (its biases' gradients, sums over every pixel and slot, accumulate in float32:
  `layers.add_bias`)."""
  full, half, variables = _models()
  frames, labels, _ = testing.make_video(2, _OBJECTS, seed=2)
  frames, labels = jnp.asarray(frames, jnp.float32), jnp.asarray(labels[:, ::4, ::4])

  @functools.partial(jax.jit, static_argnums=1)
  @jax.grad
  def grad(params, model):
    current = dict(variables, params=params)
    features, embeddings = model.apply(current, frames, method="embed")
    logits = model.apply(current, features[1:], embeddings[1:], embeddings[:1], labels[:1],
                         embeddings[:1], labels[:1], jax.nn.one_hot(labels[:1], 6),
                         jnp.array([_OBJECTS]), method="segment")
    log_probs = jax.nn.log_softmax(logits[..., :1 + _OBJECTS])
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[1:, ..., None], -1))

  expected, got = grad(variables["params"], full), grad(variables["params"], half)
  assert all(g.dtype == jnp.float32 and np.isfinite(g).all() for g in jax.tree.leaves(got))
  for module in expected:
    flat = [np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree[module])])
            for tree in (expected, got)]
    cosine = flat[0] @ flat[1] / (np.linalg.norm(flat[0]) * np.linalg.norm(flat[1]))
    assert cosine > (0.999 if module == "segmentation_head" else 0.9), module
