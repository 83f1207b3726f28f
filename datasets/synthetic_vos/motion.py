"""Smooth random motion: object poses over time and the camera's path over the background.

Positions are (row, col) in frame pixels. Every trajectory is a sum of sinusoids of the frame
index, so velocities change smoothly. The phase advanced over `period` frames is fixed; by
default (`period=0`) the period is the whole video, so shorter videos move faster per frame,
while a long video with a short period repeats its motion pattern (objects wander back and
forth, an excursion leaves and re-enters the frame once per period).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Track:
  """The affine pose of one object in every frame.

  Attributes:
    centre: [T, 2] float (row, col) of the sprite centre, in frame pixels.
    angle: [T] float rotation in radians (counter-clockwise on screen).
    scale: [T] float frame pixels per sprite pixel.
  """
  centre: np.ndarray
  angle: np.ndarray
  scale: np.ndarray


def _phase(num_frames: int, period: int = 0) -> np.ndarray:
  """Normalised time [T]: frame index / (period - 1), period = num_frames when 0 (then
  [0, 1]; with a shorter period the time runs past 1)."""
  if num_frames < 2:
    raise ValueError(f"num_frames={num_frames}: a video needs at least 2 frames.")
  period = period or num_frames
  if period < 2:
    raise ValueError(f"period={period}: a motion period needs at least 2 frames.")
  return np.arange(num_frames, dtype=np.float64) / (period - 1)


def oscillation(rng: np.random.Generator, num_frames: int, low: float, high: float,
                amplitude: tuple[float, float], period: int = 0) -> np.ndarray:
  """x(t) = mid + A sin(phase0 + span t) staying in [low, high], [T].

  A is drawn from `amplitude` (capped at half the range) and span from [0.5 pi, 1.5 pi].
  """
  time = _phase(num_frames, period)
  amp = min(rng.uniform(*amplitude), (high - low) / 2.0)
  mid = rng.uniform(low + amp, high - amp)
  span = rng.uniform(0.5 * np.pi, 1.5 * np.pi)
  return mid + amp * np.sin(rng.uniform(0.0, 2.0 * np.pi) + span * time)


def _rotation_and_scale(rng: np.random.Generator, num_frames: int, base_scale: float,
                        period: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A steady spin of 0.3-1.2 rad per period either way, and a +-15% breathing scale."""
  time = _phase(num_frames, period)
  spin = rng.uniform(0.3, 1.2) * rng.choice((-1.0, 1.0))
  angle = rng.uniform(0.0, 2.0 * np.pi) + spin * time
  breathing = rng.uniform(0.05, 0.15) * np.sin(
      rng.uniform(0.0, 2.0 * np.pi) + rng.uniform(0.5 * np.pi, 1.5 * np.pi) * time)
  return angle, base_scale * (1.0 + breathing)


def wandering_track(rng: np.random.Generator, num_frames: int, frame_shape: tuple[int, int],
                    base_scale: float, period: int = 0) -> Track:
  """A Lissajous-like path with the centre inside the middle 80% of the frame."""
  axes = []
  for extent in frame_shape:
    axes.append(oscillation(rng, num_frames, 0.1 * extent, 0.9 * extent,
                            (0.1 * extent, 0.35 * extent), period))
  angle, scale = _rotation_and_scale(rng, num_frames, base_scale, period)
  return Track(np.stack(axes, axis=-1), angle, scale)


def excursion_track(rng: np.random.Generator, num_frames: int, frame_shape: tuple[int, int],
                    base_scale: float, sprite_size: int, period: int = 0) -> Track:
  """A path that leaves the frame across one border around mid-period and comes back (once
  per period: a video of several periods leaves and re-enters several times).

  Along the chosen axis x(t) = (inside + outside)/2 + (outside - inside)/2 cos(span (t - t_out)),
  where at `outside` the whole sprite (radius S/2 at the largest scale) is past the border.
  """
  time = _phase(num_frames, period)
  angle, scale = _rotation_and_scale(rng, num_frames, base_scale, period)
  axis = int(rng.integers(2))
  extent = frame_shape[axis]
  radius = 0.5 * sprite_size * float(scale.max())
  gap = 0.15 * radius + 1.0
  inside = rng.uniform(0.3, 0.6) * extent
  outside = extent + radius + gap
  if rng.random() < 0.5:
    inside, outside = extent - inside, -radius - gap
  time_out = rng.uniform(0.4, 0.6)
  span = rng.uniform(1.8 * np.pi, 2.2 * np.pi)
  along = (0.5 * (inside + outside)
           + 0.5 * (outside - inside) * np.cos(span * (time - time_out)))
  other_extent = frame_shape[1 - axis]
  across = oscillation(rng, num_frames, 0.2 * other_extent, 0.8 * other_extent,
                       (0.05 * other_extent, 0.2 * other_extent), period)
  centre = np.stack([along, across] if axis == 0 else [across, along], axis=-1)
  return Track(centre, angle, scale)


def camera_path(rng: np.random.Generator, num_frames: int, margin: tuple[int, int],
                period: int = 0) -> np.ndarray:
  """Offsets [T, 2] (row, col) of the frame's top-left corner in a canvas padded by `margin`.

  Each offset stays in [0, 2 * margin] and drifts slowly (a fraction of a sine period per
  motion period).
  """
  time = _phase(num_frames, period)
  offsets = []
  for pad in margin:
    span = rng.uniform(0.3 * np.pi, 0.8 * np.pi)
    offsets.append(pad + 0.9 * pad * np.sin(rng.uniform(0.0, 2.0 * np.pi) + span * time))
  return np.stack(offsets, axis=-1)
