"""Per-frame DAVIS measures: region similarity J and boundary F-measure F.

The semantics are those of the official davis2017-evaluation tool (`davis2017/metrics.py`):
- J is |pred & gt| / |pred | gt| over the non-void pixels, 1 when that union is empty.
- F compares one-pixel-wide boundary maps (`boundary_map`, the tool's `_seg2bmap`) of the
  void-masked masks; a boundary pixel of one mask matches when a boundary pixel of the other
  lies within a disk of radius `ceil(bound_th * sqrt(H^2 + W^2))` pixels (the tool dilates by
  `skimage.morphology.disk` of that radius). Precision is the matched fraction of the predicted
  boundary, recall that of the ground-truth boundary, F = 2PR / (P + R) (0 when P + R = 0); an
  empty predicted boundary gives P = 1, R = 0, an empty ground-truth boundary P = 0, R = 1, both
  empty P = R = 1.
The dilation is computed exactly as nearest-boundary-pixel distances (a k-d tree over the
boundary pixels), which equals dilating by the disk {x^2 + y^2 <= r^2} and is much faster.
"""
from typing import Optional

import numpy as np
from scipy import spatial


def _check_masks(pred: np.ndarray, gt: np.ndarray,
                 void: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (pred, gt, void) as bool arrays of one 2-D shape, void all False when None."""
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.ndim != 2 or pred.shape != gt.shape:
    raise ValueError(
        f"pred and gt must be 2-D masks of one shape, got pred {pred.shape} and gt {gt.shape}.")
  if void is None:
    void = np.zeros(gt.shape, dtype=bool)
  else:
    void = np.asarray(void)
    if void.shape != gt.shape:
      raise ValueError(f"void must have the shape of gt {gt.shape}, got {void.shape}.")
  return pred.astype(bool), gt.astype(bool), void.astype(bool)


def region_similarity(pred: np.ndarray, gt: np.ndarray,
                      void: Optional[np.ndarray] = None) -> float:
  """Jaccard index J of two binary masks, void pixels excluded.

  Args:
    pred: [H, W] predicted mask (nonzero = object).
    gt: [H, W] ground-truth mask.
    void: optional [H, W] mask of pixels left out of both the intersection and the union.

  Returns:
    |pred & gt| / |pred | gt| over non-void pixels; 1.0 when the union is empty.
  """
  pred, gt, void = _check_masks(pred, gt, void)
  valid = ~void
  union = np.count_nonzero((pred | gt) & valid)
  if union == 0:
    return 1.0
  return np.count_nonzero(pred & gt & valid) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """One-pixel-wide boundary of a binary mask, as the official `_seg2bmap` draws it.

  A pixel is a boundary pixel when it differs from its east, south or south-east neighbour
  (neighbours outside the image count as background), except that on the last row only the
  east neighbour counts, on the last column only the south neighbour, and the bottom-right
  pixel never is one. The boundary lies half a pixel towards the origin of the true contour.

  Args:
    mask: [H, W] binary mask.

  Returns:
    [H, W] bool boundary map.
  """
  mask = np.asarray(mask).astype(bool)
  if mask.ndim != 2:
    raise ValueError(f"mask must be 2-D, got shape {mask.shape}.")
  east = np.zeros_like(mask)
  south = np.zeros_like(mask)
  south_east = np.zeros_like(mask)
  east[:, :-1] = mask[:, 1:]
  south[:-1, :] = mask[1:, :]
  south_east[:-1, :-1] = mask[1:, 1:]
  boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
  boundary[-1, :] = mask[-1, :] ^ east[-1, :]
  boundary[:, -1] = mask[:, -1] ^ south[:, -1]
  boundary[-1, -1] = False
  return boundary


def boundary_radius(shape: tuple[int, ...], bound_th: float = 0.008) -> int:
  """Matching radius in pixels: `bound_th` itself if >= 1, else ceil(bound_th * diagonal)."""
  if bound_th >= 1:
    if bound_th != int(bound_th):
      raise ValueError(f"bound_th >= 1 is a radius in pixels and must be whole, got {bound_th}.")
    return int(bound_th)
  if bound_th <= 0:
    raise ValueError(f"bound_th must be positive, got {bound_th}.")
  return int(np.ceil(bound_th * np.linalg.norm(shape)))


def _matched(points: np.ndarray, other: np.ndarray, radius: int) -> int:
  """How many of `points` [P, 2] lie within Euclidean `radius` of some of `other` [Q, 2]."""
  # Squared pixel distances are integers, so d <= r exactly when d < r + 1e-6; the search
  # stops at r + 0.5 (farther points come back as inf).
  distances, _ = spatial.cKDTree(other).query(points, k=1, distance_upper_bound=radius + 0.5)
  return int(np.count_nonzero(distances < radius + 1e-6))


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, void: Optional[np.ndarray] = None,
                       bound_th: float = 0.008) -> float:
  """Boundary F-measure of a predicted mask against the ground truth (official `f_measure`).

  Args:
    pred: [H, W] predicted mask (nonzero = object).
    gt: [H, W] ground-truth mask.
    void: optional [H, W] mask; void pixels are cleared from both masks before their
      boundaries are drawn.
    bound_th: matching tolerance, a fraction of the image diagonal (< 1) or whole pixels (>= 1).

  Returns:
    F = 2PR / (P + R) of boundary precision P and recall R (see the module docstring).
  """
  pred, gt, void = _check_masks(pred, gt, void)
  radius = boundary_radius(pred.shape, bound_th)
  pred_points = np.argwhere(boundary_map(pred & ~void))
  gt_points = np.argwhere(boundary_map(gt & ~void))
  n_pred, n_gt = len(pred_points), len(gt_points)
  if n_pred == 0 and n_gt == 0:
    precision, recall = 1.0, 1.0
  elif n_pred == 0:
    precision, recall = 1.0, 0.0
  elif n_gt == 0:
    precision, recall = 0.0, 1.0
  else:
    precision = _matched(pred_points, gt_points, radius) / n_pred
    recall = _matched(gt_points, pred_points, radius) / n_gt
  if precision + recall == 0:
    return 0.0
  return 2 * precision * recall / (precision + recall)
