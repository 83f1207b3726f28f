"""Tests of feelvos_jax.matching.memory_read against NumPy written from STM's read formula."""
import jax
import numpy as np
import pytest

from feelvos_jax.matching import memory_read


def np_memory_read(query_keys, memory_keys, memory_values, valid):
  """read[q] = sum_m softmax_m(k_Q[q] . k_M[m] / sqrt(C_k)) v_M[m] over the valid m, float64."""
  query_keys = np.asarray(query_keys, np.float64)
  keys = np.asarray(memory_keys, np.float64)[valid]
  values = np.asarray(memory_values, np.float64)[valid]
  out = np.zeros((query_keys.shape[0], values.shape[1]))
  for q, key in enumerate(query_keys):
    if not len(keys):
      continue
    logits = keys @ key / np.sqrt(keys.shape[1])
    weights = np.exp(logits - logits.max())
    out[q] = (weights / weights.sum()) @ values
  return out


def _inputs(seed, queries=13, positions=21, key_dim=4, value_dim=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(queries, key_dim)).astype(np.float32) * 2,
          rng.normal(size=(positions, key_dim)).astype(np.float32) * 2,
          rng.normal(size=(positions, value_dim)).astype(np.float32),
          rng.random(positions) < 0.7)


@pytest.mark.parametrize("chunk_size", [None, 4, 100])
def test_memory_read_matches_numpy(chunk_size):
  query, keys, values, valid = _inputs(0)
  got = memory_read.memory_read(query, keys, values, valid, chunk_size=chunk_size)
  np.testing.assert_allclose(got, np_memory_read(query, keys, values, valid), atol=1e-5)
  everything = memory_read.memory_read(query, keys, values, chunk_size=chunk_size)
  np.testing.assert_allclose(everything, np_memory_read(query, keys, values, np.ones(21, bool)),
                             atol=1e-5)


def test_memory_read_without_valid_positions_reads_zeros():
  query, keys, values, _ = _inputs(1)
  got = memory_read.memory_read(query, keys, values, np.zeros(21, bool), chunk_size=5)
  np.testing.assert_array_equal(got, 0.0)


@pytest.mark.parametrize("mode", ["query", "reference"])
def test_sharded_read_equals_unsharded(mode):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("x",))
  query, keys, values, valid = _inputs(2)  # 13 queries, 21 positions: padding on both modes.
  valid[:10] = False  # Some devices hold no valid position in "reference" mode.
  got = memory_read.memory_read_sharded(query, keys, values, valid, mesh=mesh, axis_name="x",
                                        mode=mode, chunk_size=4)
  expected = memory_read.memory_read(query, keys, values, valid, chunk_size=4)
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_arguments_name_the_argument():
  query, keys, values, valid = _inputs(3)
  with pytest.raises(ValueError, match="memory_values"):
    memory_read.memory_read(query, keys, values[:5], valid)
  with pytest.raises(ValueError, match="memory_valid"):
    memory_read.memory_read(query, keys, values, valid[:5])
  with pytest.raises(ValueError, match="differ in C_k"):
    memory_read.memory_read(query[:, :2], keys, values, valid)
  with pytest.raises(ValueError, match="mode"):
    memory_read.memory_read_sharded(query, keys, values, valid, mesh=jax.make_mesh((8,), ("x",)),
                                    axis_name="x", mode="rows")
