"""Fused global matching: a Pallas kernel that keeps per-object running minima on chip.

For query rows x [Q, C] and the blocked reference layout of `global_maps` (reference
[num_blocks, block, C] sorted so that each block holds one object, their squared norms
[num_blocks, block] with inf on empty slots, each block's object id [num_blocks], num_objects
for unused blocks), it computes per object min over the object's rows y of ||y||^2 - 2 x.y,
streaming reference tiles through on-chip memory: the [Q, R] products never reach device
memory. Layout, tile sizes and the platform choice: docs/matching.md ("Fused kernel").
"""
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
import jax.numpy as jnp

_TILES = {jnp.dtype(jnp.bfloat16): (128, 128, 8), jnp.dtype(jnp.float32): (64, 64, 4)}
"""(query rows, reference rows, Triton warps) per kernel step by matmul dtype: with the channels
padded to 128, the query tile and three pipelined reference tiles take 128 KiB of on-chip
memory, and the float32 products 64 registers (bfloat16) or 32 (float32) per thread."""

_MIN_TILE = 16
"""Smallest tile side and channel count: the smallest matmul operand Triton accepts."""

_TARGET_PROGRAMS = 1024
"""Default number of kernel programs to aim for by splitting the reference (a few per core)."""

_MIN_TILES_PER_PROGRAM = 8
"""Fewest reference tiles a program streams when the reference is split (the split's cost)."""


def _power_of_two_at_least(n: int, low: int = 1) -> int:
  return max(low, 1 << max(n - 1, 0).bit_length())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _kernel(used_ref, tile_object_ref, query_ref, reference_ref, reference_sq_ref, out_ref, *,
            tiles_per_split: int, precision: lax.Precision | None):
  """One (query tile, reference split) program: out [tq, O'] = running per-object minima over
  the split's used reference tiles [tr, C'] (each of one object, `tile_object_ref`)."""
  query = query_ref[...]
  start = pl.program_id(1) * tiles_per_split
  stop = jnp.minimum(start + tiles_per_split, used_ref[0])
  objects = lax.broadcasted_iota(jnp.int32, (1, out_ref.shape[-1]), 1)

  def step(tile, best):
    products = lax.dot_general(query, reference_ref[tile], (((1,), (1,)), ((), ())),
                               precision=precision, preferred_element_type=jnp.float32)
    row_min = jnp.min(reference_sq_ref[tile][None, :] - 2.0 * products, axis=1)
    hit = objects == tile_object_ref[tile]
    return jnp.where(hit, jnp.minimum(best, row_min[:, None]), best)

  out_ref[...] = lax.fori_loop(start, stop, step,
                               jnp.full(out_ref.shape, jnp.inf, jnp.float32))


def pallas_min_squared(query: jax.Array, reference: jax.Array, reference_sq: jax.Array,
                       block_object: jax.Array, num_objects: int, *, interpret: bool = False,
                       query_tile: int | None = None, reference_tile: int | None = None,
                       splits: int | None = None, num_warps: int | None = None,
                       num_stages: int | None = None) -> jax.Array:
  """Per object, min over its reference rows y of ||y||^2 - 2 x.y, by a fused Pallas kernel.

  Args:
    query: [Q, C] rows x (float32 or bfloat16, already rescaled and rounded).
    reference: [num_blocks, block, C] in query's dtype; each block holds one object's rows
      (empty slots: any finite values, e.g. zeros).
    reference_sq: [num_blocks, block] float32 ||y||^2 of the rows, inf on empty slots.
    block_object: [num_blocks] int32 object id per block in 0..num_objects-1, or num_objects
      for an unused block; unused blocks come last (the order of `global_maps._block_layout`).
    num_objects: object slots O (a static Python int).
    interpret: run in Pallas interpret mode (any backend, e.g. tests on CPU).
    query_tile, reference_tile: rows per kernel step (powers of two >= 16; defaults by dtype,
      `_TILES`); the reference tile is capped at the padded block size.
    splits: programs per query tile, each streaming a contiguous share of the reference tiles
      (default: about `_TARGET_PROGRAMS` programs, at least `_MIN_TILES_PER_PROGRAM` tiles each).
    num_warps, num_stages: Triton compiler parameters (GPU only; None: `_TILES`'s warps and
      Triton's default stages).

  Returns:
    [Q, num_objects] float32 (inf where an object has no row). Float32 products use full
    float32 precision (no TF32); all products accumulate in float32. Zero padding of C, Q and
    block does not change any value.
  """
  num_queries, channels = query.shape
  num_blocks, block, _ = reference.shape
  default_query_tile, default_reference_tile, default_warps = _TILES[jnp.dtype(query.dtype)]
  query_tile = min(query_tile or default_query_tile,
                   _power_of_two_at_least(num_queries, _MIN_TILE))
  padded_block = _power_of_two_at_least(block, _MIN_TILE)
  reference_tile = min(reference_tile or default_reference_tile, padded_block)
  padded_channels = _power_of_two_at_least(channels, _MIN_TILE)
  padded_queries = _round_up(num_queries, query_tile)
  padded_objects = _power_of_two_at_least(num_objects)
  for name, size in (("query_tile", query_tile), ("reference_tile", reference_tile)):
    if size < _MIN_TILE or size & (size - 1):
      raise ValueError(f"{name} must be a power of two >= {_MIN_TILE}, got {size}.")

  query = jnp.pad(query, ((0, padded_queries - num_queries), (0, padded_channels - channels)))
  reference = jnp.pad(reference, ((0, 0), (0, padded_block - block),
                                  (0, padded_channels - channels)))
  reference_sq = jnp.pad(reference_sq, ((0, 0), (0, padded_block - block)),
                         constant_values=jnp.inf)
  per_block = padded_block // reference_tile
  num_tiles = num_blocks * per_block
  reference = reference.reshape(num_tiles, reference_tile, padded_channels)
  reference_sq = reference_sq.reshape(num_tiles, reference_tile)
  tile_object = jnp.repeat(block_object.astype(jnp.int32), per_block)
  used = jnp.sum(tile_object < num_objects, dtype=jnp.int32)[None]

  query_tiles = padded_queries // query_tile
  if splits is None:
    splits = max(1, min(num_tiles // _MIN_TILES_PER_PROGRAM,
                        -(-_TARGET_PROGRAMS // query_tiles)))
  tiles_per_split = -(-num_tiles // splits)
  precision = lax.Precision.HIGHEST if query.dtype == jnp.float32 else None
  compiler_params = (None if interpret else pl_triton.CompilerParams(
      num_warps=num_warps or default_warps, num_stages=num_stages))

  def whole(shape):
    return pl.BlockSpec(shape, lambda i, s: (0,) * len(shape))

  minima = pl.pallas_call(
      functools.partial(_kernel, tiles_per_split=tiles_per_split, precision=precision),
      out_shape=jax.ShapeDtypeStruct((splits, padded_queries, padded_objects), jnp.float32),
      grid=(query_tiles, splits),
      in_specs=[whole((1,)), whole((num_tiles,)),
                pl.BlockSpec((query_tile, padded_channels), lambda i, s: (i, 0)),
                whole((num_tiles, reference_tile, padded_channels)),
                whole((num_tiles, reference_tile))],
      out_specs=pl.BlockSpec((None, query_tile, padded_objects), lambda i, s: (s, i, 0)),
      interpret=interpret,
      compiler_params=compiler_params,
      name="fused_global_matching",
  )(used, tile_object, query, reference, reference_sq)
  return jnp.min(minima, axis=0)[:num_queries, :num_objects]

