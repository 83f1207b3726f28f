"""Per-object statistics over frames: Mean, Recall and Decay (official `db_statistics`)."""
import warnings

import numpy as np

RECALL_THRESHOLD = 0.5
"""A frame counts towards Recall when its measure is strictly above this."""

NUM_DECAY_BINS = 4


def decay_bins(num_frames: int) -> list[slice]:
  """The four overlapping frame ranges whose first and last give Decay.

  As the official tool: boundaries b = round(linspace(1, T, 5) + 1e-10) - 1, bin i covers
  frames b[i] .. b[i+1] inclusive (neighbouring bins share a frame). The tool stores the
  boundaries as uint8, so for T > 256 they wrap modulo 256; this is reproduced so that the
  numbers stay identical to the tool's (DAVIS videos have at most 104 frames).
  """
  bounds = np.round(np.linspace(1, num_frames, NUM_DECAY_BINS + 1) + 1e-10) - 1
  bounds = bounds.astype(np.int64) % 256
  return [slice(bounds[i], bounds[i + 1] + 1) for i in range(NUM_DECAY_BINS)]


def mean_recall_decay(per_frame: np.ndarray) -> tuple[float, float, float]:
  """Mean, Recall and Decay of one object's per-frame measure.

  Args:
    per_frame: [T] per-frame J or F of one object (NaNs are skipped, as `np.nanmean` does).

  Returns:
    (mean, recall, decay): the mean; the fraction of frames above 0.5; the mean of the first
    quarter of frames minus that of the last quarter (see `decay_bins`). An empty bin gives
    NaN, as in the official tool.
  """
  per_frame = np.asarray(per_frame, dtype=np.float64)
  if per_frame.ndim != 1:
    raise ValueError(f"per_frame must be 1-D [T], got shape {per_frame.shape}.")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=RuntimeWarning)
    mean = np.nanmean(per_frame)
    recall = np.nanmean(per_frame > RECALL_THRESHOLD)
    bins = decay_bins(len(per_frame))
    decay = np.nanmean(per_frame[bins[0]]) - np.nanmean(per_frame[bins[-1]])
  return float(mean), float(recall), float(decay)
