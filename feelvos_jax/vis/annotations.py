"""YouTube-VIS annotation files (`instances.json`): read, check against the videos, convert to RLE.

The format (2019 and 2021 releases):
  videos:      [{id, width, height, length, file_names: [T] "<video>/<frame>.jpg"}]
  categories:  [{id, name, supercategory}]
  annotations: [{id, video_id, category_id, iscrowd, segmentations: [T] (RLE | polygons |
                null where the instance is absent), areas, bboxes, ...}]
(the `valid` and `test` files have no `annotations`). `check_dataset` refuses a file that does
not match its own videos (a segmentation of another size, a frame count other than the video's
length, an unknown video or category id), naming the annotation, the video and the frame.
`frame_rle` turns any per-frame segmentation into pycocotools's compressed RLE.
"""
import json
import os
import warnings

import numpy as np
from pycocotools import mask as mask_utils


class AnnotationError(ValueError):
  """An annotation or results file that does not match its videos (names video and frame)."""


def read_json(path: str) -> object:
  """The parsed JSON file at `path` (AnnotationError naming it when it is not JSON)."""
  if not os.path.isfile(path):
    raise AnnotationError(f"{path}: no such file")
  try:
    with open(path, encoding="utf-8") as file:
      return json.load(file)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise AnnotationError(f"{path}: not a JSON file ({error})") from error


def video_name(video: dict) -> str:
  """The folder of a video entry: the directory part of its first file name, else its id."""
  names = video.get("file_names") or []
  return os.path.dirname(names[0]) if names else str(video.get("id"))


def rle_counts_valid(counts: str, num_pixels: int) -> bool:
  """Whether a compressed RLE string decodes to non-negative runs summing to `num_pixels`
  (pycocotools's decoder would read past a malformed one silently)."""
  runs, position, total = [], 0, 0
  while position < len(counts):
    value, shift, more = 0, 0, True
    while more:
      if position >= len(counts):
        return False
      code = ord(counts[position]) - 48
      if not 0 <= code < 64:
        return False
      value |= (code & 0x1F) << (5 * shift)
      more = bool(code & 0x20)
      position += 1
      shift += 1
      if not more and code & 0x10:
        value |= -1 << (5 * shift)
    if len(runs) > 2:
      value += runs[-2]
    if value < 0:
      return False
    runs.append(value)
    total += value
  return total == num_pixels


def frame_rle(segmentation, height: int, width: int, where: str) -> dict | None:
  """One frame's segmentation as compressed RLE {"size": [h, w], "counts": str}, or None.

  Args:
    segmentation: None (absent), an RLE dict (counts a list of ints or a compressed string),
      or polygons (a list of [x1, y1, x2, y2, ...] lists).
    height, width: the video's frame size, which an RLE's size must equal.
    where: "annotation 7 of video 3 (name), frame 5", for error messages.
  Raises:
    AnnotationError: wrong size, malformed counts or polygons.
  """
  if segmentation is None:
    return None
  if isinstance(segmentation, dict):
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if size is None or counts is None or list(size) != [height, width]:
      raise AnnotationError(f"{where}: RLE of size {size}, but the video's frames are "
                            f"{height}x{width}")
    if isinstance(counts, list):
      if any((not isinstance(c, int)) or c < 0 for c in counts) or sum(counts) != height * width:
        raise AnnotationError(f"{where}: malformed RLE counts (runs must be non-negative "
                              f"integers summing to {height}x{width})")
      rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
      text = counts.decode("ascii") if isinstance(counts, bytes) else counts
      if not isinstance(text, str) or not rle_counts_valid(text, height * width):
        raise AnnotationError(f"{where}: malformed compressed RLE counts")
      rle = {"size": [height, width], "counts": text.encode("ascii")}
  elif isinstance(segmentation, list):
    polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                and all(isinstance(v, (int, float)) for v in p)]
    if not polygons or len(polygons) != len(segmentation):
      raise AnnotationError(f"{where}: malformed polygons (lists of >= 3 x, y pairs expected)")
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  else:
    raise AnnotationError(f"{where}: a segmentation must be RLE, polygons or null, "
                          f"got {type(segmentation).__name__}")
  counts = rle["counts"]
  return {"size": [height, width],
          "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode(rle: dict | None, height: int, width: int) -> np.ndarray:
  """[H, W] bool mask of a compressed RLE (all False for None)."""
  if rle is None:
    return np.zeros((height, width), bool)
  with warnings.catch_warnings():  # pycocotools's __array__ predates NumPy 2's copy keyword.
    warnings.simplefilter("ignore", DeprecationWarning)
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}) > 0


