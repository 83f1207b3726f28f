"""Evaluating a folder of DAVIS predictions against a DAVIS 2017 dataset folder.

Layout (as the official davis2017-evaluation tool reads it):
  <dataset_root>/ImageSets/2017/<split>.txt          one sequence name per line
  <dataset_root>/Annotations/<resolution>/<seq>/*.png palette PNGs, frames in name order
  <predictions>/<seq>/<frame>.png                     indexed PNGs named like the annotations

Frames are the annotation PNGs in name order. Which objects are scored on which frames is the
protocol's choice (`protocols`), the same as for `main.py --mode=evaluate`:
- DAVIS 2017 (the default, the tool's semi-supervised task): the ids present in the first
  annotation, scored on every frame but the first and the last, whose predictions are not read
  (they may be absent); annotation 255 pixels and later objects count as background (the tool
  turns 255 into 0 and uses no void mask in this task). The tool evaluates 1 .. max id of the
  first annotation instead; with DAVIS's ids 1..N per video both are the same.
- YouTube-VOS convention: every id of the annotations, scored on the frames after the one
  where it first appears (predictions of frames before the first such frame are not read).
A predicted id that is not an evaluated id is an error (the tool prints a message and exits).
Where the tool crashes or prints and exits with status 0, this raises instead, naming the
sequence and frame: a missing prediction folder or frame (FileNotFoundError), a prediction that
is not a 2-D indexed/grayscale PNG or not of the annotation's size (ValueError), and a
sequence whose first annotation holds no object (ValueError, DAVIS 2017; the tool would
silently score nothing for it).
"""
import csv
import io
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from feelvos_jax.evaluation import protocols
from feelvos_jax.evaluation import videos
from feelvos_jax.evaluation import writers


def _protocol_suffix(protocol: str) -> str:
  return "" if protocols.check(protocol) == protocols.DAVIS_2017 else f"-{protocol}"


def global_csv_name(split: str, protocol: str = protocols.DAVIS_2017) -> str:
  """File name of the global table: the official tool's for DAVIS 2017,
  `global_results-<split>-<protocol>.csv` for another protocol."""
  return f"global_results-{split}{_protocol_suffix(protocol)}.csv"


def per_sequence_csv_name(split: str, protocol: str = protocols.DAVIS_2017) -> str:
  """File name of the per-object table, named as `global_csv_name` names the global one."""
  return f"per-sequence_results-{split}{_protocol_suffix(protocol)}.csv"


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
                      resolution: str = "480p", protocol: str = protocols.DAVIS_2017
                      ) -> Optional[videos.VideoScores]:
  """Per-object, per-frame J and F of one predicted sequence, with `protocol` (see the module
  docstring); None when the protocol finds nothing to score."""
  protocols.check(protocol)
  frames = annotation_frames(dataset_root, sequence, resolution)
  if protocol == protocols.DAVIS_2017 and len(frames) < 3:
    raise ValueError(f"Sequence {sequence!r}: {len(frames)} annotated frames; the DAVIS 2017 "
                     "protocol scores frames 1..T-2 and needs at least 3.")
  prediction_folder = os.path.join(predictions_dir, sequence)
  if not os.path.isdir(prediction_folder):
    raise FileNotFoundError(f"Sequence {sequence!r}: prediction folder {prediction_folder!r} "
                            "not found.")
  annotation_folder = os.path.join(dataset_root, "Annotations", resolution, sequence)
  first = _read_labels(os.path.join(annotation_folder, f"{frames[0]}.png"), sequence,
                       frames[0], "annotation")
  if protocol == protocols.DAVIS_2017:
    object_ids = videos.davis_object_ids(first)
    if not object_ids:
      raise ValueError(f"Sequence {sequence!r}, frame {frames[0]!r}: the first annotation holds "
                       "no object.")
    read = range(1, len(frames) - 1)
    first_frame = [0] * len(object_ids)
  else:
    read = range(len(frames))
  gt = np.full((len(frames),) + first.shape, 255, np.int64)  # Wide: 16-bit PNGs stay exact.
  gt[0] = first
  for t in read:
    gt[t] = _read_labels(os.path.join(annotation_folder, f"{frames[t]}.png"), sequence,
                         frames[t], "annotation", first.shape)
  if protocol != protocols.DAVIS_2017:
    appearances = _first_appearances(gt)
    object_ids, first_frame = list(appearances), list(appearances.values())
  needed = np.zeros(len(frames), bool)  # No object: score_video raises, naming the sequence.
  if object_ids:
    needed = protocols.scored_frames(protocol, first_frame, protocols.annotated_frames(gt),
                                     name=sequence).any(axis=0)
  pred = np.zeros_like(gt)
  for t in np.flatnonzero(needed):
    pred[t] = _read_labels(os.path.join(prediction_folder, f"{frames[t]}.png"), sequence,
                           frames[t], "prediction", first.shape)
  return protocols.score_video(protocol, pred, gt, object_ids, first_frame, name=sequence,
                               frame_names=frames)


