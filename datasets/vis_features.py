"""The feature spec every video instance segmentation builder in `datasets/` shares.

One example is one whole video:
  video/name           str, the video's folder name
  video/id             int32, the annotation file's video id (what a results file names)
  video/frames         [T, H, W, 3] uint8
  video/segmentations  [T, H, W, 1] uint8: instance slot j + 1 where instance j is, 0 elsewhere
                       (an unannotated split is all 0; where annotated masks overlap, the later
                       instance's pixel wins)
  video/frame_names    [T] str
  instances/ids        [N] int32: the annotation file's instance ids (slot j holds ids[j])
  instances/categories [N] int32: category ids as the annotation file numbers them
"""
import numpy as np
import tensorflow_datasets as tfds


def vis_features(frame_encoding: str = "jpeg") -> tfds.features.FeaturesDict:
  """The common FeaturesDict. `frame_encoding`: "jpeg" for real photos, "png" for lossless."""
  return tfds.features.FeaturesDict({
      "video": {
          "name": tfds.features.Text(),
          "id": tfds.features.Scalar(dtype=np.int32),
          "frames": tfds.features.Video(shape=(None, None, None, 3),
                                        encoding_format=frame_encoding),
          "segmentations": tfds.features.Video(shape=(None, None, None, 1),
                                               encoding_format="png"),
          "frame_names": tfds.features.Sequence(tfds.features.Text()),
      },
      "instances": {
          "ids": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),
          "categories": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),
      },
  })
