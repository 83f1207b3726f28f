r"""Overlays of predicted masks on video frames: an animated GIF and a PNG strip per video.

  python -m feelvos_jax.tools.visualize --predictions=DIR --video=NAME \
      [--frames_root=DIR] [--output=DIR] [--num_frames=5] [--alpha=0.5] [--fps=10]

`--predictions` is a DAVIS-format folder (`<video>/<frame>.png`, palette-indexed object ids), as
`main.py --mode=evaluate` writes it. `--frames_root` holds the RGB frames as `<video>/<frame>.jpg`
(DAVIS `JPEGImages/480p`, YouTube-VOS `JPEGImages`); without it the masks are drawn on grey.
Writes `<output>/<video>_overlay.gif` and `<output>/<video>_strip.png` (output defaults to the
predictions folder). `overlay` and `make_strip` are the library functions behind them, for
notebooks.
"""
from typing import Optional, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np
from PIL import Image

from datasets import palette as palette_lib
from feelvos_jax import IGNORE_LABEL

_GREY = 128  # Background value when no RGB frames are given.


def _boundaries(labels: np.ndarray) -> np.ndarray:
  """[H, W] bool: pixels whose right or lower neighbour has another label, or vice versa."""
  edges = np.zeros(labels.shape, dtype=bool)
  vertical = labels[1:, :] != labels[:-1, :]
  horizontal = labels[:, 1:] != labels[:, :-1]
  edges[1:, :] |= vertical
  edges[:-1, :] |= vertical
  edges[:, 1:] |= horizontal
  edges[:, :-1] |= horizontal
  return edges


def overlay(frame: np.ndarray, labels: np.ndarray, palette: Optional[np.ndarray] = None,
            alpha: float = 0.5, contours: bool = True) -> np.ndarray:
  """Blends object colours into a frame and draws each object's contour in full colour.

  Args:
    frame: [H, W, 3] uint8 RGB.
    labels: [H, W] integer object ids; 0 (background) and IGNORE_LABEL are left uncoloured.
    palette: [P, 3] uint8 colour of each id (default: the DAVIS palette).
    alpha: opacity of the mask colour, in [0, 1].
    contours: whether to draw the boundary pixels of each object opaque.

  Returns:
    [H, W, 3] uint8.
  """
  frame = np.asarray(frame)
  labels = np.asarray(labels)
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"frame must be [H, W, 3], got shape {frame.shape}")
  if labels.shape != frame.shape[:2]:
    raise ValueError(f"labels must be [H, W] = {frame.shape[:2]}, got shape {labels.shape}")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
  palette = palette_lib.davis_palette() if palette is None else np.asarray(palette)
  if labels.size and (labels.min() < 0 or labels.max() >= len(palette)):
    raise ValueError(
        f"labels must lie in [0, {len(palette)}) to index the palette, got "
        f"[{labels.min()}, {labels.max()}]")
  # Only object pixels are blended (float32, as a whole-frame blend would): drawing a video's
  # frames one by one stays cheap where the objects are small.
  colours = np.asarray(palette).astype(np.float32)
  objects = (labels != 0) & (labels != IGNORE_LABEL)
  drawn = np.clip(np.round(frame), 0, 255).astype(np.uint8)
  blended = ((1.0 - alpha) * frame[objects].astype(np.float32)
             + alpha * colours[labels[objects]])
  drawn[objects] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  if contours:
    edges = _boundaries(labels) & objects
    drawn[edges] = np.clip(np.round(colours[labels[edges]]), 0, 255).astype(np.uint8)
  return drawn


def strip_indices(num_frames: int, num: int) -> np.ndarray:
  """`num` evenly spaced frame indices from 0 to num_frames - 1 (fewer if the video is shorter)."""
  if num_frames < 1 or num < 1:
    raise ValueError(f"need num_frames >= 1 and num >= 1, got {num_frames} and {num}")
  return np.unique(np.round(np.linspace(0, num_frames - 1, min(num, num_frames))).astype(int))


def make_strip(frames: np.ndarray, labels: np.ndarray, num: int = 5,
               palette: Optional[np.ndarray] = None, alpha: float = 0.5,
               gap: int = 4) -> np.ndarray:
  """`num` evenly spaced overlaid frames side by side, separated by `gap` white columns.

  Args:
    frames: [T, H, W, 3] uint8.
    labels: [T, H, W] integer object ids.
    num: frames in the strip (all of them if the video is shorter).
    palette: [P, 3] uint8 colours (default: the DAVIS palette).
    alpha: mask opacity.
    gap: width in pixels of the white separator.

  Returns:
    [H, n * W + (n - 1) * gap, 3] uint8 with n = min(num, T).
  """
  frames = np.asarray(frames)
  labels = np.asarray(labels)
  if frames.ndim != 4 or labels.shape != frames.shape[:3]:
    raise ValueError(
        f"frames must be [T, H, W, 3] and labels [T, H, W]; got {frames.shape} and "
        f"{labels.shape}")
  height = frames.shape[1]
  separator = np.full((height, gap, 3), 255, dtype=np.uint8)
  tiles = []
  for index in strip_indices(len(frames), num):
    if tiles:
      tiles.append(separator)
    tiles.append(overlay(frames[index], labels[index], palette, alpha))
  return np.concatenate(tiles, axis=1)


