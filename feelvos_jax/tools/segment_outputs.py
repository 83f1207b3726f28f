"""What `python -m feelvos_jax.segment` writes for one video, and when it may write there.

  <output>/masks/<video>/<frame>.png   palette PNGs (DAVIS palette) of the given object ids:
                                       the DAVIS layout, so `--predictions=<output>/masks` of
                                       `feelvos_jax.tools.visualize` and `feelvos_jax.evaluate`
                                       reads them
  <output>/<video>_overlay.mp4         every frame with its masks drawn
  <output>/<video>_overlay.gif         the first seconds of it, at most GIF_WIDTH pixels wide
  <output>/<video>_objects.csv         per frame, each object given so far: its area (pixels)
                                       and bounding box (inclusive pixel coordinates)
  <output>/<video>_manifest.json       the video, masks and model of the run, and whether it
                                       finished

Every file is complete or absent: PNGs and the manifest are written atomically
(`writers.atomic_write`), the CSV, mp4 and GIF into temporary files renamed into place when the
video is done. An output that already holds masks of the video is refused, unless `overwrite`
(written masks are replaced, those of frames this run does not produce deleted at the end) or
`resume` when the manifest names the same video, masks and model: the frames are segmented
again (each needs the previous one's state) and only the masks not yet written are written,
so the result equals one uninterrupted run.
"""
import csv
import json
import os
import tempfile
from typing import Any, Mapping, Optional

import numpy as np
from PIL import Image

from feelvos_jax.evaluation import writers
from feelvos_jax.tools import given_masks
from feelvos_jax.tools import video_io
from feelvos_jax.tools import visualize

FORMAT = "feelvos_jax.segment/1"
"""Format of `<video>_manifest.json`."""

GIF_WIDTH = 480
"""Widest GIF frame: wider overlays are scaled down."""

GIF_FPS = 10.0
"""Most GIF frames per second: faster videos keep every n-th frame."""

CSV_COLUMNS = ("frame", "frame_name", "time_s", "object_id", "object_name", "area", "x_min",
               "y_min", "x_max", "y_max")

RUN_KEYS = ("video", "masks", "model")
"""Manifest entries that must match for `resume`."""


class OutputExistsError(FileExistsError):
  """The output folder already holds masks of the video and neither overwrite nor resume
  allows this run to write there."""


def _path_bytes(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())


def run_identity(source: video_io.VideoSource, masks_path: str, masks: given_masks.GivenMasks,
                 model: Mapping[str, Any]) -> dict[str, Any]:
  """The manifest entries (`RUN_KEYS`) that identify what a run segments, and with what."""
  return {"video": {"path": os.path.abspath(source.path), "bytes": _path_bytes(source.path),
                    "frames": source.num_frames},
          "masks": {"path": os.path.abspath(masks_path), "sha256": masks.digest},
          "model": dict(model)}


def object_rows(index: int, name: str, time_s: float, labels: np.ndarray,
                masks: given_masks.GivenMasks) -> list[tuple[Any, ...]]:
  """CSV rows (`CSV_COLUMNS`) of frame `index`: every object whose first frame is not later,
  with its area and bounding box (blank when the object is absent)."""
  rows = []
  for object_id, object_name, first in zip(masks.object_ids, masks.object_names,
                                           masks.first_frame):
    if first > index:
      continue
    mask = labels == object_id
    area = int(mask.sum())
    box = ("", "", "", "")
    if area:
      ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
      box = (int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1]))
    rows.append((index, name, f"{time_s:.3f}", object_id, object_name, area) + box)
  return rows


