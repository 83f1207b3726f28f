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
import multiprocessing
import os
import queue
import signal
import tempfile
import time
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

ABORT_SECONDS = 60.0
"""How long `OutputsProcess.abort` waits for the writing process to finish the queued writes."""


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


def _read_manifest(manifest_path: str, mask_folder: str) -> dict[str, Any]:
  try:
    with open(manifest_path) as file:
      saved = json.load(file)
  except FileNotFoundError as error:
    raise OutputExistsError(f"{mask_folder} holds masks but {manifest_path} is missing: cannot "
                            f"tell which run wrote them; pass --overwrite (nothing was "
                            f"written)") from error
  except (OSError, json.JSONDecodeError) as error:
    raise OutputExistsError(f"{manifest_path}: unreadable ({error}); pass --overwrite "
                            f"(nothing was written)") from error
  if not isinstance(saved, dict) or saved.get("format") != FORMAT:
    raise OutputExistsError(f"{manifest_path}: not a manifest of this version ({FORMAT}); "
                            f"pass --overwrite (nothing was written)")
  return saved


def check_output(output: str, source: video_io.VideoSource, identity: Mapping[str, Any], *,
                 overwrite: bool = False, resume: bool = False) -> set[str]:
  """The frame names whose masks `output` already holds and a `resume` keeps (empty unless
  resuming); raises OutputExistsError when they may not be kept. Reads, writes nothing."""
  mask_folder = os.path.join(output, "masks", source.name)
  existing = set()
  if os.path.isdir(mask_folder):
    existing = {name[:-4] for name in os.listdir(mask_folder)
                if name.endswith(".png") and not name.startswith(".")}
  if not existing or overwrite:
    return set()
  if not resume:
    raise OutputExistsError(
        f"{mask_folder} already holds {len(existing)} masks of video {source.name!r}: pass "
        f"--resume to finish that run or --overwrite to replace it (nothing was written)")
  manifest_path = os.path.join(output, f"{source.name}_manifest.json")
  saved = _read_manifest(manifest_path, mask_folder)
  differing = [f"{key}: then {saved.get(key)}, now {identity[key]}"
               for key in RUN_KEYS if saved.get(key) != identity[key]]
  if differing:
    raise OutputExistsError(
        f"{manifest_path}: the masks in {mask_folder} were made by another run "
        f"({'; '.join(differing)}): --resume would mix two runs; pass --overwrite to replace "
        f"them (nothing was written)")
  return existing


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
    self.existing = check_output(self.output, source, self.identity, overwrite=overwrite,
                                 resume=resume)
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


