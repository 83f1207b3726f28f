"""`ytvis`: YouTube-VIS 2019 / 2021 from the official folder (manual download)."""
from datasets.youtube_vis.youtube_vis_dataset_builder import Ytvis

__all__ = ["Ytvis"]
