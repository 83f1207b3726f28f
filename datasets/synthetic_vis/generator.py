"""One synthetic video instance segmentation video: instances of shape categories that enter,
leave and cross, painted with the synthetic VOS renderer (`datasets/synthetic_vos`).

The category of an instance is its silhouette (`CATEGORIES`); its texture has a random hue, so
colour says nothing about the category. Every video has 1..max_instances instances; scenarios
(`video_scenario`) add one born after frame 0 and/or one that leaves across a border and comes
back (the same identity must be kept). Wandering instances cross and occlude each other.
"""
import dataclasses
from typing import Sequence

import numpy as np
from skimage import draw

from datasets.synthetic_vos import generator as vos_generator
from datasets.synthetic_vos import motion
from datasets.synthetic_vos import rendering
from datasets.synthetic_vos import textures

CATEGORIES = ("disc", "triangle", "square", "star")
"""Category names; category id = index + 1."""

MAX_ATTEMPTS = 200


def _regular_polygon(rng: np.random.Generator, size: int, radii: Sequence[float]) -> np.ndarray:
  """[S, S] bool polygon with vertices at `radii` (relative) on equally spaced angles."""
  count = len(radii)
  angles = 2.0 * np.pi * np.arange(count) / count + rng.uniform(0.0, 2.0 * np.pi)
  centre, scale = (size - 1) / 2.0, size / 2.0 - 1.0
  rows = centre + scale * np.asarray(radii) * np.sin(angles)
  cols = centre + scale * np.asarray(radii) * np.cos(angles)
  mask = np.zeros((size, size), bool)
  mask[draw.polygon(rows, cols, shape=(size, size))] = True
  return mask


def category_sprite(rng: np.random.Generator, category: int, size: int) -> np.ndarray:
  """[S, S] bool silhouette of category id `category` (1..len(CATEGORIES))."""
  name = CATEGORIES[category - 1]
  if name == "disc":
    centre = (size - 1) / 2.0
    axis = (np.arange(size) - centre) / (size / 2.0 - 1.0)
    return np.hypot(axis[:, None], axis[None, :]) <= rng.uniform(0.8, 1.0)
  if name == "triangle":
    return _regular_polygon(rng, size, [1.0] * 3)
  if name == "square":
    return _regular_polygon(rng, size, [0.95] * 4)
  return _regular_polygon(rng, size, [1.0, 0.45] * 5)


@dataclasses.dataclass(frozen=True)
class VisVideo:
  """frames [T, H, W, 3] uint8; segmentation [T, H, W] uint8 (instance j + 1 where visible);
  categories [N] int32 in 1..len(CATEGORIES)."""
  frames: np.ndarray
  segmentation: np.ndarray
  categories: np.ndarray


def video_scenario(index: int) -> tuple[bool, bool]:
  """(late entry, exit and return) of the index-th video: the synthetic VOS cycle of four."""
  return vos_generator.video_scenario(index)


def generate_video(params: vos_generator.VideoParams, seed: Sequence[int],
                   late_entry: bool = False, exit_and_return: bool = False) -> VisVideo:
  """One video; the same arguments give byte-identical output (RuntimeError if no layout
  with every instance visible and big enough once is found)."""
  rng = np.random.default_rng(list(seed))
  frame_shape = (params.height, params.width)
  for _ in range(MAX_ATTEMPTS):
    count = int(rng.integers(2 if late_entry else 1, params.max_objects + 1))
    roles = rng.permutation(count)
    late = int(roles[0]) if late_entry else -1
    exiting = int(roles[-1]) if exit_and_return else -1
    categories = rng.integers(1, len(CATEGORIES) + 1, count).astype(np.int32)
    placements = []
    for index in range(count):
      sprite = category_sprite(rng, int(categories[index]), params.sprite_size)
      base_scale = rng.uniform(0.3, 0.55) * min(frame_shape) / params.sprite_size
      if index == exiting:
        track = motion.excursion_track(rng, params.num_frames, frame_shape, base_scale,
                                       params.sprite_size)
      else:
        track = motion.wandering_track(rng, params.num_frames, frame_shape, base_scale)
      birth = int(rng.integers(1, params.num_frames // 2 + 1)) if index == late else 0
      placements.append(rendering.place_sprite(sprite, track, frame_shape, birth))
    amodal = np.stack([p.mask for p in placements])
    visible = rendering.visible_masks(amodal)
    largest = visible.sum(axis=(2, 3)).max(axis=1)
    if (largest >= params.min_first_area).all() and (
        exiting < 0 or vos_generator.leaves_and_returns(amodal[exiting])):
      break
  else:
    raise RuntimeError(f"synthetic_vis: no acceptable layout for seed={tuple(seed)}")
  hues = rng.random() + np.arange(count) / count + rng.uniform(-0.2, 0.2, count) / count
  object_textures = [textures.object_texture(rng, params.sprite_size, hue, params.use_photos)
                     for hue in rng.permutation(hues)]
  margin = (max(2, round(0.08 * params.height)), max(2, round(0.08 * params.width)))
  canvas = textures.background_canvas(
      rng, (params.height + 2 * margin[0] + 1, params.width + 2 * margin[1] + 1),
      params.use_photos)
  background = rendering.view_canvas(canvas, motion.camera_path(rng, params.num_frames, margin),
                                     frame_shape)
  frames, segmentation = rendering.paint(background, placements, object_textures)
  return VisVideo(frames=frames, segmentation=segmentation, categories=categories)
