"""Global and local matching of pixel embeddings (FEELVOS, Voigtlaender et al. 2019, sec. 3.2-3.3).

The distance between embeddings e_p and e_q is

  d(p, q) = 1 - 2 / (1 + exp(||e_p - e_q||^2)) = tanh(||e_p - e_q||^2 / 2),

computed as tanh (finite for every input, exactly 1.0 for an infinite squared distance). The
squared distance is ||x||^2 + ||y||^2 - 2 x.y (a matmul), clamped at 0. The map is monotone, so
the matching functions take the minimum over squared distances and transform only the minima.

Label maps: 0 background, 1..num_objects-1 objects, `IGNORE_LABEL` (255) never matches. Ids
outside 0..num_objects-1 are data, so they cannot be rejected inside `jax.jit`: there they are
treated like `IGNORE_LABEL` (never matched, so they cannot corrupt another object's map), and
with concrete (non-traced) labels the public functions raise a ValueError via `check_labels`.

Numerics:
- Embeddings are rescaled by a power of two (exact) before the matmul, so squared norms never
  overflow float32 (no inf - inf = nan): every finite input gives a finite map, and distinct
  huge embeddings are at distance 1. As with any ||x||^2 + ||y||^2 - 2 x.y formulation, the
  rounding error of a squared distance is relative to the squared norms.
- `dtype=jnp.bfloat16` rounds the (rescaled) embeddings to bfloat16 for the matmul, accumulates
  in float32 and computes the squared norms from the rounded values, so d(x, x) stays 0.
  Measured max |bf16 map - f32 map|: 2.6e-3 (global) and 1.4e-3 (local) over the 480p cases of
  benchmarks/matching.py (smooth synthetic embeddings, C=100), below 1e-2 in
  tests/test_matching.py (unit-normal embeddings, C=100, with near matches); the error grows
  with the squared embedding scale. On this project's CPU it made 480p global matching 1.1-2.2x
  faster (1.6-2.2x with all reference pixels).

Formulations (chosen by measurement, see benchmarks/matching.py and BENCHMARKS.md):
- Global: reference pixels are sorted by object into blocks (`_REFERENCE_BLOCK_SIZE`) that
  each hold one object only (padding slots never match); a scan over the blocks does one
  [chunk, C] x [C, block] matmul fused with its row minimum and keeps a running per-object
  minimum. Memory: chunk_size x block (never [Q, R, num_objects]); matmul work about
  Q x (R + num_objects x block) x C. With max_reference_pixels, the random subsampling is part
  of the same sort (one sort of the reference labels per call). At 480p it ran at 0.9-1.5x the
  rate of a large float32 matmul, and 1.5-37x faster than a masked minimum per object over
  chunked [chunk, R] distances. Matmuls over 4-64 blocks at once ([chunk, 512-8192] products,
  then block minima) measured 1.1-3x slower on this project's CPU. Elsewhere (GPU, TPU) each
  chunk does one matmul against all blocks and takes block minima (`_chunk_min_squared_wide`,
  memory chunk_size x blocks x block): on one H200 the scan took 24 ms at 480p with all
  reference pixels, launch-bound, against 2.5 ms for a plain [Q, R] minimum.
- Local: the query is cut into `_LOCAL_TILE_SIZE`^2 tiles; each tile is matched with one matmul
  against the (tile + 2k)^2 previous-frame pixels around it, a static mask keeps the (2k+1)^2
  window of every query pixel and a masked minimum per object reduces it. Memory per step:
  one row of tiles, W x tile x (tile + 2k)^2. Dilation d is matching with dilation 1 on each of
  the d x d interleaved sub-grids. At 480p, k=15 it was 4.6-9x faster than a running minimum
  over (2k+1)^2 shifted copies of the previous frame.
"""
import functools
import math
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import IGNORE_LABEL

_REFERENCE_BLOCK_SIZE = (64, 256)
"""Smallest and largest number of reference slots per block in global matching (one object per
block); within it, about total pixels / (8 x objects), so padding stays under ~1/8 of the work."""
_LOCAL_TILE_SIZE = 8
"""Side of the query tiles of local matching."""
_MAX_EXPONENT = 126
"""Largest |e| of the power-of-two rescaling 2**e (both 2**e and 2**-e are normal floats)."""

DTypeLike = Any


