"""Training pairs and evaluation videos for MaskTrack R-CNN from a VIS TFDS dataset.

Training (the authors' `YTVOSDataset.prepare_train_img`): a video is drawn (tf.data shuffles
and repeats the split), a query frame among its frames with at least one instance, and a
reference frame among its OTHER such frames, uniformly. Both frames get the same resize
(mmdetection's keep-ratio `img_scale` (640, 360): as large as fits a long side of 640 and a
short side of 360) and the same horizontal flip (probability 0.5), are padded to one fixed size
(multiples of 32), and their instances become box slots (boxes from the masks).
`reference_index` links each query instance to its reference slot.
The batch layout is `train_step`'s. Pair sampling runs in NumPy on the decoded videos; tf.data
reads, decodes, shuffles and repeats.
"""
import math
from typing import Iterator

import numpy as np
from PIL import Image

from feelvos_jax.vis import fpn


def scaled_size(height: int, width: int, max_size: tuple[int, int]) -> tuple[int, int]:
  """(height, width) resized keeping the aspect ratio so that the longer side is at most
  max_size[0] and the shorter at most max_size[1] (mmdetection's keep-ratio rescale)."""
  long_side, short_side = max(height, width), min(height, width)
  scale = min(max_size[0] / long_side, max_size[1] / short_side)
  return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def padded_size(max_size: tuple[int, int]) -> tuple[int, int]:
  """The fixed padded (height, width) of landscape frames resized into `max_size` (long,
  short): (short, long) rounded up to multiples of `fpn.SIZE_DIVISOR`. (`sample_pair` pads a
  portrait frame to a square of the longer side instead.)"""
  divisor = fpn.SIZE_DIVISOR
  return (math.ceil(max_size[1] / divisor) * divisor, math.ceil(max_size[0] / divisor) * divisor)


def normalise(frame: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 in [-1, 1] (x / 127.5 - 1, the project's input convention)."""
  return frame.astype(np.float32) / 127.5 - 1.0


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a uint8 [H, W, 3] frame to size (height, width)."""
  if frame.shape[:2] == tuple(size):
    return frame
  return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a uint8 [H, W] label map."""
  if labels.shape == tuple(size):
    return labels
  return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def boxes_of(masks: np.ndarray) -> np.ndarray:
  """[G, 4] (x1, y1, x2, y2) tight boxes of masks [G, H, W] (zeros for an empty mask)."""
  boxes = np.zeros((masks.shape[0], 4), np.float32)
  for g, mask in enumerate(masks):
    rows, cols = np.nonzero(mask)
    if rows.size:
      boxes[g] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
  return boxes


def _frame_instances(segmentation: np.ndarray, categories: np.ndarray, max_instances: int):
  """(masks [G, H, W] uint8, labels [G], slots [G] instance slot or -1) of one label map."""
  height, width = segmentation.shape
  masks = np.zeros((max_instances, height, width), np.uint8)
  labels = np.zeros((max_instances,), np.int32)
  slots = np.full((max_instances,), -1, np.int32)
  present = [j for j in range(len(categories)) if (segmentation == j + 1).any()]
  for g, slot in enumerate(present[:max_instances]):
    masks[g] = segmentation == slot + 1
    labels[g] = categories[slot]
    slots[g] = slot
  return masks, labels, slots


def sample_pair(video: dict, rng: np.random.Generator, max_size: tuple[int, int],
                max_instances: int, flip_probability: float = 0.5) -> dict | None:
  """One training pair of a decoded video (None if fewer than two frames have an instance).

  Args:
    video: a VIS example as NumPy (video/frames [T, H, W, 3], video/segmentations [T, H, W, 1],
      instances/categories [N]).
    max_size: (long, short) side limits of the resize (paper: (640, 360)).
    max_instances: G, box slots per frame (instances beyond are dropped).
  Returns:
    one example of `train_step`'s batch layout (no batch axis).
  """
  segmentations = video["video"]["segmentations"][..., 0]
  categories = np.asarray(video["instances"]["categories"], np.int32)
  annotated = np.flatnonzero(segmentations.reshape(len(segmentations), -1).max(axis=1) > 0)
  if annotated.size < 2:
    return None
  query = int(rng.choice(annotated))
  reference = int(rng.choice(annotated[annotated != query]))
  height, width = segmentations.shape[1:]
  size = scaled_size(height, width, max_size)
  pad_height, pad_width = padded_size(max_size)
  if size[0] > pad_height or size[1] > pad_width:  # Portrait: pad a square of the long side.
    pad_height = pad_width = max(pad_height, pad_width)
  flip = rng.random() < flip_probability
  example = {}
  for prefix, t in (("", query), ("reference_", reference)):
    frame = resize_frame(video["video"]["frames"][t], size)
    labels = resize_labels(segmentations[t], size)
    if flip:
      frame, labels = frame[:, ::-1], labels[:, ::-1]
    masks, classes, slots = _frame_instances(labels, categories, max_instances)
    image = np.zeros((pad_height, pad_width, 3), np.float32)
    image[:size[0], :size[1]] = normalise(frame)
    example[f"{prefix}image"] = image
    example[f"{prefix}boxes"] = boxes_of(masks)
    example[f"{prefix}labels"] = classes
    example[f"{prefix}slots"] = slots
    if not prefix:
      padded = np.zeros((pad_height, pad_width, max_instances), np.uint8)
      padded[:size[0], :size[1]] = masks.transpose(1, 2, 0)
      example["masks"] = padded
  reference_slots = list(example.pop("reference_slots"))
  example["reference_index"] = np.asarray(
      [reference_slots.index(s) + 1 if s >= 0 and s in reference_slots else 0
       for s in example.pop("slots")], np.int32)
  example["image_size"] = np.asarray(size, np.int32)
  return example


def train_batches(videos, batch_size: int, max_size: tuple[int, int], max_instances: int,
                  seed: int, flip_probability: float = 0.5) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches [B, ...] of `sample_pair` from `videos`, an endless iterable of decoded
  examples (e.g. `tfds.as_numpy(dataset.repeat().shuffle(...))`)."""
  rng = np.random.default_rng(seed)
  pending = []
  for video in videos:
    example = sample_pair(video, rng, max_size, max_instances, flip_probability)
    if example is None:
      continue
    pending.append(example)
    if len(pending) == batch_size:
      yield {key: np.stack([e[key] for e in pending]) for key in pending[0]}
      pending = []
