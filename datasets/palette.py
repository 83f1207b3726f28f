"""The DAVIS colour palette and palette-indexed label images.

DAVIS and YouTube-VOS store annotations (and expect predictions) as palette-indexed ('P' mode)
PNGs whose pixel values are object ids. Their palette is the PASCAL VOC colour map: the colour of
index i interleaves the bits of i over the red, green and blue channels, most significant first.
"""
import functools

import numpy as np
from PIL import Image


@functools.cache
def davis_palette() -> np.ndarray:
  """The DAVIS/PASCAL VOC colour map as a [256, 3] uint8 array (index 1 is (128, 0, 0)).

  Computed once (writers and overlays ask for it per frame): the array is read-only, copy it
  to change colours.
  """
  palette = np.zeros((256, 3), dtype=np.uint8)
  for index in range(256):
    code = index
    for bit in range(8):
      for channel in range(3):
        palette[index, channel] |= ((code >> channel) & 1) << (7 - bit)
      code >>= 3
  palette.flags.writeable = False
  return palette


def palette_image(labels: np.ndarray) -> Image.Image:
  """A 'P' mode PIL image with the DAVIS palette whose pixel values are `labels` [H, W] uint8."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.dtype != np.uint8:
    raise ValueError(
        f"labels must be a [H, W] uint8 array, got shape {labels.shape} dtype {labels.dtype}")
  image = Image.fromarray(labels)  # 'L'; putpalette turns it into 'P' keeping the values.
  image.putpalette(davis_palette().reshape(-1).tolist())
  return image
