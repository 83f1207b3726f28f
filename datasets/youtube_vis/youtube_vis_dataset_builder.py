"""`ytvis/2019`, `ytvis/2021`: YouTube-VIS from the official folder, never downloaded.

(TFDS ships a `youtube_vis` builder of its own, which downloads; this one reads the manual
folder only and uses the project's VIS feature spec, `datasets/vis_features.py`.)

Manual dir layout (`config.dataset.manual_dir` holds `youtube_vis_<year>/`):
  youtube_vis_2019/train/JPEGImages/<video>/<frame>.jpg
  youtube_vis_2019/train/instances.json   (the release's train.json, either name)
  youtube_vis_2019/valid/JPEGImages/<video>/<frame>.jpg
  youtube_vis_2019/valid/instances.json   (valid.json: videos and categories, no annotations)
Splits: `train` and `validation` (the challenge's valid set, for submission). Each video's
frames must exist and have the size its entry says; annotations (RLE or polygons per frame)
must name a known video and category and have one entry per frame
(`feelvos_jax.vis.annotations.check_dataset`). A mismatch stops the conversion with an error
naming the video and frame; TFDS removes the half-written records.
The category names are kept in the dataset's metadata (`info.metadata["categories"]`).
"""
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from datasets import vis_features
from feelvos_jax.vis import annotations as annotation_io

_SPLITS = {"train": "train", "validation": "valid"}
_ANNOTATION_NAMES = ("instances.json", "{folder}.json")


class Ytvis(tfds.core.GeneratorBasedBuilder):
  """YouTube-VIS video instance segmentation (40 categories), from the manual folder."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs 2019 and 2021."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="2019", description="YouTube-VIS 2019 (2,883 videos)."),
      tfds.core.BuilderConfig(name="2021", description="YouTube-VIS 2021 (3,859 videos)."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register at https://youtube-vos.org/dataset/vis/, download the VIS track's train and valid
  zips of the release and unzip them into <manual_dir>/youtube_vis_<year>/ so that it holds
  train/JPEGImages/<video>/*.jpg, train/instances.json (or train.json), and the same for valid/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(description=__doc__,
                                          features=vis_features.vis_features("jpeg"),
                                          metadata=tfds.core.MetadataDict())

  def _root(self, dl_manager) -> str:
    return os.path.join(os.fspath(dl_manager.manual_dir), f"youtube_vis_{self.builder_config.name}")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._root(dl_manager)
    datasets = {}
    for split, folder in _SPLITS.items():
      candidates = [os.path.join(root, folder, name.format(folder=folder))
                    for name in _ANNOTATION_NAMES]
      candidates.append(os.path.join(root, f"{folder}.json"))
      path = next((c for c in candidates if os.path.isfile(c)), None)
      if path is None:
        raise FileNotFoundError(f"{os.path.join(root, folder)}: no instances.json (or "
                                f"{folder}.json) there")
      datasets[split] = (path, annotation_io.load_annotations(path))
    self.info.metadata["categories"] = [c["name"] for c in sorted(
        datasets["train"][1]["categories"], key=lambda c: c["id"])]
    return {split: self._generate_examples(os.path.join(root, _SPLITS[split], "JPEGImages"),
                                           path, dataset)
            for split, (path, dataset) in datasets.items()}

  def _generate_examples(self, frames_dir: str, source: str, dataset: dict):
    by_video: dict[int, list] = {}
    for annotation in dataset["annotations"]:
      by_video.setdefault(annotation["video_id"], []).append(annotation)
    for video in dataset["videos"]:
      name = annotation_io.video_name(video)
      height, width = video["height"], video["width"]
      frames = []
      for t, file_name in enumerate(video["file_names"]):
        path = os.path.join(frames_dir, file_name)
        if not os.path.isfile(path):
          raise annotation_io.AnnotationError(f"{source}: video {video['id']} ({name}), frame "
                                              f"{t}: {path} does not exist")
        with Image.open(path) as image:
          if image.size != (width, height):
            raise annotation_io.AnnotationError(
                f"{source}: video {video['id']} ({name}), frame {t}: {path} is "
                f"{image.size[1]}x{image.size[0]}, the annotation file says {height}x{width}")
        frames.append(path)
      instances = sorted(by_video.get(video["id"], []), key=lambda a: a["id"])
      if len(instances) > 254:
        raise annotation_io.AnnotationError(f"{source}: video {video['id']} ({name}) has "
                                            f"{len(instances)} instances; at most 254 fit")
      labels = np.zeros((len(frames), height, width, 1), np.uint8)
      for slot, annotation in enumerate(instances):
        for t, rle in enumerate(annotation["segmentations"]):
          if rle is not None:
            labels[t, annotation_io.decode(rle, height, width), 0] = slot + 1
      yield name, {
          "video": {"name": name, "id": int(video["id"]), "frames": frames,
                    "segmentations": labels,
                    "frame_names": [os.path.splitext(os.path.basename(f))[0]
                                    for f in video["file_names"]]},
          "instances": {"ids": np.asarray([a["id"] for a in instances], np.int32),
                        "categories": np.asarray([a["category_id"] for a in instances],
                                                 np.int32)},
      }
