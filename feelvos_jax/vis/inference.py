"""Video instance segmentation of whole videos: per-frame detection (jit) and the tracker (host).

Per frame (`frame_detections`, one jitted program per padded frame size): FPN, proposals, the
box head's detections (at most 10, score > 0.05, class-wise NMS 0.5), their tracking
embeddings and 28 x 28 masks of their class. Then `Tracker.assign` gives each detection an
identity as the authors' test-time matching does: with the memory of instances n = 1..N (last
embedding f_n, last box b_n, category c_n),
  v_i(n) = log p_i(n) + alpha log s_i + beta IoU(b_i, b_n) + gamma [c_i = c_n],
  v_i(0) = log p_i(0) + alpha log s_i + beta * 0 + gamma * 1     ("new instance")
with p_i the softmax over (new, 1..N) of (0, f_i . f_n); detection i takes argmax_n v_i(n): 0
opens a new instance, n > 0 continues it, and of several detections choosing one instance in a
frame only the highest v keeps it (the others are dropped for that frame). A continued
instance's memory takes the detection's embedding and box. Weights (alpha, beta, gamma) =
(1, 2, 10), the authors' `match_coeff`. `embedding_weight` (1 in the paper) scales log p:
0 matches by box overlap and category alone (the detector without its tracking head).
The video-level result of an instance: its score is the mean of its frames' detection
scores, its category the most frequent of its frames' categories, its masks pasted at the
video's full resolution and thresholded at 0.5.
"""
import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from feelvos_jax.vis import anchors as anchor_ops
from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import detect as detect_lib
from feelvos_jax.vis import fpn
from feelvos_jax.vis import input_pipeline
from feelvos_jax.vis.model import MaskTrackRCNN


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """Test-time settings (the authors' `test_cfg` and `match_coeff` as defaults)."""
  embedding_weight: float = 1.0
  score_weight: float = 1.0
  iou_weight: float = 2.0
  category_weight: float = 10.0
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  max_detections: int = 10
  mask_threshold: float = 0.5
  proposals: int = 200


def frame_detections(model: MaskTrackRCNN, variables: dict, image: jax.Array,
                     image_size: jax.Array, config: InferenceConfig) -> dict[str, jax.Array]:
  """One frame's detections.

  Args:
    image: [1, Hp, Wp, 3] in [-1, 1], Hp and Wp multiples of 32.
    image_size: [2] (height, width) inside the padding.
  Returns:
    boxes [D, 4] (resized-frame pixels), scores [D], labels [D] (1..K), valid [D],
    embeddings [D, E], masks [D, 28, 28] probabilities of the detection's class.
  """
  apply = functools.partial(model.apply, variables)
  pyramid = apply(image, method=MaskTrackRCNN.pyramid)
  rpn = apply(pyramid, method=MaskTrackRCNN.rpn)
  level_anchors = anchor_ops.pyramid_anchors([level.shape[1:3] for level in pyramid],
                                             fpn.PYRAMID_STRIDES)
  first = [level[0] for level in pyramid]
  proposal_boxes, _, proposal_valid = detect_lib.proposals(
      [(o[0], d[0]) for o, d in rpn], level_anchors, image_size, pre_nms=config.proposals,
      post_nms=config.proposals, max_proposals=config.proposals)
  class_logits, deltas = apply(apply(first, proposal_boxes, method=MaskTrackRCNN.box_rois),
                               method=MaskTrackRCNN.classify)
  found = detect_lib.detections(class_logits, deltas, proposal_boxes, proposal_valid, image_size,
                            config.score_threshold, config.nms_threshold, config.max_detections)
  found["embeddings"] = apply(apply(first, found["boxes"], method=MaskTrackRCNN.box_rois),
                              method=MaskTrackRCNN.embed)
  mask_logits = apply(apply(first, found["boxes"], method=MaskTrackRCNN.mask_rois),
                      method=MaskTrackRCNN.segment)
  found["masks"] = jax.nn.sigmoid(jnp.take_along_axis(
      mask_logits, found["labels"][:, None, None, None], axis=3)[..., 0])
  return found


