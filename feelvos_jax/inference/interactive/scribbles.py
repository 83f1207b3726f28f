"""Clicks and scribbles -> marked stride-4 cells -> reference pixels: pure NumPy, no model.

A point (y, x) (pixel coordinates, fractions floored) marks the stride-4 cell containing it,
(y // 4, x // 4). An [H, W] bool mask (a thin scribble or a full object mask) is a stroke:
drawn with a brush of radius `STROKE_RADIUS` (3 pixels wide), it marks cell (i, j) where it
covers at least `CELL_COVERAGE` of the cell's window, the 4x4 pixels centred on the cell's
sample pixel (4i, 4j) (the pixel whose label the cell carries: `labels[::4, ::4]`, as training
and `upsample_logits` read it) that lie inside the frame. A stroke passing the window's edge
covers less than half of it and does not claim it; a stroke that dominates no window marks
the one it covers most. Scribbles in the DAVIS interactive format (`davis_strokes`) are
rasterised as connected strokes at full resolution, then marked the same way.

    cells = marked_cells([(120, 200), (130.5, 210)], (480, 854), "frame 0, object 1")
    cells.shape, np.argwhere(cells).tolist()   # (120, 214), [[30, 50], [32, 52]]

Bad input (a point outside the frame, an empty scribble, a mask of the wrong shape, a frame
index out of range, an unknown object id) raises a ValueError naming the argument.
"""
import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference import propagation

STROKE_RADIUS = 1
"""Strokes are drawn with a square brush of this radius (3 pixels wide) before marking cells."""

CELL_COVERAGE = 0.5
"""A stroke marks a cell where it covers at least this fraction of the cell's window."""

MIN_REFERENCE_PIXELS = 32
"""Smallest reference bucket: P is padded to max(this, the next power of two)."""


def is_int(value: Any) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_frame(frame: Any, num_frames: int, name: str) -> int:
  """`frame` as an int in 0..num_frames-1; ValueError naming `name` otherwise."""
  if not is_int(frame) or not 0 <= frame < num_frames:
    raise ValueError(f"{name} must be a frame index in 0..{num_frames - 1}, got {frame!r}")
  return int(frame)


def check_new_object(object_id: Any, object_ids: Sequence[int], name: str) -> int:
  """`object_id` as an int in 1..MAX_OBJECTS not in `object_ids`; ValueError otherwise."""
  if not is_int(object_id) or not 1 <= object_id <= propagation.MAX_OBJECTS:
    raise ValueError(f"{name}: object ids must be ints in 1..{propagation.MAX_OBJECTS} "
                     f"(0 is the background, {IGNORE_LABEL} ignore), got {object_id!r}")
  if int(object_id) in object_ids:
    raise ValueError(f"{name}: object {int(object_id)} is already an object of this video "
                     f"(objects: {list(object_ids)})")
  return int(object_id)


def check_object(frame: int, object_id: Any, object_ids: Sequence[int]) -> int:
  """`object_id` as an int, one of `object_ids` or 0 (the background); ValueError otherwise."""
  if not is_int(object_id) or (object_id != 0 and object_id not in object_ids):
    raise ValueError(f"frame {frame}: object_id {object_id!r} is not an object of this video "
                     f"(objects: {list(object_ids)}, 0 for the background); a new object "
                     f"must first be registered with add_object")
  return int(object_id)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """[H, W] bool -> [H, W] bool: `mask` dilated by a (2 radius + 1)^2 square."""
  height, width = mask.shape
  padded = np.pad(mask, radius)
  result = np.zeros_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      result |= padded[dy:dy + height, dx:dx + width]
  return result


