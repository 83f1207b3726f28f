"""Global matching: per object, the distance of every query pixel to its nearest reference pixel.

Reference pixels are sorted by object into blocks of one object each; a scan (CPU), one wide
matmul per query chunk (GPU, TPU) or a fused Pallas kernel (CUDA GPUs, where no gradient is
taken) keeps running per-object minima, so no [Q, R] buffer is built. The layout, the choice
and its measurements: docs/matching.md.
"""
import functools
import math
from typing import Any

import jax
from jax import lax
from jax.extend import core as extend_core
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.matching import distances
from feelvos_jax.matching import fused
from feelvos_jax.matching.distances import check_labels
from feelvos_jax.matching.distances import distance_from_squared
from feelvos_jax.matching.distances import DTypeLike

KERNELS = ("auto", "xla", "pallas")
"""Forms of global matching's per-object minima: "auto" (the fused Pallas kernel of
`fused.pallas_min_squared` on CUDA GPUs, except under differentiation and in `jax.export`;
XLA elsewhere), "xla" (a scan over reference blocks on CPU, one wide matmul per chunk
elsewhere) or "pallas" (the kernel on every platform: interpret mode on CPU, Triton on GPU)."""

GLOBAL_MATCHING_KERNEL = "auto"
"""The form (one of KERNELS) global matching uses when a call names none; read when the call is
traced, so set it before the first compilation (compiled functions keep their form)."""

_REFERENCE_BLOCK_SIZE = (64, 256)
"""Smallest and largest number of reference slots per block in global matching (one object per
block); within it, about total pixels / (8 x objects), so padding stays under ~1/8 of the work."""


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


def reference_pixel_labels(reference_labels: jax.Array, num_objects: int,
                            max_pixels: int | None, rng: jax.Array | None) -> jax.Array:
  """[H', W'] labels -> [R] labels of the pixels that take part (-1 for the others)."""
  labels = distances.valid_labels(reference_labels.reshape(-1), num_objects)
  if max_pixels is None:
    return labels
  return _subsample(labels, num_objects, max_pixels, rng)


def select_reference_pixels(reference_labels: jax.typing.ArrayLike, num_objects: int,
                            max_reference_pixels: int, rng: jax.Array) -> jax.Array:
  """The subsampling of `global_matching`: [H', W'] labels -> [H', W'] int32 labels where each
  object keeps min(count, max_reference_pixels) random pixels (the same ones global_matching
  uses with this rng) and every other pixel is IGNORE_LABEL."""
  reference_labels = jnp.asarray(reference_labels)
  distances.check_int("num_objects", num_objects, 1)
  distances.check_int("max_reference_pixels", max_reference_pixels, 1)
  if not jnp.issubdtype(reference_labels.dtype, jnp.integer) or reference_labels.ndim != 2:
    raise ValueError(f"reference_labels must be an [H', W'] integer label map, got "
                     f"{reference_labels.dtype}{list(reference_labels.shape)}.")
  return _select_reference_pixels(reference_labels, rng, num_objects=num_objects,
                                  max_reference_pixels=max_reference_pixels)