def pairwise_iou_numpy(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
  """`boxes.pairwise_iou` in NumPy ([N, 4], [M, 4] -> [N, M]): the tracker runs on the host,
  where a jitted version would compile once per (detections, memory) shape."""
  top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
  bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
  intersection = np.prod(np.maximum(bottom_right - top_left, 0.0), axis=-1)
  area = lambda b: np.prod(np.maximum(b[:, 2:] - b[:, :2], 0.0), axis=-1)
  union = area(boxes_a)[:, None] + area(boxes_b)[None, :] - intersection
  return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


class Tracker:
  """The memory of one video's instances and the authors' assignment rule (module docstring)."""

  def __init__(self, config: InferenceConfig):
    self.config = config
    self.embeddings = np.zeros((0, 0), np.float32)
    self.boxes = np.zeros((0, 4), np.float32)
    self.labels = np.zeros((0,), np.int32)

  def assign(self, embeddings: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
             labels: np.ndarray) -> np.ndarray:
    """Identities [D] (0.. for instances, -1 for a dropped detection) of one frame's valid
    detections (embeddings [D, E], boxes [D, 4], scores [D], labels [D]); updates the memory."""
    count = len(scores)
    identities = np.full((count,), -1, np.int64)
    if not len(self.labels):
      self.embeddings, self.boxes, self.labels = embeddings.copy(), boxes.copy(), labels.copy()
      return np.arange(count)
    logits = np.concatenate([np.zeros((count, 1)), embeddings @ self.embeddings.T], axis=1)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    ious = pairwise_iou_numpy(boxes, self.boxes)
    same = (labels[:, None] == self.labels[None, :]).astype(np.float64)
    config = self.config
    log_scores = np.log(np.maximum(scores, 1e-12))[:, None]
    values = (config.embedding_weight * log_p + config.score_weight * log_scores
              + config.iou_weight * np.concatenate([np.zeros((count, 1)), ious], axis=1)
              + config.category_weight * np.concatenate([np.ones((count, 1)), same], axis=1))
    choices = values.argmax(axis=1)
    best = np.full((len(self.labels),), -np.inf)
    for i, choice in enumerate(choices):
      if choice == 0:
        identities[i] = len(self.labels)
        self.embeddings = np.concatenate([self.embeddings, embeddings[i:i + 1]])
        self.boxes = np.concatenate([self.boxes, boxes[i:i + 1]])
        self.labels = np.concatenate([self.labels, labels[i:i + 1]])
        best = np.append(best, -np.inf)
      elif values[i, choice] > best[choice - 1]:
        previous = np.flatnonzero(identities == choice - 1)
        identities[previous] = -1  # A better detection takes the instance over.
        identities[i] = choice - 1
        best[choice - 1] = values[i, choice]
        self.embeddings[choice - 1] = embeddings[i]
        self.boxes[choice - 1] = boxes[i]
    return identities


def padded_shape(size: tuple[int, int], max_size: tuple[int, int]) -> tuple[int, int]:
  """The padded (Hp, Wp) of a frame resized to `size` (`input_pipeline.scaled_size`):
  `input_pipeline.padded_size(max_size)`, or, for a portrait frame it cannot hold, the square
  of its longer side."""
  pad = input_pipeline.padded_size(max_size)
  if size[0] > pad[0] or size[1] > pad[1]:
    return (max(pad), max(pad))
  return pad


def padded_shapes(max_size: tuple[int, int]) -> list[tuple[int, int]]:
  """Every shape `padded_shape` gives for `max_size`: landscape, then the portraits' square
  (one shape when they coincide)."""
  landscape = input_pipeline.padded_size(max_size)
  square = (max(landscape), max(landscape))
  return [landscape] if square == landscape else [landscape, square]


Detect = Callable[[np.ndarray, np.ndarray], dict[str, Any]]
"""(image [1, Hp, Wp, 3] float32, image_size [2] int32) -> `frame_detections`'s outputs."""


class VideoSegmenter:
  """Runs MaskTrack R-CNN over whole videos: `segment(frames, video_id)` -> the results-file
  instances of the video (`vis.results`). The per-frame detection is `detect` (the jitted
  model, `from_model`, or an exported bundle's function, `vis.export.load`); the tracker and
  the mask pasting are the same for both."""

  def __init__(self, detect: Detect, max_size: tuple[int, int],
               config: InferenceConfig = InferenceConfig()):
    self.max_size = max_size
    self.inference_config = config
    self._detect = detect
    self._paste = jax.jit(detect_lib.paste_masks, static_argnums=(2, 3))

  @classmethod
  def from_model(cls, model: MaskTrackRCNN, variables: dict, max_size: tuple[int, int],
                 config: InferenceConfig = InferenceConfig()) -> "VideoSegmenter":
    """The segmenter of `model` with `variables` ({params, batch_stats})."""
    detect = jax.jit(functools.partial(frame_detections, model, config=config))
    return cls(functools.partial(detect, variables), max_size, config)

  def segment(self, frames: np.ndarray, video_id: int) -> list[dict]:
    """frames [T, H, W, 3] uint8 -> [{video_id, category_id, score, segmentations}]."""
    num_frames, height, width = frames.shape[:3]
    size = input_pipeline.scaled_size(height, width, self.max_size)
    pad = padded_shape(size, self.max_size)
    scale = np.asarray([width / size[1], height / size[0]] * 2, np.float32)
    tracker = Tracker(self.inference_config)
    tracks: dict[int, dict] = {}
    for t in range(num_frames):
      image = np.zeros((1,) + pad + (3,), np.float32)
      image[0, :size[0], :size[1]] = input_pipeline.normalise(
          input_pipeline.resize_frame(frames[t], size))
      found = jax.device_get(self._detect(image, np.asarray(size, np.int32)))
      keep = np.flatnonzero(found["valid"])
      if not keep.size:
        continue
      boxes = found["boxes"][keep] * scale
      identities = tracker.assign(found["embeddings"][keep], boxes, found["scores"][keep],
                                  found["labels"][keep])
      # All D slots at once (one compiled shape), then the kept ones.
      all_boxes = found["boxes"] * scale
      masks = np.asarray(self._paste(jnp.asarray(found["masks"]), jnp.asarray(all_boxes),
                                     height, width))[keep]
      masks = masks > self.inference_config.mask_threshold
      for k, identity in enumerate(identities):
        if identity < 0:
          continue
        track = tracks.setdefault(int(identity), {"scores": [], "labels": [], "masks": {}})
        track["scores"].append(float(found["scores"][keep[k]]))
        track["labels"].append(int(found["labels"][keep[k]]))
        track["masks"][t] = masks[k]
    results = []
    for track in tracks.values():
      results.append({
          "video_id": int(video_id),
          "category_id": int(np.bincount(track["labels"]).argmax()),
          "score": float(np.mean(track["scores"])),
          "segmentations": [annotation_io.encode(track["masks"][t]) if t in track["masks"]
                            else None for t in range(num_frames)]})
    return results


def segment_videos(segmenter: VideoSegmenter, videos) -> tuple[list[dict], float]:
  """(results of every decoded VIS example in `videos`, frames per second over them)."""
  results, frames, start = [], 0, time.perf_counter()
  for video in videos:
    results.extend(segmenter.segment(video["video"]["frames"], int(video["video"]["id"])))
    frames += len(video["video"]["frames"])
  return results, frames / max(time.perf_counter() - start, 1e-9)
