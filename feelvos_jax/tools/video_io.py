"""Video input and output for the command-line tools, one frame at a time.

- `open_video(path)`: a `VideoSource` for a video file (decoded with PyAV, whose wheels carry
  FFmpeg: mp4, mov, webm, avi, mkv, ...) or a folder of frame images (sorted naturally, so
  "frame2" comes before "frame10"); its `frames()` decodes lazily, one [H, W, 3] uint8 RGB
  frame at a time, so memory does not grow with the video's length.
- `in_background(iterable, size)`: the same items, produced by a thread at most `size` ahead
  (decoding overlaps the device work).
- `BackgroundWorker`: runs calls in one thread from a bounded queue (writing overlaps it too).
- `VideoWriter`: [H, W, 3] uint8 frames to an mp4 (H.264 where FFmpeg has libx264, else
  MPEG-4), written into a temporary file renamed into place when complete.

Bad input raises `VideoError` (a ValueError) naming the file and, while decoding, the frame.
"""
import dataclasses
import fractions
import os
import queue
import re
import threading
from typing import Any, Callable, Iterable, Iterator, Optional
import uuid

import av
import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv")
"""File suffixes (lower case) read as video files; a folder is read as frame images."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""Suffixes of the frame images of a frame folder."""

TRUNCATION_TOLERANCE = 2
"""Frames a decoded video file may fall short of the count its header declares before it is
reported as truncated (FFmpeg may drop a frame or two outside an mp4 edit list)."""

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class VideoError(ValueError):
  """A video that cannot be read: the message names the file and the frame at fault."""


def natural_key(name: str) -> list[Any]:
  """Sort key that orders the digit runs of `name` as numbers ("f2" < "f10")."""
  return [(0, int(part), part) if part.isdigit() else (1, 0, part)
          for part in re.split(r"(\d+)", name) if part]


@dataclasses.dataclass(frozen=True)
class VideoSource:
  """A video to read frame by frame.

  Attributes:
    path: the video file or the frame folder.
    name: the video's name: the file's stem or the folder's name.
    height, width: the frame size.
    fps: frames per second (the file's average rate; `default_fps` for a folder).
    num_frames: the frame count (a folder's images; a file's declared count, None if its
      header does not say).
    frame_names: a folder's image stems in order; None for a file (named by index).
  """
  path: str
  name: str
  height: int
  width: int
  fps: float
  num_frames: Optional[int]
  frame_names: Optional[tuple[str, ...]]

  @property
  def is_file(self) -> bool:
    return self.frame_names is None

  def frame_name(self, index: int) -> str:
    """The name of frame `index` (a folder's image stem; `00012` for frame 12 of a file)."""
    return self.frame_names[index] if self.frame_names is not None else f"{index:05d}"

  def frames(self) -> Iterator[np.ndarray]:
    """[H, W, 3] uint8 RGB frames, decoded one at a time; VideoError naming the frame."""
    if self.frame_names is None:
      return _decode_file(self)
    return _read_folder(self)


def _open_container(path: str) -> Any:
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as error:
    raise VideoError(f"{path}: not a video file FFmpeg can read ({error}); pass a video "
                     f"({', '.join(VIDEO_SUFFIXES)}) or a folder of frames") from error
  if not container.streams.video:
    container.close()
    raise VideoError(f"{path}: the file holds no video stream")
  return container


def _decode_file(source: VideoSource) -> Iterator[np.ndarray]:
  container = _open_container(source.path)
  index = 0
  with container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
      for frame in container.decode(stream):
        array = frame.to_ndarray(format="rgb24")
        if array.shape[:2] != (source.height, source.width):
          raise VideoError(f"{source.path}: frame {index} is {array.shape[:2]}, the video's "
                           f"first frames {(source.height, source.width)}")
        yield array
        index += 1
    except av.FFmpegError as error:
      raise VideoError(f"{source.path}: frame {index} cannot be decoded: the file is "
                       f"damaged or truncated ({error})") from error
  if source.num_frames and index < source.num_frames - TRUNCATION_TOLERANCE:
    raise VideoError(f"{source.path}: the stream ends at frame {index}, but the file declares "
                     f"{source.num_frames} frames: it is truncated")


