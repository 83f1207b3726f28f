"""`synthetic_vis`: procedurally generated video instance segmentation (categories = shapes)."""
from datasets.synthetic_vis.builder import SyntheticVis

__all__ = ["SyntheticVis"]
