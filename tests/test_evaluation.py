"""Tests of feelvos_jax.evaluation and the feelvos_jax.evaluate command.

J and F are checked against NumPy references written here from the DAVIS definitions (nested
loops over pixels, tiny sizes), against hand-computed values, and the whole command against the
in-memory scorer on a fake DAVIS 2017 folder.
"""
import csv
import math
import os
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
from skimage import morphology

from datasets import fake_layouts
from feelvos_jax import evaluation
from feelvos_jax.evaluation import statistics
from feelvos_jax.evaluation import writers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# References written from the definitions.


def reference_jaccard(pred, gt, void=None):
  """|pred & gt| / |pred | gt| over non-void pixels, 1 for an empty union (pixel loops)."""
  inter = union = 0
  for y in range(pred.shape[0]):
    for x in range(pred.shape[1]):
      if void is not None and void[y, x]:
        continue
      inter += bool(pred[y, x]) and bool(gt[y, x])
      union += bool(pred[y, x]) or bool(gt[y, x])
  return 1.0 if union == 0 else inter / union


def reference_boundary(mask):
  """DAVIS boundary pixels: differs from east/south/south-east neighbour (outside = 0); last
  row compares east only, last column south only, bottom-right corner never."""
  height, width = mask.shape
  value = lambda y, x: bool(mask[y, x]) if y < height and x < width else False
  points = []
  for y in range(height):
    for x in range(width):
      v = value(y, x)
      if y == height - 1 and x == width - 1:
        continue
      if x == width - 1:
        is_boundary = v != value(y + 1, x)
      elif y == height - 1:
        is_boundary = v != value(y, x + 1)
      else:
        is_boundary = v != value(y, x + 1) or v != value(y + 1, x) or v != value(y + 1, x + 1)
      if is_boundary:
        points.append((y, x))
  return points


def reference_f(pred, gt, void=None, bound_th=0.008):
  """Boundary F-measure from the definition, matching by brute-force pixel distances."""
  height, width = pred.shape
  radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(height, width))
  keep = np.ones_like(pred, dtype=bool) if void is None else ~void
  pred_points = reference_boundary(pred.astype(bool) & keep)
  gt_points = reference_boundary(gt.astype(bool) & keep)

  def fraction_matched(points, others):
    hits = sum(any((py - oy) ** 2 + (px - ox) ** 2 <= radius ** 2 for oy, ox in others)
               for py, px in points)
    return hits / len(points)

  if not pred_points and not gt_points:
    precision, recall = 1.0, 1.0
  elif not pred_points:
    precision, recall = 1.0, 0.0
  elif not gt_points:
    precision, recall = 0.0, 1.0
  else:
    precision = fraction_matched(pred_points, gt_points)
    recall = fraction_matched(gt_points, pred_points)
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference_stats(values):
  """Mean, Recall (> 0.5) and Decay (first minus last of 4 overlapping bins) of one object.

  Bin bounds are kept modulo 256, as the official tool's uint8 bounds wrap for T > 256 (an
  empty bin then gives NaN).
  """
  n = len(values)
  bounds = [(int(round(1 + i * (n - 1) / 4 + 1e-10)) - 1) % 256 for i in range(5)]
  first = values[bounds[0]:bounds[1] + 1]
  last = values[bounds[3]:bounds[4] + 1]
  mean = lambda part: sum(part) / len(part) if len(part) else float("nan")
  return mean(values), sum(v > 0.5 for v in values) / n, mean(first) - mean(last)


def random_mask(rng, shape, smooth):
  noise = rng.standard_normal(shape)
  if smooth:
    noise = ndimage.gaussian_filter(noise, rng.uniform(0.7, 2.5))
  return noise > np.quantile(noise, rng.uniform(0.3, 0.95))


def adversarial_cases():
  """(name, pred, gt, void) masks that hit the special cases."""
  shape = (9, 11)
  empty = np.zeros(shape, bool)
  full = np.ones(shape, bool)
  block = empty.copy()
  block[2:6, 3:8] = True
  pixel = empty.copy()
  pixel[4, 5] = True
  other_pixel = empty.copy()
  other_pixel[1, 1] = True
  corner = empty.copy()
  corner[-3:, -4:] = True
  top_left = empty.copy()
  top_left[:4, :3] = True
  left_edge = empty.copy()
  left_edge[:, :2] = True
  void = empty.copy()
  void[3:7, 2:6] = True
  return [
      ("both empty", empty, empty, None),
      ("empty pred", empty, block, None),
      ("empty gt", block, empty, None),
      ("full vs full", full, full, None),
      ("full gt empty pred", empty, full, None),
      ("one pixel same", pixel, pixel, None),
      ("one pixel apart", pixel, other_pixel, None),
      ("one pixel in block", pixel, block, None),
      ("bottom-right corner", corner, block, None),
      ("top-left corner", top_left, block, None),
      ("left edge", left_edge, top_left, None),
      ("void over both", block, pixel, void),
      ("void covers gt", pixel, pixel, np.ones(shape, bool)),
      ("void partial", corner, block, void),
  ]


