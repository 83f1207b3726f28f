"""Object silhouettes: binary sprites [S, S] whose shape fits the circle of radius S/2 - 1.

The sprite centre is the object's centre of rotation and scaling (see `rendering.py`).
"""
import functools

import numpy as np
from skimage import data as skimage_data
from skimage import draw
from skimage import transform

SHAPES = ("ellipse", "polygon", "blob")
"""Procedural silhouettes; `photo_shape` adds scikit-image's horse when photos are enabled."""


def _polar_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Radius (in units of the inscribed radius) and angle of every sprite pixel, [S, S] each."""
  centre = (size - 1) / 2.0
  axis = (np.arange(size, dtype=np.float32) - centre) / (size / 2.0 - 1.0)
  rows, cols = np.meshgrid(axis, axis, indexing="ij")
  return np.hypot(rows, cols), np.arctan2(rows, cols)


def ellipse(rng: np.random.Generator, size: int) -> np.ndarray:
  """An ellipse with aspect ratio in [0.45, 1] at a random orientation, [S, S] bool."""
  radius, angle = _polar_grid(size)
  aspect = rng.uniform(0.45, 1.0)
  tilt = angle - rng.uniform(0.0, np.pi)
  x, y = radius * np.cos(tilt), radius * np.sin(tilt)
  return x ** 2 + (y / aspect) ** 2 <= 1.0


def polygon(rng: np.random.Generator, size: int) -> np.ndarray:
  """A star-shaped polygon with 3 to 8 vertices at radii in [0.55, 1], [S, S] bool."""
  num_vertices = int(rng.integers(3, 9))
  slots = np.arange(num_vertices) + rng.uniform(-0.3, 0.3, num_vertices)
  angles = 2.0 * np.pi * slots / num_vertices + rng.uniform(0.0, 2.0 * np.pi)
  radii = rng.uniform(0.55, 1.0, num_vertices)
  radii /= radii.max()
  centre, scale = (size - 1) / 2.0, size / 2.0 - 1.0
  rows = centre + scale * radii * np.sin(angles)
  cols = centre + scale * radii * np.cos(angles)
  mask = np.zeros((size, size), bool)
  mask[draw.polygon(rows, cols, shape=(size, size))] = True
  return mask


def blob(rng: np.random.Generator, size: int) -> np.ndarray:
  """A smooth random blob: radius(angle) = 1 + sum_k a_k cos(k angle + phase_k), [S, S] bool."""
  radius, angle = _polar_grid(size)
  orders = np.arange(2, 6)
  amplitudes = rng.uniform(0.0, 0.35, orders.size) / (orders - 1.0)
  phases = rng.uniform(0.0, 2.0 * np.pi, orders.size)
  boundary = 1.0 + np.sum(amplitudes[:, None, None]
                          * np.cos(orders[:, None, None] * angle + phases[:, None, None]), axis=0)
  limit = 1.0 + amplitudes.sum()
  return radius <= boundary / limit


@functools.lru_cache(maxsize=None)
def _horse(size: int) -> np.ndarray:
  """scikit-image's horse silhouette, centred in a [size, size] sprite."""
  silhouette = ~np.asarray(skimage_data.horse(), bool)
  rows, cols = np.nonzero(silhouette)
  silhouette = silhouette[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  height, width = silhouette.shape
  side = int(np.ceil(np.hypot(height, width)))
  square = np.zeros((side, side), np.float32)
  top, left = (side - height) // 2, (side - width) // 2
  square[top:top + height, left:left + width] = silhouette
  return transform.resize(square, (size, size), order=1, anti_aliasing=True) > 0.5


def photo_shape(rng: np.random.Generator, size: int) -> np.ndarray:
  """scikit-image's horse silhouette, randomly mirrored, [S, S] bool."""
  mask = _horse(size)
  return np.ascontiguousarray(mask[:, ::-1]) if rng.random() < 0.5 else mask.copy()


def random_shape(rng: np.random.Generator, size: int, use_photos: bool) -> np.ndarray:
  """One silhouette [S, S] bool: a procedural shape, or (with photos, 1 in 4) the horse."""
  if use_photos and rng.random() < 0.25:
    return photo_shape(rng, size)
  kind = SHAPES[rng.integers(len(SHAPES))]
  return {"ellipse": ellipse, "polygon": polygon, "blob": blob}[kind](rng, size)
