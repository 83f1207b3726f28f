"""The masks a user gives for a video (`--masks` of `python -m feelvos_jax.segment`).

Three forms, each read by `read_masks(path, source)`:
- one PNG: the objects of the first frame (frame 0);
- a folder of PNGs named by frame, `<frame>.png`: each holds the objects that first appear in
  that frame (objects given earlier may be drawn too: only new ids are read from it);
- a folder of folders, one per object, `<object>/<frame>.png`: a binary mask (non-zero pixels
  are the object) of the frame where the object first appears (if several, the earliest); the
  objects get ids 1..N in the natural order of the folder names, which name them in the CSV.

A PNG of object ids is palette-indexed ('P') or single-channel ('L', 'I;16', 'I'): 0 is the
background, 255 void (never matched), 1..254 object ids, kept in the outputs. A 1-bit PNG, or
a single-channel one whose only values are 0 and 255, is one object (id 1). A frame is named by
its index from 0 ("12.png", "00012.png") or, for a frame folder, by the stem of its image
("frame_0012.png" for "frame_0012.jpg"; an exact stem wins over an index). A mask whose size
differs from the video's is resized by nearest neighbour, with a warning.
"""
import dataclasses
import hashlib
import os
from typing import Optional

from absl import logging
import numpy as np
from PIL import Image

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.tools import video_io

MASK_SUFFIX = ".png"


class MaskError(ValueError):
  """A mask file that cannot be used: the message names the file (and frame) at fault."""


@dataclasses.dataclass(frozen=True)
class GivenMasks:
  """The objects given for one video, as `propagate` takes them.

  Attributes:
    annotations: frame index -> [H, W] int32 labels (0 background, n + 1 for object n,
      IGNORE_LABEL void) at the video's frame size, for every frame in `first_frame`.
    first_frame: [N] frame where object n first appears (non-decreasing).
    object_ids: [N] the id object n has in the output PNGs.
    object_names: [N] its name in the CSV (its id, or its folder's name).
    files: frame index -> the mask file(s) read for that frame, for error messages.
    digest: SHA-256 over the names and bytes of every mask file read.
  """
  annotations: dict[int, np.ndarray]
  first_frame: tuple[int, ...]
  object_ids: tuple[int, ...]
  object_names: tuple[str, ...]
  files: dict[int, tuple[str, ...]]
  digest: str

  def frames_beyond(self, num_frames: int) -> list[tuple[int, str]]:
    """(frame, mask file) of every given frame at or after `num_frames`."""
    return [(index, files[0]) for index, files in sorted(self.files.items())
            if index >= num_frames]


