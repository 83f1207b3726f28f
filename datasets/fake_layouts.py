"""Tiny fake DAVIS 2017 and YouTube-VOS datasets in the exact official folder layouts, and a
tiny `vos_folder` tree (your own videos' layout).

For tests: each writer draws videos of moving ellipses/rectangles over a smooth background, saves
real JPEG frames and palette-indexed PNG annotations (DAVIS palette) where the real datasets put
them, and returns the ground truth a builder reading them must produce.
"""
import dataclasses
import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from datasets import palette
from feelvos_jax import IGNORE_LABEL

_JPEG_QUALITY = 95


@dataclasses.dataclass
class FakeVideo:
  """What a builder must decode for one written video.

  Attributes:
    name: the video folder name.
    split: the TFDS split it belongs to ("train" or "validation").
    frames: [T, H, W, 3] uint8 pixels before JPEG encoding (decoded frames match approximately).
    segmentations: [T, H, W] uint8 labels as decoded (255 where a frame has no annotation PNG).
    frame_names: the T file stems ("00000", ...).
    ids: object ids in increasing order.
    first_frame: for each id, the index of the first annotated frame showing it.
  """
  name: str
  split: str
  frames: np.ndarray
  segmentations: np.ndarray
  frame_names: list[str]
  ids: list[int]
  first_frame: list[int]


