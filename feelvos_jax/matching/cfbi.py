"""CFBI's matching options for FEELVOS (Yang et al., "Collaborative Video Object Segmentation by
Foreground-Background Integration", ECCV 2020): pure functions the model composes.

- Background matching (`background_minima`): for each object slot k, the distance to the
  nearest reference (or previous-frame) pixel NOT of k. Every labelled pixel belongs to exactly
  one slot, so that minimum is the minimum over the other slots' per-slot minima (ignored pixels
  belong to no slot and never match); it costs nothing beyond the per-slot minima.
- Foreground/background biases (`add_matching_bias`): D = 1 - 2 / (1 + exp(||e_p - e_q||^2 + b))
  = `matching.distance_from_squared(squared + b)`. As CFBI's code (`dis_bias`): the background
  slot 0 takes b_bg, the object slots b_fg, and the background-matching map of a slot is the
  minimum of the OTHER slots' biased maps (CFBI's `foreground2background` on the biased maps),
  so it sees b_bg through slot 0 and b_fg through the other objects.
- Multi-local matching (`multi_local_matching`): local matching for several window radii in one
  pass: the squared distances of every query tile to the previous-frame pixels around it are
  computed once for the largest window (one matmul per tile) and the radii take nested minima
  (each ring of offsets reduced once). Equals separate `matching.local_matching` calls.
- Atrous matching (`atrous_reference`): global matching against the reference pixels on a grid
  of stride l (rows and columns 0, l, 2l, ...), 1/l^2 of the pixels, as CFBI's atrous matching.
- Instance-level attention (`instance_guidance`): per slot the masked mean embeddings of its
  pixels (foreground) and of the other labelled pixels (background) in the reference and in the
  previous frame, concatenated [ref fg, ref bg, prev fg, prev bg] (CFBI's
  `calculate_attention_head`; here pixels with no valid label count in neither pool, and an
  empty pool gives a zero vector instead of dividing by count + 1e-5).

Label maps: 0 background, 1..num_objects-1 objects; IGNORE_LABEL (255) and any id outside
0..num_objects-1 never match and are pooled nowhere.

Object chunks: video inference with more objects than the largest `object_buckets` entry runs
the objects in chunks (`propagation.segment_logits`), each seeing the background and its own
objects, the others' pixels as IGNORE_LABEL. Plain FEELVOS maps are per object and do not
change; background matching and the background pools of instance attention then leave out
the other chunks' objects, so they differ from one call holding every object.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from feelvos_jax.matching import distances

_TILE_SIZE = 8
"""Side of the query tiles of multi-local matching."""
_MAX_EXPONENT = 126
"""Largest |e| of the power-of-two rescaling of the embeddings (2**e and 2**-e stay normal)."""


# ------------------------------------------------------------------ distance maps
def background_minima(squared: jax.Array) -> jax.Array:
  """Per slot k, the minimum over the other slots: [..., K] -> [..., K] (inf where none).

  With per-slot minimum squared distances this is the minimum squared distance to the pixels
  not of slot k (CFBI's background matching).
  """
  squared = jnp.asarray(squared)
  if squared.ndim < 1 or squared.shape[-1] < 1:
    raise ValueError(f"squared must be [..., K] with K >= 1 slots, got shape {squared.shape}")
  num_slots = squared.shape[-1]
  if num_slots == 1:
    return jnp.full_like(squared, jnp.inf)
  smallest = jnp.min(squared, axis=-1, keepdims=True)
  nearest = jnp.argmin(squared, axis=-1)[..., None]
  slots = jnp.arange(num_slots)
  second = jnp.min(jnp.where(slots == nearest, jnp.inf, squared), axis=-1, keepdims=True)
  return jnp.where(slots == nearest, second, smallest)


def add_matching_bias(squared: jax.Array, foreground_bias: jax.Array,
                      background_bias: jax.Array) -> jax.Array:
  """[..., K] squared distances + bias per slot: background_bias on slot 0, foreground_bias on
  slots 1..K-1 (scalars). inf stays inf."""
  squared = jnp.asarray(squared)
  if squared.ndim < 1:
    raise ValueError(f"squared must be [..., K], got shape {squared.shape}")
  is_background = jnp.arange(squared.shape[-1]) == 0
  return squared + jnp.where(is_background, background_bias, foreground_bias)


# ------------------------------------------------------------------ atrous matching
def atrous_reference(reference_embedding: jax.Array, reference_labels: jax.Array,
                     rate: int) -> tuple[jax.Array, jax.Array]:
  """Reference pixels on the grid of stride `rate` (rows/columns 0, rate, 2*rate, ...).

  reference_embedding [..., h', w', E], reference_labels [..., h', w'] ->
  ([..., ceil(h'/rate), ceil(w'/rate), E], [..., ceil(h'/rate), ceil(w'/rate)]).
  """
  distances.check_int("rate (config.model.global_atrous_rate)", rate, 1)
  if reference_embedding.shape[:-1] != reference_labels.shape:
    raise ValueError(f"reference_embedding {reference_embedding.shape} and reference_labels "
                     f"{reference_labels.shape} must have the same [..., h', w'] shape")
  return (reference_embedding[..., ::rate, ::rate, :], reference_labels[..., ::rate, ::rate])


# ------------------------------------------------------------------ instance-level attention
def pooled_embeddings(embedding: jax.Array, labels: jax.Array,
                      num_objects: int) -> tuple[jax.Array, jax.Array]:
  """Masked mean embeddings per slot: embedding [h, w, E], labels [h, w] ->
  (foreground [K, E]: mean over pixels of slot k, background [K, E]: mean over the labelled
  pixels not of slot k), K = num_objects; zeros where a pool is empty."""
  channels = embedding.shape[-1]
  flat = embedding.reshape(-1, channels).astype(jnp.float32)
  one_hot = jax.nn.one_hot(labels.reshape(-1), num_objects, dtype=jnp.float32)  # 0 if invalid
  counts = jnp.sum(one_hot, axis=0)
  sums = jnp.einsum("pk,pe->ke", one_hot, flat, precision=lax.Precision.HIGHEST)
  total_sum = jnp.sum(sums, axis=0, keepdims=True)
  total_count = jnp.sum(counts)
  foreground = sums / jnp.maximum(counts, 1.0)[:, None]
  background = (total_sum - sums) / jnp.maximum(total_count - counts, 1.0)[:, None]
  return foreground, background


def instance_guidance(reference_embedding: jax.Array, reference_labels: jax.Array,
                      previous_embedding: jax.Array, previous_labels: jax.Array,
                      num_objects: int) -> jax.Array:
  """CFBI's instance-level guidance vector per slot: [K, 4E] = concat[reference fg, reference
  bg, previous fg, previous bg] of `pooled_embeddings` (reference [h', w', E] / [h', w'],
  previous [h, w, E] / [h, w]), K = num_objects."""
  if reference_embedding.shape[:-1] != reference_labels.shape:
    raise ValueError(f"reference_embedding {reference_embedding.shape} and reference_labels "
                     f"{reference_labels.shape} must share their [h', w'] shape")
  if previous_embedding.shape[:-1] != previous_labels.shape:
    raise ValueError(f"previous_embedding {previous_embedding.shape} and previous_labels "
                     f"{previous_labels.shape} must share their [h, w] shape")
  pools = (pooled_embeddings(reference_embedding, reference_labels, num_objects)
           + pooled_embeddings(previous_embedding, previous_labels, num_objects))
  return jnp.concatenate(pools, axis=-1)


# ------------------------------------------------------------------ multi-local matching
def multi_local_matching(query: jax.typing.ArrayLike, previous: jax.typing.ArrayLike,
                         previous_labels: jax.typing.ArrayLike, num_objects: int, *,
                         windows: tuple[int, ...], dilation: int = 1,
                         squared: bool = False) -> jax.Array:
  """Local matching for several window radii in one pass.

  Args:
    query: [H, W, C] embeddings of the current frame.
    previous: [H, W, C] embeddings of the previous frame.
    previous_labels: [H, W] integer labels of the previous frame (255: never matched).
    num_objects: object slots including the background slot 0 (a static Python int).
    windows: radii k >= 0 (offsets in {-k..k}^2 times dilation), any order.
    dilation: spacing >= 1 of the offsets.
    squared: return the minimum squared distances (inf where no pixel of the object lies in
      the window) instead of the distances.

  Returns:
    [H, W, len(windows), num_objects] float32: map i equals
    `matching.local_matching(..., window=windows[i], dilation=dilation, squared=squared)`.
  """
  query, previous = jnp.asarray(query), jnp.asarray(previous)
  previous_labels = jnp.asarray(previous_labels)
  windows = tuple(windows)
  for name, value, low in [("num_objects", num_objects, 1), ("dilation", dilation, 1)] + [
      ("windows", radius, 0) for radius in windows]:
    distances.check_int(name, value, low)
  if not windows:
    raise ValueError("windows must name at least one radius, got ()")
  if query.ndim != 3 or previous.shape != query.shape:
    raise ValueError(f"query and previous must both be [H, W, C] of one shape, got "
                     f"{query.shape} and {previous.shape}")
  if previous_labels.shape != query.shape[:2] or not jnp.issubdtype(previous_labels.dtype,
                                                                      jnp.integer):
    raise ValueError(f"previous_labels must be an integer [H, W] = {query.shape[:2]} map, got "
                     f"{previous_labels.dtype}{list(previous_labels.shape)}")
  distances.check_labels(previous_labels, num_objects, "previous_labels")
  return _multi_local_matching(query, previous, previous_labels, num_objects=num_objects,
                               windows=tuple(int(r) for r in windows), dilation=int(dilation),
                               squared=squared)


def _rescale(query: jax.Array, previous: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Both embeddings times 2**-e (exact) with max|x| < 2**e, so squared norms cannot overflow;
  returns them and 2**(2e), the factor that takes squared distances back to original units."""
  largest = jnp.maximum(jnp.max(jnp.abs(query)), jnp.max(jnp.abs(previous)))
  _, exponent = jnp.frexp(largest)
  exponent = lax.stop_gradient(jnp.clip(exponent, -_MAX_EXPONENT, _MAX_EXPONENT))
  scale = jnp.ldexp(jnp.float32(1.0), -exponent)
  back = jnp.ldexp(jnp.float32(1.0), exponent)
  return query * scale, previous * scale, back * back