def _read_ids(path: str) -> np.ndarray:
  """[h, w] int64 object ids of a mask PNG (see the module docstring for the modes)."""
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      values = np.asarray(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise MaskError(f"{path}: cannot decode the mask PNG: {error}") from error
  if mode == "1":
    return values.astype(np.int64)
  if mode not in ("P", "L", "I;16", "I") or values.ndim != 2:
    raise MaskError(f"{path}: mask PNG in mode {mode!r}; save object ids as a palette ('P') "
                    f"or single-channel PNG, or one binary PNG per object "
                    f"(<masks>/<object>/<frame>.png)")
  values = values.astype(np.int64)
  if mode == "L" and set(np.unique(values).tolist()) == {0, 255}:
    return (values == 255).astype(np.int64)  # A binary mask saved as 0 / 255: one object.
  if values.min() < 0 or values.max() > 255:
    raise MaskError(f"{path}: object ids must lie in 1..{IGNORE_LABEL - 1} (0 background, "
                    f"{IGNORE_LABEL} void), found {values.min()}..{values.max()}")
  return values


def _fit(ids: np.ndarray, source: video_io.VideoSource, path: str) -> np.ndarray:
  """`ids` resized to the video's frame size by nearest neighbour (with a warning)."""
  size = (source.height, source.width)
  if ids.shape == size:
    return ids
  logging.warning("%s: mask is %dx%d, the frames of video %r are %dx%d: resized by nearest "
                  "neighbour", path, ids.shape[1], ids.shape[0], source.name, size[1], size[0])
  resized = Image.fromarray(ids.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST)
  return np.asarray(resized).astype(np.int64)


def _frame_index(stem: str, path: str, source: video_io.VideoSource) -> int:
  """The frame a mask file names (see the module docstring); MaskError naming the file."""
  if source.frame_names is not None and stem in source.frame_names:
    return source.frame_names.index(stem)
  if not stem.isdigit():
    known = (f"a frame index or the name of a frame of {source.path}"
             if source.frame_names is not None else "a frame index (0 is the first frame)")
    raise MaskError(f"{path}: the name {stem!r} is not {known}")
  index = int(stem)
  if source.num_frames is not None and index >= source.num_frames:
    raise MaskError(f"{path}: names frame {index}, but video {source.name!r} ({source.path}) "
                    f"has {source.num_frames} frames (0..{source.num_frames - 1})")
  return index


def _digest(paths: list[str], root: str) -> str:
  digest = hashlib.sha256()
  for path in sorted(paths):
    digest.update(os.path.relpath(path, root).encode() + b"\0")
    with open(path, "rb") as file:
      digest.update(hashlib.sha256(file.read()).digest())
  return digest.hexdigest()


def _pngs(folder: str) -> list[str]:
  return sorted((name for name in os.listdir(folder)
                 if name.lower().endswith(MASK_SUFFIX) and not name.startswith(".")),
                key=video_io.natural_key)


def _id_maps(paths: dict[int, str], source: video_io.VideoSource, root: str) -> GivenMasks:
  """GivenMasks from one id map per frame ({frame index: PNG path})."""
  maps = {index: _fit(_read_ids(path), source, path) for index, path in paths.items()}
  ids, first = [], []
  for index in sorted(maps):
    present = [int(i) for i in np.unique(maps[index]) if i not in (0, IGNORE_LABEL)]
    if not present:
      raise MaskError(f"{paths[index]}: the mask of frame {index} holds no object (only 0 "
                      f"background and {IGNORE_LABEL} void)")
    new = [i for i in present if i not in ids]
    ids += new
    first += [index] * len(new)
  lookup = np.full(256, IGNORE_LABEL, np.int32)
  lookup[0] = 0
  lookup[np.array(ids)] = np.arange(1, len(ids) + 1)
  annotations = {index: lookup[maps[index]] for index in sorted(set(first))}
  return GivenMasks(annotations, tuple(first), tuple(ids), tuple(str(i) for i in ids),
                    {index: (paths[index],) for index in annotations},
                    _digest(list(paths.values()), root))


def _per_object(folders: list[str], root: str, source: video_io.VideoSource) -> GivenMasks:
  """GivenMasks from one folder of binary PNGs per object (`<root>/<object>/<frame>.png`)."""
  objects = []  # (first frame, object name, path of its mask)
  for name in folders:
    files = _pngs(os.path.join(root, name))
    if not files:
      raise MaskError(f"{os.path.join(root, name)}: object folder without a {MASK_SUFFIX} mask")
    found = sorted((_frame_index(os.path.splitext(file)[0], os.path.join(root, name, file),
                                 source), file) for file in files)
    if len(found) > 1:
      logging.warning("object %r: only its earliest mask (%s) is read, not the %d later ones",
                      name, found[0][1], len(found) - 1)
    objects.append((found[0][0], name, os.path.join(root, name, found[0][1])))
  if len(objects) >= IGNORE_LABEL:
    raise MaskError(f"{root}: {len(objects)} object folders, at most {IGNORE_LABEL - 1}")
  objects.sort(key=lambda entry: entry[0])  # Stable: the folder order within a frame.
  annotations, files = {}, {}
  for number, (index, name, path) in enumerate(objects, start=1):
    mask = _fit(_read_ids(path), source, path) != 0
    if not mask.any():
      raise MaskError(f"{path}: the mask of object {name!r} is empty")
    labels = annotations.setdefault(index, np.zeros((source.height, source.width), np.int32))
    labels[mask] = number
    files[index] = files.get(index, ()) + (path,)
  for number, (index, name, path) in enumerate(objects, start=1):
    if not (annotations[index] == number).any():
      raise MaskError(f"{path}: object {name!r} is entirely covered by later objects' masks "
                      f"of frame {index}")
  numbers = tuple(range(1, len(objects) + 1))
  return GivenMasks(annotations, tuple(entry[0] for entry in objects), numbers,
                    tuple(entry[1] for entry in objects), files,
                    _digest([entry[2] for entry in objects], root))


def read_masks(path: str, source: video_io.VideoSource) -> GivenMasks:
  """The masks of `path` (a PNG, a folder of `<frame>.png` or of `<object>/<frame>.png`) for
  the video `source`.

  Raises:
    FileNotFoundError: no such file or folder.
    MaskError: a file that is not a usable mask, names a frame the video lacks (when its length
      is known), holds no object; a folder of both PNGs and object folders. The message names
      the file.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    return _id_maps({0: path}, source, os.path.dirname(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such mask file or folder")
  files = _pngs(path)
  folders = sorted((name for name in os.listdir(path) if not name.startswith(".")
                    and os.path.isdir(os.path.join(path, name))), key=video_io.natural_key)
  if files and folders:
    raise MaskError(f"{path}: holds both mask PNGs and folders; use <frame>.png files or one "
                    f"folder per object (<object>/<frame>.png), not both")
  if folders:
    return _per_object(folders, path, source)
  if not files:
    raise MaskError(f"{path}: the folder holds no {MASK_SUFFIX} mask")
  by_frame: dict[int, str] = {}
  for file in files:
    full = os.path.join(path, file)
    index = _frame_index(os.path.splitext(file)[0], full, source)
    if index in by_frame:
      raise MaskError(f"{full}: frame {index} already has the mask {by_frame[index]}")
    by_frame[index] = full
  return _id_maps(by_frame, source, path)


def find_masks(masks_root: str, video: str) -> Optional[str]:
  """The masks of `video` in a `--videos` run's masks folder: `<video>.png` or `<video>/`."""
  for candidate in (os.path.join(masks_root, video + MASK_SUFFIX),
                    os.path.join(masks_root, video)):
    if os.path.exists(candidate):
      return candidate
  return None
