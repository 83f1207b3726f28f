"""Checks a configured VOS dataset: per-split counts and a contact sheet of frames with masks.

  python -m feelvos_jax.tools.data_check --config=configs/synthetic.py
      [--config.dataset.name=synthetic_vos/tiny] [--output=contact_sheet.png] [--num_samples=8]

Prepares the dataset if needed (see `datasets/registry.py`), prints for every split the number
of videos, frames, objects and annotated frames (frames with at least one labelled pixel), and
writes a PNG grid: one row per video, a few evenly spaced frames per row, objects tinted in the
DAVIS palette with their contours drawn.
"""
import os
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow as tf
import tensorflow_datasets as tfds

from datasets import palette
from datasets import registry
from feelvos_jax import config_overrides
from feelvos_jax import IGNORE_LABEL

CELL_PADDING = 2
"""Pixels between (and around) the contact-sheet cells."""

MASK_ALPHA = 0.45
"""Opacity of the object colours over the frames."""

FLAGS = flags.FlagValues()
"""This command's flags, apart from absl's global FLAGS so that names never clash with the
flags of other commands imported into the same process (main.py's --config, evaluate's --split)."""

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          flag_values=FLAGS, lock_config=True)
_OUTPUT = flags.DEFINE_string("output", "contact_sheet.png", "Contact sheet PNG to write.",
                              flag_values=FLAGS)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Videos (rows) in the contact sheet.",
                                    flag_values=FLAGS)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 6, "Frames (columns) per video in the sheet.",
                                   flag_values=FLAGS)
_CELL_HEIGHT = flags.DEFINE_integer("cell_height", 128, "Height of one sheet cell in pixels.",
                                    flag_values=FLAGS)
_SPLIT = flags.DEFINE_string("split", "", "Split shown in the sheet ('': dataset.train_split).",
                             flag_values=FLAGS)
flags.mark_flag_as_required("config", flag_values=FLAGS)