# ----------------------------------------------------------------------------------------------
# Per-frame measures.


@pytest.mark.parametrize("name,pred,gt,void", adversarial_cases(),
                         ids=[c[0] for c in adversarial_cases()])
@pytest.mark.parametrize("bound_th", [0.008, 0.2, 2])
def test_measures_adversarial(name, pred, gt, void, bound_th):
  del name
  assert evaluation.region_similarity(pred, gt, void) == pytest.approx(
      reference_jaccard(pred, gt, void), abs=1e-12)
  assert evaluation.boundary_f_measure(pred, gt, void, bound_th=bound_th) == pytest.approx(
      reference_f(pred, gt, void, bound_th), abs=1e-12)


def test_measures_random_masks():
  rng = np.random.default_rng(1)
  for trial in range(30):
    shape = tuple(rng.integers(1, 14, size=2))
    pred = random_mask(rng, shape, smooth=trial % 2 == 0)
    gt = random_mask(rng, shape, smooth=trial % 3 != 0)
    void = rng.random(shape) < 0.15 if trial % 3 == 0 else None
    bound_th = (0.008, 0.15, 0.3, 1, 3)[trial % 5]
    assert evaluation.region_similarity(pred, gt, void) == pytest.approx(
        reference_jaccard(pred, gt, void), abs=1e-12)
    assert evaluation.boundary_f_measure(pred, gt, void, bound_th=bound_th) == pytest.approx(
        reference_f(pred, gt, void, bound_th), abs=1e-12), (trial, shape, bound_th)


def test_boundary_map_matches_definition():
  rng = np.random.default_rng(2)
  for _ in range(20):
    mask = random_mask(rng, tuple(rng.integers(1, 12, size=2)), smooth=False)
    expected = np.zeros(mask.shape, bool)
    for y, x in reference_boundary(mask):
      expected[y, x] = True
    np.testing.assert_array_equal(evaluation.boundary_map(mask), expected)


def test_f_matches_disk_dilation_at_davis_tolerance():
  """The official construction: dilate each boundary by skimage's disk, count the overlaps."""
  rng = np.random.default_rng(3)
  for _ in range(6):
    shape = (60, 107)  # radius ceil(0.008 * 122.7) = 1; below, a larger bound_th gives 4.
    pred = random_mask(rng, shape, smooth=True)
    gt = random_mask(rng, shape, smooth=True)
    for bound_th in (0.008, 0.03):
      radius = int(np.ceil(bound_th * np.linalg.norm(shape)))
      pred_b = evaluation.boundary_map(pred)
      gt_b = evaluation.boundary_map(gt)
      disk = morphology.disk(radius).astype(bool)
      precision = (pred_b & ndimage.binary_dilation(gt_b, disk)).sum() / pred_b.sum()
      recall = (gt_b & ndimage.binary_dilation(pred_b, disk)).sum() / gt_b.sum()
      expected = 2 * precision * recall / (precision + recall)
      assert evaluation.boundary_f_measure(pred, gt, bound_th=bound_th) == pytest.approx(
          expected, abs=1e-12)


