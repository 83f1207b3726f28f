"""Local matching: per object, the distance of every pixel to the nearest previous-frame pixel of
that object within a (2k+1)^2 window (offsets times the dilation).

The query is cut into tiles, each matched with one matmul against the previous-frame pixels
around it, with a static window mask (layout and measurements: docs/matching.md).
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp

from feelvos_jax.matching import distances
from feelvos_jax.matching.distances import check_labels
from feelvos_jax.matching.distances import distance_from_squared
from feelvos_jax.matching.distances import DTypeLike

_LOCAL_TILE_SIZE = 8
"""Side of the query tiles of local matching."""


def _local_min_squared(query: jax.Array, query_sq: jax.Array, previous: jax.Array,
                       previous_sq: jax.Array, labels: jax.Array, num_objects: int,
                       radius: int) -> jax.Array:
  """Windowed per-object min of ||x||^2 + ||y||^2 - 2 x.y, dilation 1.

  query/previous [h, w, C] (rescaled), *_sq [h, w], labels [h, w] in {-1, 0..O-1}
  -> [h, w, O] float32 (inf where no pixel of the object lies in the window).
  """
  height, width, channels = query.shape
  tile = min(_LOCAL_TILE_SIZE, max(height, width))
  rows, cols = -(-height // tile), -(-width // tile)
  pad_h, pad_w = rows * tile - height, cols * tile - width
  span = tile + 2 * radius
  query = jnp.pad(query, ((0, pad_h), (0, pad_w), (0, 0)))
  query = query.reshape(rows, tile, cols, tile, channels).transpose(0, 2, 1, 3, 4)
  query = query.reshape(rows, cols, tile * tile, channels)
  query_sq = jnp.pad(query_sq, ((0, pad_h), (0, pad_w)))
  query_sq = query_sq.reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3)
  query_sq = query_sq.reshape(rows, cols, tile * tile)
  around = ((radius, radius + pad_h), (radius, radius + pad_w))
  previous = jnp.pad(previous, around + ((0, 0),))
  previous_sq = jnp.pad(previous_sq, around)
  labels = jnp.pad(labels, around, constant_values=-1)
  offset = jnp.arange(span)[None, :] - jnp.arange(tile)[:, None]
  inside = (offset >= 0) & (offset <= 2 * radius)
  window = (inside[:, None, :, None] & inside[None, :, None, :]).reshape(tile * tile, span * span)
  penalty = jnp.where(window, 0.0, jnp.inf)
  columns = jnp.arange(cols)[:, None] * tile + jnp.arange(span)[None, :]

  def neighbourhoods(x, row):
    band = lax.dynamic_slice_in_dim(x, row * tile, span, axis=0)[:, columns]
    band = jnp.moveaxis(band, 1, 0)
    return band.reshape((cols, span * span) + x.shape[2:])

  def match_row(row):
    near = neighbourhoods(previous, row)
    near_sq = neighbourhoods(previous_sq, row)
    near_labels = neighbourhoods(labels, row)
    partial = (near_sq[:, None, :] + penalty[None]
               - 2.0 * distances.dot(query[row], near, "tqc,tnc->tqn"))
    hit = near_labels[:, None, :, None] == jnp.arange(num_objects)  # fused, not materialised
    best = jnp.min(jnp.where(hit, partial[..., None], jnp.inf), axis=-2)
    return best + query_sq[row][..., None]

  best = lax.map(jax.checkpoint(match_row), jnp.arange(rows))
  best = best.reshape(rows, cols, tile, tile, num_objects).transpose(0, 2, 1, 3, 4)
  best = best.reshape(rows * tile, cols * tile, num_objects)[:height, :width]
  return jnp.maximum(best, 0.0)


def local_matching(query: jax.typing.ArrayLike, previous: jax.typing.ArrayLike,
                   previous_labels: jax.typing.ArrayLike, num_objects: int, *,
                   window: int = 15, dilation: int = 1,
                   dtype: DTypeLike = jnp.float32, squared: bool = False) -> jax.Array:
  """Local matching map: per object, distance to the nearest previous-frame pixel of that
  object at offsets (dy, dx) in {-window..window} * dilation.

  Args:
    query: [H, W, C] embeddings of the current frame.
    previous: [H, W, C] embeddings of the previous frame.
    previous_labels: [H, W] integer labels of the previous frame (255: never matched).
    num_objects: object slots including the background slot 0 (a static Python int).
    window: window radius k >= 0: (2k+1)^2 offsets.
    dilation: spacing >= 1 of the offsets.
    dtype: matmul input dtype, float32 or bfloat16 (accumulation in float32).
    squared: return the minimum squared distances instead (inf where no pixel of the object
      lies in the window).

  Returns:
    [H, W, num_objects] float32; 1.0 where no pixel of the object lies in the window (offsets
    falling outside the image never match).
  """
  query, previous = jnp.asarray(query), jnp.asarray(previous)
  previous_labels = jnp.asarray(previous_labels)
  distances.check_int("num_objects", num_objects, 1)
  distances.check_embedding("query", query)
  distances.check_embedding("previous", previous)
  if previous.shape[:2] != query.shape[:2]:
    raise ValueError(f"previous {previous.shape} and query {query.shape} must have the same "
                     f"spatial shape.")
  distances.check_channels("query", query, "previous", previous)
  distances.check_label_map("previous_labels", previous_labels, query.shape[:2],
                            "query's spatial shape")
  distances.check_int("window", window, 0)
  distances.check_int("dilation", dilation, 1)
  dtype = distances.matmul_dtype(dtype)
  check_labels(previous_labels, num_objects, "previous_labels")
  return _local_matching(query, previous, previous_labels, num_objects=num_objects,
                         window=window, dilation=dilation, dtype=dtype, squared=squared)


@functools.partial(jax.jit, static_argnames=("num_objects", "window", "dilation", "dtype",
                                             "squared"))
def _local_matching(query: jax.Array, previous: jax.Array, previous_labels: jax.Array, *,
                    num_objects: int, window: int, dilation: int, dtype: jnp.dtype,
                    squared: bool = False) -> jax.Array:
  height, width, channels = query.shape
  exponent = distances.scale_exponent(query, previous)
  query, query_sq = distances.rescale(query, exponent, dtype)
  previous, previous_sq = distances.rescale(previous, exponent, dtype)
  labels = distances.valid_labels(previous_labels, num_objects)
  grid_h, grid_w = -(-height // dilation), -(-width // dilation)
  radius = min(window, max(grid_h, grid_w) - 1)
  if dilation == 1:
    minima = _local_min_squared(query, query_sq, previous, previous_sq, labels, num_objects,
                                radius)
  else:
    pad = ((0, grid_h * dilation - height), (0, grid_w * dilation - width))

    def to_grids(x, fill=0):
      x = jnp.pad(x, pad + ((0, 0),) * (x.ndim - 2), constant_values=fill)
      x = x.reshape((grid_h, dilation, grid_w, dilation) + x.shape[2:])
      return jnp.moveaxis(x, (1, 3), (0, 1)).reshape((dilation * dilation, grid_h, grid_w)
                                                     + x.shape[4:])

    def match_grid(q, q_sq, p, p_sq, grid_labels):
      return _local_min_squared(q, q_sq, p, p_sq, grid_labels, num_objects, radius)

    minima = jax.vmap(match_grid)(to_grids(query), to_grids(query_sq), to_grids(previous),
                                  to_grids(previous_sq), to_grids(labels, -1))
    minima = minima.reshape(dilation, dilation, grid_h, grid_w, num_objects)
    minima = jnp.moveaxis(minima, (0, 1), (1, 3)).reshape(
        grid_h * dilation, grid_w * dilation, num_objects)[:height, :width]
  minima = distances.unscale(minima, exponent)
  return minima if squared else distance_from_squared(minima)
