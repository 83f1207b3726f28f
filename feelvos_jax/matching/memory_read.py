"""The space-time memory read of STM (Oh et al., ICCV 2019), chunked over query pixels, and its
form split over the devices of one mesh axis with `jax.shard_map` (`config.matching.shard_axis`).

For every query position q and every valid memory position m (all positions of all memory
frames, flattened):

  w[q, m] = exp(k_Q[q] . k_M[m] / sqrt(C_k)) / sum_m' exp(k_Q[q] . k_M[m'] / sqrt(C_k))
  read[q] = sum_m w[q, m] v_M[m]

computed in float32 with the maximum subtracted; query pixels go `chunk_size` at a time, so no
buffer is larger than chunk_size x M. Invalid memory positions (empty slots of a fixed-capacity
memory buffer) get weight 0; a query with no valid memory position reads zeros.
"""
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp


def _check(query_keys: jax.Array, memory_keys: jax.Array, memory_values: jax.Array,
           memory_valid: jax.Array) -> None:
  """ValueError naming the argument unless the shapes are those of `memory_read`."""
  if query_keys.ndim != 2 or memory_keys.ndim != 2 or memory_values.ndim != 2:
    raise ValueError(f"query_keys, memory_keys and memory_values must be [Q, C_k], [M, C_k] "
                     f"and [M, C_v], got {query_keys.shape}, {memory_keys.shape} and "
                     f"{memory_values.shape}")
  if query_keys.shape[1] != memory_keys.shape[1]:
    raise ValueError(f"query_keys [Q, C_k] and memory_keys [M, C_k] differ in C_k: "
                     f"{query_keys.shape} and {memory_keys.shape}")
  if memory_values.shape[0] != memory_keys.shape[0]:
    raise ValueError(f"memory_values must be [M = {memory_keys.shape[0]}, C_v], got "
                     f"{memory_values.shape}")
  if memory_valid.shape != memory_keys.shape[:1]:
    raise ValueError(f"memory_valid must be [M] = {memory_keys.shape[:1]}, got "
                     f"{memory_valid.shape}")


