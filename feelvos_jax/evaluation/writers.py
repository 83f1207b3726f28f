"""Submission writers: palette PNGs in the DAVIS and YouTube-VOS layouts, the YouTube-VOS zip.

Every file is written atomically (`atomic_write`): the bytes go to a temporary file in the
destination folder, are flushed and fsynced, and only then replace the destination with
`os.replace`, so a crash never leaves a truncated file and an existing file is replaced only by
a complete one.
"""
import os
import tempfile
from typing import BinaryIO, Callable, Optional, Sequence
import zipfile

import numpy as np
from PIL import Image

YOUTUBE_VOS_ANNOTATIONS = "Annotations"
"""Top-level folder of a YouTube-VOS submission (and of the zip the server accepts)."""


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Writes a file so that `path` holds either its old content or the complete new one.

  Args:
    path: destination file; its folder must exist.
    write: called with a binary file object to fill.
  """
  folder = os.path.dirname(os.path.abspath(path))
  handle, temp_path = tempfile.mkstemp(
      dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as temp_file:
      write(temp_file)
      temp_file.flush()
      os.fsync(temp_file.fileno())
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise
  folder_handle = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(folder_handle)
  finally:
    os.close(folder_handle)


def _default_palette() -> np.ndarray:
  from datasets import palette  # pylint: disable=g-import-not-at-top
  return palette.davis_palette()


def _check_palette(palette: Optional[np.ndarray]) -> np.ndarray:
  palette = _default_palette() if palette is None else np.asarray(palette)
  if palette.shape != (256, 3) or palette.min() < 0 or palette.max() > 255:
    raise ValueError(f"palette must be [256, 3] values in 0..255, got shape {palette.shape}.")
  return palette.astype(np.uint8)


def _check_frame_name(video: str, name: str) -> None:
  if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or (
      os.sep in name) or "\0" in name:
    raise ValueError(f"Video {video!r}: frame name {name!r} is not a plain file stem.")


def _check_labels(video: str, frame_names: Sequence[str], labels: np.ndarray) -> np.ndarray:
  """Returns labels as [T, H, W] uint8 after checking them against the frame names."""
  if not isinstance(video, str) or not video or video in (".", "..") or "/" in video or (
      os.sep in video):
    raise ValueError(f"Video name {video!r} is not a plain folder name.")
  labels = np.asarray(labels)
  if labels.ndim == 2:
    labels = labels[None]
  if labels.ndim != 3:
    raise ValueError(f"Video {video!r}: labels must be [H, W] or [T, H, W], got shape "
                     f"{labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"Video {video!r}: labels must be integer object ids, got dtype "
                     f"{labels.dtype}.")
  if isinstance(frame_names, str) or len(frame_names) != len(labels):
    count = "a string" if isinstance(frame_names, str) else f"{len(frame_names)} names"
    raise ValueError(f"Video {video!r}: frame_names must list one name per frame; got {count} "
                     f"for {len(labels)} frames.")
  for name in frame_names:
    _check_frame_name(video, name)
  if len(set(frame_names)) != len(frame_names):
    raise ValueError(f"Video {video!r}: frame_names has duplicates.")
  for t, frame in enumerate(labels):
    low, high = int(frame.min()), int(frame.max())
    if low < 0 or high > 255:
      raise ValueError(f"Video {video!r}, frame {frame_names[t]!r}: labels must be in 0..255, "
                       f"got values in {low}..{high}.")
  return labels.astype(np.uint8)


def _write_palette_png(path: str, frame: np.ndarray, palette: np.ndarray) -> None:
  image = Image.fromarray(frame)
  image.putpalette(palette.reshape(-1).tolist())
  atomic_write(path, lambda file: image.save(file, format="PNG"))


def _write_video(folder: str, video: str, frame_names: Sequence[str], labels: np.ndarray,
                 palette: Optional[np.ndarray]) -> list[str]:
  labels = _check_labels(video, frame_names, labels)
  palette = _check_palette(palette)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for name, frame in zip(frame_names, labels):
    path = os.path.join(folder, f"{name}.png")
    _write_palette_png(path, frame, palette)
    paths.append(path)
  return paths


def write_davis_predictions(out_dir: str, sequence: str, frame_names: Sequence[str],
                            labels: np.ndarray,
                            palette: Optional[np.ndarray] = None) -> list[str]:
  """Writes one DAVIS sequence as `<out_dir>/<sequence>/<frame>.png` palette PNGs.

  Args:
    out_dir: predictions folder (what `feelvos_jax.evaluate --predictions` reads).
    sequence: sequence name.
    frame_names: [T] frame file stems, e.g. "00000".
    labels: [T, H, W] (or [H, W] for one frame) integer dataset object ids in 0..255, the ids
      of the first-frame annotation.
    palette: [256, 3] uint8 colours; None uses the DAVIS palette (`datasets.palette`).

  Returns:
    The written paths, in frame order.
  """
  return _write_video(os.path.join(out_dir, sequence), sequence, frame_names, labels, palette)


def write_youtube_vos_predictions(out_dir: str, video: str, frame_names: Sequence[str],
                                  labels: np.ndarray,
                                  palette: Optional[np.ndarray] = None) -> list[str]:
  """Writes one YouTube-VOS video as `<out_dir>/Annotations/<video>/<frame>.png`.

  The server expects a PNG for every frame that the split's meta.json lists for the video;
  pass exactly those names. Ids are the original YouTube-VOS object ids.

  Args:
    out_dir: submission folder (`zip_youtube_vos_submission` zips it).
    video: video id.
    frame_names: [T] frame file stems as listed in meta.json, e.g. "00005".
    labels: [T, H, W] (or [H, W]) integer object ids in 0..255.
    palette: [256, 3] uint8 colours; None uses the DAVIS palette, which YouTube-VOS shares.

  Returns:
    The written paths, in frame order.
  """
  folder = os.path.join(out_dir, YOUTUBE_VOS_ANNOTATIONS, video)
  return _write_video(folder, video, frame_names, labels, palette)


def zip_youtube_vos_submission(out_dir: str, zip_path: str) -> list[str]:
  """Zips `<out_dir>/Annotations` into a zip whose root holds `Annotations/<video>/<frame>.png`.

  Only PNG files are included (temporary files of interrupted writes are not), with directory
  entries, in sorted order. The zip itself is written atomically.

  Args:
    out_dir: folder holding `Annotations/` (as written by `write_youtube_vos_predictions`).
    zip_path: the zip to write (outside `out_dir/Annotations`).

  Returns:
    The archive names written, in order.
  """
  root = os.path.join(out_dir, YOUTUBE_VOS_ANNOTATIONS)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"No {YOUTUBE_VOS_ANNOTATIONS}/ folder in {out_dir!r}.")
  entries = []
  for video in sorted(os.listdir(root)):
    video_dir = os.path.join(root, video)
    if video.startswith(".") or not os.path.isdir(video_dir):
      continue
    frames = sorted(name for name in os.listdir(video_dir)
                    if name.endswith(".png") and not name.startswith("."))
    entries.append((f"{YOUTUBE_VOS_ANNOTATIONS}/{video}/", None))
    entries.extend((f"{YOUTUBE_VOS_ANNOTATIONS}/{video}/{name}", os.path.join(video_dir, name))
                   for name in frames)
  if not any(source for _, source in entries):
    raise ValueError(f"{root!r} holds no video folder with PNG files.")

  def write_zip(file: BinaryIO) -> None:
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
      archive.mkdir(YOUTUBE_VOS_ANNOTATIONS)
      for name, source in entries:
        if source is None:
          archive.mkdir(name.rstrip("/"))
        else:
          archive.write(source, name)

  atomic_write(zip_path, write_zip)
  return [f"{YOUTUBE_VOS_ANNOTATIONS}/"] + [name for name, _ in entries]