def test_hand_computed_values():
  pred = np.zeros((4, 4), bool)
  pred[0:2, 0:2] = True
  gt = np.zeros((4, 4), bool)
  gt[0:2, 1:3] = True
  assert evaluation.region_similarity(pred, gt) == pytest.approx(2 / 6)
  void = np.zeros((4, 4), bool)
  void[:, 2] = True
  assert evaluation.region_similarity(pred, gt, void) == pytest.approx(2 / 4)
  # One-pixel objects at (1, 1) and (4, 4): boundaries {0,1}x{0,1} and {3,4}x{3,4}. Only the
  # corners (1, 1) and (3, 3), sqrt(8) apart, can match: radius 2 matches nothing, radius 3
  # one pixel of four on each side.
  a = np.zeros((6, 6), bool)
  a[1, 1] = True
  b = np.zeros((6, 6), bool)
  b[4, 4] = True
  assert evaluation.boundary_f_measure(a, b, bound_th=2) == 0.0
  assert evaluation.boundary_f_measure(a, b, bound_th=3) == pytest.approx(0.25)
  assert evaluation.boundary_f_measure(a, a) == 1.0
  # A full mask has no boundary: against an empty prediction both boundaries are empty, F = 1
  # (the official convention), while J = 0.
  full = np.ones((5, 5), bool)
  assert evaluation.boundary_f_measure(np.zeros_like(full), full) == 1.0
  assert evaluation.region_similarity(np.zeros_like(full), full) == 0.0
  # Empty prediction of a real object: P = 1, R = 0, F = 0.
  assert evaluation.boundary_f_measure(np.zeros((6, 6), bool), b) == 0.0
  assert evaluation.region_similarity(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_measures_reject_bad_shapes():
  with pytest.raises(ValueError, match="pred and gt"):
    evaluation.region_similarity(np.zeros((3, 4)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="void"):
    evaluation.boundary_f_measure(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="bound_th"):
    evaluation.boundary_f_measure(np.zeros((3, 4)), np.zeros((3, 4)), bound_th=2.5)


# ----------------------------------------------------------------------------------------------
# Statistics.


def test_statistics_hand_computed():
  values = np.array([0.2, 0.6, 0.9, 0.4, 1.0, 0.7, 0.3, 0.8])
  # T = 8: bin bounds round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; first bin frames 0..2,
  # last bin frames 5..7.
  mean, recall, decay = evaluation.mean_recall_decay(values)
  assert mean == pytest.approx(4.9 / 8)
  assert recall == pytest.approx(5 / 8)
  assert decay == pytest.approx((0.2 + 0.6 + 0.9) / 3 - (0.7 + 0.3 + 0.8) / 3)
  assert evaluation.mean_recall_decay(np.array([0.5, 0.5])) == (0.5, 0.0, 0.0)
  assert evaluation.mean_recall_decay(np.array([0.7])) == (0.7, 1.0, 0.0)
  # NaNs are skipped by the mean, count as "not above 0.5" for recall.
  mean, recall, _ = evaluation.mean_recall_decay(np.array([1.0, np.nan, 0.0, 1.0]))
  assert mean == pytest.approx(2 / 3) and recall == pytest.approx(2 / 4)


def test_statistics_random_lengths():
  rng = np.random.default_rng(4)
  for length in list(range(1, 40)) + [103, 256, 300, 513]:
    values = rng.random(length)
    np.testing.assert_allclose(evaluation.mean_recall_decay(values), reference_stats(values),
                               atol=1e-12, equal_nan=True, err_msg=f"T={length}")
  bins = statistics.decay_bins(8)
  assert [(s.start, s.stop) for s in bins] == [(0, 3), (2, 5), (4, 6), (5, 8)]


# ----------------------------------------------------------------------------------------------
# Videos and tables.


def reference_video(pred, gt, object_ids):
  """[N, T-2] J and F from the references, frames 1..T-2."""
  j = [[reference_jaccard(pred[t] == o, gt[t] == o) for t in range(1, len(gt) - 1)]
       for o in object_ids]
  f = [[reference_f(pred[t] == o, gt[t] == o) for t in range(1, len(gt) - 1)]
       for o in object_ids]
  return np.array(j), np.array(f)


def random_video(rng, num_frames, shape, num_objects):
  labels = np.zeros((num_frames,) + shape, np.uint8)
  for object_id in range(1, num_objects + 1):
    labels[random_mask(rng, (num_frames,) + shape, smooth=True)] = object_id
  return labels


def test_evaluate_video_matches_reference():
  rng = np.random.default_rng(5)
  gt = random_video(rng, 6, (8, 10), 3)
  gt[:, 0, :2] = 255
  pred = random_video(rng, 6, (8, 10), 2)  # Fewer objects than the annotation: object 3 empty.
  scores = evaluation.evaluate_video(pred, gt, (1, 2, 3), name="clip")
  expected_j, expected_f = reference_video(pred, gt, (1, 2, 3))
  assert scores.name == "clip" and scores.object_ids == (1, 2, 3)
  assert scores.j.shape == scores.f.shape == (3, 4)
  np.testing.assert_allclose(scores.j, expected_j, atol=1e-12)
  np.testing.assert_allclose(scores.f, expected_f, atol=1e-12)
  all_frames = evaluation.evaluate_video(pred, gt, (1, 2, 3), skip_first_and_last=False)
  assert all_frames.j.shape == (3, 6)
  np.testing.assert_allclose(all_frames.j[:, 1:-1], scores.j)
  void = gt == 255
  with_void = evaluation.evaluate_video(pred, gt, (1, 2, 3), void=void)
  np.testing.assert_allclose(
      with_void.j[0], [reference_jaccard(pred[t] == 1, gt[t] == 1, void[t]) for t in (1, 2, 3, 4)])
  np.testing.assert_allclose(
      with_void.f[1], [reference_f(pred[t] == 2, gt[t] == 2, void[t]) for t in (1, 2, 3, 4)])


def test_davis_object_ids():
  first = np.array([[0, 3, 255], [1, 1, 0]], np.uint8)
  assert evaluation.davis_object_ids(first) == (1, 3)  # The ids present, not 1..max.
  assert evaluation.davis_object_ids(np.array([[0, 255]])) == ()


def test_evaluate_video_errors():
  gt = np.zeros((4, 5, 6), np.uint8)
  gt[:, 1:3, 1:3] = 1
  pred = gt.copy()
  pred[2, 0, 0] = 4
  with pytest.raises(ValueError, match=r"Video 'clip', frame '00002'.*\[4\]"):
    evaluation.evaluate_video(pred, gt, (1,), name="clip",
                              frame_names=["00000", "00001", "00002", "00003"])
  pred[2, 0, 0] = 0
  pred[0, 0, 0] = 4  # Unscored first frame: not read, as the official tool.
  evaluation.evaluate_video(pred, gt, (1,))
  with pytest.raises(ValueError, match="no object"):
    evaluation.evaluate_video(pred, gt, (), name="clip")
  with pytest.raises(ValueError, match="T >= 3"):
    evaluation.evaluate_video(pred[:2], gt[:2], (1,))
  with pytest.raises(ValueError, match="same shape|one shape"):
    evaluation.evaluate_video(pred[:, :4], gt, (1,))
  with pytest.raises(ValueError, match="integer"):
    evaluation.evaluate_video(pred.astype(float), gt, (1,))
  with pytest.raises(ValueError, match="1..254"):
    evaluation.evaluate_video(pred, gt, (0, 1))


def test_summarize_averages_objects_not_videos():
  one = evaluation.VideoScores("a", (1,), j=np.array([[1.0, 1.0]]), f=np.array([[0.5, 0.5]]))
  three = evaluation.VideoScores(
      "b", (2, 5, 7), j=np.array([[0.0, 0.0], [0.2, 0.4], [0.6, 1.0]]),
      f=np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]))
  global_table, rows = evaluation.summarize([one, three])
  j_means = [1.0, 0.0, 0.3, 0.8]
  f_means = [0.5, 1.0, 0.0, 0.5]
  assert list(global_table) == list(evaluation.GLOBAL_COLUMNS)
  assert global_table["J-Mean"] == pytest.approx(np.mean(j_means))  # Not (1 + 0.366) / 2.
  assert global_table["F-Mean"] == pytest.approx(np.mean(f_means))
  assert global_table["J&F-Mean"] == pytest.approx((np.mean(j_means) + np.mean(f_means)) / 2)
  assert global_table["J-Recall"] == pytest.approx(np.mean([1, 0, 0, 1]))
  assert global_table["F-Recall"] == pytest.approx(np.mean([0, 1, 0, 0.5]))
  assert global_table["J-Decay"] == pytest.approx(np.mean([0, 0, -0.2, -0.4]))
  assert global_table["F-Decay"] == pytest.approx(np.mean([0, 0, 0, -1]))
  assert [r["Sequence"] for r in rows] == ["a_1", "b_2", "b_5", "b_7"]
  np.testing.assert_allclose([r["J-Mean"] for r in rows], j_means)
  with pytest.raises(ValueError, match="twice"):
    evaluation.summarize([one, one])
  with pytest.raises(ValueError, match="No object"):
    evaluation.summarize([])


