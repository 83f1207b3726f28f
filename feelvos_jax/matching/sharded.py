"""Global matching split over the devices of one mesh axis with `jax.shard_map`
(`config.matching.shard_axis`): query rows or reference pixels sharded, equal to the unsharded
`global_maps.global_matching`."""
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

from feelvos_jax.matching import global_maps
from feelvos_jax.matching.distances import DTypeLike
from feelvos_jax.matching.distances import distance_from_squared


def global_matching_sharded(query: jax.typing.ArrayLike, reference: jax.typing.ArrayLike,
                            reference_labels: jax.typing.ArrayLike, num_objects: int, *,
                            mesh: jax.sharding.Mesh, axis_name: str, mode: str = "query",
                            max_reference_pixels: int | None = None,
                            rng: jax.Array | None = None, chunk_size: int | None = None,
                            dtype: DTypeLike = jnp.float32, squared: bool = False) -> jax.Array:
  """`global_matching` split over the devices of one mesh axis with `jax.shard_map`.

  mode="query": the query rows are sharded (padded to a multiple of the axis size) and every
  device matches its rows against the whole reference. mode="reference": the reference pixels
  are sharded (padding pixels never match), every device computes per-object minimum squared
  distances over its pixels and `lax.pmin` combines them. Subsampling selects the same pixels
  as `global_matching` with the same rng. Returns [H, W, num_objects], replicated over the
  mesh, equal to the unsharded result (minimum squared distances with `squared=True`).
  mode="query" computes the minima in the form GLOBAL_MATCHING_KERNEL names, mode="reference"
  in the XLA form (the fused kernel's result is typed like its query rows, which do not vary
  over the axis there).
  """
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  reference_labels = jnp.asarray(reference_labels)
  dtype = global_maps.check_global_args(query, reference, reference_labels, num_objects,
                             max_reference_pixels, rng, chunk_size, dtype)
  if axis_name not in mesh.shape:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}.")
  if mode not in ("query", "reference"):
    raise ValueError(f"mode must be 'query' or 'reference', got {mode!r}.")
  return _global_matching_sharded(
      query, reference, reference_labels, rng, mesh=mesh, axis_name=axis_name, mode=mode,
      num_objects=num_objects, max_reference_pixels=max_reference_pixels,
      chunk_size=chunk_size, dtype=dtype, squared=squared,
      kernel=global_maps.resolve_kernel(None) if mode == "query" else "xla")


def _place(mesh: jax.sharding.Mesh, specs: tuple[Any, ...],
           arrays: tuple[jax.Array, ...]) -> list[jax.Array]:
  """Lays arrays out as `specs` on `mesh` (required by Explicit mesh axes)."""
  return [jax.device_put(x, jax.sharding.NamedSharding(mesh, s)) for x, s in zip(arrays, specs)]


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "mode", "num_objects",
                                             "max_reference_pixels", "chunk_size", "dtype",
                                             "squared", "kernel"))
def _global_matching_sharded(query: jax.Array, reference: jax.Array,
                             reference_labels: jax.Array, rng: jax.Array | None, *,
                             mesh: jax.sharding.Mesh, axis_name: str, mode: str,
                             num_objects: int, max_reference_pixels: int | None,
                             chunk_size: int | None, dtype: jnp.dtype,
                             squared: bool, kernel: str) -> jax.Array:
  num_devices = mesh.shape[axis_name]
  height, width, channels = query.shape
  spec = jax.sharding.PartitionSpec
  if mode == "query":
    padded = jnp.pad(query, ((0, -height % num_devices), (0, 0), (0, 0)))
    keys = () if rng is None else (rng,)

    def match_rows(rows, ref, ref_labels, *keys):
      return global_maps.global_matching_traced(rows, ref, ref_labels, keys[0] if keys else None,
                              num_objects=num_objects,
                              max_reference_pixels=max_reference_pixels,
                              chunk_size=chunk_size, dtype=dtype, squared=squared,
                              kernel=kernel)

    in_specs = (spec(axis_name), spec(), spec()) + (spec(),) * len(keys)
    sharded = jax.shard_map(match_rows, mesh=mesh, in_specs=in_specs, out_specs=spec(axis_name))
    rows = sharded(*_place(mesh, in_specs, (padded, reference, reference_labels) + keys))
    return jax.device_put(rows, jax.sharding.NamedSharding(mesh, spec()))[:height]

  labels = global_maps.reference_pixel_labels(
      reference_labels, num_objects, max_reference_pixels, rng)
  padding = -labels.shape[0] % num_devices
  pixels = jnp.pad(reference.reshape(-1, channels), ((0, padding), (0, 0)))
  labels = jnp.pad(labels, (0, padding), constant_values=-1)

  def match_pixels(rows, ref_part, labels_part):
    squared = global_maps.min_squared_distance(rows, ref_part, labels_part, num_objects,
                                    max_reference_pixels, chunk_size, dtype)
    return lax.pmin(squared, axis_name)

  in_specs = (spec(), spec(axis_name), spec(axis_name))
  sharded = jax.shard_map(match_pixels, mesh=mesh, in_specs=in_specs, out_specs=spec())
  minima = sharded(*_place(mesh, in_specs, (query.reshape(-1, channels), pixels, labels)))
  if not squared:
    minima = distance_from_squared(minima)
  return minima.reshape(height, width, num_objects)

