"""One synthetic video from a seed: objects, their motion, the background, and the painting.

A video has 1..max_objects textured objects painted over a textured background seen by a slowly
moving camera. Objects are painted in depth order (object 1 farthest, N nearest), so they occlude
each other. Scenarios (see `video_scenario`) add an object born after frame 0, as in YouTube-VOS,
and/or an object that leaves the frame and comes back. Long videos (`motion_period` shorter than the
video) repeat their motion pattern, so the exiting object leaves and returns once per period, and
`appearance_drift` slowly changes each object's colours over the video. Layouts are re-drawn (from
the same generator, so deterministically) until every object's first appearance is large enough to
serve as a reference and the scenario's event really happens.
"""
import dataclasses
from typing import Sequence

import numpy as np

from datasets.synthetic_vos import motion
from datasets.synthetic_vos import rendering
from datasets.synthetic_vos import shapes
from datasets.synthetic_vos import textures

MAX_ATTEMPTS = 200
"""Layouts drawn per video before giving up (typically one to three are needed)."""


@dataclasses.dataclass(frozen=True)
class VideoParams:
  """What every video of a dataset configuration shares.

  Attributes:
    height: frame height in pixels.
    width: frame width in pixels.
    num_frames: frames per video (>= 2; >= 4 for the exit-and-return scenario).
    max_objects: most objects in one video (>= 2).
    use_photos: use scikit-image's bundled photographs for backgrounds, textures and shapes;
      False gives purely procedural videos.
    motion_period: frames over which every motion advances its fixed phase (`motion`); 0 is
      the whole video.
    appearance_drift: most relative change of each object's colour channels over the video
      (each channel's gain follows a slow sinusoid in [1 - drift, 1 + drift] with one period
      per video); 0 keeps the colours.
  """
  height: int
  width: int
  num_frames: int
  max_objects: int = 5
  use_photos: bool = True
  motion_period: int = 0
  appearance_drift: float = 0.0

  def __post_init__(self):
    if min(self.height, self.width) < 16:
      raise ValueError(
          f"VideoParams: height={self.height}, width={self.width}; both must be >= 16.")
    if self.num_frames < 4:
      raise ValueError(f"VideoParams: num_frames={self.num_frames} must be >= 4.")
    if not 2 <= self.max_objects <= 254:
      raise ValueError(f"VideoParams: max_objects={self.max_objects} must be in [2, 254].")
    if self.motion_period != 0 and not 4 <= self.motion_period <= self.num_frames:
      raise ValueError(f"VideoParams: motion_period={self.motion_period} must be 0 or in "
                       f"[4, num_frames={self.num_frames}].")
    if not 0.0 <= self.appearance_drift < 1.0:
      raise ValueError(
          f"VideoParams: appearance_drift={self.appearance_drift} must be in [0, 1).")

  @property
  def sprite_size(self) -> int:
    """Side of the square sprites; objects are 0.5-1x this size on screen."""
    return min(self.height, self.width) // 2

  @property
  def min_first_area(self) -> int:
    """Fewest visible pixels an object may have in the frame where it first appears."""
    return max(8, int(0.015 * self.height * self.width))


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
  """A generated video with exact ground truth.

  Attributes:
    frames: [T, H, W, 3] uint8 RGB.
    segmentation: [T, H, W] uint8, object j + 1 where it is visible, 0 background.
    amodal_masks: [N, T, H, W] bool, each object's full in-frame mask ignoring occlusion.
    first_frame: [N] int32, first frame where each object has a visible pixel.
    late_object: index (0-based) of the object born after frame 0, or -1.
    exiting_object: index (0-based) of the object that leaves the frame and returns, or -1.
  """
  frames: np.ndarray
  segmentation: np.ndarray
  amodal_masks: np.ndarray
  first_frame: np.ndarray
  late_object: int
  exiting_object: int


@dataclasses.dataclass(frozen=True)
class _Layout:
  sprites: list[np.ndarray]
  placements: list[rendering.Placement]
  late_object: int
  exiting_object: int


def video_scenario(index: int) -> tuple[bool, bool]:
  """(late_entry, exit_and_return) for the `index`-th video of a split: a cycle of four.

  Index 0 mod 4: neither; 1: an object is born after frame 0; 2: an object leaves the frame and
  comes back; 3: both.
  """
  return index % 4 in (1, 3), index % 4 in (2, 3)