def overlay_masks(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Tints objects of `labels` [H, W] over `frame` [H, W, 3] uint8 and draws their contours.

  Object pixels (1..254) blend `MASK_ALPHA` of their palette colour; IGNORE_LABEL pixels blend
  grey; an object pixel whose 4-neighbour has another label is a contour, drawn in full colour.
  """
  if frame.shape[:2] != labels.shape:
    raise ValueError(f"overlay_masks: frame {frame.shape} and labels {labels.shape} differ.")
  colours = palette.davis_palette().astype(np.float32)
  colours[IGNORE_LABEL] = 128.0
  labels = labels.astype(np.int64)
  tinted = np.where((labels > 0)[..., None],
                    (1.0 - MASK_ALPHA) * frame + MASK_ALPHA * colours[labels], frame)
  edge = np.zeros(labels.shape, bool)
  vertical = labels[1:] != labels[:-1]
  horizontal = labels[:, 1:] != labels[:, :-1]
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  contour = edge & (labels > 0) & (labels != IGNORE_LABEL)
  tinted[contour] = colours[labels[contour]]
  return np.round(tinted).astype(np.uint8)


def video_counts(segmentations: np.ndarray, num_objects: int) -> dict[str, int]:
  """Counts of one video from its segmentations [T, H, W(, 1)] uint8 and its object count."""
  annotated = (segmentations != IGNORE_LABEL).reshape(len(segmentations), -1).any(axis=1)
  return {"videos": 1, "frames": len(segmentations), "objects": num_objects,
          "annotated_frames": int(annotated.sum()), "max_objects_per_video": num_objects}


def split_counts(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, int]:
  """Sums `video_counts` over a split (frames are not decoded, only segmentations)."""
  dataset = builder.as_dataset(
      split=split, decoders={"video": {"frames": tfds.decode.SkipDecoding()}},
      read_config=tfds.ReadConfig(try_autocache=False))
  totals = {"videos": 0, "frames": 0, "objects": 0, "annotated_frames": 0,
            "max_objects_per_video": 0}
  for example in tfds.as_numpy(dataset):
    counts = video_counts(example["video"]["segmentations"], len(example["objects"]["ids"]))
    for key, value in counts.items():
      totals[key] = max(totals[key], value) if key.startswith("max") else totals[key] + value
  return totals


def contact_sheet(videos: list[tuple[str, np.ndarray, np.ndarray, list[str]]], num_frames: int,
                  cell_height: int) -> np.ndarray:
  """A grid [rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3] uint8 of overlays.

  Args:
    videos: (name, frames [T, H, W, 3] uint8, segmentations [T, H, W(, 1)], frame names) per row.
    num_frames: columns: frames evenly spaced from first to last.
    cell_height: cell height; the width follows the first video's aspect ratio.
  """
  if not videos or num_frames < 1 or cell_height < 1:
    raise ValueError(f"contact_sheet: needs videos ({len(videos)}), num_frames ({num_frames}) "
                     f">= 1 and cell_height ({cell_height}) >= 1.")
  first_height, first_width = videos[0][1].shape[1:3]
  cell_width = max(1, round(cell_height * first_width / first_height))
  sheet = np.zeros((len(videos) * (cell_height + CELL_PADDING) + CELL_PADDING,
                    num_frames * (cell_width + CELL_PADDING) + CELL_PADDING, 3), np.uint8)
  for row, (name, frames, segmentations, frame_names) in enumerate(videos):
    indices = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(int)
    for column, index in enumerate(indices):
      labels = segmentations[index].reshape(segmentations.shape[1:3])
      cell = Image.fromarray(overlay_masks(frames[index], labels)).resize(
          (cell_width, cell_height), Image.BILINEAR)
      caption = f"{name}: {frame_names[index]}" if column == 0 else frame_names[index]
      ImageDraw.Draw(cell).text((2, 1), caption, fill=(255, 255, 255))
      top = CELL_PADDING + row * (cell_height + CELL_PADDING)
      left = CELL_PADDING + column * (cell_width + CELL_PADDING)
      sheet[top:top + cell_height, left:left + cell_width] = np.asarray(cell)
  return sheet


def _sample_videos(builder: tfds.core.DatasetBuilder, split: str, num_samples: int):
  """The first `num_samples` videos of `split` as contact-sheet rows."""
  rows = []
  dataset = builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False))
  for example in tfds.as_numpy(dataset.take(num_samples)):
    video = example["video"]
    rows.append((video["name"].decode(), video["frames"], video["segmentations"],
                 [name.decode() for name in video["frame_names"]]))
  return rows


def check_dataset(dataset_config: ml_collections.ConfigDict, output: str, num_samples: int = 8,
                  num_frames: int = 6, cell_height: int = 128,
                  split: str = "") -> dict[str, dict[str, int]]:
  """Prints per-split counts of the configured dataset and writes the contact sheet to `output`.

  Returns:
    {split: {"videos", "frames", "objects", "annotated_frames", "max_objects_per_video"}}.
  """
  builder = registry.load_builder(dataset_config)
  sheet_split = split or dataset_config.train_split
  if sheet_split not in builder.info.splits:
    raise ValueError(f"split={sheet_split!r} is not a split of {dataset_config.name}: "
                     f"{sorted(builder.info.splits.keys())}.")
  print(f"Dataset {dataset_config.name} (version {builder.version}) at {builder.data_dir}")
  columns = ("videos", "frames", "objects", "annotated_frames", "max_objects_per_video")
  print(f"{'split':<12}" + "".join(f"{column:>{len(column) + 2}}" for column in columns))
  counts = {}
  for split_name in sorted(builder.info.splits.keys()):
    counts[split_name] = split_counts(builder, split_name)
    print(f"{split_name:<12}"
          + "".join(f"{counts[split_name][c]:>{len(c) + 2}}" for c in columns))
  sheet = contact_sheet(_sample_videos(builder, sheet_split, num_samples), num_frames,
                        cell_height)
  directory = os.path.dirname(output)
  if directory:
    os.makedirs(directory, exist_ok=True)
  Image.fromarray(sheet).save(output)
  print(f"Wrote a {sheet.shape[1]}x{sheet.shape[0]} contact sheet of {sheet_split} to {output}")
  return counts


def parse_flags(argv: list[str]) -> list[str]:
  """Parses this command's `FLAGS` first, then absl's global flags (logging, ...) from the rest.

  This command's flags go first so that a global flag of the same name, defined by another
  module imported into the process (e.g. visualize's --output), never takes their values.
  `--config.*` overrides are read from `sys.argv` by ml_collections, as with any config flag.
  """
  try:
    return flags.FLAGS(FLAGS(argv, known_only=True), known_only=True)
  except flags.Error as error:
    sys.stderr.write(f"{error}\n\n{__doc__}\nFlags:\n{FLAGS.get_help()}\n")
    sys.exit(1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf.config.set_visible_devices([], "GPU")
  config = _CONFIG.value
  counts = check_dataset(config.dataset, _OUTPUT.value, _NUM_SAMPLES.value, _NUM_FRAMES.value,
                         _CELL_HEIGHT.value, _SPLIT.value)
  most = max(split["max_objects_per_video"] for split in counts.values())
  if most > config.model.max_objects:
    print(f"Warning: a video has {most} objects, more than config.model.max_objects="
          f"{config.model.max_objects}.")


def cli() -> None:
  """The `feelvos-data-check` console command (pyproject.toml): this module as a program."""
  config_overrides.replace_repeated_tuple_overrides()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