def _partial_read(rows: jax.Array, memory_keys: jax.Array, memory_values: jax.Array,
                  memory_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Unnormalised softmax pieces of one chunk of query rows [q, C_k] against M positions:
  (row maxima [q], sums of exp [q], exp-weighted values [q, C_v]), float32."""
  scale = 1.0 / math.sqrt(memory_keys.shape[1])
  logits = jnp.einsum("qc,mc->qm", rows, memory_keys,
                      preferred_element_type=jnp.float32) * scale
  logits = jnp.where(memory_valid[None, :], logits, -jnp.inf)
  top = jnp.max(logits, axis=1)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  weights = jnp.exp(logits - top[:, None])
  values = jnp.einsum("qm,mc->qc", weights, memory_values.astype(jnp.float32))
  return top, jnp.sum(weights, axis=1), values


def _normalise(total: jax.Array, values: jax.Array) -> jax.Array:
  """Weighted values [q, C_v] / sums of exp [q]; rows with no valid position stay zero."""
  return values / jnp.where(total > 0, total, 1.0)[:, None]


def _map_chunks(function, rows: jax.Array, chunk_size: int | None):
  """`function(chunk [c, C]) -> pytree of [c, ...]` over rows [Q, C] in chunks of
  `chunk_size` (None: one chunk); results concatenated back to Q rows."""
  count = rows.shape[0]
  chunk = count if chunk_size is None else max(1, min(chunk_size, count))
  num_chunks = -(-count // chunk)
  padded = jnp.pad(rows, ((0, num_chunks * chunk - count), (0, 0)))
  results = lax.map(function, padded.reshape(num_chunks, chunk, -1))
  return jax.tree.map(lambda x: x.reshape((num_chunks * chunk,) + x.shape[2:])[:count],
                      results)


def memory_read(query_keys: jax.typing.ArrayLike, memory_keys: jax.typing.ArrayLike,
                memory_values: jax.typing.ArrayLike,
                memory_valid: jax.typing.ArrayLike | None = None, *,
                chunk_size: int | None = None) -> jax.Array:
  """STM's space-time memory read (module docstring).

  Args:
    query_keys: [Q, C_k] keys of the query positions.
    memory_keys: [M, C_k] keys of every position of every memory frame.
    memory_values: [M, C_v] their values.
    memory_valid: [M] bool, the positions that take part (None: all).
    chunk_size: query positions per step (None: all at once); memory chunk_size x M. The
      result does not depend on it.

  Returns:
    [Q, C_v] float32 read values.
  """
  query_keys, memory_keys = jnp.asarray(query_keys), jnp.asarray(memory_keys)
  memory_values = jnp.asarray(memory_values)
  memory_valid = (jnp.ones(memory_keys.shape[:1], bool) if memory_valid is None
                  else jnp.asarray(memory_valid, bool))
  _check(query_keys, memory_keys, memory_values, memory_valid)

  def read(rows):
    _, total, values = _partial_read(rows, memory_keys, memory_values, memory_valid)
    return _normalise(total, values)

  return _map_chunks(read, query_keys, chunk_size)


def memory_read_sharded(query_keys: jax.typing.ArrayLike, memory_keys: jax.typing.ArrayLike,
                        memory_values: jax.typing.ArrayLike,
                        memory_valid: jax.typing.ArrayLike | None = None, *,
                        mesh: jax.sharding.Mesh, axis_name: str, mode: str = "query",
                        chunk_size: int | None = None) -> jax.Array:
  """`memory_read` split over the devices of one mesh axis with `jax.shard_map`.

  mode="query": the query positions are sharded (padded to a multiple of the axis size), each
  device reads its rows from the whole memory. mode="reference": the memory positions are
  sharded (padding positions invalid); each device computes its rows' maxima, sums of exp and
  weighted values over its positions, and these combine across the axis with `lax.pmax` and
  `lax.psum` (the log-sum-exp merge). Returns [Q, C_v] float32, replicated over the mesh, equal
  to the unsharded result up to float32 rounding.
  """
  query_keys, memory_keys = jnp.asarray(query_keys), jnp.asarray(memory_keys)
  memory_values = jnp.asarray(memory_values)
  memory_valid = (jnp.ones(memory_keys.shape[:1], bool) if memory_valid is None
                  else jnp.asarray(memory_valid, bool))
  _check(query_keys, memory_keys, memory_values, memory_valid)
  if axis_name not in mesh.shape:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}.")
  if mode not in ("query", "reference"):
    raise ValueError(f"mode must be 'query' or 'reference', got {mode!r}.")
  return _memory_read_sharded(query_keys, memory_keys, memory_values, memory_valid,
                              mesh=mesh, axis_name=axis_name, mode=mode,
                              chunk_size=chunk_size)


def _place(mesh: jax.sharding.Mesh, specs: tuple, arrays: tuple) -> list[jax.Array]:
  """Lays arrays out as `specs` on `mesh` (required by Explicit mesh axes)."""
  return [jax.device_put(x, jax.sharding.NamedSharding(mesh, s)) for x, s in zip(arrays, specs)]


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "mode", "chunk_size"))
def _memory_read_sharded(query_keys: jax.Array, memory_keys: jax.Array,
                         memory_values: jax.Array, memory_valid: jax.Array, *,
                         mesh: jax.sharding.Mesh, axis_name: str, mode: str,
                         chunk_size: int | None) -> jax.Array:
  num_devices = mesh.shape[axis_name]
  spec = jax.sharding.PartitionSpec
  count = query_keys.shape[0]
  if mode == "query":
    padded = jnp.pad(query_keys, ((0, -count % num_devices), (0, 0)))

    def read_rows(rows, keys, values, valid):
      return memory_read(rows, keys, values, valid, chunk_size=chunk_size)

    in_specs = (spec(axis_name), spec(), spec(), spec())
    sharded = jax.shard_map(read_rows, mesh=mesh, in_specs=in_specs, out_specs=spec(axis_name))
    rows = sharded(*_place(mesh, in_specs, (padded, memory_keys, memory_values, memory_valid)))
    return jax.device_put(rows, jax.sharding.NamedSharding(mesh, spec()))[:count]

  padding = -memory_keys.shape[0] % num_devices
  keys = jnp.pad(memory_keys, ((0, padding), (0, 0)))
  values = jnp.pad(memory_values, ((0, padding), (0, 0)))
  valid = jnp.pad(memory_valid, (0, padding), constant_values=False)

  def read_positions(rows, keys_part, values_part, valid_part):
    def read(chunk):
      top, total, weighted = _partial_read(chunk, keys_part, values_part, valid_part)
      has_any = total > 0
      local_top = jnp.where(has_any, top, -jnp.inf)
      global_top = lax.pmax(local_top, axis_name)
      global_top = jnp.where(jnp.isfinite(global_top), global_top, 0.0)
      factor = jnp.where(has_any, jnp.exp(top - global_top), 0.0)
      total = lax.psum(total * factor, axis_name)
      weighted = lax.psum(weighted * factor[:, None], axis_name)
      return _normalise(total, weighted)
    return _map_chunks(read, rows, chunk_size)

  in_specs = (spec(), spec(axis_name), spec(axis_name), spec(axis_name))
  sharded = jax.shard_map(read_positions, mesh=mesh, in_specs=in_specs, out_specs=spec())
  return sharded(*_place(mesh, in_specs, (query_keys, keys, values, valid)))
