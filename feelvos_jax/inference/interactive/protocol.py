"""The session's side of the DAVIS interactive protocol, beside the robot's scribbles (which
`InteractiveSession.add_scribbles` reads): which frames to offer the robot next, and the
ground-truth marks of an upper-bound run. Pure functions of a session; no `davisinteractive`
import (`feelvos_jax.tools.interactive_benchmark` drives the package)."""
from typing import Optional, Sequence

import numpy as np

from feelvos_jax.inference.interactive.session import InteractiveSession

FRAME_CANDIDATES = ("any", "not_interacted")
"""Policies of `frame_candidates`."""


def frame_candidates(policy: str, num_frames: int,
                     interacted: Sequence[int]) -> Optional[list[int]]:
  """The frames offered to the robot for its next scribble (the protocol's
  `next_scribble_frame_candidates`): None (every frame: the robot takes the worst) under
  'any'; under 'not_interacted' those not in `interacted`, in order, or None once every frame
  was interacted on."""
  if policy not in FRAME_CANDIDATES:
    raise ValueError(f"frame_candidates must be one of {FRAME_CANDIDATES}, got {policy!r}")
  if policy == "any":
    return None
  done = set(interacted)
  return [frame for frame in range(num_frames) if frame not in done] or None


def mark_ground_truth(session: InteractiveSession, frame: int, annotation: np.ndarray) -> None:
  """Marks `frame` with its ground truth, `annotation` [H, W] object ids (0: background), as
  one interaction of whole-region strokes that replaces the marks given before it (the
  robot's strokes of this round included); ids the session does not know are skipped."""
  session.end_interaction()
  for label in np.unique(annotation):
    if label == 0 or label in session.object_ids:
      session.add_scribble(frame, int(label), annotation == label)
