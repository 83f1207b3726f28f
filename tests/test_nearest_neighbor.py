"""PML mode (feelvos_jax/models/nearest_neighbor.py): the k-NN vote against NumPy loops.

`segment` has no parameters, so it runs with empty variables on random embeddings; `embed` is
the FEELVOS embedding network (one small init checks the variable names and shapes).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import matching
from feelvos_jax import models
from feelvos_jax.inference import video_propagation
from feelvos_jax.models import build_model
from feelvos_jax.models import nearest_neighbor

MAX_OBJECTS = 3
SLOTS = 1 + MAX_OBJECTS


def model_config(**overrides):
  config = common.get_base_config().model
  config.update(dict(backbone="tiny", decoder_channels=8, embedding_dim=6,
                     max_objects=MAX_OBJECTS, head="nearest_neighbor", nearest_neighbors=3,
                     matching_chunk_size=7))
  config.update(overrides)
  return config


def numpy_votes(query, reference, labels, num_slots, k):
  """Weighted votes from the formula: stable sort of squared distances over voting pixels."""
  weights = 1.0 + 2.0 ** -(np.arange(k) + 1.0)
  votes = np.zeros((len(query), num_slots))
  voting = [r for r in range(len(reference)) if 0 <= labels[r] < num_slots]
  for q in range(len(query)):
    distances = [np.sum((query[q].astype(np.float64) - reference[r]) ** 2) for r in voting]
    for rank, position in enumerate(np.argsort(distances, kind="stable")[:k]):
      votes[q, labels[voting[position]]] += weights[rank]
  return votes


def random_inputs(seed, batch=2, side=5, ref_side=(4, 6), dim=6):
  rng = np.random.default_rng(seed)
  embeddings = rng.normal(size=(batch, side, side, dim)).astype(np.float32)
  reference = rng.normal(size=(batch,) + ref_side + (dim,)).astype(np.float32)
  reference_labels = rng.integers(0, SLOTS, (batch,) + ref_side).astype(np.int32)
  reference_labels[rng.random(reference_labels.shape) < 0.2] = IGNORE_LABEL
  previous = rng.normal(size=(batch, side, side, dim)).astype(np.float32)
  previous_labels = rng.integers(0, SLOTS, (batch, side, side)).astype(np.int32)
  previous_labels[rng.random(previous_labels.shape) < 0.2] = IGNORE_LABEL
  num_objects = np.array([MAX_OBJECTS, 1], np.int32)[:batch]
  return embeddings, reference, reference_labels, previous, previous_labels, num_objects


def segment(model, embeddings, reference, reference_labels, previous, previous_labels,
            num_objects):
  batch, side = embeddings.shape[:2]
  features = jnp.zeros((batch, side, side, 2))
  probs = jnp.zeros((batch, side, side, model.num_slots))
  return np.asarray(model.apply({}, features, embeddings, reference, reference_labels,
                                previous, previous_labels, probs, num_objects,
                                method="segment"))


@pytest.mark.parametrize("k,chunk_size", [(1, None), (3, 4), (5, 7)])
def test_votes_match_numpy(k, chunk_size):
  rng = np.random.default_rng(k)
  query = rng.normal(size=(13, 5)).astype(np.float32)
  reference = rng.normal(size=(17, 5)).astype(np.float32)
  labels = rng.integers(-1, SLOTS + 2, 17).astype(np.int32)
  labels[:2] = IGNORE_LABEL
  votes = nearest_neighbor.nearest_neighbor_votes(query, reference, labels, SLOTS, k=k,
                                                  chunk_size=chunk_size)
  np.testing.assert_allclose(votes, numpy_votes(query, reference, labels, SLOTS, k), rtol=1e-6)


def test_fewer_voters_than_k_and_ties_go_to_the_nearest_voter():
  reference = np.array([[0.0], [1.0], [3.0], [4.0], [9.0]], np.float32)
  labels = np.array([1, 2, 2, 1, IGNORE_LABEL], np.int32)
  query = np.array([[0.9]], np.float32)  # Order: r1 (2), r0 (1), r2 (2), r3 (1): a 2-2 tie.
  votes = np.asarray(nearest_neighbor.nearest_neighbor_votes(query, reference, labels, 3, k=6))
  np.testing.assert_allclose(votes[0], [0.0, 2 + 1 / 4 + 1 / 16, 2 + 1 / 2 + 1 / 8])
  assert votes.argmax() == 2


def test_vote_memory_is_bounded_by_the_chunk():
  """No intermediate of the vote holds [Q, R] values: the largest is chunk x R."""
  query, reference = jnp.zeros((64, 4)), jnp.zeros((50, 4))
  labels = jnp.zeros((50,), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda q, r, l: nearest_neighbor.nearest_neighbor_votes(
      q, r, l, SLOTS, k=3, chunk_size=8))(query, reference, labels)

  def sizes(jaxpr):
    for equation in jaxpr.eqns:
      yield from (int(np.prod(v.aval.shape)) for v in equation.outvars)
      for param in equation.params.values():
        for inner in param if isinstance(param, (list, tuple)) else [param]:
          if isinstance(inner, jax.extend.core.ClosedJaxpr):
            yield from sizes(inner.jaxpr)
          elif isinstance(inner, jax.extend.core.Jaxpr):
            yield from sizes(inner)

  largest = max(sizes(jaxpr.jaxpr))
  assert largest == 8 * 50  # The distances of one chunk (would be 64 x 50 unchunked).


@pytest.mark.parametrize("previous_frame_references", [True, False])
def test_segment_matches_numpy(previous_frame_references):
  model = build_model(model_config()).clone(previous_frame_references=previous_frame_references)
  inputs = random_inputs(0)
  logits = segment(model, *inputs)
  embeddings, reference, reference_labels, previous, previous_labels, num_objects = inputs
  batch, side, _, dim = embeddings.shape
  for b in range(batch):
    pixels, labels = reference[b].reshape(-1, dim), reference_labels[b].reshape(-1)
    if previous_frame_references:
      pixels = np.concatenate([pixels, previous[b].reshape(-1, dim)])
      labels = np.concatenate([labels, previous_labels[b].reshape(-1)])
    labels = np.where(labels <= num_objects[b], labels, -1)
    votes = numpy_votes(embeddings[b].reshape(-1, dim), pixels, labels, SLOTS, 3)
    expected = np.log(votes + nearest_neighbor.VOTE_SMOOTHING).reshape(side, side, SLOTS)
    expected[..., num_objects[b] + 1:] = -np.inf
    np.testing.assert_allclose(logits[b], expected, rtol=1e-5)
  assert logits.dtype == np.float32


def test_padded_slots_are_minus_infinity_and_softmax_gives_smoothed_fractions():
  model = build_model(model_config(nearest_neighbors=4))
  logits = segment(model, *random_inputs(1))
  assert np.all(logits[1, ..., 2:] == -np.inf) and np.all(np.isfinite(logits[1, ..., :2]))
  assert np.all(np.isfinite(logits[0]))
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  votes = np.exp(logits[0]) - nearest_neighbor.VOTE_SMOOTHING
  total = 4 + 1 / 2 + 1 / 4 + 1 / 8 + 1 / 16  # Four voters per pixel (enough voting pixels).
  np.testing.assert_allclose(votes.sum(-1), total, rtol=1e-5)
  np.testing.assert_allclose(probs[0], (votes + 0.1) / (total + 0.1 * SLOTS), rtol=1e-5)


@pytest.mark.parametrize("previous_frame_references",
                         [pytest.param(True, marks=pytest.mark.slow), False])
def test_one_neighbor_equals_the_global_matching_minimum(previous_frame_references):
  model = build_model(model_config(nearest_neighbors=1)).clone(
      previous_frame_references=previous_frame_references)
  inputs = random_inputs(2, side=6, ref_side=(6, 6))
  labels = segment(model, *inputs).argmax(-1)
  embeddings, reference, reference_labels, previous, previous_labels, num_objects = inputs
  for b in range(len(embeddings)):
    pixels, pixel_labels = reference[b], reference_labels[b]
    if previous_frame_references:
      pixels = np.concatenate([pixels, previous[b]])
      pixel_labels = np.concatenate([pixel_labels, previous_labels[b]])
    pixel_labels = np.where(pixel_labels <= num_objects[b], pixel_labels, IGNORE_LABEL)
    minima = np.asarray(matching.global_matching(embeddings[b], pixels, pixel_labels,
                                                 int(num_objects[b]) + 1, squared=True))
    np.testing.assert_array_equal(labels[b], minima.argmin(-1))


def test_embed_shares_the_feelvos_variable_names():
  model = build_model(model_config())
  inputs = models.example_inputs(model)  # 64 x 64 frames.
  variables = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, *inputs)
  assert set(variables["params"]) == {"backbone", "deeplab", "embedding"}
  features, embeddings = jax.eval_shape(
      lambda v: model.apply(v, inputs[0], method="embed"), variables)
  assert features.shape == (1, 16, 16, 8) and embeddings.shape == (1, 16, 16, 6)


@pytest.mark.parametrize("overrides,message", [
    (dict(head="knn"), "config.model.head='knn'"),
    (dict(nearest_neighbors=0), "config.model.nearest_neighbors"),
    (dict(embedding_dim=0), "config.model.embedding_dim"),
    (dict(background_matching=True), "config.model.background_matching=True"),
    (dict(local_windows=(2, 4)), "config.model.local_windows=(2, 4)"),
])
def test_bad_config_is_refused(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    build_model(model_config(**overrides))


def test_sharded_matching_is_refused_naming_the_config_key():
  model = video_propagation.sharded_matching_model(build_model(model_config()), "query")
  with pytest.raises(ValueError, match="config.matching.shard_axis='query'"):
    segment(model, *random_inputs(3))


def test_wrong_shapes_are_refused():
  model = build_model(model_config())
  inputs = list(random_inputs(4))
  inputs[2] = inputs[2][:, :3]
  with pytest.raises(ValueError, match="reference_labels"):
    segment(model, *inputs)
