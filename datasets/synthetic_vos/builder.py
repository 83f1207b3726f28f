"""`synthetic_vos`: procedurally generated VOS videos with exact masks, built without any files.

    import datasets.synthetic_vos  # registers the builder
    builder = tfds.builder("synthetic_vos/small", data_dir=...)
    builder.download_and_prepare()  # no downloads: everything is generated from seeds

Every example is generated from (config.seed, split id, video index), train and validation use
different split ids, so the splits never share a video and the same config gives byte-identical
examples on every build. Object ids are 1..N in painting order (N nearest the camera); an
object's first_frame is the first frame where it has a visible pixel.
"""
import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from datasets import features
from datasets.synthetic_vos import generator

_SPLIT_IDS = {"train": 0, "validation": 1}
_PNG_COMPRESS_LEVEL = 1  # zlib level: 1 is ~4x faster than TF's default at ~15% more bytes.


def encode_png_frames(frames: np.ndarray) -> list[bytes]:
  """PNG-encodes every frame of `frames` [T, H, W, C] uint8 (C = 1 or 3) with PIL."""
  encoded = []
  for frame in frames:
    buffer = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(
        buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    encoded.append(buffer.getvalue())
  return encoded


@dataclasses.dataclass(eq=False)
class SyntheticVosConfig(tfds.core.BuilderConfig):
  """Size and content of one synthetic dataset.

  Attributes:
    height: frame height in pixels.
    width: frame width in pixels.
    num_frames: frames per video.
    num_train_videos: videos in the train split.
    num_validation_videos: videos in the validation split.
    max_objects: most objects in one video.
    use_photos: mix scikit-image's bundled photographs into backgrounds, textures and shapes
      (no download: they ship with scikit-image); False is purely procedural.
    motion_period: frames per motion period (`generator.VideoParams`); 0 is the whole video.
    appearance_drift: most relative colour change of an object over the video.
    seed: base seed of every video.
  """
  height: int = 128
  width: int = 128
  num_frames: int = 24
  num_train_videos: int = 600
  num_validation_videos: int = 30
  max_objects: int = 5
  use_photos: bool = True
  motion_period: int = 0
  appearance_drift: float = 0.0
  seed: int = 0

  @property
  def video_params(self) -> generator.VideoParams:
    """The generator's parameters for the videos of this config."""
    return generator.VideoParams(height=self.height, width=self.width,
                                 num_frames=self.num_frames, max_objects=self.max_objects,
                                 use_photos=self.use_photos, motion_period=self.motion_period,
                                 appearance_drift=self.appearance_drift)


def _config(name: str, description: str, **kwargs) -> SyntheticVosConfig:
  return SyntheticVosConfig(name=name, description=description, **kwargs)


class SyntheticVos(tfds.core.GeneratorBasedBuilder):
  """Synthetic videos: textured objects with smooth affine motion over a moving background."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: configs tiny, tiny_procedural, small, small_procedural.",
  }
  BUILDER_CONFIGS = [
      _config("tiny", "64x64, 8 frames, 32 train / 8 validation videos (tests).",
              height=64, width=64, num_frames=8, num_train_videos=32, num_validation_videos=8),
      _config("tiny_procedural", "As tiny, without photographs.",
              height=64, width=64, num_frames=8, num_train_videos=32, num_validation_videos=8,
              use_photos=False),
      _config("small", "128x128, 24 frames, 600 train / 30 validation videos (demo default).",
              height=128, width=128, num_frames=24, num_train_videos=600,
              num_validation_videos=30),
      _config("small_procedural", "As small, without photographs.",
              height=128, width=128, num_frames=24, num_train_videos=600,
              num_validation_videos=30, use_photos=False),
      _config("long", "128x128, 300 frames, 24 train / 8 validation videos: the small config's "
              "motion repeated every 24 frames (objects leave the frame and come back many "
              "times, occlude each other), with object colours drifting by up to 25% over the "
              "video; for memory-based models.",
              height=128, width=128, num_frames=300, num_train_videos=24,
              num_validation_videos=8, motion_period=24, appearance_drift=0.25),
  ]
  DEFAULT_CONFIG_NAME = "small"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=features.vos_features("png"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    counts = {"train": self.builder_config.num_train_videos,
              "validation": self.builder_config.num_validation_videos}
    return {split: self._generate_examples(split, count) for split, count in counts.items()}

  def _generate_examples(self, split: str, count: int):
    config = self.builder_config
    params = config.video_params
    frame_names = [f"{t:05d}" for t in range(config.num_frames)]
    for index in range(count):
      video = generator.generate_video(params, (config.seed, _SPLIT_IDS[split], index),
                                       *generator.video_scenario(index))
      name = f"{split}_{index:05d}"
      num_objects = len(video.first_frame)
      yield name, {
          "video": {
              "name": name,
              "frames": encode_png_frames(video.frames),
              "segmentations": encode_png_frames(video.segmentation[..., None]),
              "frame_names": frame_names,
          },
          "objects": {
              "ids": np.arange(1, num_objects + 1, dtype=np.int32),
              "first_frame": video.first_frame,
          },
      }
