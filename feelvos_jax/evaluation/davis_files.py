"""Evaluating a folder of DAVIS predictions against a DAVIS 2017 dataset folder.

Layout (as the official davis2017-evaluation tool reads it):
  <dataset_root>/ImageSets/2017/<split>.txt          one sequence name per line
  <dataset_root>/Annotations/<resolution>/<seq>/*.png palette PNGs, frames in name order
  <predictions>/<seq>/<frame>.png                     indexed PNGs named like the annotations

Behaviour, matching the tool's semi-supervised task where it has one:
- Frames are the annotation PNGs in name order; the first and the last are not scored, and
  their predictions are not read (they may be absent).
- Evaluated object ids are 1 .. max id of the first annotation (255 read as 0); annotation 255
  pixels count as background (the tool turns them into 0 and uses no void mask in this task).
- A predicted id that is not an evaluated id is an error (the tool prints a message and exits).
Where the tool crashes or prints and exits with status 0, this raises instead, naming the
sequence and frame: a missing prediction folder or frame (FileNotFoundError), a prediction that
is not a 2-D indexed/grayscale PNG or not of the annotation's size (ValueError), and a
sequence whose first annotation holds no object (ValueError; the tool would silently score
nothing for it).
"""
import csv
import io
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from feelvos_jax.evaluation import videos
from feelvos_jax.evaluation import writers


def global_csv_name(split: str) -> str:
  """File name of the global table, as the official tool names it."""
  return f"global_results-{split}.csv"


def per_sequence_csv_name(split: str) -> str:
  """File name of the per-object table, as the official tool names it."""
  return f"per-sequence_results-{split}.csv"


def read_split(dataset_root: str, split: str) -> list[str]:
  """Sequence names of `ImageSets/2017/<split>.txt`, in file order (blank lines skipped)."""
  path = os.path.join(dataset_root, "ImageSets", "2017", f"{split}.txt")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Split file {path!r} not found (split {split!r}).")
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise ValueError(f"Split file {path!r} lists no sequence.")
  return names


def _read_png(path: str) -> np.ndarray:
  with Image.open(path) as image:
    return np.array(image)


def annotation_frames(dataset_root: str, sequence: str, resolution: str = "480p") -> list[str]:
  """Frame names (file stems) of a sequence's annotation PNGs, in name order."""
  folder = os.path.join(dataset_root, "Annotations", resolution, sequence)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Sequence {sequence!r}: annotation folder {folder!r} not found.")
  names = sorted(name[:-4] for name in os.listdir(folder) if name.endswith(".png"))
  if not names:
    raise FileNotFoundError(f"Sequence {sequence!r}: no PNG annotation in {folder!r}.")
  return names


def _read_labels(path: str, sequence: str, frame: str, what: str,
                 shape: Optional[tuple[int, ...]] = None) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Sequence {sequence!r}, frame {frame!r}: {what} {path!r} not found.")
  labels = _read_png(path)
  if labels.ndim != 2:
    raise ValueError(f"Sequence {sequence!r}, frame {frame!r}: {what} {path!r} must be an "
                     f"indexed (palette) or grayscale PNG, got an image of shape {labels.shape}.")
  if shape is not None and labels.shape != shape:
    raise ValueError(f"Sequence {sequence!r}, frame {frame!r}: {what} {path!r} is "
                     f"{labels.shape[0]}x{labels.shape[1]} (HxW), the annotation is "
                     f"{shape[0]}x{shape[1]}.")
  return labels


def evaluate_sequence(predictions_dir: str, dataset_root: str, sequence: str,
                      resolution: str = "480p") -> videos.VideoScores:
  """Per-object, per-frame J and F of one predicted sequence (frames 1..T-2)."""
  frames = annotation_frames(dataset_root, sequence, resolution)
  if len(frames) < 3:
    raise ValueError(f"Sequence {sequence!r}: {len(frames)} annotated frames; the protocol "
                     "scores frames 1..T-2 and needs at least 3.")
  prediction_folder = os.path.join(predictions_dir, sequence)
  if not os.path.isdir(prediction_folder):
    raise FileNotFoundError(f"Sequence {sequence!r}: prediction folder {prediction_folder!r} "
                            "not found.")
  annotation_folder = os.path.join(dataset_root, "Annotations", resolution, sequence)
  scored = frames[1:-1]
  first = _read_labels(os.path.join(annotation_folder, f"{frames[0]}.png"), sequence,
                       frames[0], "annotation")
  object_ids = videos.davis_object_ids(first)
  if not object_ids:
    raise ValueError(f"Sequence {sequence!r}, frame {frames[0]!r}: the first annotation holds "
                     "no object.")
  gt = np.stack([_read_labels(os.path.join(annotation_folder, f"{frame}.png"), sequence, frame,
                              "annotation", first.shape) for frame in scored])
  pred = np.stack([_read_labels(os.path.join(prediction_folder, f"{frame}.png"), sequence, frame,
                                "prediction", first.shape) for frame in scored])
  return videos.evaluate_video(pred, gt, object_ids, skip_first_and_last=False, name=sequence,
                               frame_names=scored)


def evaluate_predictions(
    predictions_dir: str, dataset_root: str, split: str, resolution: str = "480p",
) -> tuple[dict[str, float], list[dict[str, object]]]:
  """Scores `<predictions_dir>/<seq>/<frame>.png` on every sequence of a DAVIS 2017 split.

  Args:
    predictions_dir: folder of predicted sequences.
    dataset_root: DAVIS folder holding `ImageSets/` and `Annotations/`.
    split: split name, e.g. "val" (`ImageSets/2017/<split>.txt`).
    resolution: annotation resolution folder, "480p" or "Full-Resolution".

  Returns:
    (global_table, per_sequence_table) as `videos.summarize` returns them.
  """
  return videos.summarize(
      evaluate_sequence(predictions_dir, dataset_root, sequence, resolution)
      for sequence in read_split(dataset_root, split))


def _format_value(value: object) -> str:
  if isinstance(value, str):
    return value
  return "" if math.isnan(value) else f"{value:.3f}"


def _csv_bytes(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> bytes:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_format_value(row[column]) for column in columns])
  return text.getvalue().encode()


def write_results_csv(predictions_dir: str, split: str, global_table: dict[str, float],
                      per_sequence_table: Sequence[dict[str, object]]) -> tuple[str, str]:
  """Writes the two CSVs of the tool (floats as %.3f, no index column), each atomically.

  Returns:
    (global csv path, per-sequence csv path).
  """
  global_path = os.path.join(predictions_dir, global_csv_name(split))
  per_sequence_path = os.path.join(predictions_dir, per_sequence_csv_name(split))
  global_bytes = _csv_bytes(videos.GLOBAL_COLUMNS, [global_table])
  per_sequence_bytes = _csv_bytes(videos.PER_SEQUENCE_COLUMNS, per_sequence_table)
  writers.atomic_write(global_path, lambda f: f.write(global_bytes))
  writers.atomic_write(per_sequence_path, lambda f: f.write(per_sequence_bytes))
  return global_path, per_sequence_path


def format_table(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> str:
  """A right-aligned text table (floats with 3 decimals), as the tool prints its tables."""
  cells = [list(columns)] + [[_format_value(row[c]) for c in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  return "\n".join(" ".join(cell.rjust(width) for cell, width in zip(line, widths))
                   for line in cells)