# ------------------------------------------------------------------ input checks
def check_labels(labels: jax.typing.ArrayLike, num_objects: int, name: str) -> None:
  """Raises ValueError if concrete `labels` hold ids outside 0..num_objects-1 and IGNORE_LABEL.

  A no-op for traced values (inside jit/vmap), where such ids are data: the matching functions
  then treat them like IGNORE_LABEL.
  """
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.asarray(labels)
  invalid = ((values < 0) | (values >= num_objects)) & (values != IGNORE_LABEL)
  if invalid.any():
    bad = np.unique(values[invalid])
    raise ValueError(
        f"{name} contains label id {int(bad[0])} (bad ids: {bad.tolist()[:10]}), but "
        f"num_objects={num_objects} allows only 0..{num_objects - 1} and {IGNORE_LABEL} (ignore).")


def _check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
  if optional and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be {'None or ' if optional else ''}a Python int >= {low}, "
                     f"got {value!r}.")


def _check_embedding(name: str, x: jax.Array) -> None:
  if x.ndim != 3 or 0 in x.shape:
    raise ValueError(f"{name} must be a non-empty [H, W, C] embedding, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {x.dtype}.")


def _check_label_map(name: str, labels: jax.Array, spatial: tuple[int, ...], other: str) -> None:
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer label map, got dtype {labels.dtype}.")
  if labels.shape != spatial:
    raise ValueError(f"{name} has shape {labels.shape}, but {other} is {spatial}: they must match.")


def _check_channels(name_x: str, x: jax.Array, name_y: str, y: jax.Array) -> None:
  if x.shape[-1] != y.shape[-1]:
    raise ValueError(f"{name_x} {x.shape} and {name_y} {y.shape} have different embedding "
                     f"dimensions ({x.shape[-1]} vs {y.shape[-1]}).")


def _matmul_dtype(dtype: DTypeLike) -> jnp.dtype:
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}.")
  return dtype


# ------------------------------------------------------------------ distances
def _exp2(exponent: jax.Array) -> jax.Array:
  """2**exponent as an exact float32, for integer |exponent| <= _MAX_EXPONENT."""
  return lax.bitcast_convert_type((exponent + 127) << 23, jnp.float32)


def _scale_exponent(*arrays: jax.Array) -> jax.Array:
  """Integer e with max|a| < 2**e over all arrays (clipped), constant for differentiation."""
  largest = jnp.max(jnp.stack([jnp.max(jnp.abs(a)).astype(jnp.float32) for a in arrays]))
  _, exponent = jnp.frexp(largest)
  return lax.stop_gradient(jnp.clip(exponent, -_MAX_EXPONENT, _MAX_EXPONENT))


