"""Local matching split for re-propagation: label-free distances once, label-dependent minima
per propagation.

- `pair_distances(current, previous)` [O, h, w]: squared distances of every pixel to the other
  frame's pixels at each window offset (`local_offsets`); they depend on embeddings alone, so
  an interactive session computes them once per pair of neighbouring frames.
- `local_maps_from_distances`: the local matching maps [h, w, K] of either frame of the pair
  against the other frame's labels, from those stored distances.
- `local_maps_from_cells`: the maps of a frame against a few labelled cells of itself (the frame
  of interaction), h w x M distances instead of h w x O.

All three equal `local_matching` on the same inputs (FEELVOS distance, 1.0 where no pixel of a
slot lies in the window; labels outside 0..K-1 never match), with the power-of-two rescaling
of `distances`. Why the split: docs/interactive.md.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from feelvos_jax.matching import distances
from feelvos_jax.matching.distances import distance_from_squared


def local_offsets(window: int, dilation: int) -> tuple[tuple[int, int], ...]:
  """The local-matching offsets (dy, dx), row-major over {-window..window}^2, times dilation.
  Offset o and offset O - 1 - o are opposite (O = (2 window + 1)^2)."""
  distances.check_int("window", window, 0)
  distances.check_int("dilation", dilation, 1)
  steps = range(-window * dilation, window * dilation + 1, dilation)
  return tuple((dy, dx) for dy in steps for dx in steps)


def pair_distances(current: jax.Array, previous: jax.Array, *, window: int,
                   dilation: int, tile: int = 8) -> jax.Array:
  """Squared embedding distances of every pixel to the previous frame's pixels around it.

  Args:
    current: [h, w, E] embeddings of a frame.
    previous: [h, w, E] embeddings of its previous frame (or of itself).
    window, dilation: the local-matching window (`local_offsets`).
    tile: query pixels are taken in tile x tile blocks, each against its neighbourhood.

  Returns:
    [O, h, w] float32, offset-major (each offset's map contiguous, as
    `local_maps_from_distances` reads it): entry (o, p) = ||current[p] -
    previous[p + offset o]||^2 (||a||^2 + ||b||^2 - 2 a.b on the rescaled embeddings, clamped
    at 0), inf where p + offset o falls outside the frame. It depends on the embeddings only,
    never on labels.
  """
  offsets = np.array(local_offsets(window, dilation))
  height, width, channels = current.shape
  reach = window * dilation
  span = tile + 2 * reach
  rows, cols = -(-height // tile), -(-width // tile)
  exponent = distances.scale_exponent(current, previous)
  current, current_sq = distances.rescale(current, exponent, jnp.float32)
  previous, previous_sq = distances.rescale(previous, exponent, jnp.float32)

  def to_blocks(x: jax.Array) -> jax.Array:
    """[h, w, ...] -> [rows, cols, tile^2, ...], zero-padded to whole tiles."""
    pad = ((0, rows * tile - height), (0, cols * tile - width)) + ((0, 0),) * (x.ndim - 2)
    x = jnp.pad(x, pad).reshape((rows, tile, cols, tile) + x.shape[2:])
    return jnp.moveaxis(x, 2, 1).reshape((rows, cols, tile * tile) + x.shape[4:])

  blocks, blocks_sq = to_blocks(current), to_blocks(current_sq)
  around = ((reach, reach + rows * tile - height), (reach, reach + cols * tile - width))
  padded = jnp.pad(previous, around + ((0, 0),))
  padded_sq = jnp.pad(previous_sq, around)
  inside = jnp.pad(jnp.ones((height, width), bool), around)
  # Window entry o of block pixel (i, j) is neighbourhood pixel (i + dy + reach, j + dx + reach).
  block_i, block_j = np.divmod(np.arange(tile * tile), tile)
  entry = ((block_i[:, None] + offsets[:, 0] + reach) * span
           + block_j[:, None] + offsets[:, 1] + reach)  # [tile^2, O]
  columns = np.arange(cols)[:, None] * tile + np.arange(span)[None, :]  # [cols, span]

  def neighbourhoods(x: jax.Array, row: jax.Array) -> jax.Array:
    """[rows * tile + 2 reach, ...] padded map -> [cols, span^2, ...] around one block row."""
    band = lax.dynamic_slice_in_dim(x, row * tile, span, axis=0)[:, columns]
    return jnp.moveaxis(band, 1, 0).reshape((cols, span * span) + x.shape[2:])

  def block_row(row: jax.Array) -> jax.Array:
    """[cols, tile^2, O] distances of one row of blocks."""
    band = neighbourhoods(padded, row)
    cross = distances.dot(blocks[row], band, "bqc,bnc->bqn")
    squared = (blocks_sq[row][..., None] + neighbourhoods(padded_sq, row)[:, None, :]
               - 2.0 * cross)
    squared = jnp.where(neighbourhoods(inside, row)[:, None, :], jnp.maximum(squared, 0.0),
                        jnp.inf)
    return jnp.take_along_axis(squared, jnp.asarray(entry)[None], axis=-1)

  result = lax.map(block_row, jnp.arange(rows))  # [rows, cols, tile^2, O]
  result = result.reshape(rows, cols, tile, tile, -1).transpose(4, 0, 2, 1, 3)
  result = result.reshape(-1, rows * tile, cols * tile)[:, :height, :width]
  return distances.unscale(result, exponent)


def local_maps_from_distances(pair: jax.Array, previous_labels: jax.Array,
                              backward: jax.Array, *, window: int, dilation: int,
                              num_slots: int) -> jax.Array:
  """Local matching maps [h, w, num_slots] from `pair_distances` (FEELVOS distance, 1.0 where
  no pixel of the slot lies in the window; labels outside 0..num_slots-1 never match).

  Args:
    pair: [O, h, w] `pair_distances(frame u, frame v)`.
    previous_labels: [h, w] int32 slot labels of the previous frame.
    backward: bool scalar. False: the frame is u and its previous frame v (distances as
      they are). True: the frame is v and its previous frame u; entry (o, p) is then read at
      (O - 1 - o, p + offset o), the same pair seen from the other side.
    window, dilation: as given to `pair_distances`.
    num_slots: K.
  """
  distances.check_int("num_slots", num_slots, 1)
  count, height, width = pair.shape
  reach = window * dilation
  side = 2 * window + 1
  labels = jnp.pad(distances.valid_labels(previous_labels, num_slots), reach, constant_values=-1)

  def row_minima(dy_index: jax.Array, running: jax.Array, back: bool) -> jax.Array:
    """`running` [h, w, num_slots] lowered, per slot, to the offsets (dy, every dx)."""
    top = dy_index * dilation
    label_rows = lax.dynamic_slice_in_dim(labels, top, height, axis=0)
    if back:
      # Entry (O - 1 - o, p + offset o): the opposite offsets of this dy are one contiguous
      # range, O - 1 - (dy side + dx) = first + side - 1 - dx, read shifted by the offset
      # (inf outside the frame). Padding only this range keeps the copy small.
      opposite = lax.dynamic_slice_in_dim(pair, count - (dy_index + 1) * side, side, axis=0)
      opposite = jnp.pad(opposite, ((0, 0), (reach, reach), (reach, reach)),
                         constant_values=jnp.inf)
      distance_rows = lax.dynamic_slice_in_dim(opposite, top, height, axis=1)
    else:
      distance_rows = lax.dynamic_slice_in_dim(pair, dy_index * side, side, axis=0)
    best = [running[..., slot] for slot in range(num_slots)]
    for dx_index in range(side):
      left = dx_index * dilation
      neighbour_labels = label_rows[:, left:left + width]
      if back:
        squared = distance_rows[side - 1 - dx_index, :, left:left + width]
      else:
        squared = distance_rows[dx_index]
      best = [jnp.minimum(best[slot], jnp.where(neighbour_labels == slot, squared, jnp.inf))
              for slot in range(num_slots)]
    return jnp.stack(best, axis=-1)

  def minima(back: bool) -> jax.Array:
    # A running minimum over the rows of offsets: no [2 window + 1, h, w, K] stack to reduce.
    return lax.fori_loop(0, side, functools.partial(row_minima, back=back),
                         jnp.full((height, width, num_slots), jnp.inf, pair.dtype))

  squared = lax.cond(backward, lambda: minima(True), lambda: minima(False))
  return distance_from_squared(squared)


def local_maps_from_cells(embedding: jax.Array, cell_index: jax.Array, cell_labels: jax.Array,
                          *, window: int, dilation: int, num_slots: int) -> jax.Array:
  """Local matching maps [h, w, num_slots] of a frame against a few labelled cells of itself
  (the frame of interaction, whose previous frame is itself with only its marked cells
  labelled): the same maps as `local_maps_from_distances` on `pair_distances(frame, frame)`,
  at the cost of h w x M distances instead of h w x (2 window + 1)^2.

  Args:
    embedding: [h, w, E] the frame's embeddings.
    cell_index: [M] int32 flat indices into h x w of the labelled cells (padding: any).
    cell_labels: [M] int32 their slot labels (padding: IGNORE_LABEL; labels outside
      0..num_slots-1 never match).
    window, dilation: the local-matching window (`local_offsets`): a cell counts for pixel p
      if it is p + (dy, dx) dilation with |dy|, |dx| <= window.
    num_slots: K.
  """
  distances.check_int("window", window, 0)
  distances.check_int("dilation", dilation, 1)
  distances.check_int("num_slots", num_slots, 1)
  height, width, channels = embedding.shape
  pixels = embedding.reshape(-1, channels)
  cells = pixels[cell_index]
  exponent = distances.scale_exponent(pixels, cells)
  pixels, pixels_sq = distances.rescale(pixels, exponent, jnp.float32)
  cells, cells_sq = distances.rescale(cells, exponent, jnp.float32)
  squared = jnp.maximum(pixels_sq[:, None] + cells_sq[None, :]
                        - 2.0 * distances.dot(pixels, cells, "pc,mc->pm"), 0.0)
  pixel_y, pixel_x = jnp.divmod(jnp.arange(height * width), width)
  cell_y, cell_x = jnp.divmod(cell_index, width)
  labels = distances.valid_labels(cell_labels, num_slots)
  reach = window * dilation

  def in_window(pixel: jax.Array, cell: jax.Array) -> jax.Array:
    offset = cell[None, :] - pixel[:, None]
    return (jnp.abs(offset) <= reach) & (offset % dilation == 0)

  inside = in_window(pixel_y, cell_y) & in_window(pixel_x, cell_x)
  minima = jnp.stack([jnp.min(jnp.where(inside & (labels == slot)[None, :], squared, jnp.inf),
                              axis=-1)
                      for slot in range(num_slots)], axis=-1)
  minima = distances.unscale(minima, exponent)
  return distance_from_squared(minima).reshape(height, width, num_slots)