def test_evaluate_arrays_consumes_video_tuples():
  rng = np.random.default_rng(6)
  gt = random_video(rng, 5, (6, 7), 2)
  pred = random_video(rng, 5, (6, 7), 2)
  global_table, rows = evaluation.evaluate_arrays(iter([("v", pred, gt, (1, 2))]))
  expected_j, expected_f = reference_video(pred, gt, (1, 2))
  assert global_table["J-Mean"] == pytest.approx(expected_j.mean())
  assert global_table["F-Mean"] == pytest.approx(expected_f.mean())
  assert [r["Sequence"] for r in rows] == ["v_1", "v_2"]


# ----------------------------------------------------------------------------------------------
# Files and the command.

SEQUENCES = {"train": ["train_a"], "val": ["val_a", "val_b"]}


@pytest.fixture(name="davis")
def fixture_davis(tmp_path):
  """A fake DAVIS folder (objects 1, 2 in frame 0; object 3 from frame 3) and ground truth."""
  root = str(tmp_path / "DAVIS")
  truth = fake_layouts.write_fake_davis2017(root, SEQUENCES, num_frames=7, size=(20, 26),
                                            num_objects=3, seed=7)
  return root, truth


def perfect_predictions(truth):
  """What the tool scores as perfect: ids of the first frame, 255 and later ids as 0."""
  predictions = {}
  for name in SEQUENCES["val"]:
    labels = truth[name].segmentations.copy()
    labels[(labels == 255) | (labels > max(evaluation.davis_object_ids(labels[0])))] = 0
    predictions[name] = labels
  return predictions


