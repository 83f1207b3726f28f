"""Vectorised rasterisation: sprites placed by affine poses, camera windows, depth-order painting.

All per-frame work is done on whole [T, H, W] arrays at once (nearest-neighbour sprite lookups,
bilinear background sampling), which keeps a 128x128x24 video to a few tens of milliseconds.
"""
import dataclasses

import numpy as np

from datasets.synthetic_vos import motion


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a sprite lands in every frame.

  Attributes:
    index: [T, H, W] int32 flat index into the sprite padded by one pixel on every side,
      [(S + 2) * (S + 2)], of the sprite pixel under each frame pixel (a padding pixel where
      the frame pixel falls outside the sprite).
    mask: [T, H, W] bool, the object's amodal (unoccluded) mask; all False before it is born.
  """
  index: np.ndarray
  mask: np.ndarray


def pad_sprite(sprite: np.ndarray) -> np.ndarray:
  """`sprite` [S, S, ...] padded by one zero pixel on every side and flattened: [(S+2)^2, ...]."""
  padded = np.pad(sprite, [(1, 1), (1, 1)] + [(0, 0)] * (sprite.ndim - 2))
  return padded.reshape((-1,) + sprite.shape[2:])


def place_sprite(sprite: np.ndarray, track: motion.Track, frame_shape: tuple[int, int],
                 birth_frame: int = 0) -> Placement:
  """Maps every frame pixel back into `sprite` [S, S] bool through the inverse pose of `track`.

  Pixel (r, c) shows sprite point R(-angle) (c - centre_c, r - centre_r) / scale + S/2
  (nearest neighbour). Frames before `birth_frame` show nothing of the object.
  """
  size = sprite.shape[0]
  if sprite.shape != (size, size):
    raise ValueError(f"place_sprite: sprite must be square, got shape {sprite.shape}.")
  height, width = frame_shape
  centre = track.centre.astype(np.float32)
  inverse_scale = (1.0 / track.scale).astype(np.float32)[:, None, None]
  cos = np.cos(track.angle).astype(np.float32)[:, None, None] * inverse_scale
  sin = np.sin(track.angle).astype(np.float32)[:, None, None] * inverse_scale
  d_row = np.arange(height, dtype=np.float32)[None, :, None] - centre[:, 0, None, None]
  d_col = np.arange(width, dtype=np.float32)[None, None, :] - centre[:, 1, None, None]
  # Sprite coordinates shifted by the one-pixel padding; truncation after clipping to
  # [0, S + 1] is the floor inside the sprite and lands on the padding outside it.
  offset = size / 2.0 + 1.0
  u = (cos * d_col + offset) + sin * d_row
  v = (cos * d_row + offset) - sin * d_col
  np.clip(u, 0.0, size + 1.0, out=u)
  np.clip(v, 0.0, size + 1.0, out=v)
  index = v.astype(np.int32)
  index *= size + 2
  index += u.astype(np.int32)
  mask = pad_sprite(sprite)[index]
  mask[:birth_frame] = False
  return Placement(index, mask)


def visible_masks(amodal: np.ndarray) -> np.ndarray:
  """Visible part of each object when objects are painted in order 0..N-1 (last on top).

  Args:
    amodal: [N, T, H, W] bool amodal masks in painting order.
  Returns:
    [N, T, H, W] bool: amodal[j] minus the union of amodal[k] for k > j.
  """
  covered = np.zeros(amodal.shape[1:], bool)
  visible = np.empty_like(amodal)
  for j in range(amodal.shape[0] - 1, -1, -1):
    visible[j] = amodal[j] & ~covered
    covered |= amodal[j]
  return visible


def view_canvas(canvas: np.ndarray, offsets: np.ndarray,
                frame_shape: tuple[int, int]) -> np.ndarray:
  """Bilinear windows [T, H, W, 3] into `canvas` [Hc, Wc, 3] at sub-pixel `offsets` [T, 2].

  Offsets are the (row, col) of each window's top-left corner; the window plus one pixel must
  fit in the canvas.
  """
  height, width = frame_shape
  top_left = np.floor(offsets).astype(np.int64)
  fraction = (offsets - top_left).astype(np.float32)
  if (top_left.min() < 0 or top_left[:, 0].max() + height + 1 > canvas.shape[0]
      or top_left[:, 1].max() + width + 1 > canvas.shape[1]):
    raise ValueError(f"view_canvas: offsets in [{offsets.min()}, {offsets.max()}] leave the "
                     f"canvas {canvas.shape[:2]} for frames {frame_shape}.")
  frames = np.empty((len(offsets), height, width, 3), np.float32)
  for t, ((row, col), (f_row, f_col)) in enumerate(zip(top_left, fraction)):
    window = canvas[row:row + height + 1, col:col + width + 1]
    top = (1.0 - f_col) * window[:-1, :-1] + f_col * window[:-1, 1:]
    bottom = (1.0 - f_col) * window[1:, :-1] + f_col * window[1:, 1:]
    frames[t] = (1.0 - f_row) * top + f_row * bottom
  return frames


def paint(background: np.ndarray, placements: list[Placement],
          textures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Paints textured sprites over `background` [T, H, W, 3] in list order (last on top).

  Args:
    background: [T, H, W, 3] float RGB in [0, 255].
    placements: N placements, in depth order (first is the farthest).
    textures: N sprite textures [S, S, 3] float in [0, 255].
  Returns:
    frames [T, H, W, 3] uint8 and segmentation [T, H, W] uint8 with j + 1 where the j-th
    placement is visible, 0 elsewhere.
  """
  if len(placements) != len(textures):
    raise ValueError(f"paint: {len(placements)} placements but {len(textures)} textures.")
  frames = background.copy()
  segmentation = np.zeros(background.shape[:3], np.uint8)
  for index, (placement, texture) in enumerate(zip(placements, textures)):
    mask = placement.mask
    frames[mask] = pad_sprite(texture)[placement.index[mask]]
    segmentation[mask] = index + 1
  return np.clip(np.round(frames), 0, 255).astype(np.uint8), segmentation