def encode(mask: np.ndarray) -> dict:
  """Compressed RLE {"size", "counts": str} of a [H, W] bool mask."""
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def check_dataset(dataset: object, source: str) -> dict:
  """The dataset with every annotation's `segmentations` as compressed RLE (or None).

  Args:
    dataset: the parsed `instances.json`.
    source: its path, for messages.
  Returns:
    a new dict: videos, categories, annotations (each with `segmentations` converted, `area`
    the mean area over the frames where it is present, `iscrowd` defaulting to 0).
  Raises:
    AnnotationError: a missing key, an unknown video or category id, a segmentation count
      other than the video's length, a frame of the wrong size or a malformed RLE or polygon,
      naming the annotation, video and frame.
  """
  if not isinstance(dataset, dict) or "videos" not in dataset or "categories" not in dataset:
    raise AnnotationError(f"{source}: not a YouTube-VIS file (needs 'videos' and 'categories')")
  videos = {}
  for video in dataset["videos"]:
    missing = [k for k in ("id", "height", "width", "file_names") if k not in video]
    if missing:
      raise AnnotationError(f"{source}: video {video.get('id')} lacks {missing}")
    videos[video["id"]] = video
  categories = {c["id"] for c in dataset["categories"]}
  annotations = []
  for index, annotation in enumerate(dataset.get("annotations") or []):
    video = videos.get(annotation.get("video_id"))
    label = f"{source}: annotation {annotation.get('id', index)}"
    if video is None:
      raise AnnotationError(f"{label}: unknown video id {annotation.get('video_id')!r}")
    label += f" of video {video['id']} ({video_name(video)})"
    if annotation.get("category_id") not in categories:
      raise AnnotationError(f"{label}: category {annotation.get('category_id')!r} is not in "
                            f"the file's categories {sorted(categories)}")
    segmentations = annotation.get("segmentations")
    num_frames = len(video["file_names"])
    if not isinstance(segmentations, list) or len(segmentations) != num_frames:
      count = len(segmentations) if isinstance(segmentations, list) else None
      raise AnnotationError(f"{label}: {count} segmentations for the video's {num_frames} "
                            "frames")
    rles = [frame_rle(s, video["height"], video["width"], f"{label}, frame {t}")
            for t, s in enumerate(segmentations)]
    areas = [float(mask_utils.area({"size": r["size"], "counts": r["counts"].encode("ascii")}))
             for r in rles if r is not None]
    annotations.append(dict(annotation, segmentations=rles, iscrowd=annotation.get("iscrowd", 0),
                            area=float(np.mean(areas)) if areas else 0.0))
  return {"videos": list(dataset["videos"]), "categories": list(dataset["categories"]),
          "annotations": annotations}


def load_annotations(path: str) -> dict:
  """`check_dataset` of the file at `path`."""
  return check_dataset(read_json(path), path)


def dataset_from_videos(videos, category_names) -> dict:
  """Ground truth in this module's checked format from decoded VIS examples.

  Args:
    videos: iterable of examples of the VIS feature spec as NumPy (`datasets/vis_features.py`):
      video/id, video/name, video/segmentations [T, H, W, 1], instances/ids, instances/categories.
    category_names: names of categories 1..K.
  Returns:
    {"videos", "categories", "annotations"} as `check_dataset` returns them.
  """
  video_entries, annotations = [], []
  for example in videos:
    segmentation = example["video"]["segmentations"][..., 0]
    num_frames, height, width = segmentation.shape
    name = _text(example["video"]["name"])
    video_id = int(example["video"]["id"])
    video_entries.append({"id": video_id, "height": height, "width": width,
                          "length": num_frames,
                          "file_names": [f"{name}/{t:05d}.jpg" for t in range(num_frames)]})
    for slot, (instance, category) in enumerate(zip(example["instances"]["ids"],
                                                    example["instances"]["categories"])):
      masks = segmentation == slot + 1
      rles = [encode(m) if m.any() else None for m in masks]
      areas = [float(m.sum()) for m in masks if m.any()]
      annotations.append({"id": len(annotations) + 1, "video_id": video_id,
                          "instance_id": int(instance), "category_id": int(category),
                          "iscrowd": 0, "segmentations": rles,
                          "area": float(np.mean(areas)) if areas else 0.0})
  categories = [{"id": k + 1, "name": n} for k, n in enumerate(category_names)]
  return {"videos": video_entries, "categories": categories, "annotations": annotations}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