def _to_grids(x: jax.Array, dilation: int, fill: int | float) -> jax.Array:
  """[H, W, ...] -> [d*d, ceil(H/d), ceil(W/d), ...]: the d x d interleaved sub-grids."""
  height, width = x.shape[:2]
  grid_h, grid_w = -(-height // dilation), -(-width // dilation)
  pad = ((0, grid_h * dilation - height), (0, grid_w * dilation - width))
  x = jnp.pad(x, pad + ((0, 0),) * (x.ndim - 2), constant_values=fill)
  x = x.reshape((grid_h, dilation, grid_w, dilation) + x.shape[2:])
  return jnp.moveaxis(x, (1, 3), (0, 1)).reshape((dilation * dilation, grid_h, grid_w)
                                                 + x.shape[4:])


def _from_grids(x: jax.Array, dilation: int, height: int, width: int) -> jax.Array:
  """Inverse of `_to_grids`: [d*d, gh, gw, ...] -> [H, W, ...]."""
  grid_h, grid_w = x.shape[1:3]
  x = x.reshape((dilation, dilation, grid_h, grid_w) + x.shape[3:])
  x = jnp.moveaxis(x, (0, 1), (1, 3))
  return x.reshape((grid_h * dilation, grid_w * dilation) + x.shape[4:])[:height, :width]


@functools.partial(jax.jit, static_argnames=("num_objects", "windows", "dilation", "squared"))
def _multi_local_matching(query: jax.Array, previous: jax.Array, previous_labels: jax.Array, *,
                          num_objects: int, windows: tuple[int, ...], dilation: int,
                          squared: bool) -> jax.Array:
  height, width, _ = query.shape
  query, previous, unscale = _rescale(query.astype(jnp.float32), previous.astype(jnp.float32))
  labels = previous_labels.astype(jnp.int32)
  labels = jnp.where((labels >= 0) & (labels < num_objects), labels, -1)
  grid_h, grid_w = -(-height // dilation), -(-width // dilation)
  # Offsets beyond the (sub-)grid never match, so larger radii give the same maps.
  radii = tuple(min(radius, max(grid_h, grid_w) - 1) for radius in windows)
  grids = [_to_grids(query, dilation, 0.0), _to_grids(previous, dilation, 0.0),
           _to_grids(labels, dilation, -1)]
  minima = jax.vmap(functools.partial(_multi_window_minima, num_objects=num_objects,
                                      radii=radii))(*grids)
  minima = _from_grids(minima, dilation, height, width) * unscale
  return minima if squared else distances.distance_from_squared(minima)


def _multi_window_minima(query: jax.Array, previous: jax.Array, labels: jax.Array, *,
                         num_objects: int, radii: tuple[int, ...]) -> jax.Array:
  """Per-radius windowed per-object min of ||q - p||^2, dilation 1.

  query/previous [h, w, C] float32, labels [h, w] in {-1, 0..O-1} -> [h, w, len(radii), O]
  (inf where no pixel of the object lies in the window).

  The query is cut into tiles of `_TILE_SIZE`^2 pixels; each tile is matched with one matmul
  against the (tile + 2R)^2 previous pixels around it (R the largest radius), each tile pixel's
  (2R+1)^2 offsets are cut out of that block, and the radii are reduced nested, smallest first:
  radius r_i is the minimum of r_{i-1}'s result and of the ring between the two, so every
  offset is reduced once (all objects in one masked reduction); why this form:
  docs/matching.md.
  """
  height, width = query.shape[:2]
  largest = max(radii)
  tile = min(_TILE_SIZE, max(height, width))
  rows, cols = -(-height // tile), -(-width // tile)
  pad_h, pad_w = rows * tile - height, cols * tile - width
  span = tile + 2 * largest
  query_sq = jnp.sum(jnp.square(query), axis=-1)
  previous_sq = jnp.sum(jnp.square(previous), axis=-1)

  def tiles(x):
    x = jnp.pad(x, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (x.ndim - 2))
    x = x.reshape((rows, tile, cols, tile) + x.shape[2:])
    return jnp.moveaxis(x, 2, 1).reshape((rows, cols, tile * tile) + x.shape[4:])

  query_tiles, query_sq_tiles = tiles(query), tiles(query_sq)
  around = ((largest, largest + pad_h), (largest, largest + pad_w))
  previous = jnp.pad(previous, around + ((0, 0),))
  previous_sq = jnp.pad(previous_sq, around)
  labels = jnp.pad(labels, around, constant_values=-1)
  columns = jnp.arange(cols)[:, None] * tile + jnp.arange(span)[None, :]  # [cols, span]
  side = 2 * largest + 1
  pixel_y, pixel_x = np.divmod(np.arange(tile * tile), tile)
  offset_y, offset_x = np.divmod(np.arange(side * side), side)
  gather_index = ((pixel_y[:, None] + offset_y[None, :]) * span
                  + pixel_x[:, None] + offset_x[None, :])  # [tile^2, side^2] into span^2

  def per_offset(x):
    """[cols, tile^2, span, span] (or [cols, span, span], the same for every tile pixel) ->
    [cols, tile^2, side, side]: each tile pixel's (2R+1)^2 offsets (one gather), (0, 0) centred.
    """
    if x.ndim == 3:
      return x.reshape(cols, span * span)[:, gather_index].reshape(cols, tile * tile, side, side)
    flat = x.reshape(cols, tile * tile, span * span)
    return jnp.take_along_axis(flat, gather_index[None], axis=2).reshape(
        cols, tile * tile, side, side)

  def around_tiles(x, row):
    """[cols, span, span, ...]: the previous-frame block around each tile of a tile row."""
    band = lax.dynamic_slice_in_dim(x, row * tile, span, axis=0)[:, columns]
    return jnp.moveaxis(band, 1, 0)

  def match_row(row):
    near = around_tiles(previous, row)
    near_sq = around_tiles(previous_sq, row)
    near_labels = around_tiles(labels, row)
    products = jnp.einsum("tqc,tyxc->tqyx", query_tiles[row], near,
                          precision=lax.Precision.HIGHEST)
    partial = near_sq[:, None] - 2.0 * products  # [cols, tile^2, span, span]
    distances = per_offset(partial)
    offset_labels = per_offset(near_labels)
    hit = offset_labels[..., None] == jnp.arange(num_objects)
    masked = jnp.where(hit, distances[..., None], jnp.inf)  # [cols, tile^2, side, side, O]
    minima, current, inner = {}, None, -1
    for radius in sorted(set(radii)):
      lo, hi = largest - radius, largest + radius + 1
      if current is None:
        current = jnp.min(masked[:, :, lo:hi, lo:hi], axis=(2, 3))
      else:  # The ring between the previous radius and this one, as four strips.
        a, b = largest - inner, largest + inner + 1
        strips = (masked[:, :, lo:a, lo:hi], masked[:, :, b:hi, lo:hi],
                  masked[:, :, a:b, lo:a], masked[:, :, a:b, b:hi])
        current = functools.reduce(jnp.minimum, [jnp.min(x, axis=(2, 3)) for x in strips],
                                    current)
      minima[radius], inner = current, radius
    best = jnp.stack([minima[radius] for radius in radii], axis=2)  # [cols, tile^2, B, O]
    return best + query_sq_tiles[row][:, :, None, None]

  best = lax.map(jax.checkpoint(match_row), jnp.arange(rows))  # [rows, cols, tile^2, B, O]
  best = best.reshape(rows, cols, tile, tile, len(radii), num_objects)
  best = jnp.moveaxis(best, 2, 1).reshape(rows * tile, cols * tile, len(radii), num_objects)
  return jnp.maximum(best[:height, :width], 0.0)