def window_sums(mask: np.ndarray) -> np.ndarray:
  """[H, W] -> [ceil(H/4), ceil(W/4)]: per cell, the sum of `mask` over its window (rows
  4i-2..4i+1, columns 4j-2..4j+1, clipped to the frame)."""
  height, width = mask.shape
  h, w = -(-height // FEATURE_STRIDE), -(-width // FEATURE_STRIDE)
  half = FEATURE_STRIDE // 2
  padded = np.zeros((h * FEATURE_STRIDE, w * FEATURE_STRIDE), np.int64)
  rows, cols = min(height, h * FEATURE_STRIDE - half), min(width, w * FEATURE_STRIDE - half)
  padded[half:half + rows, half:half + cols] = mask[:rows, :cols]
  return padded.reshape(h, FEATURE_STRIDE, w, FEATURE_STRIDE).sum(axis=(1, 3))


def stroke_coverage(mask: np.ndarray) -> np.ndarray:
  """[H, W] bool -> [ceil(H/4), ceil(W/4)] float: the fraction of each cell's window (inside
  the frame) that the stroke, drawn with the `STROKE_RADIUS` brush, covers."""
  inside = window_sums(np.ones(mask.shape, bool))
  return window_sums(dilate(mask, STROKE_RADIUS)) / np.maximum(inside, 1)


def mask_cells(mask: np.ndarray) -> np.ndarray:
  """[H, W] bool, at least one True -> [ceil(H/4), ceil(W/4)] bool: the cells the stroke
  dominates (coverage >= CELL_COVERAGE), or, if none, the first cell of largest coverage."""
  coverage = stroke_coverage(mask)
  cells = coverage >= CELL_COVERAGE
  if not cells.any():
    cells.reshape(-1)[np.argmax(coverage)] = True
  return cells


def rasterise_path(points: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
  """A connected stroke through pixel points.

  Args:
    points: [N, 2] float (x, y) pixel coordinates inside the frame, N >= 1.
    frame_size: (H, W).

  Returns:
    [H, W] bool: the pixels of the straight segments between consecutive points (each
    segment sampled at one point per pixel of its longer side, rounded: 8-connected).
  """
  height, width = frame_size
  mask = np.zeros((height, width), bool)
  starts, ends = points[:1], points[:1]
  if len(points) > 1:
    starts, ends = points[:-1], points[1:]
  for start, end in zip(starts, ends):
    steps = int(math.ceil(np.abs(end - start).max())) + 1
    line = start + (end - start) * np.linspace(0.0, 1.0, steps)[:, None]
    pixels = np.rint(line).astype(np.int64)
    mask[np.clip(pixels[:, 1], 0, height - 1), np.clip(pixels[:, 0], 0, width - 1)] = True
  return mask


def davis_strokes(scribbles_data: Any, num_frames: int, frame_size: tuple[int, int],
                  object_ids: Sequence[int]) -> list[tuple[int, int, np.ndarray]]:
  """Scribbles in the DAVIS interactive format -> one rasterised stroke per frame and object.

  Args:
    scribbles_data: {"scribbles": [T lists of {"path": [[x, y], ...], "object_id": k}]}, the
      coordinates normalised to [0, 1] (x by W - 1, y by H - 1, as `davisinteractive`'s
      `scribbles2mask` scales them); other keys are ignored.
    num_frames: T, the video's frame count.
    frame_size: (H, W).
    object_ids: the objects the session knows (0, the background, is always known).

  Returns:
    [(frame, object_id, [H, W] bool stroke pixels)] in frame order, then order of first
    appearance of the object on the frame; frames without a path are absent.

  Raises:
    ValueError naming the frame and the object: a frame count other than T, an unknown object
    id, a path that is empty, not [N, 2] numbers, or outside [0, 1].
  """
  height, width = frame_size
  if not isinstance(scribbles_data, dict) or not isinstance(
      scribbles_data.get("scribbles"), (list, tuple)):
    raise ValueError("scribbles must be a dict {'scribbles': [one list of paths per frame]} "
                     "(the DAVIS interactive format)")
  frames = scribbles_data["scribbles"]
  if len(frames) != num_frames:
    raise ValueError(f"scribbles hold {len(frames)} frames, but the video has {num_frames}")
  strokes = []
  for frame, paths in enumerate(frames):
    by_object: dict[int, np.ndarray] = {}
    for index, entry in enumerate(paths):
      object_id = entry.get("object_id") if isinstance(entry, dict) else None
      where = f"frame {frame}, object {object_id!r} (path {index})"
      if not is_int(object_id) or (object_id != 0 and object_id not in object_ids):
        raise ValueError(f"{where}: object_id {object_id!r} is not an object of this video "
                         f"(objects: {list(object_ids)}, 0 for the background)")
      try:
        points = np.asarray(entry.get("path"), np.float64)
      except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: path must be a list of [x, y] numbers") from error
      if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"{where}: path must be a non-empty list of [x, y] pairs, got an "
                         f"array of shape {points.shape}")
      outside = ~(np.isfinite(points).all(axis=1) & (points >= 0).all(axis=1)
                  & (points <= 1).all(axis=1))
      if outside.any():
        raise ValueError(f"{where}: point(s) {points[outside].tolist()[:3]} (x, y) outside "
                         f"[0, 1] (coordinates are normalised by the frame size)")
      pixels = points * np.array([width - 1, height - 1], np.float64)
      stroke = rasterise_path(pixels, frame_size)
      object_id = int(object_id)
      by_object[object_id] = by_object.get(object_id, False) | stroke
    strokes.extend((frame, object_id, stroke) for object_id, stroke in by_object.items())
  return strokes


def marked_cells(mask_or_points: Any, frame_size: tuple[int, int], where: str) -> np.ndarray:
  """The cells a scribble marks (see the module docstring).

  Args:
    mask_or_points: an [H, W] bool mask, or (y, x) points ([N, 2] numbers).
    frame_size: (H, W), the frame's size.
    where: what the scribble is for, to begin error messages ("frame 3, object 1").

  Returns:
    [ceil(H/4), ceil(W/4)] bool, at least one cell True.
  """
  height, width = frame_size
  try:
    values = np.asarray(mask_or_points)
  except ValueError as error:
    raise ValueError(f"{where}: mask_or_points must be an [H, W] bool mask or a list of "
                     f"(y, x) points, got {mask_or_points!r:.80}") from error
  if values.dtype == np.bool_:
    if values.shape != (height, width):
      raise ValueError(f"{where}: mask_or_points mask has shape {values.shape}, but the "
                       f"frames are {(height, width)}")
    if not values.any():
      raise ValueError(f"{where}: mask_or_points is an empty scribble (no True pixel)")
    return mask_cells(values)
  if values.size == 0:
    raise ValueError(f"{where}: mask_or_points is an empty scribble (no point)")
  if values.ndim != 2 or values.shape[1] != 2 or not np.issubdtype(values.dtype, np.number):
    raise ValueError(f"{where}: mask_or_points must be an [H, W] bool mask or a list of "
                     f"(y, x) points ([N, 2] numbers), got an array of shape "
                     f"{values.shape} and dtype {values.dtype}")
  points = values.astype(np.float64)
  outside = ~(np.isfinite(points).all(axis=1) & (points[:, 0] >= 0) & (points[:, 0] < height)
              & (points[:, 1] >= 0) & (points[:, 1] < width))
  if outside.any():
    raise ValueError(f"{where}: point(s) {values[outside].tolist()[:5]} (y, x) outside the "
                     f"{height}x{width} frame")
  cells = np.zeros((-(-height // FEATURE_STRIDE), -(-width // FEATURE_STRIDE)), bool)
  pixels = np.floor(points).astype(np.int64) // FEATURE_STRIDE
  cells[pixels[:, 0], pixels[:, 1]] = True
  return cells


def slot_maps(references: np.ndarray,
              present: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Object ids -> slots for one propagation.

  Args:
    references: [T, h, w] uint8 object ids of the marked cells (0 background, IGNORE_LABEL
      unmarked).
    present: the objects taking part, in slot order (slots 1..n).

  Returns:
    (slots [T, h, w] int32: the references in slots, IGNORE_LABEL where unmarked or of an
    object not taking part; slot_to_id [256] uint8: slot -> object id, 0 beyond n).
  """
  id_to_slot = np.full(256, IGNORE_LABEL, np.int32)
  id_to_slot[0] = 0
  id_to_slot[list(present)] = np.arange(1, len(present) + 1)
  slot_to_id = np.zeros(256, np.uint8)
  slot_to_id[1:len(present) + 1] = present
  return id_to_slot[references], slot_to_id


def reference_bucket(count: int) -> int:
  """Reference pixels P compiled for `count` marked cells: a power of two >= the minimum."""
  return max(MIN_REFERENCE_PIXELS, 1 << max(count - 1, 0).bit_length())


def reference_index(slots: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(flat indices [P] int32, slot labels [P] int32) of the `cells` (bool, the shape of `slots`)
  of the slot map `slots`, padded to `reference_bucket` (index 0, label IGNORE_LABEL)."""
  marked = np.flatnonzero(cells)
  size = reference_bucket(marked.size)
  index = np.zeros(size, np.int32)
  index[:marked.size] = marked
  labels = np.full(size, IGNORE_LABEL, np.int32)
  labels[:marked.size] = slots.reshape(-1)[marked]
  return index, labels


BACKGROUND_PRIORS = ("far", "border", "none")
"""The values of `background_prior`: which unmarked cells of a frame holding object marks
count as background (docs/interactive.md)."""

PRIOR_FAR_FRACTION = 0.25
"""'far' prior: cells farther than this fraction of the frame's longer side (in cells) from
every object mark of their frame."""

PRIOR_BORDER_MARGIN = 2
"""'border' prior: cells of the frame's outer ring at least this many cells from every object
mark of their frame."""

PRIOR_GRID = 2
"""Prior cells are taken on a grid of this step (every PRIOR_GRID-th row and column) to keep
the reference row short."""


def with_background_prior(references: np.ndarray, size: tuple[int, int],
                          prior: str) -> np.ndarray:
  """References [T, h, w] uint8 (object ids, 0 background, IGNORE_LABEL unmarked) of frames
  of `size` (H, W) plus the background prior's cells, marked 0 where unmarked, on every frame
  holding object marks (background marks or not); a copy. `prior` is one of
  `BACKGROUND_PRIORS`: 'far' (cells
  farther than PRIOR_FAR_FRACTION of the longer side from every object mark), 'border' (the
  outer ring, PRIOR_BORDER_MARGIN cells or more from every object mark) or 'none'; only cells
  on the PRIOR_GRID grid are added."""
  references = references.copy()
  if prior == "none":
    return references
  rows, cols = -(-size[0] // FEATURE_STRIDE), -(-size[1] // FEATURE_STRIDE)
  grid = np.zeros((rows, cols), bool)
  grid[::PRIOR_GRID, ::PRIOR_GRID] = True
  for marks in references[:, :rows, :cols]:
    objects = (marks != IGNORE_LABEL) & (marks != 0)
    if not objects.any():
      continue
    distance = ndimage.distance_transform_edt(~objects)
    if prior == "far":
      chosen = distance > PRIOR_FAR_FRACTION * max(rows, cols)
    else:
      ring = np.ones((rows, cols), bool)
      ring[1:-1, 1:-1] = False
      chosen = ring & (distance >= PRIOR_BORDER_MARGIN)
    marks[chosen & grid & (marks == IGNORE_LABEL)] = 0
  return references
