"""Bootstrapped cross-entropy and PML's triplet loss against NumPy written from the formulas
(nested loops, tiny sizes)."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.models import upsampling
from feelvos_jax.training import losses


def _random_case(rng, batch=3, height=7, width=9, num_slots=4, padded_from=3):
  logits = rng.normal(size=(batch, height, width, num_slots)).astype(np.float32) * 2
  logits[..., padded_from:] = -np.inf
  labels = rng.integers(0, padded_from, size=(batch, height, width)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.2] = IGNORE_LABEL
  return logits, labels


def _reference_pixel_losses(logits, labels):
  """Per image, the list of -log softmax(label) over its non-ignored pixels."""
  per_image = []
  for b in range(labels.shape[0]):
    values = []
    for y in range(labels.shape[1]):
      for x in range(labels.shape[2]):
        label = labels[b, y, x]
        if label == IGNORE_LABEL:
          continue
        row = logits[b, y, x].astype(np.float64)
        finite = row[np.isfinite(row)]
        log_sum = finite.max() + math.log(np.exp(finite - finite.max()).sum())
        values.append(log_sum - row[label])
    per_image.append(values)
  return per_image


def _reference_bootstrapped(logits, labels, fraction):
  frame_losses = []
  for values in _reference_pixel_losses(logits, labels):
    if not values:
      continue
    kept = max(int(np.floor(np.float32(fraction) * np.float32(len(values)))), 1)
    frame_losses.append(np.mean(sorted(values, reverse=True)[:kept]))
  return np.mean(frame_losses) if frame_losses else 0.0


def _reference_upsample(logits, height, width):
  """Output pixel (y, x) reads logit coordinate (y / 4, x / 4), bilinear, clamped at the edge."""
  batch, h, w, num_slots = logits.shape
  out = np.zeros((batch, height, width, num_slots))
  for y in range(height):
    for x in range(width):
      sy, sx = min(y / 4, h - 1), min(x / 4, w - 1)
      y0, x0 = int(np.floor(sy)), int(np.floor(sx))
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      dy, dx = sy - y0, sx - x0
      out[:, y, x] = ((1 - dy) * (1 - dx) * logits[:, y0, x0] + (1 - dy) * dx * logits[:, y0, x1]
                      + dy * (1 - dx) * logits[:, y1, x0] + dy * dx * logits[:, y1, x1])
  return out


def test_hard_mining_fraction_ramps_linearly():
  fraction = lambda step: float(losses.hard_mining_fraction(step, top_k_percent=0.15,
                                                            ramp_steps=100))
  assert fraction(0) == pytest.approx(1.0)
  assert fraction(50) == pytest.approx(0.575)
  assert fraction(100) == pytest.approx(0.15)
  assert fraction(1000) == pytest.approx(0.15)
  assert float(losses.hard_mining_fraction(0, top_k_percent=0.3, ramp_steps=0)) == (
      pytest.approx(0.3))
  with pytest.raises(ValueError, match="top_k_percent"):
    losses.hard_mining_fraction(0, top_k_percent=0.0, ramp_steps=10)


def test_pixel_cross_entropy_matches_numpy():
  logits, labels = _random_case(np.random.default_rng(0))
  pixel_losses, valid = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  expected = _reference_pixel_losses(logits, labels)
  for b in range(labels.shape[0]):
    np.testing.assert_allclose(np.asarray(pixel_losses[b])[np.asarray(valid[b])], expected[b],
                               rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(pixel_losses)[labels == IGNORE_LABEL] == 0)
  np.testing.assert_array_equal(np.asarray(valid), labels != IGNORE_LABEL)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.15, 0.01])
def test_bootstrapped_cross_entropy_matches_numpy(fraction):
  logits, labels = _random_case(np.random.default_rng(1))
  labels[1] = IGNORE_LABEL  # A frame without any valid pixel does not count.
  loss = losses.bootstrapped_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), fraction)
  np.testing.assert_allclose(float(loss), _reference_bootstrapped(logits, labels, fraction),
                             rtol=1e-5)


def test_bootstrapped_cross_entropy_all_ignored_is_zero():
  logits, labels = _random_case(np.random.default_rng(2))
  labels[:] = IGNORE_LABEL
  assert float(losses.bootstrapped_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                                 0.5)) == 0.0


def test_gradient_is_finite_with_padded_slots():
  logits, labels = _random_case(np.random.default_rng(3))
  grad = jax.grad(lambda z: losses.bootstrapped_cross_entropy(z, jnp.asarray(labels), 0.3))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[..., 3:] == 0)


@pytest.mark.parametrize("size", [(10, 13), (12, 16), (9, 16)])
def test_upsample_logits_matches_numpy_and_keeps_padding(size):
  """Grids shorter than 4h x 4w and exactly 4h x 4w (the last rows and columns hold the edge)."""
  logits, _ = _random_case(np.random.default_rng(4), height=3, width=4)
  upsampled = np.asarray(upsampling.upsample_logits(jnp.asarray(logits), size))
  assert upsampled.shape == (logits.shape[0],) + size + (logits.shape[-1],)
  np.testing.assert_allclose(upsampled[..., :3], _reference_upsample(logits[..., :3], *size),
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.isneginf(upsampled[..., 3:]))
  np.testing.assert_array_equal(upsampled[:, ::4, ::4, :3], logits[:, :, :-(-size[1] // 4), :3])


def test_upsample_logits_rejects_a_larger_grid():
  with pytest.raises(ValueError, match=r"size \(13, 16\) must be within 4 x"):
    upsampling.upsample_logits(jnp.zeros((1, 3, 4, 2)), (13, 16))


@pytest.mark.parametrize("upsample", [True, False])
def test_segmentation_loss_resolution(upsample):
  rng = np.random.default_rng(5)
  logits, _ = _random_case(rng, height=3, width=4)
  _, labels = _random_case(rng, height=10, width=13)
  loss_config = ml_collections.ConfigDict(
      {"top_k_percent": 0.25, "hard_mining_ramp_steps": 10, "upsample_logits": upsample})
  loss, kept = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), 5, loss_config)
  fraction = 0.5 * 0.25 + 0.5
  assert float(kept) == pytest.approx(fraction)
  if upsample:
    expected_logits = _reference_upsample(np.where(np.isfinite(logits), logits, 0.0), 10, 13)
    expected_labels = labels
    expected_logits[..., 3:] = -np.inf
  else:
    expected_logits, expected_labels = logits, labels[:, ::4, ::4]
  np.testing.assert_allclose(
      float(loss), _reference_bootstrapped(expected_logits, expected_labels, fraction), rtol=1e-5)


def test_segmentation_loss_rejects_wrong_stride():
  logits, labels = _random_case(np.random.default_rng(6), height=10, width=13)
  loss_config = ml_collections.ConfigDict(
      {"top_k_percent": 0.25, "hard_mining_ramp_steps": 10, "upsample_logits": True})
  with pytest.raises(ValueError, match="stride 4"):
    losses.segmentation_loss(jnp.asarray(logits[:, :2]), jnp.asarray(labels), 0, loss_config)


def _triplet_case(seed, batch=3, side=5, ref_side=4, dim=3, num_slots=4):
  rng = np.random.default_rng(seed)
  anchors = rng.normal(size=(batch, side, side, dim)).astype(np.float32)
  anchor_labels = rng.integers(0, num_slots + 1, (batch, side, side)).astype(np.int32)
  anchor_labels[rng.random(anchor_labels.shape) < 0.2] = IGNORE_LABEL
  references = rng.normal(size=(batch, ref_side, ref_side, dim)).astype(np.float32)
  reference_labels = rng.integers(0, num_slots, (batch, ref_side, ref_side)).astype(np.int32)
  reference_labels[rng.random(reference_labels.shape) < 0.2] = IGNORE_LABEL
  reference_labels[-1][reference_labels[-1] != IGNORE_LABEL] = 2  # No negative: no triplet.
  return anchors, anchor_labels, references, reference_labels


def _reference_triplet(anchors, anchor_labels, references, reference_labels, chosen, margin,
                       num_slots):
  """Mean hinge over the valid chosen anchors (chosen[b]: flat pixel indices)."""
  hinges = []
  for b in range(len(anchors)):
    pixels = references[b].reshape(-1, anchors.shape[-1]).astype(np.float64)
    pixel_labels = reference_labels[b].reshape(-1)
    for index in chosen[b]:
      label = anchor_labels[b].reshape(-1)[index]
      anchor = anchors[b].reshape(-1, anchors.shape[-1])[index]
      positive, negative = np.inf, np.inf
      for pixel, pixel_label in zip(pixels, pixel_labels):
        if pixel_label >= num_slots:
          continue
        distance = np.sum((anchor - pixel) ** 2)
        if pixel_label == label:
          positive = min(positive, distance)
        else:
          negative = min(negative, distance)
      if np.isfinite(positive) and np.isfinite(negative):
        hinges.append(max(0.0, positive - negative + margin))
  return np.mean(hinges), np.mean(np.array(hinges) > 0)


def test_sample_anchors_keeps_at_most_the_count_per_object():
  labels = np.array([[0] * 6, [1] * 6, [2, 2, 9, 9, IGNORE_LABEL, 3]], np.int32)
  sample = jax.jit(lambda l, key: losses.sample_anchors(l, key, num_slots=3,
                                                       anchors_per_object=4))
  seen = set()
  for seed in range(6):
    indices, valid = (np.asarray(x) for x in sample(labels, jax.random.PRNGKey(seed)))
    assert indices.shape == (12,)
    chosen = indices[valid]
    assert len(set(chosen.tolist())) == len(chosen)
    counts = np.bincount(labels.reshape(-1)[chosen], minlength=3)
    np.testing.assert_array_equal(counts, [4, 4, 2])  # min(count, 4); 9, 3 and 255 never.
    seen.add(tuple(sorted(chosen.tolist())))
  assert len(seen) > 1  # The draw depends on the key.


@pytest.mark.parametrize("anchors_per_object", [2, pytest.param(100, marks=pytest.mark.slow)])
def test_triplet_loss_matches_numpy(anchors_per_object):
  num_slots, margin = 4, 0.7
  case = _triplet_case(0, num_slots=num_slots)
  key = jax.random.PRNGKey(3)
  # Jitted: op-by-op dispatch compiles every primitive on its own (seconds on a cold cache).
  triplet = jax.jit(functools.partial(losses.triplet_loss, num_slots=num_slots, margin=margin,
                                      anchors_per_object=anchors_per_object))
  sample = jax.jit(functools.partial(losses.sample_anchors, num_slots=num_slots,
                                     anchors_per_object=anchors_per_object))
  loss, active = triplet(*(jnp.asarray(x) for x in case), key)
  chosen = []
  for b, sample_key in enumerate(jax.random.split(key, len(case[0]))):
    indices, valid = sample(case[1][b], sample_key)
    chosen.append(np.asarray(indices)[np.asarray(valid)])
  if anchors_per_object == 100:  # Every labelled pixel of a slot is an anchor.
    for b in range(len(case[0])):
      flat = case[1][b].reshape(-1)
      np.testing.assert_array_equal(np.sort(chosen[b]), np.flatnonzero(flat < num_slots))
  expected_loss, expected_active = _reference_triplet(*case, chosen, margin, num_slots)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(active, expected_active, rtol=1e-6)


@pytest.mark.slow
def test_triplet_loss_without_any_triplet_is_zero_with_finite_gradient():
  anchors, anchor_labels, references, reference_labels = _triplet_case(1, batch=1)
  reference_labels[:] = np.where(reference_labels == IGNORE_LABEL, IGNORE_LABEL, 1)

  def loss(a, r):
    return losses.triplet_loss(a, anchor_labels, r, reference_labels, jax.random.PRNGKey(0),
                               num_slots=4, margin=0.3, anchors_per_object=8)[0]

  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(anchors, references)
  assert float(value) == 0.0
  assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_triplet_loss_gradient_matches_numpy_hinge():
  """The gradient flows to the anchor and its hardest positive and negative only."""
  anchors = np.array([[[[0.0, 0.0]]]], np.float32)
  anchor_labels = np.array([[[1]]], np.int32)
  references = np.array([[[[1.0, 0.0], [2.0, 0.0], [0.0, 1.5], [0.0, 3.0]]]], np.float32)
  reference_labels = np.array([[[1, 1, 0, 0]]], np.int32)

  def loss(a, r):
    return losses.triplet_loss(a, anchor_labels, r, reference_labels, jax.random.PRNGKey(0),
                               num_slots=2, margin=2.0, anchors_per_object=1)[0]

  value, (grad_anchor, grad_reference) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
      anchors, references)
  np.testing.assert_allclose(value, 1.0 - 2.25 + 2.0, rtol=1e-6)
  # d/da (|a - p|^2 - |a - n|^2) = 2 (n - p); d/dp = 2 (p - a); d/dn = -2 (n - a).
  np.testing.assert_allclose(grad_anchor[0, 0, 0], [-2.0, 3.0], atol=1e-6)
  np.testing.assert_allclose(grad_reference[0, 0], [[2, 0], [0, 0], [0, -3], [0, 0]],
                             atol=1e-6)


def test_channel_kl_divergence_matches_the_authors_mean_reduction():
  """sum_c p_t log(p_t / p_s) over [B, M, h, w, C], divided by every element (PyTorch's
  `nn.KLDivLoss()` of log_softmax(student) against softmax(teacher), reduction "mean")."""
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 2, 3, 3, 4, 7)) * 3

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p_student, p_teacher = softmax(student), softmax(teacher)
  expected = np.sum(p_teacher * np.log(p_teacher / p_student)) / student.size
  got = losses.channel_kl_divergence(jnp.asarray(student), jnp.asarray(teacher))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert float(losses.channel_kl_divergence(jnp.asarray(teacher), jnp.asarray(teacher))) == 0.0
