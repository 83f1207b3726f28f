"""Textures of the synthetic videos: procedural patterns and scikit-image's bundled photographs.

Every function draws its randomness from the `np.random.Generator` it is given, so a texture is
a pure function of the generator's state. Images are float32 RGB in [0, 255].
"""
import colorsys
import functools

import numpy as np
from scipy import ndimage
from skimage import data as skimage_data
from skimage import transform

COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry")
"""`skimage.data` colour photographs used as backgrounds (bundled with scikit-image)."""

GREY_TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins", "text")
"""`skimage.data` greyscale images used as texture patterns (bundled with scikit-image)."""

PATTERNS = ("stripes", "checker", "dots", "rings", "noise")
"""Procedural object patterns."""


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
  """A `skimage.data` image as float32 in [0, 1]: [h, w, 3] for colour, [h, w] for greyscale."""
  image = np.asarray(getattr(skimage_data, name)())
  if image.ndim == 3:
    image = image[..., :3]
  return (image.astype(np.float32) / 255.0)


def hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
  """An RGB colour [3] in [0, 255] from HSV components in [0, 1] (hue wraps around)."""
  return 255.0 * np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32)


def _rotated_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates [size, size] x 2 in [-1, 1], rotated by a random angle."""
  axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
  rows, cols = np.meshgrid(axis, axis, indexing="ij")
  angle = rng.uniform(0.0, np.pi)
  return (np.cos(angle) * cols + np.sin(angle) * rows,
          -np.sin(angle) * cols + np.cos(angle) * rows)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
  """Gaussian-filtered white noise [*shape], stretched to [0, 1]."""
  noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma,
                                  mode="wrap")
  return _stretch(noise)


def _stretch(values: np.ndarray) -> np.ndarray:
  low, high = values.min(), values.max()
  return ((values - low) / max(float(high - low), 1e-6)).astype(np.float32)


def procedural_pattern(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
  """A [size, size] pattern in [0, 1] of the given `kind` (one of `PATTERNS`)."""
  x, y = _rotated_grid(rng, size)
  frequency = rng.uniform(1.5, 3.5)
  if kind == "stripes":
    pattern = 0.5 + 0.5 * np.tanh(3.0 * np.sin(np.pi * frequency * x))
  elif kind == "checker":
    waves = np.sin(np.pi * frequency * x) * np.sin(np.pi * frequency * y)
    pattern = 0.5 + 0.5 * np.tanh(3.0 * waves)
  elif kind == "dots":
    cell_x = np.sin(np.pi * frequency * x)
    cell_y = np.sin(np.pi * frequency * y)
    pattern = (cell_x ** 2 + cell_y ** 2 > rng.uniform(0.6, 1.2)).astype(np.float32)
  elif kind == "rings":
    pattern = 0.5 + 0.5 * np.tanh(3.0 * np.cos(np.pi * frequency * np.hypot(x, y + 0.3)))
  elif kind == "noise":
    pattern = smooth_noise(rng, (size, size), sigma=size / rng.uniform(8.0, 16.0))
  else:
    raise ValueError(f"procedural_pattern: kind={kind!r} is not one of {PATTERNS}.")
  return pattern.astype(np.float32)


def random_crop(rng: np.random.Generator, image: np.ndarray, shape: tuple[int, int],
                max_zoom: float) -> np.ndarray:
  """A random crop of `image` [h, w, ...], up to `max_zoom` times `shape`, resized to `shape`."""
  height, width = image.shape[:2]
  zoom = rng.uniform(1.0, max_zoom)
  crop_h = int(min(height, round(shape[0] * zoom)))
  crop_w = int(min(width, round(shape[1] * zoom)))
  crop_h = min(crop_h, int(round(crop_w * shape[0] / shape[1])))
  crop_w = min(crop_w, int(round(crop_h * shape[1] / shape[0])))
  top = rng.integers(0, height - crop_h + 1)
  left = rng.integers(0, width - crop_w + 1)
  crop = image[top:top + crop_h, left:left + crop_w]
  return transform.resize(crop, shape, order=1, anti_aliasing=True,
                          preserve_range=True).astype(np.float32)


def photo_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
  """A [size, size] pattern in [0, 1] cut from one of the `GREY_TEXTURES` photographs."""
  image = load_photo(GREY_TEXTURES[rng.integers(len(GREY_TEXTURES))])
  return _stretch(random_crop(rng, image, (size, size), max_zoom=4.0))


def colourise(pattern: np.ndarray, light: np.ndarray, dark: np.ndarray) -> np.ndarray:
  """Blends two RGB colours [3] by `pattern` [h, w] in [0, 1] into an image [h, w, 3]."""
  weight = pattern[..., None]
  return (light * (1.0 - weight) + dark * weight).astype(np.float32)


def object_texture(rng: np.random.Generator, size: int, hue: float,
                   use_photos: bool) -> np.ndarray:
  """A saturated texture [size, size, 3] around `hue`: a pattern between a light and a dark tone.

  The pattern is procedural, or (when `use_photos`, half of the time) cut from a photograph.
  """
  if use_photos and rng.random() < 0.5:
    pattern = photo_pattern(rng, size)
  else:
    pattern = procedural_pattern(rng, size, PATTERNS[rng.integers(len(PATTERNS))])
  light = hsv_colour(hue, rng.uniform(0.55, 1.0), rng.uniform(0.8, 1.0))
  dark = hsv_colour(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.5))
  return colourise(pattern, light, dark)


def _procedural_background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
  """Low-saturation colour field + smooth noise + one of gradient/stripes, [*shape, 3]."""
  height, width = shape
  hue = rng.random()
  coarse = np.stack([hsv_colour(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.35),
                                rng.uniform(0.3, 0.85)) for _ in range(9)]).reshape(3, 3, 3)
  field = transform.resize(coarse, shape, order=3, mode="edge").astype(np.float32)
  detail = smooth_noise(rng, shape, sigma=min(height, width) / rng.uniform(10.0, 30.0))
  x, _ = _rotated_grid(rng, max(height, width))
  x = x[:height, :width]
  if rng.random() < 0.5:
    layer = 0.5 + 0.5 * x
  else:
    layer = 0.5 + 0.5 * np.sin(np.pi * rng.uniform(2.0, 6.0) * x)
  shade = 0.75 + 0.25 * (0.6 * detail + 0.4 * layer)
  return np.clip(field * shade[..., None], 0.0, 255.0).astype(np.float32)


def background_canvas(rng: np.random.Generator, shape: tuple[int, int],
                      use_photos: bool) -> np.ndarray:
  """A background image [*shape, 3] in [0, 255] (camera frames are windows into it).

  With `use_photos`, two thirds are crops of `COLOUR_PHOTOS` (slightly desaturated so that the
  objects stand out); the rest, and everything without photos, is procedural.
  """
  if use_photos and rng.random() < 2.0 / 3.0:
    photo = load_photo(COLOUR_PHOTOS[rng.integers(len(COLOUR_PHOTOS))])
    crop = 255.0 * random_crop(rng, photo, shape, max_zoom=3.0)
    grey = crop.mean(axis=-1, keepdims=True)
    return (0.6 * crop + 0.4 * grey).astype(np.float32)
  return _procedural_background(rng, shape)