@functools.partial(jax.jit, static_argnames=("num_objects", "max_reference_pixels"))
def _select_reference_pixels(reference_labels: jax.Array, rng: jax.Array, *, num_objects: int,
                             max_reference_pixels: int) -> jax.Array:
  labels = reference_pixel_labels(reference_labels, num_objects, max_reference_pixels, rng)
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
    products = distances.dot(query, block_reference, "qc,bc->qb")
    row_min = jnp.min(block_sq[None, :] - 2.0 * products, 1)
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
  block] -> block minima [q, blocks] -> per-object minima [q, O]. Memory q x blocks x block.
  The GPU/TPU form: there the scan's one small matmul per block is launch-bound
  (docs/matching.md)."""
  num_blocks, block, channels = reference.shape
  partial = (reference_sq.reshape(1, num_blocks * block)
             - 2.0 * distances.dot(query, reference.reshape(num_blocks * block, channels),
                                   "qc,rc->qr"))
  block_min = jnp.min(partial.reshape(query.shape[0], num_blocks, block), axis=2)
  hit = block_object[:, None] == jnp.arange(num_objects)
  return jnp.min(jnp.where(hit[None], block_min[:, :, None], jnp.inf), axis=1)


def _chunked_min_squared(query: jax.Array, reference: jax.Array, reference_sq: jax.Array,
                         block_object: jax.Array, *, num_objects: int, chunk_size: int | None,
                         form: Any = None) -> jax.Array:
  """The XLA form: `form` (`_chunk_min_squared` or `_chunk_min_squared_wide`; None: the scan
  on CPU, the wide matmul elsewhere, by `lax.platform_dependent`) per chunk of `chunk_size`
  query rows [Q, C] -> [Q, O], each chunk rematerialised for the gradient."""
  num_queries, channels = query.shape

  def chunk_fn(chunk):
    if form is not None:
      return form(chunk, reference, reference_sq, block_object, num_objects=num_objects)
    return lax.platform_dependent(
        chunk, reference, reference_sq, block_object,
        cpu=functools.partial(_chunk_min_squared, num_objects=num_objects),
        default=functools.partial(_chunk_min_squared_wide, num_objects=num_objects))

  size = num_queries if chunk_size is None else min(chunk_size, num_queries)
  num_chunks = -(-num_queries // size)
  if num_chunks == 1:
    return chunk_fn(query)
  padded = jnp.pad(query, ((0, num_chunks * size - num_queries), (0, 0)))
  best = lax.map(jax.checkpoint(chunk_fn), padded.reshape(num_chunks, size, channels))
  return best.reshape(num_chunks * size, num_objects)[:num_queries]


# The kernel choice is a primitive with one lowering rule per platform (as
# `lax.platform_dependent` chooses a branch), but each rule lowers for its platform alone: a
# Pallas call inside a branch would be lowered for every platform of a multi-platform
# `jax.export`, and fail on CPU. Operands: query [..., Q, C], reference [..., blocks, block, C],
# reference_sq [..., blocks, block], block_object [..., blocks] with `batch` leading axes.
_blocked_min_p = extend_core.Primitive("feelvos_blocked_min_squared")


def _blocked_min_abstract_eval(query, reference, reference_sq, block_object, *, num_objects,
                               chunk_size, kernel, batch):
  """[..., Q, O] float32, typed like the query (its sharding and, inside `shard_map`, the mesh
  axes it varies over: the reference must vary over no others)."""
  del reference, reference_sq, block_object, chunk_size, kernel, batch
  return query.update(shape=query.shape[:-1] + (num_objects,), dtype=jnp.dtype(jnp.float32),
                      weak_type=False)


def _lower(ctx, fn, batch: int, *args):
  """Lowers fn(query, reference, reference_sq, block_object) vmapped over `batch` axes."""
  for _ in range(batch):
    fn = jax.vmap(fn)
  return mlir.lower_fun(fn, multiple_results=False)(ctx, *args)


def _cpu_rule(ctx, *args, num_objects, chunk_size, kernel, batch):
  if kernel == "pallas":
    fn = functools.partial(fused.pallas_min_squared, num_objects=num_objects, interpret=True)
  else:
    fn = functools.partial(_chunked_min_squared, num_objects=num_objects, chunk_size=chunk_size,
                           form=_chunk_min_squared)
  return _lower(ctx, fn, batch, *args)


def _accelerator_rule(ctx, *args, num_objects, chunk_size, kernel, batch, fused_auto: bool):
  """Elsewhere than CPU: the compiled kernel if asked for, or under "auto" where `fused_auto`
  (CUDA) and not for `jax.export` (a Triton kernel is not a stable serialisable call)."""
  exporting = ctx.module_context.lowering_parameters.for_export
  if kernel == "pallas" or (fused_auto and not exporting):
    fn = functools.partial(fused.pallas_min_squared, num_objects=num_objects)
  else:
    fn = functools.partial(_chunked_min_squared, num_objects=num_objects, chunk_size=chunk_size,
                           form=_chunk_min_squared_wide)
  return _lower(ctx, fn, batch, *args)


def _blocked_min_impl(*args, num_objects, chunk_size, kernel, batch):
  """Eager evaluation (only under `jax.disable_jit`; global matching is jitted): the XLA form."""
  del kernel
  fn = functools.partial(_chunked_min_squared, num_objects=num_objects, chunk_size=chunk_size)
  for _ in range(batch):
    fn = jax.vmap(fn)
  return fn(*args)


def _blocked_min_batch_rule(args, dims, **params):
  """vmap: one more leading batch axis on every operand (broadcast where unbatched)."""
  size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
  args = [jnp.broadcast_to(x, (size,) + x.shape) if d is None else jnp.moveaxis(x, d, 0)
          for x, d in zip(args, dims)]
  return _blocked_min_p.bind(*args, **dict(params, batch=params["batch"] + 1)), 0


_blocked_min_p.def_abstract_eval(_blocked_min_abstract_eval)
_blocked_min_p.def_impl(_blocked_min_impl)
batching.primitive_batchers[_blocked_min_p] = _blocked_min_batch_rule
mlir.register_lowering(_blocked_min_p, _cpu_rule, platform="cpu")
mlir.register_lowering(_blocked_min_p, functools.partial(_accelerator_rule, fused_auto=True),
                       platform="cuda")
mlir.register_lowering(_blocked_min_p, functools.partial(_accelerator_rule, fused_auto=False))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _kernel_min_squared(query: jax.Array, reference: jax.Array, reference_sq: jax.Array,
                        block_object: jax.Array, num_objects: int, chunk_size: int | None,
                        kernel: str) -> jax.Array:
  """`_chunked_min_squared` [Q, O] in the form `kernel` picks per platform at lowering. Under
  differentiation the forward and backward passes are those of the XLA form (the kernel has
  no derivative), so training costs what it did without the kernel."""
  return _blocked_min_p.bind(query, reference, reference_sq, block_object,
                             num_objects=num_objects, chunk_size=chunk_size, kernel=kernel,
                             batch=0)


def _kernel_min_squared_fwd(query, reference, reference_sq, block_object, num_objects,
                            chunk_size, kernel):
  del kernel
  return jax.vjp(functools.partial(_chunked_min_squared, num_objects=num_objects,
                                   chunk_size=chunk_size),
                 query, reference, reference_sq, block_object)


def _kernel_min_squared_bwd(num_objects, chunk_size, kernel, vjp_fn, cotangent):
  del num_objects, chunk_size, kernel
  return vjp_fn(cotangent)


_kernel_min_squared.defvjp(_kernel_min_squared_fwd, _kernel_min_squared_bwd)


def blocked_inputs(query: jax.Array, reference: jax.Array, labels: jax.Array,
                    num_objects: int, max_pixels: int | None, dtype: jnp.dtype,
                    rng: jax.Array | None = None) -> tuple[jax.Array, ...]:
  """What the per-object minima take: query [Q, C], reference [R, C] and labels [R] in
  {-1, 0..O-1} -> (query rows [Q, C] rescaled and rounded to `dtype`, their float32 squared
  norms [Q], the rescaling exponent, the blocked reference [num_blocks, block, C], its squared
  norms [num_blocks, block] (inf: empty slot) and block_object [num_blocks]). With `rng`, each
  object keeps the min(count, max_pixels) pixels `_subsample` keeps with it; without, labels
  must hold at most `max_pixels` pixels per object (if set)."""
  channels = query.shape[1]
  exponent = distances.scale_exponent(query, reference)
  query, query_sq = distances.rescale(query, exponent, dtype)
  reference, reference_sq = distances.rescale(reference, exponent, dtype)
  block, num_blocks = _block_geometry(reference.shape[0], num_objects, max_pixels)
  slots, block_object = _block_layout(labels, num_objects, block, num_blocks, max_pixels, rng)
  reference = jnp.concatenate([reference, jnp.zeros((1, channels), dtype)])[slots]
  reference_sq = jnp.concatenate([reference_sq, jnp.array([jnp.inf], jnp.float32)])[slots]
  return query, query_sq, exponent, reference, reference_sq, block_object


def min_squared_distance(query: jax.Array, reference: jax.Array, labels: jax.Array,
                          num_objects: int, max_pixels: int | None, chunk_size: int | None,
                          dtype: jnp.dtype, rng: jax.Array | None = None,
                          kernel: str = "xla") -> jax.Array:
  """Per-object minimum squared distance: query [Q, C], reference [R, C], labels [R] in
  {-1, 0..O-1} -> [Q, O] float32 (inf: no pixel); `rng` and `max_pixels` as in
  `blocked_inputs`. `kernel`: one of KERNELS."""
  query, query_sq, exponent, reference, reference_sq, block_object = blocked_inputs(
      query, reference, labels, num_objects, max_pixels, dtype, rng)
  if kernel == "xla":
    best = _chunked_min_squared(query, reference, reference_sq, block_object,
                                num_objects=num_objects, chunk_size=chunk_size)
  else:
    best = _kernel_min_squared(query, reference, reference_sq, block_object, num_objects,
                               chunk_size, kernel)
  return distances.unscale(jnp.maximum(best + query_sq[:, None], 0.0), exponent)


def check_global_args(query, reference, reference_labels, num_objects, max_reference_pixels,
                       rng, chunk_size, dtype) -> jnp.dtype:
  distances.check_int("num_objects", num_objects, 1)
  distances.check_embedding("query", query)
  distances.check_embedding("reference", reference)
  distances.check_channels("query", query, "reference", reference)
  distances.check_label_map("reference_labels", reference_labels, reference.shape[:2],
                   "reference's spatial shape")
  distances.check_int("max_reference_pixels", max_reference_pixels, 1, optional=True)
  if max_reference_pixels is not None and rng is None:
    raise ValueError("max_reference_pixels is set, so rng (a jax PRNG key) is required.")
  distances.check_int("chunk_size", chunk_size, 1, optional=True)
  check_labels(reference_labels, num_objects, "reference_labels")
  return distances.matmul_dtype(dtype)


def resolve_kernel(kernel: str | None) -> str:
  """`kernel`, or GLOBAL_MATCHING_KERNEL if None; ValueError unless one of KERNELS."""
  kernel = GLOBAL_MATCHING_KERNEL if kernel is None else kernel
  if kernel not in KERNELS:
    raise ValueError(f"kernel must be one of {KERNELS} or None, got {kernel!r}.")
  return kernel


def global_matching(query: jax.typing.ArrayLike, reference: jax.typing.ArrayLike,
                    reference_labels: jax.typing.ArrayLike, num_objects: int, *,
                    max_reference_pixels: int | None = None, rng: jax.Array | None = None,
                    chunk_size: int | None = None, dtype: DTypeLike = jnp.float32,
                    squared: bool = False, kernel: str | None = None) -> jax.Array:
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
    kernel: the form of the per-object minima, one of KERNELS (None: GLOBAL_MATCHING_KERNEL,
      "auto" unless changed); all forms give the same values up to float32 rounding.

  Returns:
    [H, W, num_objects] float32 distances in [0, 1]; 1.0 where an object has no reference pixel.
  """
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  reference_labels = jnp.asarray(reference_labels)
  dtype = check_global_args(query, reference, reference_labels, num_objects,
                             max_reference_pixels, rng, chunk_size, dtype)
  return global_matching_traced(query, reference, reference_labels, rng, num_objects=num_objects,
                          max_reference_pixels=max_reference_pixels, chunk_size=chunk_size,
                          dtype=dtype, squared=squared, kernel=resolve_kernel(kernel))


