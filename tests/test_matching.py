"""Tests of feelvos_jax.matching against plain NumPy written from the FEELVOS formulas."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax import matching
from feelvos_jax.matching import global_maps


# ------------------------------------------------------------------ NumPy references
def np_distance(x, y):
  """1 - 2 / (1 + exp(||x - y||^2)), in float64."""
  squared = np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
  with np.errstate(over="ignore"):
    return 1.0 - 2.0 / (1.0 + np.exp(squared))


def np_global_matching(query, reference, labels, num_objects, subsets=None):
  """Nested loops; `subsets[o]` optionally restricts object o to these flat reference indices."""
  height, width, _ = query.shape
  ref = reference.reshape(-1, reference.shape[-1])
  flat = labels.reshape(-1)
  out = np.ones((height, width, num_objects))
  for obj in range(num_objects):
    pixels = np.flatnonzero(flat == obj) if subsets is None else subsets[obj]
    for y in range(height):
      for x in range(width):
        for index in pixels:
          out[y, x, obj] = min(out[y, x, obj], np_distance(query[y, x], ref[index]))
  return out


def np_local_matching(query, previous, labels, num_objects, window, dilation):
  height, width, _ = query.shape
  out = np.ones((height, width, num_objects))
  for y in range(height):
    for x in range(width):
      for dy in range(-window, window + 1):
        for dx in range(-window, window + 1):
          yy, xx = y + dy * dilation, x + dx * dilation
          if 0 <= yy < height and 0 <= xx < width and 0 <= labels[yy, xx] < num_objects:
            obj = labels[yy, xx]
            out[y, x, obj] = min(out[y, x, obj], np_distance(query[y, x], previous[yy, xx]))
  return out


def random_labels(rng, shape, num_objects, absent=(), ignore_fraction=0.15):
  """Labels in 0..num_objects-1 except `absent`, with some IGNORE_LABEL pixels."""
  present = [o for o in range(num_objects) if o not in absent] or [IGNORE_LABEL]
  labels = rng.choice(present, size=shape)
  labels[rng.random(shape) < ignore_fraction] = IGNORE_LABEL
  return labels.astype(np.int32)


def embeddings(rng, shape, scale=1.0):
  return (scale * rng.normal(size=shape)).astype(np.float32)


# ------------------------------------------------------------------ pairwise distance
@pytest.mark.parametrize("seed", range(3))
def test_pairwise_distance_matches_formula(seed):
  rng = np.random.default_rng(seed)
  channels = int(rng.integers(3, 9))
  x = embeddings(rng, (5, channels), scale=0.5)
  y = np.concatenate([embeddings(rng, (6, channels), scale=0.5), x[:1]])
  expected = np.array([[np_distance(a, b) for b in y] for a in x])
  got = np.asarray(matching.pairwise_distance(x, y))
  assert got.shape == (5, 7) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, atol=2e-6)
  assert got[0, -1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [1e3, 1e20, 1e30])
def test_pairwise_distance_huge_norms_stay_finite(scale):
  """||x||^2 would overflow float32 from ~1e19 on; distinct huge vectors are at distance 1.

  Equal huge vectors give some value in [0, 1]: ||x||^2 + ||y||^2 - 2 x.y cancels with an error
  relative to ||x||^2, as in any matmul formulation.
  """
  rng = np.random.default_rng(1)
  x = embeddings(rng, (4, 6), scale)
  y = np.concatenate([x[:2], embeddings(rng, (3, 6), scale)])
  got = np.asarray(matching.pairwise_distance(x, y))
  assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
  expected = np.array([[np_distance(a, b) for b in y[2:]] for a in x])
  np.testing.assert_allclose(got[:, 2:], expected, atol=1e-6)


# ------------------------------------------------------------------ global matching
@pytest.mark.parametrize("channels,num_objects,absent", [
    (3, 1, ()), (5, 3, (1,)), (8, 4, (0, 2)), (6, 2, (0, 1))])
def test_global_matching_matches_numpy(channels, num_objects, absent):
  for seed in range(2):
    rng = np.random.default_rng([seed, channels])
    query = embeddings(rng, (5, 6, channels))
    reference = embeddings(rng, (4, 7, channels))
    labels = random_labels(rng, (4, 7), num_objects, absent)
    got = np.asarray(matching.global_matching(query, reference, labels, num_objects))
    expected = np_global_matching(query, reference, labels, num_objects)
    assert got.shape == (5, 6, num_objects) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)
    for obj in absent:
      assert np.all(got[..., obj] == 1.0)


def test_global_matching_chunked_equals_unchunked():
  rng = np.random.default_rng(4)
  query = embeddings(rng, (5, 6, 4))
  reference = embeddings(rng, (4, 7, 4))
  labels = random_labels(rng, (4, 7), 3)
  match = jax.jit(matching.global_matching, static_argnames=("num_objects", "chunk_size"))
  full = match(query, reference, labels, num_objects=3)
  for chunk_size in (1, 7, 29):  # 30 query pixels: none of these divides it
    chunked = match(query, reference, labels, num_objects=3, chunk_size=chunk_size)
    # Equal up to the rounding of the matmul kernel XLA picks per shape (a few ulp).
    np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_pixels", [3, 28])
def test_global_matching_subsampling_keeps_max_real_pixels(max_pixels):
  """With max_pixels >= every count (28 pixels) this is the full result."""
  num_objects = 3
  match = jax.jit(functools.partial(matching.global_matching, num_objects=num_objects,
                                    max_reference_pixels=max_pixels))
  for seed in range(3):
    rng = np.random.default_rng([seed, max_pixels])
    reference = embeddings(rng, (4, 7, 6))
    labels = random_labels(rng, (4, 7), num_objects, absent=(2,))
    key = jax.random.key(seed)
    # Matching the reference against itself reveals the kept pixels: distance 0 to themselves.
    self_match = np.asarray(match(reference, reference, labels, rng=key)).reshape(-1, 3)
    flat = labels.reshape(-1)
    selected = np.asarray(matching.select_reference_pixels(labels, 3, max_pixels, key))
    subsets = []
    for obj in range(num_objects):
      kept = np.flatnonzero(self_match[:, obj] < 1e-4)
      assert set(kept) <= set(np.flatnonzero(flat == obj))
      assert kept.size == min(np.sum(flat == obj), max_pixels)
      np.testing.assert_array_equal(kept, np.flatnonzero(selected.reshape(-1) == obj))
      subsets.append(kept)
    assert np.all((selected == labels) | (selected == IGNORE_LABEL))
    query = embeddings(rng, (4, 7, 6))
    got = np.asarray(match(query, reference, labels, rng=key))
    np.testing.assert_allclose(got, np_global_matching(query, reference, labels, num_objects,
                                                       subsets), atol=2e-6)
    full = np_global_matching(query, reference, labels, num_objects)
    assert np.all(got >= full - 1e-6)
    if max_pixels >= labels.size:
      np.testing.assert_allclose(got, full, atol=2e-6)
    np.testing.assert_array_equal(match(query, reference, labels, rng=key), got)


def test_global_matching_subsampling_spans_several_blocks():
  """Objects larger than one reference block (64 slots) subsampled in the block layout's sort:
  the kept pixels are those of select_reference_pixels, the map the NumPy one over them."""
  num_objects, max_pixels = 3, 70
  rng = np.random.default_rng(11)
  reference = embeddings(rng, (16, 16, 5))
  labels = random_labels(rng, (16, 16), num_objects, ignore_fraction=0.05)
  labels[:8] = 1  # Object 1 has > 128 pixels: several blocks before subsampling.
  key = jax.random.key(3)
  selected = np.asarray(jax.jit(matching.select_reference_pixels, static_argnums=(1, 2))(
      labels, num_objects, max_pixels, key))
  subsets = [np.flatnonzero(selected.reshape(-1) == obj) for obj in range(num_objects)]
  assert [s.size for s in subsets] == [min(np.sum(labels == obj), max_pixels)
                                       for obj in range(num_objects)]
  match = jax.jit(matching.global_matching,
                  static_argnames=("num_objects", "max_reference_pixels", "chunk_size"))
  self_match = np.asarray(match(reference, reference, labels, num_objects=num_objects,
                                max_reference_pixels=max_pixels, rng=key))
  for obj in range(num_objects):
    np.testing.assert_array_equal(np.flatnonzero(self_match.reshape(-1, 3)[:, obj] < 1e-4),
                                  subsets[obj])
  query = embeddings(rng, (3, 4, 5))
  got = match(query, reference, labels, num_objects=num_objects,
              max_reference_pixels=max_pixels, rng=key, chunk_size=5)
  np.testing.assert_allclose(got, np_global_matching(query, reference, labels, num_objects,
                                                     subsets), atol=2e-6)


@pytest.mark.parametrize("num_objects,num_pixels", [
    pytest.param(1, 300, marks=pytest.mark.slow), pytest.param(3, 200, marks=pytest.mark.slow),
    (4, 37)])
def test_wide_and_scanned_block_minima_match_numpy(num_objects, num_pixels):
  """Both per-chunk forms of global matching (a scan over the reference blocks on CPU, one
  matmul over all blocks elsewhere) give, per object, min over its pixels y of
  ||y||^2 - 2 x.y; an object without pixels gives inf."""
  rng = np.random.default_rng(num_pixels)
  query = rng.normal(size=(11, 6)).astype(np.float32)
  reference = rng.normal(size=(num_pixels, 6)).astype(np.float32)
  labels = rng.integers(-1, num_objects, num_pixels).astype(np.int32)
  labels[labels == num_objects - 1] = -1 if num_objects == 4 else num_objects - 1
  block, num_blocks = global_maps._block_geometry(num_pixels, num_objects, None)
  slots, block_object = global_maps._block_layout(jnp.asarray(labels), num_objects, block,
                                               num_blocks)
  padded = np.concatenate([reference, np.zeros((1, 6), np.float32)])[np.asarray(slots)]
  padded_sq = np.concatenate([np.sum(reference ** 2, 1), [np.inf]]).astype(np.float32)[
      np.asarray(slots)]
  expected = np.full((11, num_objects), np.inf, np.float32)
  for q in range(11):
    for r in range(num_pixels):
      if labels[r] >= 0:
        value = np.sum(reference[r] ** 2) - 2 * query[q] @ reference[r]
        expected[q, labels[r]] = min(expected[q, labels[r]], value)
  for form in (global_maps._chunk_min_squared, global_maps._chunk_min_squared_wide):
    got = jax.jit(functools.partial(form, num_objects=num_objects))(
        jnp.asarray(query), jnp.asarray(padded), jnp.asarray(padded_sq), block_object)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_global_matching_subsampling_depends_on_rng():
  rng = np.random.default_rng(5)
  reference = embeddings(rng, (6, 6, 4))
  labels = np.zeros((6, 6), np.int32)
  draws = {tuple(np.flatnonzero(np.asarray(matching.global_matching(
      reference, reference, labels, 1, max_reference_pixels=4,
      rng=jax.random.key(seed))).reshape(-1) < 1e-4)) for seed in range(4)}
  assert len(draws) > 1 and all(len(draw) == 4 for draw in draws)


@pytest.mark.parametrize("scale", [1e3, 1e20])
def test_global_matching_huge_norms_stay_finite(scale):
  rng = np.random.default_rng(2)
  query = embeddings(rng, (3, 4, 5), scale)
  reference = embeddings(rng, (3, 4, 5), scale)
  labels = random_labels(rng, (3, 4), 3, absent=(2,), ignore_fraction=0.0)
  got = np.asarray(matching.global_matching(query, reference, labels, 3, chunk_size=5))
  np.testing.assert_allclose(got, np_global_matching(query, reference, labels, 3), atol=1e-6)


def test_global_matching_out_of_range_labels_never_match_under_jit():
  rng = np.random.default_rng(3)
  query = embeddings(rng, (4, 5, 3))
  reference = embeddings(rng, (4, 5, 3))
  labels = random_labels(rng, (4, 5), 3)
  corrupted = labels.copy()
  corrupted[0, :3] = [7, -2, 3]
  cleaned = corrupted.copy()
  cleaned[0, :3] = IGNORE_LABEL
  match = jax.jit(functools.partial(matching.global_matching, num_objects=3))
  np.testing.assert_array_equal(match(query, reference, corrupted),
                                match(query, reference, cleaned))
  with pytest.raises(ValueError, match="reference_labels contains label id -2"):
    matching.global_matching(query, reference, corrupted, 3)


# ------------------------------------------------------------------ local matching
@pytest.mark.parametrize("channels,window,dilation,num_objects", [
    (3, 0, 1, 2), (4, 1, 1, 3), (5, 2, 1, 1), (6, 1, 2, 3), (7, 2, 2, 2), (8, 9, 1, 3),
    (3, 4, 3, 2)])
def test_local_matching_matches_numpy(channels, window, dilation, num_objects):
  """Includes borders, windows larger than the image, dilation, ignore and absent objects."""
  for seed in range(2):
    rng = np.random.default_rng([seed, channels, window])
    query = embeddings(rng, (5, 6, channels))
    previous = embeddings(rng, (5, 6, channels))
    labels = random_labels(rng, (5, 6), num_objects, absent=(num_objects - 1,) * seed)
    labels[0, :] = 0  # an object along the border
    got = np.asarray(matching.local_matching(query, previous, labels, num_objects,
                                             window=window, dilation=dilation))
    expected = np_local_matching(query, previous, labels, num_objects, window, dilation)
    assert got.shape == (5, 6, num_objects) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_local_matching_out_of_range_labels_never_match_under_jit():
  rng = np.random.default_rng(7)
  query = embeddings(rng, (5, 6, 4))
  previous = embeddings(rng, (5, 6, 4))
  labels = random_labels(rng, (5, 6), 2)
  corrupted = labels.copy()
  corrupted[1, 1], corrupted[3, 4] = 9, 1
  cleaned = corrupted.copy()
  cleaned[1, 1] = IGNORE_LABEL
  match = jax.jit(functools.partial(matching.local_matching, num_objects=2, window=2))
  got = np.asarray(match(query, previous, corrupted))
  np.testing.assert_array_equal(got, match(query, previous, cleaned))
  np.testing.assert_allclose(got, np_local_matching(query, previous, cleaned, 2, 2, 1),
                             atol=2e-6)
  with pytest.raises(ValueError, match="previous_labels contains label id 9"):
    matching.local_matching(query, previous, corrupted, 2, window=2)


def test_local_matching_huge_norms_stay_finite():
  rng = np.random.default_rng(13)
  query = embeddings(rng, (4, 5, 3), 1e20)
  previous = embeddings(rng, (4, 5, 3), 1e20)
  labels = random_labels(rng, (4, 5), 3, absent=(1,))
  got = np.asarray(matching.local_matching(query, previous, labels, 3, window=1))
  np.testing.assert_allclose(got, np_local_matching(query, previous, labels, 3, 1, 1), atol=1e-6)


# ------------------------------------------------------------------ transformations
def test_vmap_over_batch_matches_per_example():
  rng = np.random.default_rng(8)
  query = embeddings(rng, (3, 4, 5, 4))
  reference = embeddings(rng, (3, 4, 5, 4))
  labels = np.stack([random_labels(rng, (4, 5), 3) for _ in range(3)])
  keys = jax.random.split(jax.random.key(0), 3)
  one_global = jax.jit(lambda q, r, l, k: matching.global_matching(
      q, r, l, 3, max_reference_pixels=4, rng=k, chunk_size=6))
  one_local = jax.jit(lambda q, p, l: matching.local_matching(q, p, l, 3, window=1,
                                                              dilation=2))
  batched_global = jax.jit(jax.vmap(one_global))(query, reference, labels, keys)
  batched_local = jax.jit(jax.vmap(one_local))(query, reference, labels)
  for i in range(3):
    np.testing.assert_allclose(batched_global[i],
                               one_global(query[i], reference[i], labels[i], keys[i]), atol=1e-6)
    np.testing.assert_allclose(batched_local[i], one_local(query[i], reference[i], labels[i]),
                               atol=1e-6)


def test_jit_compiles_once_per_shape():
  traces = []

  def both(query, reference, labels):
    traces.append(query.shape)
    return (matching.global_matching(query, reference, labels, 2, chunk_size=8),
            matching.local_matching(query, reference, labels, 2, window=2))

  jitted = jax.jit(both)
  rng = np.random.default_rng(9)
  for _ in range(3):
    args = (embeddings(rng, (4, 5, 3)), embeddings(rng, (4, 5, 3)),
            random_labels(rng, (4, 5), 2))
    global_map, local_map = jitted(*args)
    np.testing.assert_allclose(global_map, np_global_matching(*args, 2), atol=2e-6)
    np.testing.assert_allclose(local_map, np_local_matching(*args, 2, 2, 1), atol=2e-6)
  assert len(traces) == 1


def test_gradients_match_nearest_pixel_formula():
  """d/dx tanh(||x - y*||^2 / 2) = sech^2(d2 / 2) (x - y*), y* the nearest pixel."""
  rng = np.random.default_rng(10)
  query = embeddings(rng, (3, 4, 3))
  reference = embeddings(rng, (3, 4, 3))
  labels = random_labels(rng, (3, 4), 2, ignore_fraction=0.0)
  grad = jax.jit(jax.grad(lambda q: jnp.sum(matching.global_matching(
      q, reference, labels, 2, chunk_size=5))))(query)
  local_grad = jax.jit(jax.grad(lambda q: jnp.sum(matching.local_matching(
      q, reference, labels, 2, window=1))))(query)
  expected = np.zeros_like(query, np.float64)
  local_expected = np.zeros_like(query, np.float64)
  ref, flat = reference.reshape(-1, 3), labels.reshape(-1)
  for y in range(3):
    for x in range(4):
      for obj in range(2):
        for target, pixels in ((expected, np.flatnonzero(flat == obj)),
                               (local_expected, [i for i in np.flatnonzero(flat == obj)
                                                 if abs(i // 4 - y) <= 1 and abs(i % 4 - x) <= 1])):
          if len(pixels):
            squared = np.sum((query[y, x] - ref[pixels]) ** 2, axis=1)
            nearest = ref[pixels[np.argmin(squared)]]
            target[y, x] += (query[y, x] - nearest) / np.cosh(squared.min() / 2) ** 2
  np.testing.assert_allclose(grad, expected, atol=1e-5)
  np.testing.assert_allclose(local_grad, local_expected, atol=1e-5)


# ------------------------------------------------------------------ bfloat16 matmul
def test_bfloat16_within_1e2_of_float32():
  rng = np.random.default_rng(11)
  query = embeddings(rng, (8, 8, 100))
  reference = embeddings(rng, (8, 8, 100))
  reference[:2] = query[:2] + 0.05 * embeddings(rng, (2, 8, 100))
  labels = random_labels(rng, (8, 8), 3)
  for fn, kwargs in ((matching.global_matching, {}), (matching.local_matching, {"window": 3})):
    full = np.asarray(jax.jit(functools.partial(fn, num_objects=3, **kwargs))(
        query, reference, labels))
    half = np.asarray(jax.jit(functools.partial(fn, num_objects=3, dtype=jnp.bfloat16,
                                                **kwargs))(query, reference, labels))
    assert half.dtype == np.float32 and np.abs(half - full).max() < 1e-2
    assert full.min() < 0.5  # near matches, where the map is most sensitive, are covered
  close = matching.pairwise_distance(query[0], reference[0], dtype="bfloat16")
  np.testing.assert_allclose(close, matching.pairwise_distance(query[0], reference[0]),
                             atol=1e-2)


@pytest.mark.parametrize("scale", [0.4, 1e15])
def test_nearest_squared_distance_matches_numpy_and_global_matching(scale):
  """The dense minimum over a few reference pixels: NumPy's, and global_matching's values
  (squared=True) on the same pixels; an absent object and ignored pixels give inf / no match."""
  rng = np.random.default_rng(23)
  query = embeddings(rng, (30, 5), scale=scale)
  reference = embeddings(rng, (7, 5), scale=scale)
  labels = np.array([0, 2, IGNORE_LABEL, 2, 0, -1, 2], np.int32)
  got = np.asarray(matching.nearest_squared_distance(query, reference, labels, 4))
  assert got.shape == (30, 4) and np.all(np.isinf(got[:, [1, 3]]))
  for obj in (0, 2):
    pixels = reference[labels == obj].astype(np.float64)
    expected = ((query[:, None].astype(np.float64) - pixels[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(got[:, obj], expected, rtol=1e-5)
  as_maps = matching.global_matching(query.reshape(5, 6, 5), reference[None],
                                     np.where(labels < 0, IGNORE_LABEL, labels)[None], 4,
                                     squared=True)
  np.testing.assert_array_equal(got, np.asarray(as_maps).reshape(30, 4))
  with pytest.raises(ValueError, match=r"reference_labels must be \[R\] = \(7,\)"):
    matching.nearest_squared_distance(query, reference, labels[:3], 4)


@pytest.mark.parametrize("dilation", [1, 2])
def test_squared_option_returns_minimum_squared_distances(dilation):
  """squared=True gives min ||e_p - e_q||^2 (inf where nothing matches); the maps are its tanh."""
  rng = np.random.default_rng(21)
  query = embeddings(rng, (5, 6, 3), scale=0.4)
  other = embeddings(rng, (4, 5, 3), scale=0.4)
  labels = random_labels(rng, (4, 5), 4, absent=(2,))
  got = np.asarray(matching.global_matching(query, other, labels, 4, squared=True))
  flat_ref, flat_labels = other.reshape(-1, 3).astype(np.float64), labels.reshape(-1)
  for obj in range(4):
    pixels = flat_ref[flat_labels == obj]
    if len(pixels) == 0:
      assert np.all(np.isinf(got[..., obj]))
      continue
    squared = ((query.reshape(-1, 1, 3) - pixels[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(got[..., obj].reshape(-1), squared, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.tanh(got / 2),
                             matching.global_matching(query, other, labels, 4), atol=1e-7)
  previous = embeddings(rng, (5, 6, 3), scale=0.4)
  previous_labels = random_labels(rng, (5, 6), 3)
  local = np.asarray(matching.local_matching(query, previous, previous_labels, 3, window=1,
                                             dilation=dilation, squared=True))
  expected = np_local_matching(query, previous, previous_labels, 3, 1, dilation)
  np.testing.assert_allclose(np.tanh(local / 2), expected, atol=2e-6)
  assert np.all(np.isinf(local[expected == 1.0])) and np.any(expected == 1.0)


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("mode,mesh_kind", [
    ("query", "explicit"), pytest.param("reference", "explicit", marks=pytest.mark.slow),
    pytest.param("query", "auto", marks=pytest.mark.slow), ("reference", "auto")])
def test_sharded_equals_unsharded(mode, mesh_kind):
  assert jax.device_count() == 8
  if mesh_kind == "explicit":
    mesh = jax.make_mesh((8,), ("x",))
  else:
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
  rng = np.random.default_rng(12)
  query = embeddings(rng, (5, 6, 4))  # 5 rows and 21 reference pixels: padding needed
  reference = embeddings(rng, (3, 7, 4))
  labels = random_labels(rng, (3, 7), 3)
  kwargs = {"max_reference_pixels": 2, "rng": jax.random.key(3), "chunk_size": 4}
  if mesh_kind == "explicit":
    kwargs = {}
  got = matching.global_matching_sharded(query, reference, labels, 3, mesh=mesh,
                                         axis_name="x", mode=mode, **kwargs)
  expected = np.asarray(matching.global_matching(query, reference, labels, 3, **kwargs))
  np.testing.assert_allclose(got, expected, atol=1e-7)
  if not kwargs:
    np.testing.assert_allclose(got, np_global_matching(query, reference, labels, 3), atol=2e-6)


# ------------------------------------------------------------------ bad input
def _good():
  rng = np.random.default_rng(0)
  return embeddings(rng, (4, 5, 3)), embeddings(rng, (4, 5, 3)), np.zeros((4, 5), np.int32)


@pytest.mark.parametrize("fn,change,message", [
    ("global", {"reference_labels": np.zeros((4, 4), np.int32)}, r"reference_labels.*\(4, 4\)"),
    ("global", {"reference": np.zeros((4, 5, 2), np.float32)}, r"query.*reference.*3 vs 2"),
    ("global", {"reference_labels": np.zeros((4, 5), np.float32)}, "integer label map"),
    ("global", {"num_objects": 0}, "num_objects"),
    ("global", {"reference_labels": np.full((4, 5), 3, np.int32)}, "label id 3"),
    ("global", {"max_reference_pixels": 4}, "rng"),
    ("global", {"chunk_size": 0}, "chunk_size"),
    ("global", {"query": np.zeros((20, 3), np.float32)}, r"query.*\(20, 3\)"),
    ("local", {"previous": np.zeros((4, 6, 3), np.float32)}, r"previous.*\(4, 6, 3\).*query"),
    ("local", {"previous": np.zeros((4, 5, 4), np.float32)}, r"3 vs 4"),
    ("local", {"previous_labels": np.zeros((5, 4), np.int32)}, r"previous_labels.*\(5, 4\)"),
    ("local", {"previous_labels": np.zeros((4, 5), bool) * 1.0}, "integer label map"),
    ("local", {"window": -1}, "window"),
    ("local", {"dilation": 0}, "dilation"),
    ("local", {"num_objects": 1.5}, "num_objects"),
    ("local", {"dtype": jnp.float16}, "dtype"),
])
def test_bad_input_raises(fn, change, message):
  query, other, labels = _good()
  if fn == "global":
    kwargs = dict(query=query, reference=other, reference_labels=labels, num_objects=2)
    call = matching.global_matching
  else:
    kwargs = dict(query=query, previous=other, previous_labels=labels, num_objects=2)
    call = matching.local_matching
  kwargs.update(change)
  with pytest.raises(ValueError, match=message):
    call(**kwargs)


def test_bad_sharded_arguments_raise():
  query, reference, labels = _good()
  mesh = jax.make_mesh((8,), ("x",))
  with pytest.raises(ValueError, match="mode"):
    matching.global_matching_sharded(query, reference, labels, 2, mesh=mesh, axis_name="x",
                                     mode="rows")
  with pytest.raises(ValueError, match="axis_name 'y'"):
    matching.global_matching_sharded(query, reference, labels, 2, mesh=mesh, axis_name="y")


def test_check_labels_is_a_no_op_under_tracing():
  labels = np.array([[0, 1, 255]])
  matching.check_labels(labels, 2, "labels")
  with pytest.raises(ValueError, match="labels contains label id 2"):
    matching.check_labels(np.array([[0, 2]]), 2, "labels")
  jax.jit(lambda l: matching.check_labels(l, 2, "labels") or l)(np.array([[0, 2]]))
