"""Tests of the fused global-matching kernel (`feelvos_jax.matching.fused`) in Pallas interpret
mode on CPU, against the XLA forms of `global_maps` and a NumPy reference, and of where the
"auto" form lowers it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax import matching
from feelvos_jax.matching import fused
from feelvos_jax.matching import global_maps


def blocked_inputs(num_queries, channels, num_pixels, num_objects, dtype, seed):
  """Rescaled, rounded query rows and the blocked reference layout of global matching, over
  labels with ignored pixels (-1) and, with 3+ objects, an object without pixels (1)."""
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(num_queries, channels)).astype(np.float32)
  reference = rng.normal(size=(num_pixels, channels)).astype(np.float32)
  labels = rng.integers(-1, num_objects, num_pixels).astype(np.int32)
  if num_objects >= 3:
    labels[labels == 1] = -1
  return _layout(query, reference, labels, num_objects=num_objects, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("num_objects", "dtype"))
def _layout(query, reference, labels, *, num_objects, dtype):
  query, _, _, reference, reference_sq, block_object = global_maps.blocked_inputs(
      query, reference, labels, num_objects, None, dtype)
  return query, reference, reference_sq, block_object


@pytest.mark.parametrize("num_queries,channels,num_pixels,num_objects,dtype,tiles", [
    (37, 8, 10, 1, jnp.float32, {}),
    (100, 100, 300, 3, jnp.float32, {}),
    (130, 8, 200, 4, jnp.bfloat16, {}),
    (45, 100, 150, 2, jnp.bfloat16, {}),
    (50, 8, 600, 4, jnp.float32, dict(query_tile=16, reference_tile=16, splits=3)),
])
def test_kernel_equals_xla_forms(num_queries, channels, num_pixels, num_objects, dtype, tiles):
  """The same per-object minima of ||y||^2 - 2 x.y as the scan and the wide matmul, from the
  same (bfloat16-rounded) inputs: query counts off the tile, channels padded, blocks smaller
  than a tile, several tiles per block, reference splits, unused blocks, empty objects."""
  inputs = blocked_inputs(num_queries, channels, num_pixels, num_objects, dtype, num_pixels)
  kernel = jax.jit(functools.partial(fused.pallas_min_squared, num_objects=num_objects,
                                     interpret=True, **tiles))
  got = np.asarray(kernel(*inputs))
  assert got.shape == (num_queries, num_objects) and got.dtype == np.float32
  reference_sq = np.asarray(inputs[2])
  scale = np.max(reference_sq[np.isfinite(reference_sq)])
  for form in (global_maps._chunk_min_squared, global_maps._chunk_min_squared_wide):
    want = np.asarray(jax.jit(functools.partial(form, num_objects=num_objects))(*inputs))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=1e-5 * scale)
  if num_objects >= 3:
    assert np.all(np.isinf(got[:, 1]))


def _np_global_matching(query, reference, labels, num_objects):
  """tanh(min squared distance / 2) per object in float64; 1 where an object has no pixel."""
  flat_query = query.reshape(-1, query.shape[-1]).astype(np.float64)
  flat_reference = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
  squared = np.sum((flat_query[:, None] - flat_reference[None]) ** 2, axis=-1)
  flat_labels = labels.reshape(-1)
  out = np.ones((flat_query.shape[0], num_objects))
  for obj in range(num_objects):
    if np.any(flat_labels == obj):
      out[:, obj] = np.tanh(np.min(squared[:, flat_labels == obj], axis=1) / 2)
  return out.reshape(query.shape[:2] + (num_objects,))


def _case(seed, query_shape=(5, 7, 8), reference_shape=(6, 5, 8), num_objects=4):
  rng = np.random.default_rng(seed)
  query = (0.5 * rng.normal(size=query_shape)).astype(np.float32)
  reference = (0.5 * rng.normal(size=reference_shape)).astype(np.float32)
  labels = rng.choice([0, 2, IGNORE_LABEL], size=reference_shape[:2]).astype(np.int32)
  return query, reference, labels, num_objects


@pytest.mark.parametrize("seed,dtype,atol", [(0, jnp.float32, 2e-6), (1, jnp.bfloat16, 1e-2)])
def test_global_matching_through_kernel_matches_numpy(seed, dtype, atol):
  """Objects 1 and 3 have no pixels; float32 to rounding, bfloat16 within the bound of
  tests/test_matching.py."""
  query, reference, labels, num_objects = _case(seed)
  got = np.asarray(matching.global_matching(query, reference, labels, num_objects, dtype=dtype,
                                            kernel="pallas"))
  np.testing.assert_allclose(got, _np_global_matching(query, reference, labels, num_objects),
                             rtol=0, atol=atol)
  np.testing.assert_array_equal(got[..., [1, 3]], 1.0)


@pytest.mark.slow
def test_kernel_subsampling_vmap_and_gradient_agree_with_xla():
  """Subsampled references, squared maps, a vmapped batch and the gradient (the XLA form's:
  the kernel has none) give what the XLA form gives."""
  query, reference, labels, num_objects = _case(2)
  key = jax.random.key(3)

  def match(kernel, q=query, r=reference, lab=labels):
    return matching.global_matching(q, r, lab, num_objects, max_reference_pixels=4, rng=key,
                                    squared=True, kernel=kernel)

  single = match("pallas")
  np.testing.assert_allclose(single, match("xla"), rtol=1e-6, atol=1e-6)
  flipped = [x[::-1] for x in (query, reference, labels)]
  batched = jax.vmap(lambda q, r, lab: match("pallas", q, r, lab))(
      *[np.stack(pair) for pair in zip((query, reference, labels), flipped)])
  np.testing.assert_allclose(batched, np.stack([single, match("pallas", *flipped)]), rtol=1e-6,
                             atol=1e-6)
  grads = {kernel: jax.grad(lambda q, k=kernel: jnp.sum(jnp.tanh(match(k, q))))(query)
           for kernel in ("pallas", "xla")}
  np.testing.assert_array_equal(grads["pallas"], grads["xla"])


def _lowered_text(fn, args, platforms):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=platforms).as_text()


def test_auto_lowers_the_kernel_for_cuda_only_outside_export_and_gradients(monkeypatch):
  """"auto": a Triton kernel in a CUDA lowering; the XLA form for CPU, under jax.grad, in a
  multi-platform jax.export (which runs here) and when GLOBAL_MATCHING_KERNEL is "xla"."""
  query, reference, labels, num_objects = _case(4)
  args = (query, reference, labels)

  def match(q, r, lab):
    return matching.global_matching(q, r, lab, num_objects)

  assert "triton" in _lowered_text(match, args, ("cuda",))
  assert "triton" not in _lowered_text(match, args, ("cpu",))
  gradient = jax.grad(lambda q, r, lab: jnp.sum(match(q, r, lab)))
  assert "triton" not in _lowered_text(gradient, args, ("cuda",))
  exported = jax.export.export(jax.jit(match), platforms=("cpu", "cuda", "tpu"))(*args)
  assert "triton" not in exported.mlir_module()
  np.testing.assert_allclose(exported.call(*args), match(*args), rtol=1e-6, atol=1e-7)
  monkeypatch.setattr(global_maps, "GLOBAL_MATCHING_KERNEL", "xla")
  assert "triton" not in _lowered_text(lambda *xs: match(*xs), args, ("cuda",))  # A new trace.


def test_unknown_kernel_is_rejected():
  query, reference, labels, num_objects = _case(5)
  with pytest.raises(ValueError, match="kernel must be one of"):
    matching.global_matching(query, reference, labels, num_objects, kernel="cuda")
