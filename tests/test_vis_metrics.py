"""YouTube-VIS scoring: the spatio-temporal IoU against dense masks, AP of hand-made results whose
AP is known, the results/annotation checks and `python -m feelvos_jax.evaluate_vis`."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import metrics
from feelvos_jax.vis import results as results_io

H, W, T = 12, 16, 4


def _box_mask(top, left, size=4):
  mask = np.zeros((H, W), bool)
  mask[top:top + size, left:left + size] = True
  return mask


def _tracks():
  """Video 1: instances A (category 1) and B (category 1); video 2: C (category 2)."""
  a = [_box_mask(1, 1 + t) for t in range(T)]
  b = [_box_mask(7, 10 - t) for t in range(T)]
  c = [None, _box_mask(2, 2), _box_mask(3, 3), None]
  return a, b, c


def _rles(masks):
  return [None if m is None else annotation_io.encode(m) for m in masks]


def _dataset_json():
  a, b, c = _tracks()
  videos = [{"id": v, "height": H, "width": W, "length": T,
             "file_names": [f"video{v}/{t:05d}.jpg" for t in range(T)]} for v in (1, 2)]
  polygon_c = [None if m is None else [[float(x) for x in (2, 2, 6, 2, 6, 6, 2, 6)]]
               for m in c]
  polygon_c[2] = [[3.0, 3.0, 7.0, 3.0, 7.0, 7.0, 3.0, 7.0]]
  annotations = [
      {"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": _rles(a)},
      {"id": 2, "video_id": 1, "category_id": 1, "iscrowd": 0,
       # Uncompressed RLE, as the released files have.
       "segmentations": [{"size": [H, W], "counts": _uncompressed(m)} for m in b]},
      {"id": 3, "video_id": 2, "category_id": 2, "iscrowd": 0, "segmentations": polygon_c},
  ]
  return {"videos": videos, "annotations": annotations,
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def _uncompressed(mask):
  flat = mask.T.reshape(-1)  # Column-major, as COCO's RLE.
  counts, value, run = [], False, 0
  for pixel in flat:
    if pixel == value:
      run += 1
    else:
      counts.append(run)
      value, run = pixel, 1
  counts.append(run)
  return counts


def _perfect_results(dataset):
  return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
           "segmentations": a["segmentations"]} for a in dataset["annotations"]]


def test_spatiotemporal_iou_matches_dense_masks():
  rng = np.random.default_rng(0)
  pred = rng.random((T, H, W)) > 0.6
  truth = rng.random((T, H, W)) > 0.5
  pred[1] = False  # Absent in frame 1: the truth's area still counts in the union.
  truth[3] = False
  rle = lambda masks: [annotation_io.encode(m) if m.any() else None for m in masks]
  expected = (pred & truth).sum() / (pred | truth).sum()
  assert metrics.spatiotemporal_iou(rle(pred), rle(truth)) == pytest.approx(expected)
  assert metrics.spatiotemporal_iou_masks(pred, truth) == pytest.approx(expected)


def test_polygons_and_uncompressed_rle_convert_exactly():
  dataset = annotation_io.check_dataset(_dataset_json(), "instances.json")
  a, b, _ = _tracks()
  np.testing.assert_array_equal(annotation_io.decode(dataset["annotations"][1]
                                                     ["segmentations"][2], H, W), b[2])
  polygon = annotation_io.decode(dataset["annotations"][2]["segmentations"][1], H, W)
  assert polygon[2:6, 2:6].all() and polygon.sum() == 16  # A 4x4 square of pixel corners.
  assert dataset["annotations"][2]["segmentations"][0] is None
  assert dataset["annotations"][0]["area"] == 16.0


def test_ap_of_known_results():
  dataset = annotation_io.check_dataset(_dataset_json(), "instances.json")
  perfect = metrics.evaluate(dataset, _perfect_results(dataset))
  assert perfect["AP"] == pytest.approx(1.0) and perfect["AR10"] == pytest.approx(1.0)
  # One instance per video: category 1 (two instances in video 1) recalls half.
  assert perfect["AR1"] == pytest.approx((0.5 + 1.0) / 2)
  a, b, _ = _tracks()
  # Identities swapped halfway: each predicted track is half A, half B.
  swapped = [a[:2] + b[2:], b[:2] + a[2:]]
  shuffled = [dict(r) for r in _perfect_results(dataset)]
  for k in range(2):
    shuffled[k]["segmentations"] = _rles(swapped[k])
  shuffled_scores = metrics.evaluate(dataset, shuffled)
  # Each swapped track overlaps its instance by IoU 32 / 96 = 1/3 < 0.5: category 1 scores 0,
  # category 2 keeps 1.
  assert shuffled_scores["AP"] == pytest.approx(0.5)
  assert shuffled_scores["AP50"] == pytest.approx(0.5)
  assert metrics.evaluate(dataset, [])["AP"] == 0.0
  # A wrong category scores nothing for that instance's category.
  wrong = _perfect_results(dataset)
  wrong[2]["category_id"] = 1
  assert metrics.evaluate(dataset, wrong)["AP"] < perfect["AP"]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[0]["segmentations"].__setitem__(2, {"size": [H, W], "counts": "0%%"}),
     "entry 0 (video 1, video1), frame 2: malformed compressed RLE"),
    (lambda r: r[1]["segmentations"].__setitem__(1, {"size": [H, W + 1], "counts": "PP"}),
     "entry 1 (video 1, video1), frame 1: RLE of size"),
    (lambda r: r[2].__setitem__("video_id", 9), "unknown video id 9"),
    (lambda r: r[2].__setitem__("category_id", 7), "category 7 is not one of"),
    (lambda r: r[0]["segmentations"].pop(), "3 segmentations for the video's 4 frames"),
])
def test_bad_results_are_refused_naming_video_and_frame(edit, message):
  dataset = annotation_io.check_dataset(_dataset_json(), "instances.json")
  results = json.loads(json.dumps(_perfect_results(dataset)))
  edit(results)
  with pytest.raises(annotation_io.AnnotationError, match=message.replace("(", r"\(")
                     .replace(")", r"\)")):
    results_io.check_results(results, dataset, "results.json")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].__setitem__("video_id", 5), "unknown video id 5"),
    (lambda d: d["annotations"][1].__setitem__("category_id", 40), "category 40 is not in"),
    (lambda d: d["annotations"][0]["segmentations"].__setitem__(
        1, {"size": [H + 2, W], "counts": [1]}), r"video 1 \(video1\), frame 1: RLE of size"),
])
def test_bad_annotations_are_refused(edit, message):
  data = _dataset_json()
  edit(data)
  with pytest.raises(annotation_io.AnnotationError, match=message):
    annotation_io.check_dataset(data, "instances.json")


def test_submission_zip_and_command(tmp_path):
  data = _dataset_json()
  annotations_path = tmp_path / "instances.json"
  annotations_path.write_text(json.dumps(data))
  dataset = annotation_io.load_annotations(str(annotations_path))
  results_io.write_submission(_perfect_results(dataset), str(tmp_path / "results.json"),
                              str(tmp_path / "results.zip"))
  with zipfile.ZipFile(tmp_path / "results.zip") as archive:
    assert archive.namelist() == ["results.json"]
  scores = metrics.evaluate_files(str(tmp_path / "results.zip"), str(annotations_path))
  assert scores["AP"] == pytest.approx(1.0)
  bad = json.loads((tmp_path / "results.json").read_text())
  bad[0]["segmentations"][3] = {"size": [H, W], "counts": "zz"}
  (tmp_path / "bad.json").write_text(json.dumps(bad))
  command = [sys.executable, "-m", "feelvos_jax.evaluate_vis", f"--annotations={annotations_path}"]
  done = subprocess.run(command + [f"--results={tmp_path / 'results.json'}",
                                   f"--output={tmp_path / 'scores.json'}"],
                        capture_output=True, text=True, check=True)
  assert "AP50" in done.stdout and json.loads((tmp_path / "scores.json").read_text())["AP"] == 1
  failed = subprocess.run(command + [f"--results={tmp_path / 'bad.json'}",
                                     f"--output={tmp_path / 'bad_scores.json'}"],
                          capture_output=True, text=True)
  assert failed.returncode == 1 and "frame 3" in failed.stderr and "video 1" in failed.stderr
  assert not (tmp_path / "bad_scores.json").exists()