def write_predictions(folder, predictions, truth):
  for name, labels in predictions.items():
    writers.write_davis_predictions(folder, name, truth[name].frame_names, labels)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "feelvos_jax.evaluate", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def test_cli_perfect_and_perturbed(davis, tmp_path):
  root, truth = davis
  predictions = perfect_predictions(truth)
  perfect_dir = str(tmp_path / "perfect")
  write_predictions(perfect_dir, predictions, truth)
  result = run_cli(f"--predictions={perfect_dir}", f"--dataset_root={root}", "--split=val")
  assert result.returncode == 0, result.stderr
  assert "J&F-Mean" in result.stdout and "val_b_2" in result.stdout
  assert result.stdout.startswith("Scored with the protocol davis2017 (DAVIS 2017")
  global_rows = read_csv(os.path.join(perfect_dir, "global_results-val.csv"))
  assert global_rows == [list(evaluation.GLOBAL_COLUMNS),
                         ["1.000", "1.000", "1.000", "0.000", "1.000", "1.000", "0.000"]]
  sequence_rows = read_csv(os.path.join(perfect_dir, "per-sequence_results-val.csv"))
  assert sequence_rows == [["Sequence", "J-Mean", "F-Mean"],
                           ["val_a_1", "1.000", "1.000"], ["val_a_2", "1.000", "1.000"],
                           ["val_b_1", "1.000", "1.000"], ["val_b_2", "1.000", "1.000"]]
  with open(os.path.join(perfect_dir, "global_results-val.csv"), "rb") as f:
    assert f.read().startswith(b"J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n")

  rng = np.random.default_rng(8)
  perturbed = {}
  for name, labels in predictions.items():
    labels = labels.copy()
    labels[2] = ndimage.binary_dilation(labels[2] == 1, iterations=2) * 1 + (
        (labels[2] == 2) & ~ndimage.binary_dilation(labels[2] == 1, iterations=2)) * 2
    noise = rng.random(labels.shape) < 0.1
    labels[noise] = rng.integers(0, 3, noise.sum())
    labels[4][labels[4] == 2] = 0  # Object 2 lost in one frame.
    perturbed[name] = labels.astype(np.uint8)
  perturbed_dir = str(tmp_path / "perturbed")
  write_predictions(perturbed_dir, perturbed, truth)
  result = run_cli(f"--predictions={perturbed_dir}", f"--dataset_root={root}")
  assert result.returncode == 0, result.stderr
  expected_global, expected_rows = evaluation.evaluate_arrays(
      (name, perturbed[name], truth[name].segmentations, (1, 2)) for name in SEQUENCES["val"])
  assert expected_global["J&F-Mean"] < 0.95
  global_rows = read_csv(os.path.join(perturbed_dir, "global_results-val.csv"))
  assert global_rows[1] == [f"{expected_global[c]:.3f}" for c in evaluation.GLOBAL_COLUMNS]
  sequence_rows = read_csv(os.path.join(perturbed_dir, "per-sequence_results-val.csv"))
  assert sequence_rows[1:] == [[r["Sequence"], f"{r['J-Mean']:.3f}", f"{r['F-Mean']:.3f}"]
                               for r in expected_rows]
  library_global, library_rows = evaluation.evaluate_predictions(perturbed_dir, root, "val")
  assert library_global == pytest.approx(expected_global)
  # The per-object means from the references, frames 1..T-2.
  ref_j, ref_f = reference_video(perturbed["val_a"], truth["val_a"].segmentations, (1, 2))
  assert library_rows[0]["J-Mean"] == pytest.approx(ref_j[0].mean())
  assert library_rows[1]["F-Mean"] == pytest.approx(ref_f[1].mean())


def test_missing_first_and_last_predictions_are_not_read(davis, tmp_path):
  root, truth = davis
  folder = str(tmp_path / "pred")
  write_predictions(folder, perfect_predictions(truth), truth)
  for name in SEQUENCES["val"]:
    os.remove(os.path.join(folder, name, "00000.png"))
    os.remove(os.path.join(folder, name, "00006.png"))
  global_table, _ = evaluation.evaluate_predictions(folder, root, "val")
  assert global_table["J&F-Mean"] == 1.0


