"""`synthetic_vis`: procedurally generated video instance segmentation, built without files.

    import datasets.synthetic_vis  # registers the builder
    builder = tfds.builder("synthetic_vis/small", data_dir=...)
    builder.download_and_prepare()  # no downloads: generated from seeds

Examples use the VIS feature spec of `datasets/vis_features.py`; categories are the shapes of
`generator.CATEGORIES`. Train and validation use different seeds and never share a video.
`instances_json(builder, split)` gives a split's ground truth in the YouTube-VIS annotation
format, which `feelvos_jax.evaluate_vis` and the in-training evaluation score against.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from datasets import vis_features
from datasets.synthetic_vis import generator
from datasets.synthetic_vos import builder as vos_builder
from datasets.synthetic_vos import generator as vos_generator

_SPLIT_IDS = {"train": 0, "validation": 1}


@dataclasses.dataclass(eq=False)
class SyntheticVisConfig(tfds.core.BuilderConfig):
  """Size and content: frame size, frames per video, videos per split, most instances per
  video, photographs in the textures and backgrounds or not, base seed."""
  height: int = 128
  width: int = 128
  num_frames: int = 12
  num_train_videos: int = 400
  num_validation_videos: int = 30
  max_instances: int = 4
  use_photos: bool = False
  seed: int = 0


class SyntheticVis(tfds.core.GeneratorBasedBuilder):
  """Synthetic VIS videos: shape-category instances over a moving textured background."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs tiny and small."}
  BUILDER_CONFIGS = [
      SyntheticVisConfig(name="tiny", description="64x64, 6 frames, 16 train / 4 validation "
                         "videos (tests).", height=64, width=64, num_frames=6,
                         num_train_videos=16, num_validation_videos=4, max_instances=3),
      SyntheticVisConfig(name="small", description="128x128, 12 frames, 400 train / 30 "
                         "validation videos (demo default)."),
  ]
  DEFAULT_CONFIG_NAME = "small"
  CATEGORIES = generator.CATEGORIES

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__, features=vis_features.vis_features("png"),
        metadata=tfds.core.MetadataDict(categories=list(generator.CATEGORIES)))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train_videos),
            "validation": self._generate_examples("validation", config.num_validation_videos)}

  def _generate_examples(self, split: str, count: int):
    config = self.builder_config
    params = vos_generator.VideoParams(height=config.height, width=config.width,
                                       num_frames=config.num_frames,
                                       max_objects=config.max_instances,
                                       use_photos=config.use_photos)
    for index in range(count):
      video = generator.generate_video(params, (config.seed, _SPLIT_IDS[split], index),
                                       *generator.video_scenario(index))
      name = f"{split}_{index:05d}"
      yield name, {
          "video": {"name": name, "id": index + 1,
                    "frames": vos_builder.encode_png_frames(video.frames),
                    "segmentations": vos_builder.encode_png_frames(video.segmentation[..., None]),
                    "frame_names": [f"{t:05d}" for t in range(config.num_frames)]},
          "instances": {"ids": np.arange(1, len(video.categories) + 1, dtype=np.int32),
                        "categories": video.categories},
      }
