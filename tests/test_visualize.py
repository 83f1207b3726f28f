"""Tests for feelvos_jax.tools.visualize: overlay numerics, strip layout, GIF/PNG files and the
CLI."""
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from datasets import palette as palette_lib
from feelvos_jax.tools import visualize


def _reference_overlay(frame, labels, palette, alpha):
  """Per-pixel loops from the definition: blend non-background ids, contour pixels opaque."""
  height, width = labels.shape
  out = frame.astype(np.float64).copy()
  for y in range(height):
    for x in range(width):
      label = labels[y, x]
      if label in (0, 255):
        continue
      neighbours = [labels[y + dy, x + dx] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                    if 0 <= y + dy < height and 0 <= x + dx < width]
      if any(n != label for n in neighbours):
        out[y, x] = palette[label]
      else:
        out[y, x] = (1 - alpha) * frame[y, x] + alpha * palette[label].astype(np.float64)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_overlay_matches_per_pixel_reference():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  labels = rng.choice([0, 1, 2, 3, 255], size=(9, 11), p=[0.4, 0.2, 0.2, 0.1, 0.1])
  labels[2:7, 3:9] = 2  # An interior region, so blended (non-contour) pixels exist.
  palette = palette_lib.davis_palette()
  got = visualize.overlay(frame, labels, palette, alpha=0.3)
  np.testing.assert_array_equal(got, _reference_overlay(frame, labels, palette, 0.3))
  assert np.array_equal(got[labels == 0], frame[labels == 0])


def test_overlay_rejects_bad_input():
  frame = np.zeros((4, 5, 3), np.uint8)
  with pytest.raises(ValueError, match="labels must be"):
    visualize.overlay(frame, np.zeros((5, 4), np.int32))
  with pytest.raises(ValueError, match="alpha"):
    visualize.overlay(frame, np.zeros((4, 5), np.int32), alpha=1.5)
  with pytest.raises(ValueError, match="palette"):
    visualize.overlay(frame, np.full((4, 5), 300, np.int32))


def test_make_strip_layout():
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, (7, 6, 5))
  strip = visualize.make_strip(frames, labels, num=3, gap=2)
  assert strip.shape == (6, 3 * 5 + 2 * 2, 3)
  # Evenly spaced: frames 0, 3 and 6.
  for tile, index in enumerate((0, 3, 6)):
    np.testing.assert_array_equal(strip[:, tile * 7:tile * 7 + 5],
                                  visualize.overlay(frames[index], labels[index]))
  assert (strip[:, 5:7] == 255).all()
  assert visualize.make_strip(frames[:2], labels[:2], num=5, gap=2).shape == (6, 12, 3)


def _write_fake_davis(root, video, labels, frames):
  (root / "predictions" / video).mkdir(parents=True)
  (root / "frames" / video).mkdir(parents=True)
  for index, (label, frame) in enumerate(zip(labels, frames)):
    name = f"{index:05d}"
    palette_lib.palette_image(label.astype(np.uint8)).save(
        root / "predictions" / video / f"{name}.png")
    Image.fromarray(frame).save(root / "frames" / video / f"{name}.jpg", quality=95)


def test_visualize_video_writes_gif_and_strip(tmp_path):
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, (6, 12, 16))
  frames = rng.integers(0, 256, (6, 12, 16, 3), dtype=np.uint8)
  _write_fake_davis(tmp_path, "cows", labels, frames)
  gif_path, strip_path = visualize.visualize_video(
      tmp_path / "predictions", "cows", tmp_path / "frames", tmp_path / "out", num_frames=4)
  with Image.open(gif_path) as gif:
    assert gif.format == "GIF" and gif.size == (16, 12) and gif.n_frames == 6
  with Image.open(strip_path) as strip:
    assert strip.size == (4 * 16 + 3 * 4, 12)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "cows_overlay.gif", "cows_strip.png"]


def test_cli_without_frames_and_missing_video(tmp_path):
  labels = np.zeros((3, 8, 8), np.int32)
  labels[:, 2:5, 2:5] = 1
  _write_fake_davis(tmp_path, "bear", labels, np.zeros((3, 8, 8, 3), np.uint8))
  command = [sys.executable, "-m", "feelvos_jax.tools.visualize",
             f"--predictions={tmp_path / 'predictions'}", "--video=bear", "--num_frames=2"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  with Image.open(tmp_path / "predictions" / "bear_strip.png") as strip:
    assert strip.size == (2 * 8 + 4, 8)
    pixels = np.asarray(strip.convert("RGB"))
  assert (pixels[0, 0] == 128).all()  # Grey where there is no frame and no object.
  assert tuple(pixels[3, 3]) == tuple(np.round(0.5 * 128 + 0.5 * np.array([128, 0, 0])))
  with pytest.raises(FileNotFoundError, match="'deer'"):
    visualize.visualize_video(tmp_path / "predictions", "deer")