def _first_appearances(labels: np.ndarray) -> dict[int, int]:
  """{object id: index of the first frame showing it} of `labels` [T, H, W] (0 and 255 are
  not objects), in id order."""
  first = {}
  for t, frame in enumerate(labels):
    for object_id in np.unique(frame).tolist():
      if object_id not in (0, 255) and object_id not in first:
        first[object_id] = t
  return dict(sorted(first.items()))


def evaluate_predictions(
    predictions_dir: str, dataset_root: str, split: str, resolution: str = "480p",
    protocol: str = protocols.DAVIS_2017,
) -> tuple[dict[str, float], list[dict[str, object]]]:
  """Scores `<predictions_dir>/<seq>/<frame>.png` on every sequence of a DAVIS 2017 split.

  Args:
    predictions_dir: folder of predicted sequences.
    dataset_root: DAVIS folder holding `ImageSets/` and `Annotations/`.
    split: split name, e.g. "val" (`ImageSets/2017/<split>.txt`).
    resolution: annotation resolution folder, "480p" or "Full-Resolution".
    protocol: `protocols.DAVIS_2017` (the tool's) or `protocols.YOUTUBE_VOS`.

  Returns:
    (global_table, per_sequence_table) as `videos.summarize` returns them.
  """
  scores = (evaluate_sequence(predictions_dir, dataset_root, sequence, resolution, protocol)
            for sequence in read_split(dataset_root, split))
  return videos.summarize(score for score in scores if score is not None)


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
                      per_sequence_table: Sequence[dict[str, object]],
                      protocol: str = protocols.DAVIS_2017) -> tuple[str, str]:
  """Writes the two CSVs of the tool (floats as %.3f, no index column), each atomically, named
  by `global_csv_name` and `per_sequence_csv_name` for `protocol`.

  Returns:
    (global csv path, per-sequence csv path).
  """
  global_path = os.path.join(predictions_dir, global_csv_name(split, protocol))
  per_sequence_path = os.path.join(predictions_dir, per_sequence_csv_name(split, protocol))
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


def format_results(split: str, protocol: str, global_table: dict[str, float],
                   per_sequence_table: Sequence[dict[str, object]],
                   paths: Sequence[str]) -> str:
  """What the commands print: the protocol, both tables and where the CSVs were saved."""
  return "\n".join([
      f"Scored with the {protocols.describe(protocol)}.",
      f"--------------------------- Global results for {split} ---------------------------",
      format_table(videos.GLOBAL_COLUMNS, [global_table]),
      f"\n---------- Per sequence results for {split} ----------",
      format_table(videos.PER_SEQUENCE_COLUMNS, per_sequence_table),
      "\nAnnotation 255 pixels count as background, as in the official tool.",
      f"Results ({protocol}) saved in " + " and ".join(paths)])
