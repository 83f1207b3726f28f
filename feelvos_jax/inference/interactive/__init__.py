"""Interactive video object segmentation: clicks and scribbles on any frame, re-propagated
through the video without recomputing an embedding.

    from feelvos_jax.inference import interactive

    session = interactive.InteractiveSession(model, variables, frames, object_ids=[1])
    session.add_scribble(0, 1, [(120, 200), (130, 210)])   # two clicks on object 1, frame 0
    session.add_background_scribble(0, background_mask)    # a thin [H, W] bool stroke
    labels = session.propagate(0, direction="forward")     # [T, H, W] int32 object ids
    session.add_scribble(14, 1, correction_mask)           # fix frame 14 ...
    labels = session.propagate(14, direction="both")       # ... and re-propagate from it

Modules: `session` (`InteractiveSession`, the contract), `scribbles` (clicks and masks ->
marked cells -> reference pixels, NumPy), `steps` (the jitted pure steps: `generic_step`,
`incremental_step`), `routes` (which step a model takes, and what the incremental one keeps
between propagations), `cache` (`BoundedCache`), `protocol` (the session's side of the DAVIS
interactive protocol: frame candidates, ground-truth marks). Design notes: docs/interactive.md.
"""
from feelvos_jax.inference.interactive.session import DIRECTIONS
from feelvos_jax.inference.interactive.session import InteractiveSession

__all__ = ["DIRECTIONS", "InteractiveSession"]