def _serve(calls: Any, replies: Any) -> None:
  """The writing process: for each ("open", arguments, options) a VideoOutputs, driven by the
  calls that follow ((method, *arguments)) up to its "finish" or "abort". Replies ("error",
  exception) for the first call that fails (later ones but "abort" are skipped) and ("done",
  (written, skipped)) at the end of each video."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which aborts here.
  while True:
    _, arguments, options = calls.get()
    try:
      outputs = VideoOutputs(*arguments, **options)
    except BaseException as error:  # pylint: disable=broad-except (raised in the parent)
      outputs = None
      replies.put(("error", error))
    failed = outputs is None
    while True:
      method, *call_arguments = calls.get()
      if method == "abort" and outputs is None:
        replies.put(("done", (0, 0)))
        break
      if failed and method != "abort":
        continue
      try:
        getattr(outputs, method)(*call_arguments)
      except BaseException as error:  # pylint: disable=broad-except (raised in the parent)
        failed = True
        replies.put(("error", error))
        if method != "abort":
          continue
        break
      if method in ("finish", "abort"):
        replies.put(("done", (outputs.written, outputs.skipped)))
        break


class _WritingProcess:
  """The process `_serve` runs in (spawned), with its bounded call queue and its replies."""

  def __init__(self, size: int):
    context = multiprocessing.get_context("spawn")
    self.calls = context.Queue(maxsize=size)
    self.replies = context.Queue()
    self.process = context.Process(target=_serve, args=(self.calls, self.replies),
                                   name="segment outputs", daemon=True)
    self.process.start()


_WRITING_PROCESS: Optional[_WritingProcess] = None
"""The writing process of this interpreter, started by the first OutputsProcess and reused by
the next ones (starting one costs seconds: a fresh interpreter importing this module)."""


def _writing_process(size: int) -> _WritingProcess:
  global _WRITING_PROCESS
  if _WRITING_PROCESS is None or not _WRITING_PROCESS.process.is_alive():
    _WRITING_PROCESS = _WritingProcess(size)
  return _WRITING_PROCESS


class OutputsProcess:
  """`VideoOutputs` in a process of its own (multiprocessing, spawned once and reused for every
  video), fed through a bounded queue: PNG and CSV writing, overlay drawing and encoding run
  beside the process that steps the model instead of sharing its interpreter lock. Same calls
  as VideoOutputs (`write_mask`, `write_overlay` in frame order, then `finish` or `abort`);
  `written` and `skipped` are set by `finish`. The output is checked here first
  (`check_output`), so a refused output raises before any frame is computed; an error of the
  writing process is raised by the next call."""

  def __init__(self, size: int, output: str, source: video_io.VideoSource,
               masks: given_masks.GivenMasks, identity: Mapping[str, Any], *,
               overwrite: bool = False, resume: bool = False, overlay_video: bool = True,
               gif_seconds: float = 5.0):
    """`size`: the most calls waiting (the queue's capacity, set by the first one)."""
    check_output(os.fspath(output), source, identity, overwrite=overwrite, resume=resume)
    self.draws_overlays = overlay_video or int(gif_seconds * source.fps) > 0
    self.written = self.skipped = 0
    self._name = source.name
    self._writer = _writing_process(size)
    self._put(("open", (os.fspath(output), source, masks, dict(identity)),
               dict(overwrite=overwrite, resume=resume, overlay_video=overlay_video,
                    gif_seconds=gif_seconds)))

  def _raise_error(self) -> None:
    """Raises the writing process's error, if it reported one."""
    try:
      kind, value = self._writer.replies.get_nowait()
    except queue.Empty:
      return
    if kind == "error":
      raise value

  def _check_alive(self) -> None:
    self._raise_error()
    if not self._writer.process.is_alive():
      raise RuntimeError(f"the writing process of video {self._name!r} stopped (exit code "
                         f"{self._writer.process.exitcode})")

  def _put(self, call: tuple[Any, ...]) -> None:
    self._raise_error()
    while True:
      try:
        self._writer.calls.put(call, timeout=1.0)
        return
      except queue.Full:
        self._check_alive()

  def _wait_done(self) -> None:
    while True:
      try:
        kind, value = self._writer.replies.get(timeout=1.0)
      except queue.Empty:
        self._check_alive()
        continue
      if kind == "error":
        raise value
      self.written, self.skipped = value
      return

  def write_mask(self, index: int, labels: np.ndarray) -> None:
    """`VideoOutputs.write_mask` in the writing process (labels sent as uint8: ids 0..254)."""
    self._put(("write_mask", index, np.asarray(labels).astype(np.uint8)))

  def write_overlay(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
    """`VideoOutputs.write_overlay` in the writing process."""
    self._put(("write_overlay", index, np.asarray(frame), np.asarray(labels).astype(np.uint8)))

  def finish(self, num_frames: int) -> None:
    """`VideoOutputs.finish` once every queued write is done."""
    self._put(("finish", num_frames))
    self._wait_done()

  def abort(self) -> None:
    """`VideoOutputs.abort` after the queued writes (errors it reports are dropped: the error
    that led here is raised); a process that does not answer within ABORT_SECONDS is ended
    (the next video starts another)."""
    global _WRITING_PROCESS
    deadline = time.monotonic() + ABORT_SECONDS
    try:
      self._writer.calls.put(("abort",), timeout=ABORT_SECONDS)
      while time.monotonic() < deadline and self._writer.process.is_alive():
        try:
          kind, _ = self._writer.replies.get(timeout=1.0)
        except queue.Empty:
          continue
        if kind == "done":
          return
    except queue.Full:
      pass
    self._writer.process.kill()
    _WRITING_PROCESS = None