def write_gif(path: epath.PathLike, frames: np.ndarray, labels: np.ndarray, fps: float = 10.0,
              palette: Optional[np.ndarray] = None, alpha: float = 0.5) -> None:
  """Writes an animated GIF of every overlaid frame ([T, H, W, 3] and [T, H, W]), looping."""
  frames = np.asarray(frames)
  labels = np.asarray(labels)
  if frames.ndim != 4 or labels.shape != frames.shape[:3] or not len(frames):
    raise ValueError(
        f"frames must be [T, H, W, 3] and labels [T, H, W] with T >= 1; got {frames.shape} "
        f"and {labels.shape}")
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  images = [Image.fromarray(overlay(frame, label, palette, alpha))
            for frame, label in zip(frames, labels)]
  path = epath.Path(path)
  temporary = path.with_name(path.name + ".tmp")
  images[0].save(temporary, format="GIF", save_all=True, append_images=images[1:],
                 duration=max(1, round(1000 / fps)), loop=0)
  temporary.rename(path)


def _read_png_labels(path: epath.Path) -> np.ndarray:
  """The pixel values (object ids) of a palette-indexed or greyscale PNG as [H, W] int32."""
  with Image.open(path) as image:
    if image.mode not in ("P", "L"):
      raise ValueError(f"{path}: expected a palette-indexed ('P') or 'L' PNG, got {image.mode}")
    return np.asarray(image, dtype=np.int32)


def load_video(predictions: epath.PathLike, video: str,
               frames_root: Optional[epath.PathLike] = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads one video's predicted masks and (if `frames_root` is given) its RGB frames.

  Returns:
    frames [T, H, W, 3] uint8 (grey when `frames_root` is None), labels [T, H, W] int32 and
    the frame names. Raises FileNotFoundError/ValueError naming the folder or frame at fault.
  """
  folder = epath.Path(predictions) / video
  if not folder.is_dir():
    raise FileNotFoundError(f"video {video!r}: no predictions folder {folder}")
  names = sorted(path.stem for path in folder.glob("*.png"))
  if not names:
    raise FileNotFoundError(f"video {video!r}: no PNG masks in {folder}")
  labels = [_read_png_labels(folder / f"{name}.png") for name in names]
  if len({label.shape for label in labels}) != 1:
    raise ValueError(f"video {video!r}: masks in {folder} differ in size: "
                     f"{sorted({label.shape for label in labels})}")
  labels = np.stack(labels)
  if frames_root is None:
    frames = np.full(labels.shape + (3,), _GREY, dtype=np.uint8)
    return frames, labels, names
  frames = []
  for name, label in zip(names, labels):
    path = epath.Path(frames_root) / video / f"{name}.jpg"
    if not path.exists():
      raise FileNotFoundError(f"video {video!r} frame {name!r}: no frame file {path}")
    with Image.open(path) as image:
      frame = np.asarray(image.convert("RGB"))
    if frame.shape[:2] != label.shape:
      raise ValueError(f"video {video!r} frame {name!r}: frame {path} is {frame.shape[:2]} "
                       f"but its mask is {label.shape}")
    frames.append(frame)
  return np.stack(frames), labels, names


def visualize_video(predictions: epath.PathLike, video: str,
                    frames_root: Optional[epath.PathLike] = None,
                    output: Optional[epath.PathLike] = None, num_frames: int = 5,
                    alpha: float = 0.5, fps: float = 10.0) -> tuple[epath.Path, epath.Path]:
  """Writes `<output>/<video>_overlay.gif` and `<output>/<video>_strip.png`; returns both paths."""
  frames, labels, _ = load_video(predictions, video, frames_root)
  output = epath.Path(predictions if output is None else output)
  output.mkdir(parents=True, exist_ok=True)
  gif_path = output / f"{video}_overlay.gif"
  strip_path = output / f"{video}_strip.png"
  write_gif(gif_path, frames, labels, fps=fps, alpha=alpha)
  temporary = strip_path.with_name(strip_path.name + ".tmp")
  Image.fromarray(make_strip(frames, labels, num=num_frames, alpha=alpha)).save(
      temporary, format="PNG")
  temporary.rename(strip_path)
  return gif_path, strip_path


_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "DAVIS-format predictions folder (<video>/<frame>.png).")
_VIDEO = flags.DEFINE_string("video", None, "Video (sub-folder of --predictions) to draw.")
_FRAMES_ROOT = flags.DEFINE_string(
    "frames_root", None, "Folder of RGB frames as <video>/<frame>.jpg; masks on grey if unset.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: --predictions).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 5, "Frames in the PNG strip.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Mask opacity in [0, 1].")
_FPS = flags.DEFINE_float("fps", 10.0, "Frames per second of the GIF.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  gif_path, strip_path = visualize_video(
      _PREDICTIONS.value, _VIDEO.value, _FRAMES_ROOT.value, _OUTPUT.value,
      num_frames=_NUM_FRAMES.value, alpha=_ALPHA.value, fps=_FPS.value)
  print(f"wrote {gif_path}\nwrote {strip_path}")


def cli() -> None:
  """The `feelvos-visualize` console command (pyproject.toml): this module as a program."""
  flags.mark_flags_as_required(["predictions", "video"])
  app.run(main)


if __name__ == "__main__":
  cli()
