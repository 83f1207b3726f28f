"""Shared checks of the DAVIS and YouTube-VOS builders, prepared from fake official layouts."""
import numpy as np
import tensorflow_datasets as tfds

MAX_MEAN_JPEG_ERROR = 4.0  # Mean |decoded - drawn| per video; JPEG at quality 95.


def build(builder_class, manual_dir, data_dir, config: str) -> tfds.core.DatasetBuilder:
  """Prepares `builder_class(config)` from `manual_dir` into `data_dir`, never downloading."""
  builder = builder_class(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False))
  return builder


def examples(builder, split: str) -> dict:
  """Video name -> decoded example of one split."""
  return {example["video"]["name"].decode(): example
          for example in tfds.as_numpy(builder.as_dataset(split=split))}


def assert_matches(builder, truth) -> None:
  """Both splits hold exactly the fake videos of `truth` (fake_layouts' records), decoded."""
  for split in ("train", "validation"):
    decoded = examples(builder, split)
    assert sorted(decoded) == sorted(name for name, video in truth.items()
                                     if video.split == split)
    for name, example in decoded.items():
      expected = truth[name]
      frames = example["video"]["frames"]
      assert frames.shape == expected.frames.shape
      assert np.abs(frames.astype(float) - expected.frames).mean() < MAX_MEAN_JPEG_ERROR
      np.testing.assert_array_equal(example["video"]["segmentations"][..., 0],
                                    expected.segmentations)
      assert [n.decode() for n in example["video"]["frame_names"]] == expected.frame_names
      assert example["objects"]["ids"].tolist() == expected.ids
      assert example["objects"]["first_frame"].tolist() == expected.first_frame
