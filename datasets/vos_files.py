"""Reading the files of a video object segmentation dataset, with errors that name the frame.

Shared by the DAVIS and YouTube-VOS builders: both store a video as a folder of JPEG frames and a
folder of palette-indexed PNG annotations named by the same frame stems ("00000.jpg" and
"00000.png"). Every reader raises ValueError/FileNotFoundError naming the video, the frame and
the file at fault.
"""
import io
from typing import Optional, Sequence

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# Everything PIL raises on a truncated, corrupt or unrecognised image file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def where(video: str, frame: str, path: epath.Path) -> str:
  """The prefix of every error about one frame: `video 'bear' frame '00003' (/path/00003.png)`."""
  return f"video {video!r} frame {frame!r} ({path})"


def list_frames(directory: epath.Path, suffix: str, video: str) -> list[str]:
  """The sorted stems of the `suffix` files in `directory` (["00000", "00001", ...]).

  Raises FileNotFoundError naming the video when the folder does not exist.
  """
  if not directory.is_dir():
    raise FileNotFoundError(f"video {video!r}: folder {directory} does not exist")
  return sorted(path.stem for path in directory.iterdir() if path.suffix == suffix)


def _decode(data: bytes, path: epath.Path, video: str, frame: str,
            image_format: str) -> Image.Image:
  """Fully decodes `data` read from `path` (so corrupt data fails here), checks its format."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except _DECODE_ERRORS as error:
    raise ValueError(
        f"{where(video, frame, path)}: cannot decode the image: {error}") from error
  if image.format != image_format:
    raise ValueError(
        f"{where(video, frame, path)}: expected a {image_format} file, found {image.format}")
  return image


def read_jpeg(path: epath.Path, video: str, frame: str) -> tuple[bytes, tuple[int, int]]:
  """The file's own JPEG bytes (stored without re-encoding) and its (height, width).

  The frame is decoded once here so that corrupt files fail with the frame's name; greyscale and
  CMYK JPEGs are kept as they are (the frames feature decodes them to RGB).
  """
  data = path.read_bytes()
  width, height = _decode(data, path, video, frame, "JPEG").size
  return data, (height, width)


def read_frames(jpeg_dir: epath.Path, frame_names: Sequence[str],
                video: str) -> tuple[list[bytes], tuple[int, int]]:
  """The JPEG bytes of `frame_names` in `jpeg_dir` and their common (height, width).

  Raises ValueError naming the video, frame and file when there are no frames, or when a frame
  is corrupt or differs in size from the first one.
  """
  if not frame_names:
    raise ValueError(f"video {video!r}: no .jpg frames in {jpeg_dir}")
  frames, size = [], None
  for name in frame_names:
    path = jpeg_dir / f"{name}.jpg"
    data, frame_size = read_jpeg(path, video, name)
    if size is None:
      size = frame_size
    check_size(size, frame_size, video, name, path, f"the video's first frame {frame_names[0]!r}")
    frames.append(data)
  return frames, size


def read_palette_png(path: epath.Path, video: str, frame: str) -> np.ndarray:
  """The [H, W] uint8 pixel values (object ids) of a palette-indexed ('P' mode) PNG annotation."""
  image = _decode(path.read_bytes(), path, video, frame, "PNG")
  if image.mode != "P":
    raise ValueError(
        f"{where(video, frame, path)}: annotation PNG is in mode {image.mode!r}; expected a "
        "palette-indexed ('P' mode) PNG whose pixel values are object ids")
  return np.array(image, dtype=np.uint8)


def check_size(expected: tuple[int, int], found: tuple[int, int], video: str, frame: str,
               path: epath.Path, reference: str) -> None:
  """Raises ValueError unless `found` (height, width) equals `expected`, which is `reference`'s."""
  if tuple(found) != tuple(expected):
    raise ValueError(
        f"{where(video, frame, path)}: size (height, width) {tuple(found)} differs from "
        f"{tuple(expected)} of {reference}")


def encode_labels(labels: np.ndarray) -> bytes:
  """[H, W] uint8 labels as a greyscale PNG (what the segmentation feature decodes, lossless)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(labels, dtype=np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def first_appearances(label_maps: Sequence[Optional[np.ndarray]],
                      ignore_label: int) -> dict[int, int]:
  """Maps each object id (not 0, not `ignore_label`) to the first index of `label_maps` showing it.

  `label_maps` holds one [H, W] array per frame, None for frames without an annotation.
  """
  first = {}
  for index, labels in enumerate(label_maps):
    if labels is None:
      continue
    for object_id in np.unique(labels).tolist():
      if object_id not in (0, ignore_label) and object_id not in first:
        first[object_id] = index
  return first


def manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path:
  """`dl_manager.manual_dir`, raising FileNotFoundError (path + instructions) when absent/empty."""
  try:
    return dl_manager.manual_dir
  except AssertionError as error:  # TFDS reports a missing or empty manual dir this way.
    raise FileNotFoundError(str(error)) from error


def check_annotations_have_frames(frame_names: Sequence[str], annotated: Sequence[str],
                                  video: str, jpeg_dir: epath.Path, png_dir: epath.Path) -> None:
  """Raises ValueError naming the first annotation PNG whose JPEG frame does not exist."""
  orphans = sorted(set(annotated) - set(frame_names))
  if orphans:
    raise ValueError(
        f"{where(video, orphans[0], png_dir / (orphans[0] + '.png'))}: annotation has no frame "
        f"{jpeg_dir / (orphans[0] + '.jpg')} ({len(frame_names)} frames, {len(annotated)} "
        f"annotations, {len(orphans)} without a frame)")