def _sample_layout(rng: np.random.Generator, params: VideoParams, late_entry: bool,
                   exit_and_return: bool) -> _Layout:
  """Draws the objects' shapes, sizes, tracks and birth frames."""
  frame_shape = (params.height, params.width)
  num_objects = int(rng.integers(2 if late_entry else 1, params.max_objects + 1))
  roles = rng.permutation(num_objects)
  late_object = int(roles[0]) if late_entry else -1
  exiting_object = int(roles[-1]) if exit_and_return else -1
  sprites, placements = [], []
  for index in range(num_objects):
    sprite = shapes.random_shape(rng, params.sprite_size, params.use_photos)
    diameter = rng.uniform(0.25, 0.5) * min(frame_shape)
    base_scale = diameter / params.sprite_size
    if index == exiting_object:
      track = motion.excursion_track(rng, params.num_frames, frame_shape, base_scale,
                                     params.sprite_size, params.motion_period)
    else:
      track = motion.wandering_track(rng, params.num_frames, frame_shape, base_scale,
                                     params.motion_period)
    birth = int(rng.integers(1, params.num_frames // 2 + 1)) if index == late_object else 0
    sprites.append(sprite)
    placements.append(rendering.place_sprite(sprite, track, frame_shape, birth))
  return _Layout(sprites, placements, late_object, exiting_object)


def first_visible_frames(visible: np.ndarray) -> np.ndarray:
  """[N] int32: each object's first frame with a pixel in `visible` [N, T, H, W] (-1: none)."""
  present = visible.any(axis=(2, 3))
  return np.where(present.any(axis=1), present.argmax(axis=1), -1).astype(np.int32)


def leaves_and_returns(amodal: np.ndarray) -> bool:
  """Whether an object with amodal masks [T, H, W] is in frame, then wholly out, then back."""
  in_frame = np.flatnonzero(amodal.any(axis=(1, 2)))
  return in_frame.size > 0 and in_frame[-1] - in_frame[0] + 1 > in_frame.size


def _acceptable(layout: _Layout, params: VideoParams) -> bool:
  """Every object first appears big enough, on frame 0 unless born late; the exit happens."""
  amodal = np.stack([placement.mask for placement in layout.placements])
  visible = rendering.visible_masks(amodal)
  first = first_visible_frames(visible)
  if (first < 0).any():
    return False
  for index, frame in enumerate(first):
    if (frame == 0) == (index == layout.late_object):
      return False
    if visible[index, frame].sum() < params.min_first_area:
      return False
  if layout.exiting_object >= 0:
    return leaves_and_returns(amodal[layout.exiting_object])
  return True


def drift_gains(rng: np.random.Generator, num_frames: int, num_objects: int,
                drift: float) -> np.ndarray:
  """[N, T, 3] float32 colour gains: per object and channel 1 + drift sin(phase + 2 pi t / T),
  one slow period over the video from a random phase."""
  phases = rng.uniform(0.0, 2.0 * np.pi, (num_objects, 1, 3))
  time = np.arange(num_frames, dtype=np.float64)[None, :, None] / num_frames
  return (1.0 + drift * np.sin(phases + 2.0 * np.pi * time)).astype(np.float32)


def apply_gains(frames: np.ndarray, segmentation: np.ndarray, gains: np.ndarray) -> np.ndarray:
  """`frames` [T, H, W, 3] uint8 with object j's pixels (segmentation [T, H, W] == j + 1)
  multiplied by gains [N, T, 3] of its frame, rounded and clipped to uint8; background kept."""
  num_frames = frames.shape[0]
  table = np.concatenate([np.ones((1, num_frames, 3), np.float32), gains])  # [1 + N, T, 3]
  per_pixel = table[segmentation, np.arange(num_frames)[:, None, None]]  # [T, H, W, 3]
  return np.clip(np.round(frames * per_pixel), 0, 255).astype(np.uint8)


def generate_video(params: VideoParams, seed: Sequence[int], late_entry: bool = False,
                   exit_and_return: bool = False) -> SyntheticVideo:
  """Generates one video; the same `params`, `seed` and flags give byte-identical output.

  Args:
    params: shared video settings.
    seed: entropy for `np.random.default_rng` (e.g. (config_seed, split_id, index)).
    late_entry: one object (not the only one) is born after frame 0.
    exit_and_return: one object leaves the frame across a border and comes back.
  Raises:
    RuntimeError: no acceptable layout within `MAX_ATTEMPTS` draws.
  """
  rng = np.random.default_rng(list(seed))
  for _ in range(MAX_ATTEMPTS):
    layout = _sample_layout(rng, params, late_entry, exit_and_return)
    if _acceptable(layout, params):
      break
  else:
    raise RuntimeError(f"generate_video: no acceptable layout for seed={tuple(seed)}, {params} "
                       f"within {MAX_ATTEMPTS} attempts.")
  num_objects = len(layout.sprites)
  hues = rng.random() + (np.arange(num_objects) + rng.uniform(-0.2, 0.2, num_objects)) / num_objects
  hues = hues[rng.permutation(num_objects)]
  object_textures = [textures.object_texture(rng, params.sprite_size, hue, params.use_photos)
                     for hue in hues]
  margin = (max(2, round(0.08 * params.height)), max(2, round(0.08 * params.width)))
  canvas = textures.background_canvas(
      rng, (params.height + 2 * margin[0] + 1, params.width + 2 * margin[1] + 1), params.use_photos)
  offsets = motion.camera_path(rng, params.num_frames, margin, params.motion_period)
  background = rendering.view_canvas(canvas, offsets, (params.height, params.width))
  frames, segmentation = rendering.paint(background, layout.placements, object_textures)
  if params.appearance_drift:
    gains = drift_gains(rng, params.num_frames, num_objects, params.appearance_drift)
    frames = apply_gains(frames, segmentation, gains)
  amodal = np.stack([placement.mask for placement in layout.placements])
  return SyntheticVideo(
      frames=frames,
      segmentation=segmentation,
      amodal_masks=amodal,
      first_frame=first_visible_frames(rendering.visible_masks(amodal)),
      late_object=layout.late_object,
      exiting_object=layout.exiting_object,
  )
