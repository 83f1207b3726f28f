"""YouTube-VOS from a manual dir; importing this package registers TFDS builder `youtube_vos`."""
from datasets.youtube_vos.youtube_vos_dataset_builder import Builder
from datasets.youtube_vos.youtube_vos_dataset_builder import YoutubeVosConfig

__all__ = ["Builder", "YoutubeVosConfig"]
