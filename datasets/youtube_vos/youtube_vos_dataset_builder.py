"""TFDS builder `youtube_vos`: YouTube-VOS 2018/2019 (VOS track), read from a manual dir.

One example per video (features in `datasets/features.py`) holding every JPEG frame found in
JPEGImages/<video>/. Frames without an annotation PNG get segmentation 255 (ignore) everywhere;
these are counted and logged per split, as YouTube-VOS annotates only every 5th frame.

`objects/ids` are the ids of meta.json (ints); `objects/first_frame` is the index (into the
video's frames) of the first annotation PNG showing each object. An object listed in meta.json
that appears in no annotation PNG is skipped with a warning naming the video and id (and
counted in the split's summary); a PNG pixel value that is not 0, 255 or a meta.json id of its
video raises an error.

In `validation`, an annotation PNG exists only where objects first appear and holds only those
objects (0 elsewhere, also over objects seen earlier): the reference mask of object `i` is
`segmentations[first_frame[i]] == ids[i]`. Nothing is downloaded.
"""
import dataclasses
import json

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from datasets import features
from datasets import vos_files

_SPLIT_FOLDERS = {"train": "train", "validation": "valid"}

_CITATION = r"""
@article{xu2018youtubevos,
  author = {Ning Xu and Linjie Yang and Yuchen Fan and Dingcheng Yue and Yuchen Liang and
            Jianchao Yang and Thomas Huang},
  title = {YouTube-VOS: A Large-Scale Video Object Segmentation Benchmark},
  journal = {arXiv:1809.03327},
  year = {2018}
}
"""


@dataclasses.dataclass(eq=False)
class YoutubeVosConfig(tfds.core.BuilderConfig):
  """`release`: "2018" or "2019"; read from `<manual_dir>/youtube_vos_<release>/` if present."""
  release: str = "2019"

  @property
  def release_folder(self) -> str:
    """Folder of this release inside the manual dir, e.g. `youtube_vos_2019`."""
    return f"youtube_vos_{self.release}"