class VideoOutputs:
  """The files of one video's run (see the module docstring): `write_mask` and `write_overlay`
  are called for every frame in order (each from one thread), then `finish` or `abort`."""

  def __init__(self, output: str, source: video_io.VideoSource, masks: given_masks.GivenMasks,
               identity: Mapping[str, Any], *, overwrite: bool = False, resume: bool = False,
               overlay_video: bool = True, gif_seconds: float = 5.0):
    """Checks the output folder (OutputExistsError) and writes the manifest of the run."""
    self.source, self.masks, self.identity = source, masks, dict(identity)
    self.output = os.fspath(output)
    self.masks_root = os.path.join(self.output, "masks")
    self.mask_folder = os.path.join(self.masks_root, source.name)
    self.manifest_path = os.path.join(self.output, f"{source.name}_manifest.json")
    self._overwrite = overwrite
    self.existing = self._check(resume)
    os.makedirs(self.mask_folder, exist_ok=True)
    self.written = self.skipped = 0
    self._names: set[str] = set()
    self._write_manifest(complete=False, frames=None)
    handle, self._csv_temporary = tempfile.mkstemp(
        dir=self.output, prefix=f".{source.name}_objects.csv.", suffix=".tmp")
    self._csv_file = os.fdopen(handle, "w", newline="")
    self._csv = csv.writer(self._csv_file)
    self._csv.writerow(CSV_COLUMNS)
    self._video = (video_io.VideoWriter(os.path.join(self.output, f"{source.name}_overlay.mp4"),
                                        source.fps) if overlay_video else None)
    self._gif_step = max(1, round(source.fps / GIF_FPS))
    self._gif_frames = max(0, int(gif_seconds * source.fps))
    self._gif: list[Image.Image] = []

  def _check(self, resume: bool) -> set[str]:
    """The frame names already written; raises OutputExistsError when they may not be kept."""
    existing = set()
    if os.path.isdir(self.mask_folder):
      existing = {name[:-4] for name in os.listdir(self.mask_folder)
                  if name.endswith(".png") and not name.startswith(".")}
    if not existing or self._overwrite:
      return set()
    if not resume:
      raise OutputExistsError(
          f"{self.mask_folder} already holds {len(existing)} masks of video "
          f"{self.source.name!r}: pass --resume to finish that run or --overwrite to replace "
          f"it (nothing was written)")
    saved = self._read_manifest()
    differing = [f"{key}: then {saved.get(key)}, now {self.identity[key]}"
                 for key in RUN_KEYS if saved.get(key) != self.identity[key]]
    if differing:
      raise OutputExistsError(
          f"{self.manifest_path}: the masks in {self.mask_folder} were made by another run "
          f"({'; '.join(differing)}): --resume would mix two runs; pass --overwrite to "
          f"replace them (nothing was written)")
    return existing

  def _read_manifest(self) -> dict[str, Any]:
    try:
      with open(self.manifest_path) as file:
        saved = json.load(file)
    except FileNotFoundError as error:
      raise OutputExistsError(f"{self.mask_folder} holds masks but {self.manifest_path} is "
                              f"missing: cannot tell which run wrote them; pass --overwrite "
                              f"(nothing was written)") from error
    except (OSError, json.JSONDecodeError) as error:
      raise OutputExistsError(f"{self.manifest_path}: unreadable ({error}); pass --overwrite "
                              f"(nothing was written)") from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
      raise OutputExistsError(f"{self.manifest_path}: not a manifest of this version "
                              f"({FORMAT}); pass --overwrite (nothing was written)")
    return saved

  def _write_manifest(self, complete: bool, frames: Optional[int]) -> None:
    manifest = dict(format=FORMAT, **self.identity, complete=complete, frames=frames,
                    masks_written=self.written + self.skipped,
                    object_ids=list(self.masks.object_ids),
                    object_names=list(self.masks.object_names))
    data = json.dumps(manifest, indent=2).encode()
    writers.atomic_write(self.manifest_path, lambda file: file.write(data))

  def write_mask(self, index: int, labels: np.ndarray) -> None:
    """Writes frame `index`'s mask (unless resumed and already written) and its CSV rows.

    Called in frame order, from one thread (it may run beside `write_overlay`'s).

    Args:
      index: the frame's index in the video.
      labels: [H, W] int object ids (`masks.object_ids`, 0 background).
    """
    name = self.source.frame_name(index)
    self._names.add(name)
    if name in self.existing:
      self.skipped += 1
    else:
      writers.write_davis_predictions(self.masks_root, self.source.name, [name], labels[None])
      self.written += 1
    self._csv.writerows(object_rows(index, name, index / self.source.fps, labels, self.masks))

  @property
  def draws_overlays(self) -> bool:
    """Whether `write_overlay` has anything to draw (an mp4 or a GIF is asked for)."""
    return self._video is not None or self._gif_frames > 0

  def write_overlay(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
    """Draws frame `index` ([H, W, 3] uint8 RGB) with its labels into the mp4 and the GIF.

    Called in frame order, from one thread (it may run beside `write_mask`'s).
    """
    in_gif = index < self._gif_frames and index % self._gif_step == 0
    if self._video is None and not in_gif:
      return
    drawn = visualize.overlay(frame, labels)
    if self._video is not None:
      self._video.write(drawn)
    if in_gif:
      image = Image.fromarray(drawn)
      if image.width > GIF_WIDTH:
        image = image.resize((GIF_WIDTH, max(1, round(image.height * GIF_WIDTH / image.width))),
                             Image.BILINEAR)
      self._gif.append(image)

  def finish(self, num_frames: int) -> None:
    """Renames the CSV, mp4 and GIF into place, deletes (with `overwrite`) the masks of frames
    this run did not produce, and marks the manifest complete."""
    self._csv_file.close()
    os.replace(self._csv_temporary, os.path.join(self.output, f"{self.source.name}_objects.csv"))
    if self._video is not None:
      self._video.close()
    if self._gif:
      images = self._gif
      duration = max(1, round(1000 * self._gif_step / self.source.fps))
      writers.atomic_write(
          os.path.join(self.output, f"{self.source.name}_overlay.gif"),
          lambda file: images[0].save(file, format="GIF", save_all=True,
                                      append_images=images[1:], duration=duration, loop=0))
    if self._overwrite:
      for name in os.listdir(self.mask_folder):
        if name.endswith(".png") and not name.startswith(".") and name[:-4] not in self._names:
          os.remove(os.path.join(self.mask_folder, name))
    self._write_manifest(complete=True, frames=num_frames)

  def abort(self) -> None:
    """Deletes the temporary CSV and mp4 and records the masks written so far (complete
    files) in the manifest, for a later `resume`."""
    self._csv_file.close()
    if os.path.exists(self._csv_temporary):
      os.remove(self._csv_temporary)
    if self._video is not None:
      self._video.abort()
    self._write_manifest(complete=False, frames=None)
