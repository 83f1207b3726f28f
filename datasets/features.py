"""The feature spec every VOS builder in `datasets/` shares.

One example is one whole video:
  video/name          str
  video/frames        [T, H, W, 3] uint8 (PNG/JPEG-encoded per frame on disk)
  video/segmentations [T, H, W, 1] uint8: dataset object ids (0 background), IGNORE_LABEL (255)
                      wherever the frame or pixel is unannotated/void
  video/frame_names   [T] str, e.g. "00000" (the file stem, as the submission formats need)
  objects/ids         [N] int32: the dataset's object ids (palette indices, YouTube-VOS ids)
  objects/first_frame [N] int32: index into the T frames where each object is first annotated
"""
import numpy as np
import tensorflow_datasets as tfds

IGNORE_LABEL = 255


def vos_features(frame_encoding: str = "jpeg") -> tfds.features.FeaturesDict:
  """The common FeaturesDict. `frame_encoding`: "jpeg" for real photos, "png" for lossless."""
  return tfds.features.FeaturesDict({
      "video": {
          "name": tfds.features.Text(),
          "frames": tfds.features.Video(
              shape=(None, None, None, 3), encoding_format=frame_encoding),
          "segmentations": tfds.features.Video(
              shape=(None, None, None, 1), encoding_format="png"),
          "frame_names": tfds.features.Sequence(tfds.features.Text()),
      },
      "objects": {
          "ids": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),
          "first_frame": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),
      },
  })
