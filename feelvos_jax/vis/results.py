"""The YouTube-VIS challenge's results file: check it, write it (JSON and zip) atomically.

A results file is a JSON list of instances, one per predicted instance of a video:
  {"video_id": int, "category_id": int, "score": float,
   "segmentations": [T] compressed RLE {"size": [h, w], "counts": str}, or null where absent}
The challenge server takes it zipped as `results.json` at the zip's root (`write_submission`).
"""
import io
import json
import math
import os
import tempfile
import zipfile

from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis.annotations import AnnotationError


def check_results(results: object, dataset: dict, source: str) -> list[dict]:
  """The results with every RLE normalised (counts a str), checked against `dataset`.

  Raises:
    AnnotationError: not a list of instances, an unknown video or category id, a score that is
      not a finite number, a segmentation count other than the video's length, an RLE of the
      wrong size or with malformed counts, naming the entry, video and frame.
  """
  if not isinstance(results, list):
    raise AnnotationError(f"{source}: a results file is a JSON list of instances")
  videos = {v["id"]: v for v in dataset["videos"]}
  categories = {c["id"] for c in dataset["categories"]}
  checked = []
  for index, entry in enumerate(results):
    label = f"{source}: entry {index}"
    if not isinstance(entry, dict):
      raise AnnotationError(f"{label}: not an object")
    missing = [k for k in ("video_id", "category_id", "score", "segmentations")
               if k not in entry]
    if missing:
      raise AnnotationError(f"{label}: lacks {missing}")
    video = videos.get(entry["video_id"])
    if video is None:
      raise AnnotationError(f"{label}: unknown video id {entry['video_id']!r}")
    label += f" (video {video['id']}, {annotation_io.video_name(video)})"
    if entry["category_id"] not in categories:
      raise AnnotationError(f"{label}: category {entry['category_id']!r} is not one of "
                            f"{sorted(categories)}")
    score = entry["score"]
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
      raise AnnotationError(f"{label}: score {score!r} is not a finite number")
    segmentations = entry["segmentations"]
    num_frames = len(video["file_names"])
    if not isinstance(segmentations, list) or len(segmentations) != num_frames:
      count = len(segmentations) if isinstance(segmentations, list) else None
      raise AnnotationError(f"{label}: {count} segmentations for the video's {num_frames} "
                            "frames")
    rles = []
    for t, segmentation in enumerate(segmentations):
      if segmentation is not None and not isinstance(segmentation, dict):
        raise AnnotationError(f"{label}, frame {t}: a segmentation must be RLE or null")
      rles.append(annotation_io.frame_rle(segmentation, video["height"], video["width"],
                                          f"{label}, frame {t}"))
    checked.append({"video_id": entry["video_id"], "category_id": entry["category_id"],
                    "score": float(score), "segmentations": rles})
  return checked


def read_results(path: str) -> object:
  """The parsed, unchecked results of a JSON file or of a zip's `results.json`
  (AnnotationError naming the file if it is neither)."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if "results.json" not in archive.namelist():
        raise AnnotationError(f"{path}: the zip holds no results.json")
      try:
        return json.load(io.TextIOWrapper(archive.open("results.json"), encoding="utf-8"))
      except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: results.json is not JSON ({error})") from None
  return annotation_io.read_json(path)


def load_results(path: str, dataset: dict) -> list[dict]:
  """`check_results` of the file (JSON or zip) at `path`."""
  return check_results(read_results(path), dataset, path)


def _atomic_write(path: str, write) -> None:
  """Calls `write(temporary_path)` beside `path`, then renames it over `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
  os.close(handle)
  try:
    write(temporary)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise


def write_json(value: object, path: str) -> None:
  """Writes `value` as JSON at `path`, atomically (a crash leaves the old file or none)."""
  def write(temporary):
    with open(temporary, "w", encoding="utf-8") as file:
      json.dump(value, file)
  _atomic_write(path, write)


def write_results(results: list[dict], path: str) -> None:
  """Writes `results` (instances as `check_results` returns) as JSON at `path`, atomically."""
  write_json(results, path)


def write_submission(results: list[dict], json_path: str, zip_path: str) -> None:
  """`write_results` to `json_path`, and `zip_path` holding it as `results.json` (what the
  challenge server reads), each written atomically."""
  write_results(results, json_path)

  def write(temporary):
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
      archive.write(json_path, "results.json")
  _atomic_write(zip_path, write)
