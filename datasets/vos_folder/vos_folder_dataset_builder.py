"""TFDS builder `vos_folder`: your own videos and masks, read from a folder (the manual dir).

  <manual_dir>/JPEGImages/<video>/<frame>.jpg    every frame of the video (.jpg or .jpeg)
  <manual_dir>/Annotations/<video>/<frame>.png   masks of some of its frames: palette ('P') or
                                                 single-channel ('L') PNGs whose pixel values
                                                 are object ids (0 background, 255 void)
  <manual_dir>/val.txt                           optional: the validation videos, one a line

One example per video (features in `datasets/features.py`), the DAVIS layout without
`ImageSets`; frames in the natural order of their names ("f2" before "f10"). Frames without a
PNG are unannotated: their segmentation is 255 everywhere (ignored by training, never scored),
so masks on a subset of frames are fine; a video needs at least one PNG. `objects/ids` are
the ids found in the PNGs, `objects/first_frame` the first frame showing each. Without
val.txt, `VALIDATION_FRACTION` of the videos (at least one, at least one left for training) is
the validation split, picked with the fixed seed `SPLIT_SEED` from the sorted names: the same
folder always splits the same way.

TFDS keeps the prepared records under `<data_dir>/vos_folder/<version>` whatever folder they
came from; they record their folder and its contents (`fingerprint`), and
`check_prepared_from` (called by `datasets.registry.load_builder`) refuses records of another
folder, or of the same folder before videos or masks were added.
"""
import hashlib
import re
from typing import Optional

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from datasets import features
from datasets import vos_files

VALIDATION_FRACTION = 0.1
"""Share of the videos in the validation split when the folder has no val.txt."""

SPLIT_SEED = 0
"""Seed of the validation videos' draw when the folder has no val.txt."""

SPLIT_FILE = "val.txt"
"""File of the manual dir listing the validation videos (one name a line)."""

_FRAME_SUFFIXES = (".jpg", ".jpeg")


