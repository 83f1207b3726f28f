"""YouTube-VIS AP: pycocotools's COCOeval with the spatio-temporal mask IoU.

The IoU of a predicted and a true instance sums intersections and unions over the frames of the
video (Yang et al., 2019): IoU = sum_t |m_t and g_t| / sum_t |m_t or g_t|, a frame where one of
them is absent adding the other's area to the union. Videos play COCO's images; an instance's area
(for the small / medium / large ranges) is its mean area over the frames where it is present, as
the official YouTube-VIS API (youtubevos/cocoapi) has it. Everything else is COCOeval's: IoU
thresholds 0.50:0.05:0.95, 101 recall points, at most 1 / 10 / 100 instances per video (AR1,
AR10), AP averaged over the categories that have ground truth.
"""
import contextlib
import io

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import results as results_io

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")
"""The first eight of COCOeval's `stats`, in order (-1 where a range has no instance)."""


def _coco_rle(rle: dict) -> dict:
  counts = rle["counts"]
  return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str)
          else counts}


def spatiotemporal_iou(predicted: list, truth: list) -> float:
  """IoU of two instances given per frame as compressed RLE or None (equal lengths): the sum
  over frames of the intersections over the sum of the unions (0 when both are empty)."""
  if len(predicted) != len(truth):
    raise ValueError(f"spatiotemporal_iou: {len(predicted)} vs {len(truth)} frames")
  intersection = union = 0.0
  for p, g in zip(predicted, truth):
    if p is not None and g is not None:
      pair = [_coco_rle(p), _coco_rle(g)]
      intersection += float(mask_utils.area(mask_utils.merge(pair, intersect=True)))
      union += float(mask_utils.area(mask_utils.merge(pair, intersect=False)))
    elif p is not None or g is not None:
      union += float(mask_utils.area(_coco_rle(p if p is not None else g)))
  return intersection / union if union > 0 else 0.0


def spatiotemporal_iou_masks(predicted: np.ndarray, truth: np.ndarray) -> float:
  """`spatiotemporal_iou` of dense masks [T, H, W] bool."""
  union = np.logical_or(predicted, truth).sum()
  return float(np.logical_and(predicted, truth).sum() / union) if union else 0.0


class VideoCOCOeval(cocoeval.COCOeval):
  """COCOeval over videos: `computeIoU` is the spatio-temporal IoU of `segmentations`."""

  def computeIoU(self, imgId, catId):  # pylint: disable=invalid-name (COCOeval's name)
    params = self.params
    gts = self._gts[imgId, catId]
    dts = self._dts[imgId, catId]
    if not gts and not dts:
      return []
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")
    dts = [dts[i] for i in order][:params.maxDets[-1]]
    ious = np.zeros((len(dts), len(gts)))
    for i, dt in enumerate(dts):
      for j, gt in enumerate(gts):
        ious[i, j] = spatiotemporal_iou(dt["segmentations"], gt["segmentations"])
    return ious


def _coco(videos: list, categories: list, annotations: list) -> coco_api.COCO:
  coco = coco_api.COCO()
  coco.dataset = {"images": [{"id": v["id"]} for v in videos], "categories": categories,
                  "annotations": annotations}
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _mean_area(segmentations: list) -> float:
  areas = [float(mask_utils.area(_coco_rle(s))) for s in segmentations if s is not None]
  return float(np.mean(areas)) if areas else 0.0


def evaluate(dataset: dict, results: list) -> dict[str, float]:
  """YouTube-VIS AP of `results` against `dataset`.

  Args:
    dataset: `annotations.check_dataset` output (videos, categories, annotations with RLE).
    results: checked results (`results.check_results`): dicts of video_id, category_id, score,
      segmentations (compressed RLE or None per frame).
  Returns:
    {name: value} for `METRIC_NAMES`.
  """
  truth = [dict(a, image_id=a["video_id"], id=k + 1, ignore=0)
           for k, a in enumerate(dataset["annotations"])]
  predicted = [dict(r, image_id=r["video_id"], id=k + 1, iscrowd=0,
                    area=_mean_area(r["segmentations"])) for k, r in enumerate(results)]
  coco_truth = _coco(dataset["videos"], dataset["categories"], truth)
  coco_predicted = _coco(dataset["videos"], dataset["categories"], predicted)
  evaluator = VideoCOCOeval(coco_truth, coco_predicted, iouType="bbox")
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}


def format_table(metrics: dict[str, float]) -> str:
  """Two lines: the metric names and their values, aligned."""
  names = [n for n in METRIC_NAMES if n in metrics]
  return "\n".join([" ".join(f"{n:>6}" for n in names),
                    " ".join(f"{metrics[n]:6.3f}" for n in names)])


def evaluate_files(results_path: str, annotations_path: str) -> dict[str, float]:
  """`evaluate` of a results file (JSON or zip) against an `instances.json`; AnnotationError
  naming the entry, video and frame if they do not match, or if there is nothing to score."""
  dataset = annotation_io.load_annotations(annotations_path)
  if not dataset["annotations"]:
    raise annotation_io.AnnotationError(
        f"{annotations_path}: no annotations to score against (a valid/test split file?)")
  return evaluate(dataset, results_io.load_results(results_path, dataset))