@functools.partial(jax.jit, static_argnames=("num_objects", "max_reference_pixels",
                                             "chunk_size", "dtype", "squared", "kernel"))
def global_matching_traced(query: jax.Array, reference: jax.Array, reference_labels: jax.Array,
                     rng: jax.Array | None, *, num_objects: int, max_reference_pixels: int | None,
                     chunk_size: int | None, dtype: jnp.dtype, squared: bool = False,
                     kernel: str = "auto") -> jax.Array:
  height, width, channels = query.shape
  labels = distances.valid_labels(reference_labels.reshape(-1), num_objects)
  minima = min_squared_distance(query.reshape(-1, channels), reference.reshape(-1, channels),
                                 labels, num_objects, max_reference_pixels, chunk_size, dtype,
                                 rng=None if max_reference_pixels is None else rng,
                                 kernel=kernel)
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
  distances.check_channels("query", query, "reference", reference)
  if reference_labels.shape != reference.shape[:1]:
    raise ValueError(f"reference_labels must be [R] = {reference.shape[:1]}, got "
                     f"{reference_labels.shape}.")
  distances.check_int("num_objects", num_objects, 1)
  return _nearest_squared_distance(query, reference, reference_labels, num_objects=num_objects)


@functools.partial(jax.jit, static_argnames=("num_objects",))
def _nearest_squared_distance(query: jax.Array, reference: jax.Array, labels: jax.Array, *,
                              num_objects: int) -> jax.Array:
  exponent = distances.scale_exponent(query, reference)
  query, query_sq = distances.rescale(query, exponent, jnp.float32)
  reference, reference_sq = distances.rescale(reference, exponent, jnp.float32)
  partial = reference_sq[None, :] - 2.0 * distances.dot(query, reference, "qc,rc->qr")
  best = jnp.stack([jnp.min(jnp.where(labels[None, :] == obj, partial, jnp.inf), axis=1)
                    for obj in range(num_objects)], axis=1)
  return distances.unscale(jnp.maximum(best + query_sq[:, None], 0.0), exponent)