def test_bad_inputs_name_sequence_and_frame(davis, tmp_path):
  root, truth = davis
  predictions = perfect_predictions(truth)
  folder = str(tmp_path / "pred")
  write_predictions(folder, predictions, truth)
  frame = os.path.join(folder, "val_b", "00003.png")

  os.rename(frame, frame + ".bak")
  with pytest.raises(FileNotFoundError, match=r"'val_b', frame '00003'"):
    evaluation.evaluate_predictions(folder, root, "val")
  os.rename(frame + ".bak", frame)

  Image.fromarray(np.zeros((10, 26), np.uint8)).save(frame)
  with pytest.raises(ValueError, match=r"'val_b', frame '00003'.*10x26.*20x26"):
    evaluation.evaluate_predictions(folder, root, "val")

  Image.fromarray(np.zeros((20, 26, 3), np.uint8)).save(frame)
  with pytest.raises(ValueError, match=r"'val_b', frame '00003'.*indexed"):
    evaluation.evaluate_predictions(folder, root, "val")

  extra = predictions["val_b"][3].copy()
  extra[0, 0] = 3  # Object 3 is not in the first annotation: not an evaluated object.
  writers.write_davis_predictions(folder, "val_b", ["00003"], extra)
  with pytest.raises(ValueError, match=r"'val_b', frame '00003'.*\[3\]"):
    evaluation.evaluate_predictions(folder, root, "val")
  result = run_cli(f"--predictions={folder}", f"--dataset_root={root}")
  assert result.returncode != 0 and "frame '00003'" in result.stderr
  assert not os.path.exists(os.path.join(folder, "global_results-val.csv"))
  writers.write_davis_predictions(folder, "val_b", ["00003"], predictions["val_b"][3])

  first = os.path.join(root, "Annotations", "480p", "val_a", "00000.png")
  writers.write_davis_predictions(os.path.dirname(os.path.dirname(first)), "val_a", ["00000"],
                                  np.zeros((20, 26), np.uint8))
  with pytest.raises(ValueError, match=r"'val_a', frame '00000'.*no object"):
    evaluation.evaluate_predictions(folder, root, "val")

  with pytest.raises(FileNotFoundError, match="'val_a'.*prediction folder"):
    evaluation.evaluate_predictions(str(tmp_path / "nothing"), root, "val")
  with pytest.raises(FileNotFoundError, match="test-dev"):
    evaluation.evaluate_predictions(folder, root, "test-dev")


def test_results_csv_replaces_atomically(tmp_path):
  folder = str(tmp_path)
  table = dict(zip(evaluation.GLOBAL_COLUMNS, [0.5, 0.25, 1.0, -0.0004, 0.75, 0.1234, 0.0]))
  rows = [{"Sequence": "a,b_1", "J-Mean": 0.25, "F-Mean": 0.75}]
  for _ in range(2):  # The second call replaces the first files.
    global_path, sequence_path = evaluation.write_results_csv(folder, "val", table, rows)
  assert read_csv(global_path)[1] == ["0.500", "0.250", "1.000", "-0.000", "0.750", "0.123",
                                      "0.000"]
  assert read_csv(sequence_path) == [["Sequence", "J-Mean", "F-Mean"],
                                     ["a,b_1", "0.250", "0.750"]]
  assert sorted(os.listdir(folder)) == ["global_results-val.csv", "per-sequence_results-val.csv"]


# ----------------------------------------------------------------------------------------------
# Protocols: one semantics for --mode=evaluate, the validation and the command.


def boxes_video(num_frames, appear, shape=(12, 14)):
  """[T, H, W] uint8 labels: object k + 1 a box from frame appear[k] on (ids 1..len(appear))."""
  labels = np.zeros((num_frames,) + shape, np.uint8)
  for index, first in enumerate(appear):
    labels[first:, 3 * index:3 * index + 3, 4 * index:4 * index + 4] = index + 1
  return labels


def test_davis_protocol_scores_the_ids_present_so_gaps_score_no_free_objects():
  gt = boxes_video(5, [0, 0, 0])
  gt[gt == 3] = 5  # Ids 1, 2, 5: the official tool would add empty objects 3 and 4.
  background = np.zeros_like(gt)
  scores = evaluation.score_video(evaluation.DAVIS_2017, background, gt, [1, 2, 5], [0, 0, 0])
  assert scores.object_ids == (1, 2, 5) and scores.j.shape == (3, 3)
  global_table, rows = evaluation.summarize([scores])
  assert global_table["J&F-Mean"] == 0.0  # Not 0.524.
  assert [row["Sequence"] for row in rows] == ["video_1", "video_2", "video_5"]
  perfect = evaluation.score_video(evaluation.DAVIS_2017, gt, gt, [1, 2, 5], [0, 0, 0])
  assert evaluation.summarize([perfect])[0]["J&F-Mean"] == 1.0