def _read_image(path: str, video: str, frame: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except _DECODE_ERRORS as error:
    raise VideoError(f"video {video!r} frame {frame!r} ({path}): cannot decode the image: "
                     f"{error}") from error


def _read_folder(source: VideoSource) -> Iterator[np.ndarray]:
  files = _image_files(source.path)
  for stem, file_name in zip(source.frame_names, files):
    path = os.path.join(source.path, file_name)
    frame = _read_image(path, source.name, stem)
    if frame.shape[:2] != (source.height, source.width):
      raise VideoError(f"video {source.name!r} frame {stem!r} ({path}): size {frame.shape[:2]} "
                       f"differs from the first frame's {(source.height, source.width)}")
    yield frame


def _image_files(folder: str) -> list[str]:
  names = [name for name in os.listdir(folder) if not name.startswith(".")
           and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES]
  return sorted(names, key=natural_key)


def is_video_file(path: str) -> bool:
  return os.path.isfile(path) and os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def open_video(path: str, default_fps: float = 24.0) -> VideoSource:
  """The VideoSource of a video file or a frame folder (its header or first image read).

  Raises:
    FileNotFoundError: no such file or folder.
    VideoError: not a video FFmpeg reads, no video stream, or a folder without images; the
      message names the path.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    files = _image_files(path)
    if not files:
      raise VideoError(f"{path}: the folder holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
    stems = tuple(os.path.splitext(name)[0] for name in files)
    if len(set(stems)) != len(stems):
      raise VideoError(f"{path}: two frame images share a name: "
                       f"{sorted({s for s in stems if stems.count(s) > 1})[:3]}")
    name = os.path.basename(os.path.normpath(path))
    height, width = _read_image(os.path.join(path, files[0]), name, stems[0]).shape[:2]
    return VideoSource(path, name, height, width, float(default_fps), len(files), stems)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such video file or frame folder")
  with _open_container(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    height, width = stream.codec_context.height, stream.codec_context.width
    num_frames = int(stream.frames) or None
  if not height or not width:
    raise VideoError(f"{path}: the video stream declares no frame size")
  name = os.path.splitext(os.path.basename(path))[0]
  return VideoSource(path, name, height, width, float(rate) if rate else float(default_fps),
                     num_frames, None)


def in_background(iterable: Iterable[Any], size: int) -> Iterator[Any]:
  """The items of `iterable`, in order, produced by a daemon thread at most `size` ahead.

  An exception the iterable raises is raised here after the items before it. Closing this
  generator stops the thread (and closes `iterable` if it is a generator) at its next item.
  """
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  end = object()

  def put(item: Any) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in iterable:
        if not put((item, None)):
          return
      put((end, None))
    except BaseException as error:  # pylint: disable=broad-except (re-raised by the consumer)
      put((end, error))
    finally:
      close = getattr(iterable, "close", None)
      if close is not None:
        close()

  thread = threading.Thread(target=produce, name="in_background", daemon=True)
  thread.start()
  try:
    while True:
      item, error = items.get()
      if item is end:
        if error is not None:
          raise error
        return
      yield item
  finally:
    stop.set()
    thread.join()


class BackgroundWorker:
  """Runs submitted calls in order in one thread; at most `size` wait in its queue.

  The first exception a call raises is raised by the next `submit` or by `close` (later
  calls are then skipped); `close` waits for every call submitted before it.
  """

  def __init__(self, size: int, name: str = "background_worker"):
    self._calls: queue.Queue = queue.Queue(maxsize=size)
    self._error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while True:
      call = self._calls.get()
      if call is None:
        return
      if self._error is None:
        try:
          call()
        except BaseException as error:  # pylint: disable=broad-except (raised by submit/close)
          self._error = error

  def _raise(self) -> None:
    if self._error is not None:
      error, self._error = self._error, None
      raise error

  def submit(self, call: Callable[[], None]) -> None:
    """Queues `call` (blocks while the queue is full); raises an earlier call's exception."""
    self._raise()
    self._calls.put(call)

  def close(self) -> None:
    """Waits for the queued calls, stops the thread; raises a call's exception if one failed."""
    if self._thread.is_alive():
      self._calls.put(None)
      self._thread.join()
    self._raise()


class VideoWriter:
  """Writes [H, W, 3] uint8 RGB frames to an mp4; the file appears complete or not at all.

  Frames go to a temporary file beside `path`; `close()` finishes the stream and renames it to
  `path`, `abort()` deletes it. Odd frame sizes are padded by one edge pixel (the YUV 4:2:0
  formats need even sizes).
  """

  def __init__(self, path: str, fps: float):
    self.path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(self.path))
    self._temporary = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.tmp.mp4")
    self._rate = fractions.Fraction(fps).limit_denominator(1001)
    self._container = None
    self._stream = None

  def _open(self, height: int, width: int) -> None:
    self._container = av.open(self._temporary, "w", format="mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    options = {"preset": "veryfast", "crf": "23"} if codec == "libx264" else {}
    self._stream = self._container.add_stream(codec, rate=self._rate, options=options)
    self._stream.width, self._stream.height = width, height
    self._stream.pix_fmt = "yuv420p"

  def write(self, frame: np.ndarray) -> None:
    """Encodes one [H, W, 3] uint8 RGB frame (every frame of the same size)."""
    frame = np.asarray(frame, dtype=np.uint8)
    frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), "edge")
    if self._container is None:
      self._open(*frame.shape[:2])
    video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
    for packet in self._stream.encode(video_frame):
      self._container.mux(packet)

  def close(self) -> None:
    """Finishes the file and renames it into place (nothing is written without frames)."""
    if self._container is None:
      return
    try:
      for packet in self._stream.encode():
        self._container.mux(packet)
      self._container.close()
      self._container = None
      os.replace(self._temporary, self.path)
    finally:
      self.abort()

  def abort(self) -> None:
    """Stops writing and deletes the temporary file; `path` is left as it was."""
    if self._container is not None:
      self._container.close()
      self._container = None
    if os.path.exists(self._temporary):
      os.remove(self._temporary)
