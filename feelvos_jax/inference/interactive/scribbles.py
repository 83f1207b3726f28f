"""Clicks and scribbles -> marked stride-4 cells -> reference pixels: pure NumPy, no model.

A point (y, x) (pixel coordinates, fractions floored) marks the stride-4 cell containing it,
(y // 4, x // 4); an [H, W] bool mask (a thin scribble or a full object mask) marks every cell
of which at least one pixel is True (its 4x4 blocks, `.any()`).

    cells = marked_cells([(120, 200), (130.5, 210)], (480, 854), "frame 0, object 1")
    cells.shape, np.argwhere(cells).tolist()   # (120, 214), [[30, 50], [32, 52]]

Bad input (a point outside the frame, an empty scribble, a mask of the wrong shape, a frame
index out of range, an unknown object id) raises a ValueError naming the argument.
"""
from typing import Any, Sequence

import numpy as np

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference import propagation

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


def mask_cells(mask: np.ndarray) -> np.ndarray:
  """[H, W] bool -> [ceil(H/4), ceil(W/4)] bool: cells holding at least one True pixel."""
  height, width = mask.shape
  h, w = -(-height // FEATURE_STRIDE), -(-width // FEATURE_STRIDE)
  padded = np.zeros((h * FEATURE_STRIDE, w * FEATURE_STRIDE), bool)
  padded[:height, :width] = mask
  return padded.reshape(h, FEATURE_STRIDE, w, FEATURE_STRIDE).any(axis=(1, 3))


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