def test_davis_protocol_gives_and_scores_only_the_objects_of_the_first_frame():
  gt = boxes_video(6, [0, 3])
  scores = evaluation.score_video(evaluation.DAVIS_2017, np.where(gt == 2, 0, gt), gt, [1, 2],
                                  [0, 3], frame_names=[f"{t:05d}" for t in range(6)])
  assert scores.object_ids == (1,) and scores.j.shape == (1, 4)  # Frames 1..T-2.
  np.testing.assert_array_equal(scores.j, 1.0)
  with pytest.raises(ValueError, match=r"frame '00003'.*\[2\]"):
    evaluation.score_video(evaluation.DAVIS_2017, gt, gt, [1, 2], [0, 3],
                           frame_names=[f"{t:05d}" for t in range(6)])
  with pytest.raises(ValueError, match=r"'clip': no object to evaluate \(its first frame "
                                       r"'00000' holds none\) with the protocol davis2017"):
    evaluation.score_video(evaluation.DAVIS_2017, gt, gt, [2], [3], name="clip",
                           frame_names=[f"{t:05d}" for t in range(6)])
  unannotated = gt.copy()
  unannotated[2] = 255
  assert evaluation.score_video(evaluation.DAVIS_2017, gt, unannotated, [1], [0]) is None


def test_youtube_vos_protocol_scores_each_object_after_the_frame_it_is_given_in():
  gt = boxes_video(6, [0, 3])
  prediction = gt.copy()
  prediction[1][gt[4] == 2] = 2  # Before object 2 is given: not scored for it.
  prediction[5][prediction[5] == 2] = 0  # Lost in the last frame, which this protocol scores.
  scores = evaluation.score_video(evaluation.YOUTUBE_VOS, prediction, gt, [1, 2], [0, 3])
  assert scores.object_ids == (1, 2) and scores.j.shape == (2, 5)  # Frames 1..5.
  np.testing.assert_array_equal(scores.j[0], 1.0)
  np.testing.assert_array_equal(scores.j[1], [np.nan, np.nan, np.nan, 1.0, 0.0])
  global_table, rows = evaluation.summarize([scores])
  assert [row["J-Mean"] for row in rows] == [1.0, 0.5]
  assert global_table["J-Mean"] == 0.75
  # Annotations only where objects are given (YouTube-VOS validation): nothing to score.
  given_only = np.full_like(gt, 255)
  given_only[[0, 3]] = np.where(gt[[0, 3]] == np.array([1, 2])[:, None, None], gt[[0, 3]], 0)
  assert evaluation.score_video(evaluation.YOUTUBE_VOS, gt, given_only, [1, 2], [0, 3]) is None
  # Every fifth frame annotated (YouTube-VOS train with all frames): scored where annotated.
  sparse = gt.copy()
  sparse[[1, 2, 4]] = 255
  scores = evaluation.score_video(evaluation.YOUTUBE_VOS, gt, sparse, [1, 2], [0, 3])
  assert scores.j.shape == (2, 2) and np.isnan(scores.j[1, 0])  # Frames 3 and 5.


def test_protocol_for_the_dataset():
  config = ml_collections.ConfigDict({"name": "davis2017/480p", "eval_protocol": ""})
  assert evaluation.protocol_for(config) == "davis2017"
  for name in ("youtube_vos/2019", "synthetic_vos/small", "vos_folder"):
    config.name = name
    assert evaluation.protocol_for(config) == "youtube_vos"
  config.eval_protocol = "davis2017"
  assert evaluation.protocol_for(config) == "davis2017"
  config.eval_protocol = "davis"
  with pytest.raises(ValueError, match=r"config.dataset.eval_protocol='davis' is not one of"):
    evaluation.protocol_for(config)


class OraclePropagator:
  """Predicts the ground truth of each object it is given from the frame it is given in (object
  1 lost in frame 2), and records what it was given."""

  def __init__(self, truth):
    self.truth = truth
    self.given = {}

  def propagate(self, frames, annotations, first_frame, object_ids, name):
    self.given[name] = (list(np.asarray(object_ids)), list(np.asarray(first_frame)),
                        {t: sorted(np.unique(mask).tolist()) for t, mask in annotations.items()})
    labels = self.truth[name].segmentations
    for t in range(len(frames)):
      prediction = np.zeros(labels.shape[1:], np.int64)
      for object_id, first in zip(object_ids, first_frame):
        if t >= first and not (t == 2 and object_id == 1):
          prediction[labels[t] == object_id] = object_id
      yield prediction