def _draw_video(rng: np.random.Generator, num_frames: int, size: tuple[int, int],
                appear: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Frames [T, H, W, 3] uint8 and full labels [T, H, W] uint8 of moving objects 1..len(appear).

  Object k (odd: ellipse, even: rectangle) is drawn from frame appear[k - 1] on, later objects
  on top of earlier ones; its centre moves linearly and stays inside the frame.
  """
  height, width = size
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  background = np.stack([
      40 + 160 * x / max(width - 1, 1),
      40 + 160 * y / max(height - 1, 1),
      np.full_like(x, rng.uniform(60, 200)),
  ], axis=-1)
  frames = np.repeat(background[None], num_frames, axis=0)
  labels = np.zeros((num_frames, height, width), dtype=np.uint8)
  for object_id, first in enumerate(appear, start=1):
    radius = rng.uniform(0.15, 0.3, size=2) * (height, width)
    start = rng.uniform(radius, (height - 1, width - 1) - radius)
    velocity = rng.uniform(-1.5, 1.5, size=2)
    colour = rng.uniform(0, 255, size=3)
    for t in range(first, num_frames):
      centre_y, centre_x = np.clip(start + velocity * t, 0, (height - 1, width - 1))
      dy, dx = (y - centre_y) / radius[0], (x - centre_x) / radius[1]
      if object_id % 2:
        mask = dy**2 + dx**2 <= 1
      else:
        mask = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
      frames[t][mask] = colour
      labels[t][mask] = object_id
  return np.round(frames).astype(np.uint8), labels


def _first_appearances(segmentations: np.ndarray) -> tuple[list[int], list[int]]:
  """Sorted ids (not 0/255) in [T, H, W] labels and the first frame index showing each."""
  first = {}
  for t, labels in enumerate(segmentations):
    for value in np.unique(labels).tolist():
      if value not in (0, IGNORE_LABEL):
        first.setdefault(value, t)
  ids = sorted(first)
  return ids, [first[i] for i in ids]


def _write_frames(directory: str, frames: np.ndarray, frame_names: Sequence[str]) -> None:
  os.makedirs(directory, exist_ok=True)
  for frame, name in zip(frames, frame_names):
    Image.fromarray(frame).save(os.path.join(directory, f"{name}.jpg"), quality=_JPEG_QUALITY,
                                subsampling=0)


def _write_annotation(directory: str, labels: np.ndarray, name: str) -> None:
  os.makedirs(directory, exist_ok=True)
  palette.palette_image(labels).save(os.path.join(directory, f"{name}.png"))


def write_fake_davis2017(root: str, sequences: Optional[Mapping[str, Sequence[str]]] = None,
                         num_frames: int = 3, size: tuple[int, int] = (24, 32),
                         num_objects: int = 2, seed: int = 0,
                         full_resolution: bool = False) -> dict[str, FakeVideo]:
  """Writes a DAVIS 2017 trainval layout under `root` (the `DAVIS/` folder of the official zips).

  Writes ImageSets/2017/{train,val}.txt, JPEGImages/<res>/<seq>/00000.jpg and
  Annotations/<res>/<seq>/00000.png for every frame, <res> = "480p" or "Full-Resolution".
  Objects 1..num_objects appear in frame 0, except the last, which appears at frame
  num_frames // 2 when num_objects > 1; a 2x3 void (255) block sits in every frame's top-left
  corner.

  Args:
    root: folder to write into (created if needed).
    sequences: {"train": [names], "val": [names]}; default two train and one val sequence.
    num_frames: frames per sequence.
    size: (height, width) of every frame.
    num_objects: objects per sequence.
    seed: seeds the drawing.
    full_resolution: write the Full-Resolution folders instead of the 480p ones.

  Returns:
    {sequence name: FakeVideo}; `split` is "train" or "validation".
  """
  sequences = sequences or {"train": ["train_a", "train_b"], "val": ["val_a"]}
  resolution = "Full-Resolution" if full_resolution else "480p"
  rng = np.random.default_rng(seed)
  image_sets = os.path.join(root, "ImageSets", "2017")
  os.makedirs(image_sets, exist_ok=True)
  appear = [0] * num_objects
  if num_objects > 1:
    appear[-1] = num_frames // 2
  truth = {}
  for split_file, names in sequences.items():
    with open(os.path.join(image_sets, f"{split_file}.txt"), "w") as f:
      f.write("".join(f"{name}\n" for name in names))
    for name in names:
      frames, labels = _draw_video(rng, num_frames, size, appear)
      labels[:, :2, :3] = IGNORE_LABEL
      frame_names = [f"{t:05d}" for t in range(num_frames)]
      _write_frames(os.path.join(root, "JPEGImages", resolution, name), frames, frame_names)
      for t, frame_name in enumerate(frame_names):
        _write_annotation(os.path.join(root, "Annotations", resolution, name), labels[t],
                          frame_name)
      ids, first_frame = _first_appearances(labels)
      truth[name] = FakeVideo(name, "validation" if split_file == "val" else split_file, frames,
                              labels, frame_names, ids, first_frame)
  return truth


def write_fake_youtube_vos(root: str, videos: Optional[Mapping[str, Sequence[str]]] = None,
                           num_frames: int = 11, size: tuple[int, int] = (24, 32),
                           seed: int = 0, annotation_step: int = 5) -> dict[str, FakeVideo]:
  """Writes a YouTube-VOS release layout (the folder holding train/ and valid/) under `root`.

  Every frame is a JPEG (as in the all-frames zips): <split>/JPEGImages/<video>/00000.jpg, ...
  Object 1 appears at frame 0 and object 2 at frame `annotation_step`. train/Annotations has a
  PNG with all objects at every `annotation_step`-th frame; valid/Annotations only the PNGs of
  first appearances, each holding just the objects appearing there (0 elsewhere). Each split's
  meta.json lists, per object, the annotated frames showing it.

  Args:
    root: folder to write into (created if needed).
    videos: {"train": [names], "valid": [names]}; default two train and one valid video.
    num_frames: frames per video (more than `annotation_step`, so object 2 appears).
    size: (height, width) of every frame.
    seed: seeds the drawing.
    annotation_step: annotation PNGs at frames 0, step, 2 * step, ...

  Returns:
    {video name: FakeVideo}; `split` is "train" or "validation"; unannotated frames are 255.
  """
  if num_frames <= annotation_step:
    raise ValueError(
        f"num_frames ({num_frames}) must exceed annotation_step ({annotation_step})")
  videos = videos or {"train": ["train_a", "train_b"], "valid": ["valid_a"]}
  rng = np.random.default_rng(seed)
  frame_names = [f"{t:05d}" for t in range(num_frames)]
  truth = {}
  for split_folder, names in videos.items():
    meta = {}
    for name in names:
      frames, labels = _draw_video(rng, num_frames, size, appear=(0, annotation_step))
      _write_frames(os.path.join(root, split_folder, "JPEGImages", name), frames, frame_names)
      written = np.full_like(labels, IGNORE_LABEL)
      shown = set()
      objects = {}
      for t in range(0, num_frames, annotation_step):
        present = [i for i in np.unique(labels[t]).tolist() if i != 0]
        for object_id in present:
          objects.setdefault(str(object_id), {"category": "fake", "frames": []})
          objects[str(object_id)]["frames"].append(frame_names[t])
        if split_folder == "valid":
          new = [i for i in present if i not in shown]
          if not new:
            continue
          written[t] = np.where(np.isin(labels[t], new), labels[t], 0)
          shown.update(new)
        else:
          written[t] = labels[t]
        _write_annotation(os.path.join(root, split_folder, "Annotations", name), written[t],
                          frame_names[t])
      meta[name] = {"objects": objects}
      ids, first_frame = _first_appearances(written)
      truth[name] = FakeVideo(name, "validation" if split_folder == "valid" else split_folder,
                              frames, written, frame_names, ids, first_frame)
    with open(os.path.join(root, split_folder, "meta.json"), "w") as f:
      json.dump({"videos": meta}, f)
  return truth


def write_fake_vos_folder(root: str, videos: Sequence[str] = ("clip_a", "clip_b", "clip_c"),
                          num_frames: int = 6, size: tuple[int, int] = (24, 32),
                          annotated: Sequence[int] = (0, 3), seed: int = 0,
                          validation: Optional[Sequence[str]] = None) -> dict[str, FakeVideo]:
  """Writes a `vos_folder` tree under `root`: JPEGImages/<video>/<frame>.jpg for every frame,
  Annotations/<video>/<frame>.png for the frames of `annotated` only, and val.txt listing
  `validation` when given. Object 1 appears at frame 0, object 2 at `annotated[-1]`, with
  ids 3 and 7 (palette indices); a 2x3 void block sits in the top-left corner of every mask.

  Returns:
    {video: FakeVideo}; `split` is "validation" for the videos of `validation` and "train"
    otherwise (without `validation` the builder draws the split: compare names only).
  """
  rng = np.random.default_rng(seed)
  frame_names = [f"frame{t}" for t in range(num_frames)]  # Natural order: frame2 < frame10.
  truth = {}
  for name in videos:
    frames, labels = _draw_video(rng, num_frames, size, appear=(0, annotated[-1]))
    labels = np.select([labels == 1, labels == 2], [3, 7], 0).astype(np.uint8)
    labels[:, :2, :3] = IGNORE_LABEL
    _write_frames(os.path.join(root, "JPEGImages", name), frames, frame_names)
    written = np.full_like(labels, IGNORE_LABEL)
    for t in annotated:
      written[t] = labels[t]
      _write_annotation(os.path.join(root, "Annotations", name), labels[t], frame_names[t])
    ids, first_frame = _first_appearances(written)
    split = "validation" if validation is not None and name in validation else "train"
    truth[name] = FakeVideo(name, split, frames, written, frame_names, ids, first_frame)
  if validation is not None:
    with open(os.path.join(root, "val.txt"), "w") as f:
      f.write("".join(f"{name}\n" for name in validation))
  return truth