def _prepare(x: jax.Array, exponent: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  """x * 2**-exponent rounded to `dtype`, and the float32 squared norms of the rounded rows.

  The rounding is a `reduce_precision` in float32: where XLA may keep excess precision (on GPU
  it may drop a float32 -> bfloat16 -> float32 round trip), a cast alone could leave the norms
  those of the unrounded rows, so that d(x, x) != 0. On one H200, local matching in bfloat16
  differed from float32 by 1.3e-2 with the cast alone, against 1.4e-3 on CPU.
  """
  scaled = x.astype(jnp.float32) * _exp2(-exponent)
  if dtype == jnp.bfloat16:
    scaled = lax.reduce_precision(scaled, exponent_bits=8, mantissa_bits=7)
  return scaled.astype(dtype), jnp.sum(jnp.square(scaled), axis=-1)


def _dot(x: jax.Array, y: jax.Array, subscripts: str) -> jax.Array:
  """Float32-accumulated einsum; full float32 precision for float32 inputs (no TF32)."""
  precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else lax.Precision.DEFAULT
  return jnp.einsum(subscripts, x, y, precision=precision, preferred_element_type=jnp.float32)


def _unscale(squared: jax.Array, exponent: jax.Array) -> jax.Array:
  """Squared distances of rescaled embeddings back to the original units (inf on overflow)."""
  scale = _exp2(exponent)
  return squared * scale * scale


def distance_from_squared(squared_distance: jax.Array) -> jax.Array:
  """1 - 2 / (1 + exp(d2)) = tanh(d2 / 2): in [0, 1], 1.0 for d2 = inf, never nan for d2 >= 0."""
  return jnp.tanh(0.5 * squared_distance)


def pairwise_distance(x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                      dtype: DTypeLike = jnp.float32) -> jax.Array:
  """FEELVOS distance between all rows of x [N, C] and y [M, C] -> [N, M] float32."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim != 2 or y.ndim != 2:
    raise ValueError(f"x and y must be [N, C] and [M, C], got shapes {x.shape} and {y.shape}.")
  _check_channels("x", x, "y", y)
  return _pairwise_distance(x, y, dtype=_matmul_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _pairwise_distance(x: jax.Array, y: jax.Array, *, dtype: jnp.dtype) -> jax.Array:
  exponent = _scale_exponent(x, y)
  x_scaled, x_sq = _prepare(x, exponent, dtype)
  y_scaled, y_sq = _prepare(y, exponent, dtype)
  squared = x_sq[:, None] + y_sq[None, :] - 2.0 * _dot(x_scaled, y_scaled, "nc,mc->nm")
  return distance_from_squared(_unscale(jnp.maximum(squared, 0.0), exponent))


# ------------------------------------------------------------------ global matching
def _valid_labels(labels: jax.Array, num_objects: int) -> jax.Array:
  """Labels as int32 with -1 wherever they must never match (ignore or out of range)."""
  labels = labels.astype(jnp.int32)
  return jnp.where((labels >= 0) & (labels < num_objects), labels, -1)


def _rank_within_object(labels: jax.Array, num_objects: int,
                        priority: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Sorts pixels by (object, priority); -1 labels go last.

  Returns (order, sorted_labels, rank of each sorted pixel within its object, counts [O]).
  """
  key = jnp.where(labels >= 0, labels, num_objects)
  sorted_key, _, order = lax.sort(
      (key, priority, jnp.arange(labels.shape[0], dtype=jnp.int32)), num_keys=2)
  counts = jnp.bincount(key, length=num_objects + 1)[:num_objects]
  first = jnp.cumsum(counts) - counts
  rank = jnp.arange(labels.shape[0]) - first[jnp.minimum(sorted_key, num_objects - 1)]
  return order, sorted_key, rank, counts


def _priority(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Random sort priorities of the subsampling: an object keeps its lowest-priority pixels."""
  return jax.random.bits(rng, shape, jnp.uint32)


def _subsample(labels: jax.Array, num_objects: int, max_pixels: int, rng: jax.Array) -> jax.Array:
  """Keeps min(count, max_pixels) random pixels of each object; the others become -1."""
  order, sorted_key, rank, _ = _rank_within_object(labels, num_objects,
                                                   _priority(rng, labels.shape))
  keep_sorted = (sorted_key < num_objects) & (rank < max_pixels)
  keep = jnp.zeros(labels.shape, bool).at[order].set(keep_sorted)
  return jnp.where(keep, labels, -1)


def _reference_pixel_labels(reference_labels: jax.Array, num_objects: int,
                            max_pixels: int | None, rng: jax.Array | None) -> jax.Array:
  """[H', W'] labels -> [R] labels of the pixels that take part (-1 for the others)."""
  labels = _valid_labels(reference_labels.reshape(-1), num_objects)
  if max_pixels is None:
    return labels
  return _subsample(labels, num_objects, max_pixels, rng)


def select_reference_pixels(reference_labels: jax.typing.ArrayLike, num_objects: int,
                            max_reference_pixels: int, rng: jax.Array) -> jax.Array:
  """The subsampling of `global_matching`: [H', W'] labels -> [H', W'] int32 labels where each
  object keeps min(count, max_reference_pixels) random pixels (the same ones global_matching
  uses with this rng) and every other pixel is IGNORE_LABEL."""
  reference_labels = jnp.asarray(reference_labels)
  _check_int("num_objects", num_objects, 1)
  _check_int("max_reference_pixels", max_reference_pixels, 1)
  if not jnp.issubdtype(reference_labels.dtype, jnp.integer) or reference_labels.ndim != 2:
    raise ValueError(f"reference_labels must be an [H', W'] integer label map, got "
                     f"{reference_labels.dtype}{list(reference_labels.shape)}.")
  return _select_reference_pixels(reference_labels, rng, num_objects=num_objects,
                                  max_reference_pixels=max_reference_pixels)


@functools.partial(jax.jit, static_argnames=("num_objects", "max_reference_pixels"))
def _select_reference_pixels(reference_labels: jax.Array, rng: jax.Array, *, num_objects: int,
                             max_reference_pixels: int) -> jax.Array:
  labels = _reference_pixel_labels(reference_labels, num_objects, max_reference_pixels, rng)
  return jnp.where(labels >= 0, labels, IGNORE_LABEL).reshape(reference_labels.shape)


def _block_geometry(num_pixels: int, num_objects: int, max_pixels: int | None) -> tuple[int, int]:
  """Static (block size, number of blocks) that hold every object's pixels in its own blocks."""
  per_object = num_pixels if max_pixels is None else min(num_pixels, max_pixels)
  total = min(num_pixels, num_objects * per_object)
  smallest, largest = _REFERENCE_BLOCK_SIZE
  target = max(total // (8 * num_objects), 1)
  block = min(max(1 << (target.bit_length() - 1), smallest), largest, per_object)
  num_blocks = min((total + num_objects * (block - 1)) // block,
                   num_objects * math.ceil(per_object / block))
  return block, max(num_blocks, 1)


def _block_layout(labels: jax.Array, num_objects: int, block: int, num_blocks: int,
                  max_pixels: int | None = None,
                  rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Slots [num_blocks, block] of pixel indices (R where empty) and each block's object id.

  Every object's pixels fill whole blocks of their own; unused blocks get object id num_objects.
  With `rng`, each object keeps only the min(count, max_pixels) pixels that `_subsample` keeps
  with that rng: the subsampling shares this function's one sort.
  """
  num_pixels = labels.shape[0]
  priority = (jnp.zeros(labels.shape, jnp.uint32) if rng is None
              else _priority(rng, labels.shape))
  order, sorted_key, rank, counts = _rank_within_object(labels, num_objects, priority)
  kept = sorted_key < num_objects
  if rng is not None:
    counts = jnp.minimum(counts, max_pixels)
    kept &= rank < max_pixels
  blocks = (counts + block - 1) // block
  block_end = jnp.cumsum(blocks)
  obj = jnp.minimum(sorted_key, num_objects - 1)
  slot = jnp.where(kept, (block_end - blocks)[obj] * block + rank, num_blocks * block)
  slots = jnp.full(num_blocks * block, num_pixels, jnp.int32).at[slot].set(order, mode="drop")
  block_object = jnp.searchsorted(block_end, jnp.arange(num_blocks), side="right")
  return slots.reshape(num_blocks, block), block_object.astype(jnp.int32)


def _chunk_min_squared(query: jax.Array, reference: jax.Array, reference_sq: jax.Array,
                       block_object: jax.Array, num_objects: int) -> jax.Array:
  """min over each object's slots of (||y||^2 - 2 x.y) for a query chunk [q, C] -> [q, O]."""
  objects = jnp.arange(num_objects)

  def update(best, block):
    block_reference, block_sq, obj = block
    row_min = jnp.min(block_sq[None, :] - 2.0 * _dot(query, block_reference, "qc,bc->qb"), 1)
    return jnp.minimum(best, jnp.where(objects == obj, row_min[:, None], jnp.inf))

  def step(best, block):
    return lax.cond(block[2] < num_objects, update, lambda b, _: b, best, block), None

  # The first block seeds the running minimum, so it varies over the same mesh axes as the
  # data when this runs inside shard_map.
  blocks = (reference, reference_sq, block_object)
  initial = update(jnp.full((query.shape[0], num_objects), jnp.inf, jnp.float32),
                   [x[0] for x in blocks])
  best, _ = lax.scan(step, initial, [x[1:] for x in blocks])
  return best


def _chunk_min_squared_wide(query: jax.Array, reference: jax.Array, reference_sq: jax.Array,
                            block_object: jax.Array, num_objects: int) -> jax.Array:
  """`_chunk_min_squared` with one matmul against all blocks at once: [q, C] x [C, blocks x
  block] -> block minima [q, blocks] -> per-object minima [q, O]. Memory q x blocks x block; on
  a GPU the scan's one small matmul per block is bound by kernel launches (about 10x slower
  than this at 480p with all reference pixels on one H200)."""
  num_blocks, block, channels = reference.shape
  partial = (reference_sq.reshape(1, num_blocks * block)
             - 2.0 * _dot(query, reference.reshape(num_blocks * block, channels), "qc,rc->qr"))
  block_min = jnp.min(partial.reshape(query.shape[0], num_blocks, block), axis=2)
  hit = block_object[:, None] == jnp.arange(num_objects)
  return jnp.min(jnp.where(hit[None], block_min[:, :, None], jnp.inf), axis=1)


def _min_squared_distance(query: jax.Array, reference: jax.Array, labels: jax.Array,
                          num_objects: int, max_pixels: int | None, chunk_size: int | None,
                          dtype: jnp.dtype, rng: jax.Array | None = None) -> jax.Array:
  """Per-object minimum squared distance: query [Q, C], reference [R, C], labels [R] in
  {-1, 0..O-1} -> [Q, O] float32 (inf: no pixel). With `rng`, each object keeps the
  min(count, max_pixels) pixels `_subsample` keeps with it; without, labels must hold at most
  `max_pixels` pixels per object (if set)."""
  num_queries, channels = query.shape
  exponent = _scale_exponent(query, reference)
  query, query_sq = _prepare(query, exponent, dtype)
  reference, reference_sq = _prepare(reference, exponent, dtype)
  block, num_blocks = _block_geometry(reference.shape[0], num_objects, max_pixels)
  slots, block_object = _block_layout(labels, num_objects, block, num_blocks, max_pixels, rng)
  reference = jnp.concatenate([reference, jnp.zeros((1, channels), dtype)])[slots]
  reference_sq = jnp.concatenate([reference_sq, jnp.array([jnp.inf], jnp.float32)])[slots]

  def chunk_fn(chunk):
    return lax.platform_dependent(
        chunk, reference, reference_sq, block_object,
        cpu=functools.partial(_chunk_min_squared, num_objects=num_objects),
        default=functools.partial(_chunk_min_squared_wide, num_objects=num_objects))

  size = num_queries if chunk_size is None else min(chunk_size, num_queries)
  num_chunks = -(-num_queries // size)
  if num_chunks == 1:
    best = chunk_fn(query)
  else:
    padded = jnp.pad(query, ((0, num_chunks * size - num_queries), (0, 0)))
    best = lax.map(jax.checkpoint(chunk_fn), padded.reshape(num_chunks, size, channels))
    best = best.reshape(num_chunks * size, num_objects)[:num_queries]
  return _unscale(jnp.maximum(best + query_sq[:, None], 0.0), exponent)


def _check_global_args(query, reference, reference_labels, num_objects, max_reference_pixels,
                       rng, chunk_size, dtype) -> jnp.dtype:
  _check_int("num_objects", num_objects, 1)
  _check_embedding("query", query)
  _check_embedding("reference", reference)
  _check_channels("query", query, "reference", reference)
  _check_label_map("reference_labels", reference_labels, reference.shape[:2],
                   "reference's spatial shape")
  _check_int("max_reference_pixels", max_reference_pixels, 1, optional=True)
  if max_reference_pixels is not None and rng is None:
    raise ValueError("max_reference_pixels is set, so rng (a jax PRNG key) is required.")
  _check_int("chunk_size", chunk_size, 1, optional=True)
  check_labels(reference_labels, num_objects, "reference_labels")
  return _matmul_dtype(dtype)


def global_matching(query: jax.typing.ArrayLike, reference: jax.typing.ArrayLike,
                    reference_labels: jax.typing.ArrayLike, num_objects: int, *,
                    max_reference_pixels: int | None = None, rng: jax.Array | None = None,
                    chunk_size: int | None = None, dtype: DTypeLike = jnp.float32,
                    squared: bool = False) -> jax.Array:
  """Global matching map: per object, distance to the nearest reference pixel of that object.

  Args:
    query: [H, W, C] embeddings of the current frame.
    reference: [H', W', C] embeddings of the reference frame.
    reference_labels: [H', W'] integer labels of the reference frame (255: never matched).
    num_objects: object slots including the background slot 0 (a static Python int).
    max_reference_pixels: if set, each object keeps at most this many reference pixels,
      chosen uniformly at random with `rng` (a jax PRNG key).
    rng: PRNG key for the subsampling (required with max_reference_pixels).
    chunk_size: if set, query pixels are matched this many at a time (bounds memory to about
      chunk_size x block per step, also for the gradient); the result does not depend on it.
    dtype: matmul input dtype, float32 or bfloat16 (accumulation in float32).
    squared: return the minimum squared distances ||e_p - e_q||^2 instead (inf where an object
      has no reference pixel), e.g. to add a bias before `distance_from_squared`.

  Returns:
    [H, W, num_objects] float32 distances in [0, 1]; 1.0 where an object has no reference pixel.
  """
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  reference_labels = jnp.asarray(reference_labels)
  dtype = _check_global_args(query, reference, reference_labels, num_objects,
                             max_reference_pixels, rng, chunk_size, dtype)
  return _global_matching(query, reference, reference_labels, rng, num_objects=num_objects,
                          max_reference_pixels=max_reference_pixels, chunk_size=chunk_size,
                          dtype=dtype, squared=squared)


@functools.partial(jax.jit, static_argnames=("num_objects", "max_reference_pixels",
                                             "chunk_size", "dtype", "squared"))
def _global_matching(query: jax.Array, reference: jax.Array, reference_labels: jax.Array,
                     rng: jax.Array | None, *, num_objects: int, max_reference_pixels: int | None,
                     chunk_size: int | None, dtype: jnp.dtype, squared: bool = False) -> jax.Array:
  height, width, channels = query.shape
  labels = _valid_labels(reference_labels.reshape(-1), num_objects)
  minima = _min_squared_distance(query.reshape(-1, channels), reference.reshape(-1, channels),
                                 labels, num_objects, max_reference_pixels, chunk_size, dtype,
                                 rng=None if max_reference_pixels is None else rng)
  if not squared:
    minima = distance_from_squared(minima)
  return minima.reshape(height, width, num_objects)


def nearest_squared_distance(query: jax.typing.ArrayLike, reference: jax.typing.ArrayLike,
                             reference_labels: jax.typing.ArrayLike,
                             num_objects: int) -> jax.Array:
  """Per object, the minimum squared distance to a few reference pixels, computed densely.

  Args:
    query: [Q, C] embeddings.
    reference: [R, C] reference embeddings (a few: clicks, a short scribble).
    reference_labels: [R] integer labels (outside 0..num_objects-1: never matched).
    num_objects: object slots including the background slot 0 (a static Python int).

  Returns:
    [Q, num_objects] float32: the values of `global_matching(..., squared=True)` on the same
    pixels (the same rescaling and arithmetic; inf where an object has no reference pixel),
    from all Q x R distances at once. For small R that skips the blocked reference layout
    `global_matching` builds to bound memory; its cost grows as Q x R x num_objects.
  """
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  reference_labels = jnp.asarray(reference_labels)
  if query.ndim != 2 or reference.ndim != 2:
    raise ValueError(f"query and reference must be [Q, C] and [R, C], got shapes {query.shape} "
                     f"and {reference.shape}.")
  _check_channels("query", query, "reference", reference)
  if reference_labels.shape != reference.shape[:1]:
    raise ValueError(f"reference_labels must be [R] = {reference.shape[:1]}, got "
                     f"{reference_labels.shape}.")
  _check_int("num_objects", num_objects, 1)
  return _nearest_squared_distance(query, reference, reference_labels, num_objects=num_objects)


@functools.partial(jax.jit, static_argnames=("num_objects",))
def _nearest_squared_distance(query: jax.Array, reference: jax.Array, labels: jax.Array, *,
                              num_objects: int) -> jax.Array:
  exponent = _scale_exponent(query, reference)
  query, query_sq = _prepare(query, exponent, jnp.float32)
  reference, reference_sq = _prepare(reference, exponent, jnp.float32)
  partial = reference_sq[None, :] - 2.0 * _dot(query, reference, "qc,rc->qr")
  best = jnp.stack([jnp.min(jnp.where(labels[None, :] == obj, partial, jnp.inf), axis=1)
                    for obj in range(num_objects)], axis=1)
  return _unscale(jnp.maximum(best + query_sq[:, None], 0.0), exponent)


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
  """
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  reference_labels = jnp.asarray(reference_labels)
  dtype = _check_global_args(query, reference, reference_labels, num_objects,
                             max_reference_pixels, rng, chunk_size, dtype)
  if axis_name not in mesh.shape:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}.")
  if mode not in ("query", "reference"):
    raise ValueError(f"mode must be 'query' or 'reference', got {mode!r}.")
  return _global_matching_sharded(
      query, reference, reference_labels, rng, mesh=mesh, axis_name=axis_name, mode=mode,
      num_objects=num_objects, max_reference_pixels=max_reference_pixels,
      chunk_size=chunk_size, dtype=dtype, squared=squared)


def _place(mesh: jax.sharding.Mesh, specs: tuple[Any, ...],
           arrays: tuple[jax.Array, ...]) -> list[jax.Array]:
  """Lays arrays out as `specs` on `mesh` (required by Explicit mesh axes)."""
  return [jax.device_put(x, jax.sharding.NamedSharding(mesh, s)) for x, s in zip(arrays, specs)]


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "mode", "num_objects",
                                             "max_reference_pixels", "chunk_size", "dtype",
                                             "squared"))
def _global_matching_sharded(query: jax.Array, reference: jax.Array,
                             reference_labels: jax.Array, rng: jax.Array | None, *,
                             mesh: jax.sharding.Mesh, axis_name: str, mode: str,
                             num_objects: int, max_reference_pixels: int | None,
                             chunk_size: int | None, dtype: jnp.dtype,
                             squared: bool) -> jax.Array:
  num_devices = mesh.shape[axis_name]
  height, width, channels = query.shape
  spec = jax.sharding.PartitionSpec
  if mode == "query":
    padded = jnp.pad(query, ((0, -height % num_devices), (0, 0), (0, 0)))
    keys = () if rng is None else (rng,)

    def match_rows(rows, ref, ref_labels, *keys):
      return _global_matching(rows, ref, ref_labels, keys[0] if keys else None,
                              num_objects=num_objects,
                              max_reference_pixels=max_reference_pixels,
                              chunk_size=chunk_size, dtype=dtype, squared=squared)

    in_specs = (spec(axis_name), spec(), spec()) + (spec(),) * len(keys)
    sharded = jax.shard_map(match_rows, mesh=mesh, in_specs=in_specs, out_specs=spec(axis_name))
    rows = sharded(*_place(mesh, in_specs, (padded, reference, reference_labels) + keys))
    return jax.device_put(rows, jax.sharding.NamedSharding(mesh, spec()))[:height]

  labels = _reference_pixel_labels(reference_labels, num_objects, max_reference_pixels, rng)
  padding = -labels.shape[0] % num_devices
  pixels = jnp.pad(reference.reshape(-1, channels), ((0, padding), (0, 0)))
  labels = jnp.pad(labels, (0, padding), constant_values=-1)

  def match_pixels(rows, ref_part, labels_part):
    squared = _min_squared_distance(rows, ref_part, labels_part, num_objects,
                                    max_reference_pixels, chunk_size, dtype)
    return lax.pmin(squared, axis_name)

  in_specs = (spec(), spec(axis_name), spec(axis_name))
  sharded = jax.shard_map(match_pixels, mesh=mesh, in_specs=in_specs, out_specs=spec())
  minima = sharded(*_place(mesh, in_specs, (query.reshape(-1, channels), pixels, labels)))
  if not squared:
    minima = distance_from_squared(minima)
  return minima.reshape(height, width, num_objects)


# ------------------------------------------------------------------ local matching
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
               - 2.0 * _dot(query[row], near, "tqc,tnc->tqn"))
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
  _check_int("num_objects", num_objects, 1)
  _check_embedding("query", query)
  _check_embedding("previous", previous)
  if previous.shape[:2] != query.shape[:2]:
    raise ValueError(f"previous {previous.shape} and query {query.shape} must have the same "
                     f"spatial shape.")
  _check_channels("query", query, "previous", previous)
  _check_label_map("previous_labels", previous_labels, query.shape[:2], "query's spatial shape")
  _check_int("window", window, 0)
  _check_int("dilation", dilation, 1)
  dtype = _matmul_dtype(dtype)
  check_labels(previous_labels, num_objects, "previous_labels")
  return _local_matching(query, previous, previous_labels, num_objects=num_objects,
                         window=window, dilation=dilation, dtype=dtype, squared=squared)


@functools.partial(jax.jit, static_argnames=("num_objects", "window", "dilation", "dtype",
                                             "squared"))
def _local_matching(query: jax.Array, previous: jax.Array, previous_labels: jax.Array, *,
                    num_objects: int, window: int, dilation: int, dtype: jnp.dtype,
                    squared: bool = False) -> jax.Array:
  height, width, channels = query.shape
  exponent = _scale_exponent(query, previous)
  query, query_sq = _prepare(query, exponent, dtype)
  previous, previous_sq = _prepare(previous, exponent, dtype)
  labels = _valid_labels(previous_labels, num_objects)
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
  minima = _unscale(minima, exponent)
  return minima if squared else distance_from_squared(minima)