def eval_videos(truth, names):
  """`input_pipeline.create_eval_videos` dicts of fake videos (ids mapped to slots 1..N)."""
  for name in names:
    video = truth[name]
    slots = np.zeros(256, np.int64)
    slots[video.ids] = np.arange(1, len(video.ids) + 1)
    slots[255] = 255
    yield {"name": name, "frame_names": video.frame_names, "frames": video.frames,
           "segmentations": slots[video.segmentations], "object_ids": np.array(video.ids),
           "first_frame": np.array(video.first_frame),
           "original_size": np.array(video.segmentations.shape[1:])}


@pytest.mark.parametrize("protocol", ["davis2017", "youtube_vos"])
def test_mode_evaluate_and_the_command_agree(davis, tmp_path, protocol):
  from feelvos_jax.evaluation import split_evaluation  # pylint: disable=g-import-not-at-top
  root, truth = davis
  propagator = OraclePropagator(truth)
  folder = str(tmp_path / "predictions")

  def write(video, prediction):
    writers.write_davis_predictions(folder, video["name"], video["frame_names"], prediction)

  global_table, rows, count = split_evaluation.evaluate_videos(
      propagator, eval_videos(truth, SEQUENCES["val"]), protocol=protocol, write=write)
  assert count == 2 and 0.5 < global_table["J&F-Mean"] < 1.0
  if protocol == "davis2017":  # Object 3 appears in frame 3: neither given nor scored.
    assert propagator.given["val_a"] == ([1, 2], [0, 0], {0: [0, 1, 2, 255]})
    assert [row["Sequence"] for row in rows] == ["val_a_1", "val_a_2", "val_b_1", "val_b_2"]
  else:
    assert propagator.given["val_a"] == ([1, 2, 3], [0, 0, 3],
                                         {0: [0, 1, 2, 255], 3: [0, 1, 2, 3, 255]})
    assert [row["Sequence"] for row in rows][-1] == "val_b_3"
  from_files, file_rows = evaluation.evaluate_predictions(folder, root, "val", protocol=protocol)
  assert from_files == pytest.approx(global_table)
  assert [row["Sequence"] for row in file_rows] == [row["Sequence"] for row in rows]
  for column in ("J-Mean", "F-Mean"):
    assert [row[column] for row in file_rows] == pytest.approx([row[column] for row in rows])


def test_command_names_the_protocol_and_refuses_later_objects_under_davis(davis, tmp_path):
  root, truth = davis
  folder = str(tmp_path / "predictions")
  for name in SEQUENCES["val"]:  # Perfect, object 3 included from frame 3.
    labels = truth[name].segmentations
    write_predictions(folder, {name: np.where(labels == 255, 0, labels)}, truth)
  result = run_cli(f"--predictions={folder}", f"--dataset_root={root}", "--protocol=youtube_vos")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("Scored with the protocol youtube_vos (YouTube-VOS convention")
  assert "val_a_3" in result.stdout
  assert read_csv(os.path.join(folder, "global_results-val-youtube_vos.csv"))[1][0] == "1.000"
  assert os.path.exists(os.path.join(folder, "per-sequence_results-val-youtube_vos.csv"))
  result = run_cli(f"--predictions={folder}", f"--dataset_root={root}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: Video 'val_a', frame '00003': predicted id(s) [3] are not objects of this video "
      "(evaluated ids (1, 2)).")
  assert not os.path.exists(os.path.join(folder, "global_results-val.csv"))


def test_sparse_ids_from_files_score_per_id(davis, tmp_path):
  root, truth = davis
  annotations = os.path.join(root, "Annotations", "480p")
  for name in SEQUENCES["val"]:  # Ids 1, 5 (and 3 from frame 3): a gap at 2.
    labels = truth[name].segmentations.copy()
    labels[labels == 2] = 5
    writers.write_davis_predictions(annotations, name, truth[name].frame_names, labels)
  folder = str(tmp_path / "background")
  write_predictions(folder, {name: np.zeros_like(truth[name].segmentations)
                             for name in SEQUENCES["val"]}, truth)
  global_table, rows = evaluation.evaluate_predictions(folder, root, "val")
  assert global_table["J&F-Mean"] == 0.0
  assert [row["Sequence"] for row in rows] == ["val_a_1", "val_a_5", "val_b_1", "val_b_5"]