def _natural(name: str) -> list:
  """Sort key: digit runs compared as numbers ("frame2" before "frame10")."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part)
          for part in re.split(r"(\d+)", name) if part]


def _listing(root: epath.Path) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
  """(videos, {video: frame files}, {video: mask files}) under `root` (names sorted)."""
  frames_root, masks_root = root / "JPEGImages", root / "Annotations"
  for folder in (frames_root, masks_root):
    if not folder.is_dir():
      raise FileNotFoundError(f"No {folder.name}/ folder in manual dir {root}."
                              f"{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  videos = sorted(path.name for path in frames_root.iterdir()
                  if path.is_dir() and not path.name.startswith("."))
  if not videos:
    raise FileNotFoundError(f"No video folder in {frames_root}")
  frames, masks = {}, {}
  for video in videos:
    frames[video] = sorted(path.name for path in (frames_root / video).iterdir()
                           if path.suffix.lower() in _FRAME_SUFFIXES)
    folder = masks_root / video
    masks[video] = (sorted(path.name for path in folder.iterdir() if path.suffix == ".png")
                    if folder.is_dir() else [])
  return videos, frames, masks


def fingerprint(root: epath.Path) -> str:
  """SHA-256 of the folder's path, its videos and each video's frame and mask file names."""
  videos, frames, masks = _listing(root)
  digest = hashlib.sha256(str(root.resolve()).encode())
  for video in videos:
    digest.update(f"\0{video}\0{frames[video]}\0{masks[video]}".encode())
  split_file = root / SPLIT_FILE
  if split_file.exists():
    digest.update(split_file.read_bytes())
  return digest.hexdigest()


def validation_videos(root: epath.Path, videos: list[str]) -> list[str]:
  """The validation videos: those of val.txt, else the seeded draw of the module docstring."""
  split_file = root / SPLIT_FILE
  if split_file.exists():
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    unknown = [name for name in names if name not in videos]
    if unknown:
      raise ValueError(f"{split_file} lists video {unknown[0]!r}, which has no folder "
                       f"{root / 'JPEGImages' / unknown[0]}")
    if not names or len(set(names)) == len(videos):
      raise ValueError(f"{split_file} must list at least one video and leave at least one of "
                       f"the {len(videos)} for training")
    return sorted(set(names))
  if len(videos) < 2:
    raise ValueError(f"{root / 'JPEGImages'} holds {len(videos)} video: at least two are "
                     f"needed, one for training and one for validation")
  count = min(len(videos) - 1, max(1, round(VALIDATION_FRACTION * len(videos))))
  chosen = np.random.default_rng(SPLIT_SEED).choice(len(videos), size=count, replace=False)
  return sorted(videos[i] for i in chosen)


def _read_mask(path: epath.Path, video: str, frame: str) -> np.ndarray:
  """[H, W] uint8 object ids of a palette ('P') or single-channel ('L') mask PNG."""
  try:
    with Image.open(path) as image:
      image.load()
      mode, labels = image.mode, np.array(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise ValueError(f"{vos_files.where(video, frame, path)}: cannot decode the mask: "
                     f"{error}") from error
  if mode not in ("P", "L"):
    raise ValueError(f"{vos_files.where(video, frame, path)}: mask PNG in mode {mode!r}; "
                     f"expected a palette ('P') or single-channel ('L') PNG of object ids")
  return labels.astype(np.uint8)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Videos of a folder (see the module docstring), splits `train` and `validation`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put your videos in one folder and point `manual_dir` (--config.dataset.manual_dir) at it:
    JPEGImages/<video>/<frame>.jpg    every frame of each video
    Annotations/<video>/<frame>.png   masks (object ids) of some frames, named as the frames
    val.txt                           optional: validation videos, one a line
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=features.vos_features("jpeg"),
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = vos_files.manual_dir(dl_manager)
    videos, _, _ = _listing(root)
    validation = validation_videos(root, videos)
    self.info.metadata["source"] = str(root.resolve())
    self.info.metadata["fingerprint"] = fingerprint(root)
    return {"train": self._generate_examples(root, [v for v in videos if v not in validation]),
            "validation": self._generate_examples(root, validation)}

  def _generate_examples(self, root: epath.Path, videos: list[str]):
    gaps = {}  # Video -> smallest gap between two of its masked frames (None: one mask).
    for video in videos:
      example = _read_video(root, video)
      masked = [t for t, name in enumerate(example["video"]["frame_names"])
                if (root / "Annotations" / video / f"{name}.png").exists()]
      gaps[video] = min(np.diff(masked)) if len(masked) > 1 else None
      yield video, example
    _log_training_pairs(gaps)

  def check_prepared_from(self, manual_dir: epath.PathLike) -> None:
    """Raises ValueError when the prepared records were not made from `manual_dir` as it is
    now (another folder, or videos, frames or masks added or removed since)."""
    root = epath.Path(manual_dir)
    source = self.info.metadata.get("source")
    if source is None or self.info.metadata.get("fingerprint") == fingerprint(root):
      return
    change = ("were converted from another folder" if source != str(root.resolve())
              else "no longer match it (videos, frames or masks changed since)")
    raise ValueError(
        f"The vos_folder records in {self.data_dir} {change}: source {source}, "
        f"config.dataset.manual_dir {root}. Delete {self.data_dir} to convert it again, or "
        f"give each folder its own --config.dataset.data_dir.")


def _log_training_pairs(gaps: dict[str, Optional[int]]) -> None:
  """Warns about what the training pairs need (two masked frames at most
  `config.dataset.max_frame_gap` apart, `input_pipeline`): videos with one mask, and the gap
  the others need when their masks are sparse."""
  single = sorted(video for video, gap in gaps.items() if gap is None)
  if single:
    logging.warning("vos_folder: %d video(s) have one mask (%s): training cannot sample a "
                    "(previous, current) pair of masked frames from them; add a mask of a "
                    "neighbouring frame.", len(single), ", ".join(single[:5]))
  needed = max((int(gap) for gap in gaps.values() if gap is not None), default=1)
  if needed > 1:
    logging.warning("vos_folder: some videos have no two masks closer than %d frames: train "
                    "with --config.dataset.max_frame_gap=%d (or more).", needed, needed)


def _read_video(root: epath.Path, video: str) -> dict:
  """One example: every JPEG frame, the masks where a PNG exists, 255 elsewhere."""
  jpeg_dir, png_dir = root / "JPEGImages" / video, root / "Annotations" / video
  stems = {}
  for path in jpeg_dir.iterdir():
    if path.suffix.lower() in _FRAME_SUFFIXES:
      if path.stem in stems:
        raise ValueError(f"video {video!r}: two frames named {path.stem!r} in {jpeg_dir}")
      stems[path.stem] = path
  frame_names = sorted(stems, key=_natural)
  if not frame_names:
    raise ValueError(f"video {video!r}: no .jpg frames in {jpeg_dir}")
  annotated = set(vos_files.list_frames(png_dir, ".png", video)) if png_dir.is_dir() else set()
  if not annotated:
    raise ValueError(f"video {video!r}: no .png masks in {png_dir}; give at least the masks "
                     f"of the frame where each object first appears")
  vos_files.check_annotations_have_frames(frame_names, annotated, video, jpeg_dir, png_dir)
  frames, size = [], None
  for name in frame_names:
    data, frame_size = vos_files.read_jpeg(stems[name], video, name)
    size = size or frame_size
    vos_files.check_size(size, frame_size, video, name, stems[name],
                         f"the video's first frame {frame_names[0]!r}")
    frames.append(data)
  label_maps = []
  for name in frame_names:
    if name not in annotated:
      label_maps.append(None)
      continue
    path = png_dir / f"{name}.png"
    labels = _read_mask(path, video, name)
    vos_files.check_size(size, labels.shape, video, name, path, f"frame {stems[name]}")
    label_maps.append(labels)
  first_frame = vos_files.first_appearances(label_maps, features.IGNORE_LABEL)
  if not first_frame:
    raise ValueError(f"video {video!r}: its masks in {png_dir} hold no object (only 0 and "
                     f"{features.IGNORE_LABEL})")
  ids = sorted(first_frame)
  unannotated = vos_files.encode_labels(np.full(size, features.IGNORE_LABEL, np.uint8))
  return {
      "video": {
          "name": video,
          "frames": frames,
          "segmentations": [unannotated if labels is None else vos_files.encode_labels(labels)
                            for labels in label_maps],
          "frame_names": frame_names,
      },
      "objects": {
          "ids": np.array(ids, dtype=np.int32),
          "first_frame": np.array([first_frame[i] for i in ids], dtype=np.int32),
      },
  }