class Builder(tfds.core.GeneratorBasedBuilder):
  """YouTube-VOS (VOS track), splits `train` (train/) and `validation` (valid/)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release, read from the official layout."}
  BUILDER_CONFIGS = [
      YoutubeVosConfig(name="2018", release="2018", description="YouTube-VOS 2018."),
      YoutubeVosConfig(name="2019", release="2019", description="YouTube-VOS 2019."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register at https://youtube-vos.org/ and download the release's train.zip and valid.zip (VOS
  track). Extract both into one folder per release, so that it holds
    train/meta.json, train/JPEGImages/<video>/<frame>.jpg, train/Annotations/<video>/<frame>.png
    valid/meta.json, valid/JPEGImages/<video>/<frame>.jpg, valid/Annotations/<video>/<frame>.png
  and either name that folder `youtube_vos_2018` / `youtube_vos_2019` inside `manual_dir` (so
  both releases live side by side; this is looked for first) or point `manual_dir` at it.
  Every .jpg in JPEGImages/<video>/ becomes a frame: the standard zips hold every 5th frame; to
  use all frames, replace train/JPEGImages (valid/JPEGImages) by the JPEGImages folder of
  train_all_frames.zip (valid_all_frames.zip). Frames without an annotation PNG get
  segmentation 255 (ignore).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features.vos_features("jpeg"),
        homepage="https://youtube-vos.org/",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._release_root(vos_files.manual_dir(dl_manager))
    return {
        split: self._generate_examples(root / folder, _read_meta(root / folder))
        for split, folder in _SPLIT_FOLDERS.items()
    }

  def _release_root(self, manual_dir: epath.Path) -> epath.Path:
    """`manual_dir/youtube_vos_<release>` or `manual_dir`, whichever holds train/ or valid/."""
    candidates = [manual_dir / self.builder_config.release_folder, manual_dir]
    for root in candidates:
      if any((root / folder).is_dir() for folder in _SPLIT_FOLDERS.values()):
        return root
    raise FileNotFoundError(
        f"No YouTube-VOS {self.builder_config.release} in manual dir {manual_dir}: neither "
        f"{candidates[0]} nor {candidates[1]} holds train/ or valid/."
        f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  def _generate_examples(self, split_root: epath.Path, meta: dict[str, list[int]]):
    totals = {"frames": 0, "unannotated": 0, "skipped_objects": 0}
    for video, meta_ids in meta.items():
      example, counts = _read_video(split_root, video, meta_ids)
      for key, count in counts.items():
        totals[key] += count
      yield video, example
    logging.info(
        "youtube_vos/%s %s: %d videos; %d of %d frames have no annotation PNG (segmentation "
        "255); %d objects of meta.json appear in no annotation PNG and were skipped.",
        self.builder_config.name, split_root, len(meta), totals["unannotated"], totals["frames"],
        totals["skipped_objects"])


def _read_meta(split_root: epath.Path) -> dict[str, list[int]]:
  """{video: sorted object ids} from `split_root/meta.json`, checked against JPEGImages/."""
  path = split_root / "meta.json"
  if not path.is_file():
    raise FileNotFoundError(f"YouTube-VOS meta file {path} does not exist")
  try:
    videos = json.loads(path.read_text())["videos"]
  except (json.JSONDecodeError, KeyError, TypeError) as error:
    raise ValueError(
        f"{path} is not a YouTube-VOS meta.json ({{'videos': {{...}}}}): {error!r}") from error
  if not isinstance(videos, dict) or not videos:
    raise ValueError(f"{path} lists no videos (expected {{'videos': {{video: ...}}}})")
  meta = {}
  for video, entry in videos.items():
    try:
      meta[video] = sorted(int(object_id) for object_id in entry["objects"])
    except (KeyError, TypeError, ValueError) as error:
      raise ValueError(
          f"video {video!r} in {path}: expected 'objects' keyed by integer ids: "
          f"{error!r}") from error
  jpeg_root = split_root / "JPEGImages"
  if not jpeg_root.is_dir():
    raise FileNotFoundError(f"YouTube-VOS frames folder {jpeg_root} does not exist")
  on_disk = {path.name for path in jpeg_root.iterdir() if path.is_dir()}
  missing = sorted(set(meta) - on_disk)
  if missing:
    raise FileNotFoundError(
        f"video {missing[0]!r} is listed in {path} but {jpeg_root / missing[0]} does not exist "
        f"({len(missing)} such videos)")
  unlisted = sorted(on_disk - set(meta))
  if unlisted:
    raise ValueError(
        f"video {unlisted[0]!r} ({jpeg_root / unlisted[0]}) is not listed in {path} "
        f"({len(unlisted)} such videos); is meta.json from another release?")
  return meta


def _read_video(split_root: epath.Path, video: str,
                meta_ids: list[int]) -> tuple[dict, dict[str, int]]:
  """One example (all JPEG frames, PNGs where present) and its counts for the split summary."""
  jpeg_dir = split_root / "JPEGImages" / video
  png_dir = split_root / "Annotations" / video
  frame_names = vos_files.list_frames(jpeg_dir, ".jpg", video)
  annotated = set(vos_files.list_frames(png_dir, ".png", video))
  if not annotated:
    raise ValueError(f"video {video!r}: no .png annotations in {png_dir}")
  vos_files.check_annotations_have_frames(frame_names, annotated, video, jpeg_dir, png_dir)
  frames, size = vos_files.read_frames(jpeg_dir, frame_names, video)
  allowed = set(meta_ids) | {0, features.IGNORE_LABEL}
  label_maps = []
  for name in frame_names:
    path = png_dir / f"{name}.png"
    if name not in annotated:
      label_maps.append(None)
      continue
    labels = vos_files.read_palette_png(path, video, name)
    vos_files.check_size(size, labels.shape, video, name, path, f"frame {jpeg_dir / name}.jpg")
    unknown = sorted(set(np.unique(labels).tolist()) - allowed)
    if unknown:
      raise ValueError(
          f"{vos_files.where(video, name, path)}: pixel values {unknown} are not object ids of "
          f"this video in {split_root / 'meta.json'} ({meta_ids})")
    label_maps.append(labels)
  first_frame = vos_files.first_appearances(label_maps, features.IGNORE_LABEL)
  skipped = [i for i in meta_ids if i not in first_frame]
  for object_id in skipped:
    logging.warning(
        "video %r: object %d of %s appears in no annotation PNG in %s; skipped.", video,
        object_id, split_root / "meta.json", png_dir)
  ids = [i for i in meta_ids if i in first_frame]
  unannotated_png = vos_files.encode_labels(np.full(size, features.IGNORE_LABEL, np.uint8))
  example = {
      "video": {
          "name": video,
          "frames": frames,
          "segmentations": [unannotated_png if labels is None else
                            vos_files.encode_labels(labels) for labels in label_maps],
          "frame_names": frame_names,
      },
      "objects": {
          "ids": np.array(ids, dtype=np.int32),
          "first_frame": np.array([first_frame[i] for i in ids], dtype=np.int32),
      },
  }
  counts = {"frames": len(frame_names), "unannotated": sum(labels is None for labels in label_maps),
            "skipped_objects": len(skipped)}
  return example, counts
