"""Detection ops of `feelvos_jax.vis` against NumPy loops written from their definitions: box
IoU and coder, anchors, fixed-size NMS, RoIAlign (one level and FPN levels)."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from feelvos_jax.vis import anchors
from feelvos_jax.vis import boxes as box_ops
from feelvos_jax.vis import nms as nms_ops
from feelvos_jax.vis import roi_align as roi_ops


def _random_boxes(rng, count, size=40.0, min_side=1.0):
  corner = rng.uniform(-5.0, size, (count, 2))
  sides = rng.uniform(min_side, size / 2, (count, 2))
  return np.concatenate([corner, corner + sides], -1).astype(np.float32)


def _iou_loop(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
      out[i, j] = w * h / union
  return out


def test_pairwise_iou_matches_loop():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
  b[0] = a[0]
  got = np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(got, _iou_loop(a, b), atol=1e-6)
  assert got[0, 0] == pytest.approx(1.0)


def test_box_coder_matches_formula_and_round_trips():
  rng = np.random.default_rng(1)
  reference, target = _random_boxes(rng, 6), _random_boxes(rng, 6)
  stds = box_ops.RCNN_STDS
  deltas = np.asarray(box_ops.encode(jnp.asarray(reference), jnp.asarray(target), stds))
  for k, (p, g) in enumerate(zip(reference, target)):
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    expected = [((g[0] + g[2]) / 2 - (p[0] + p[2]) / 2) / pw / stds[0],
                ((g[1] + g[3]) / 2 - (p[1] + p[3]) / 2) / ph / stds[1],
                np.log(gw / pw) / stds[2], np.log(gh / ph) / stds[3]]
    np.testing.assert_allclose(deltas[k], expected, rtol=1e-4, atol=1e-5)
  decoded = box_ops.decode(jnp.asarray(reference), jnp.asarray(deltas), stds)
  np.testing.assert_allclose(np.asarray(decoded), target, atol=1e-3)
  huge = box_ops.decode(jnp.asarray(reference[:1]), jnp.asarray([[0.0, 0.0, 50.0, 50.0]]))
  assert np.isfinite(np.asarray(huge)).all()


def test_level_anchors_centres_sizes_and_order():
  got = np.asarray(anchors.level_anchors(2, 3, 8))
  assert got.shape == (2 * 3 * 3, 4)
  for row in range(2):
    for col in range(3):
      for a, ratio in enumerate(anchors.RATIOS):
        box = got[(row * 3 + col) * 3 + a]
        np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
                                   [(col + 0.5) * 8, (row + 0.5) * 8], atol=1e-5)
        w, h = box[2] - box[0], box[3] - box[1]
        np.testing.assert_allclose([w * h, h / w], [64.0 ** 2, ratio], rtol=1e-5)


def _nms_loop(boxes, scores, threshold, valid):
  order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if valid[i] and all(_iou_loop(boxes[[i]], boxes[[j]])[0, 0] <= threshold for j in kept):
      kept.append(i)
  return kept


@pytest.mark.parametrize("max_outputs", [4, 30])
def test_nms_matches_greedy_loop(max_outputs):
  rng = np.random.default_rng(2)
  boxes = _random_boxes(rng, 24, size=30.0)
  scores = rng.random(24).astype(np.float32)
  scores[3] = scores[5]  # A tie: the lower index first.
  valid = rng.random(24) > 0.2
  indices, kept = jax.jit(nms_ops.nms, static_argnums=(2, 3))(
      jnp.asarray(boxes), jnp.asarray(scores), 0.5, max_outputs, jnp.asarray(valid))
  expected = _nms_loop(boxes, scores, 0.5, valid)[:max_outputs]
  indices, kept = np.asarray(indices), np.asarray(kept)
  assert indices.shape == kept.shape == (max_outputs,)
  assert list(indices[kept]) == expected
  assert (indices[~kept] == -1).all() and kept.sum() == len(expected)


def _bilinear(feature, y, x):
  height, width = feature.shape[:2]
  if y < -1.0 or y > height or x < -1.0 or x > width:
    return np.zeros(feature.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_low = y_high = height - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_low = x_high = width - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  return ((1 - ly) * (1 - lx) * feature[y_low, x_low] + (1 - ly) * lx * feature[y_low, x_high]
          + ly * (1 - lx) * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def _roi_align_loop(feature, box, stride, out_size, ratio):
  x1, y1, x2, y2 = np.asarray(box, np.float64) / stride - 0.5
  bin_h, bin_w = (y2 - y1) / out_size, (x2 - x1) / out_size
  out = np.zeros((out_size, out_size, feature.shape[-1]))
  for i in range(out_size):
    for j in range(out_size):
      for sy in range(ratio):
        for sx in range(ratio):
          y = y1 + i * bin_h + (sy + 0.5) * bin_h / ratio
          x = x1 + j * bin_w + (sx + 0.5) * bin_w / ratio
          out[i, j] += _bilinear(feature, y, x) / ratio ** 2
  return out


def test_roi_align_matches_loop_inside_and_across_borders():
  rng = np.random.default_rng(3)
  feature = rng.normal(size=(9, 11, 3)).astype(np.float32)
  boxes = np.asarray([[4.0, 6.0, 30.0, 22.0], [-10.0, -6.0, 12.0, 9.0],
                      [30.0, 20.0, 60.0, 50.0], [13.2, 13.7, 14.1, 14.0]], np.float32)
  got = np.asarray(roi_ops.roi_align(jnp.asarray(feature), jnp.asarray(boxes), 4, (3, 3), 2))
  for k, box in enumerate(boxes):
    np.testing.assert_allclose(got[k], _roi_align_loop(feature, box, 4, 3, 2), atol=1e-5)


def test_multilevel_roi_align_reads_each_box_level():
  rng = np.random.default_rng(4)
  strides = (4, 8, 16, 32)
  features = [rng.normal(size=(64 // s, 64 // s, 2)).astype(np.float32) for s in strides]
  boxes = np.asarray([[2, 3, 30, 40], [0, 0, 150, 120], [5, 5, 250, 250], [0, 0, 600, 500]],
                     np.float32)
  levels = np.asarray(roi_ops.roi_levels(jnp.asarray(boxes), 4))
  expected_levels = [int(np.clip(np.floor(np.log2(np.sqrt((b[2] - b[0]) * (b[3] - b[1])) / 56
                                                  + 1e-6)), 0, 3)) for b in boxes]
  assert list(levels) == expected_levels == [0, 1, 2, 3]
  got = np.asarray(roi_ops.multilevel_roi_align([jnp.asarray(f) for f in features],
                                                jnp.asarray(boxes), strides, (2, 2), 2))
  for k, (box, level) in enumerate(zip(boxes, levels)):
    np.testing.assert_allclose(
        got[k], _roi_align_loop(features[level], box, strides[level], 2, 2), atol=1e-5)


def test_host_iou_equals_jax_iou():
  from feelvos_jax.vis import inference  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  a, b = _random_boxes(rng, 4), _random_boxes(rng, 6)
  np.testing.assert_allclose(inference.pairwise_iou_numpy(a, b),
                             np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b))),
                             atol=1e-6)
