"""TFDS builder `davis2017`: the DAVIS 2017 semi-supervised trainval set, read from a manual dir.

One example per sequence (features in `datasets/features.py`). Every DAVIS train/val frame is
annotated: `video/segmentations` are the palette indices of the annotation PNGs (0 background,
object ids, 255 void/ignore kept as is). `objects/ids` are the sorted non-zero, non-255 indices
seen in the sequence; `objects/first_frame` the first frame showing each. Nothing is downloaded.

DAVIS numbers the objects of a video 1..N (palette indices), and its evaluation reads them so:
a sequence whose ids are not 1..N (a gap, as 1, 2, 5, or a stray index from an edited mask)
is an error naming the sequence, the id and the first annotation showing it. With
`remap_ids=True` (`config.dataset.remap_ids`) such a sequence is kept with a warning: its ids
are stored as they are, and the input pipeline maps them to slots 1..N like any dataset's
(YouTube-VOS ids are arbitrary by design). Nothing about a prepared dataset depends on the
option: it only decides whether preparing fails.
"""
import dataclasses

from absl import logging

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from datasets import features
from datasets import vos_files

_SPLIT_FILES = {"train": "train.txt", "validation": "val.txt"}

_CITATION = r"""
@article{Pont-Tuset_arXiv_2017,
  author = {Jordi Pont-Tuset and Federico Perazzi and Sergi Caelles and Pablo Arbel\'aez and
            Alexander Sorkine-Hornung and Luc {Van Gool}},
  title = {The 2017 DAVIS Challenge on Video Object Segmentation},
  journal = {arXiv:1704.00675},
  year = {2017}
}
"""


@dataclasses.dataclass(eq=False)
class DavisConfig(tfds.core.BuilderConfig):
  """`resolution_folder`: the subfolder of JPEGImages/ and Annotations/ to read."""
  resolution_folder: str = "480p"


class Builder(tfds.core.GeneratorBasedBuilder):
  """DAVIS 2017 trainval (semi-supervised), splits `train` and `validation` (ImageSets val.txt)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release, read from the official trainval layout."}
  BUILDER_CONFIGS = [
      DavisConfig(name="480p", resolution_folder="480p",
                  description="Frames and annotations at 480p (DAVIS-2017-trainval-480p.zip)."),
      DavisConfig(name="full_resolution", resolution_folder="Full-Resolution",
                  description="Full-resolution frames and annotations "
                              "(DAVIS-2017-trainval-Full-Resolution.zip)."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download DAVIS-2017-trainval-480p.zip (config `480p`) and/or
  DAVIS-2017-trainval-Full-Resolution.zip (config `full_resolution`) from
  https://davischallenge.org/davis2017/code.html and extract them into the same place. Each
  unzips into a `DAVIS/` folder holding
    ImageSets/2017/train.txt, ImageSets/2017/val.txt   (one sequence name per line)
    JPEGImages/<480p|Full-Resolution>/<sequence>/00000.jpg, ...
    Annotations/<480p|Full-Resolution>/<sequence>/00000.png, ...  (palette-indexed PNGs)
  Point `manual_dir` at that `DAVIS/` folder, or at the folder that contains it.
  """

  def __init__(self, *, remap_ids: bool = False, **kwargs):
    """`remap_ids`: keep sequences whose object ids are not 1..N (with a warning) instead of
    raising; the other arguments are TFDS's."""
    super().__init__(**kwargs)
    self._remap_ids = bool(remap_ids)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features.vos_features("jpeg"),
        homepage="https://davischallenge.org/davis2017/code.html",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._dataset_root(vos_files.manual_dir(dl_manager))
    return {
        split: self._generate_examples(root, _read_split_file(
            root / "ImageSets" / "2017" / file_name))
        for split, file_name in _SPLIT_FILES.items()
    }

  def _dataset_root(self, manual_dir: epath.Path) -> epath.Path:
    """The DAVIS folder: `manual_dir/DAVIS` or `manual_dir` itself, whichever has ImageSets/2017."""
    candidates = [manual_dir / "DAVIS", manual_dir]
    roots = [root for root in candidates if (root / "ImageSets" / "2017").is_dir()]
    if not roots:
      raise FileNotFoundError(
          f"No DAVIS 2017 dataset in manual dir {manual_dir}: neither "
          f"{candidates[0] / 'ImageSets' / '2017'} nor {candidates[1] / 'ImageSets' / '2017'} "
          f"exists.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    folder = self.builder_config.resolution_folder
    for kind in ("JPEGImages", "Annotations"):
      if not (roots[0] / kind / folder).is_dir():
        raise FileNotFoundError(
            f"Config {self.builder_config.name!r} reads {roots[0] / kind / folder}, which does "
            f"not exist.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return roots[0]

  def _generate_examples(self, root: epath.Path, sequences: list[str]):
    folder = self.builder_config.resolution_folder
    for video in sequences:
      yield video, _read_sequence(root / "JPEGImages" / folder / video,
                                  root / "Annotations" / folder / video, video,
                                  remap_ids=self._remap_ids)


def _read_split_file(path: epath.Path) -> list[str]:
  """The sequence names listed in an ImageSets split file, one per line."""
  if not path.is_file():
    raise FileNotFoundError(f"DAVIS split file {path} does not exist")
  sequences = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not sequences:
    raise ValueError(f"DAVIS split file {path} lists no sequences")
  duplicates = sorted({name for name in sequences if sequences.count(name) > 1})
  if duplicates:
    raise ValueError(f"DAVIS split file {path} lists sequences more than once: {duplicates}")
  return sequences


def _check_numbering(ids: list[int], first_frame: dict[int, int], frame_names: list[str],
                     png_dir: epath.Path, video: str, remap_ids: bool) -> None:
  """ValueError (a warning when `remap_ids`) naming the video, the first out-of-range id and
  the annotation showing it first, unless the sorted `ids` are 1..N."""
  if ids == list(range(1, len(ids) + 1)):
    return
  extra = min((i for i in ids if i > len(ids)), key=lambda i: (first_frame[i], i))
  frame = frame_names[first_frame[extra]]
  message = (f"{vos_files.where(video, frame, png_dir / (frame + '.png'))}: object id {extra} "
             f"breaks the DAVIS numbering: the video's ids {ids} are not 1..{len(ids)}")
  if not remap_ids:
    raise ValueError(f"{message}; fix the annotation (a stray palette index?) or build with "
                     "config.dataset.remap_ids=True to map the ids to 1..N")
  logging.warning("%s; kept (remap_ids: the input pipeline maps them to 1..N).", message)


def _read_sequence(jpeg_dir: epath.Path, png_dir: epath.Path, video: str, *,
                   remap_ids: bool = False) -> dict:
  """One example: all frames of a sequence with their (required) annotations; object ids that
  are not 1..N raise unless `remap_ids` (see the module docstring)."""
  frame_names = vos_files.list_frames(jpeg_dir, ".jpg", video)
  annotated = vos_files.list_frames(png_dir, ".png", video)
  vos_files.check_annotations_have_frames(frame_names, annotated, video, jpeg_dir, png_dir)
  unannotated = sorted(set(frame_names) - set(annotated))
  if unannotated:
    raise ValueError(
        f"{vos_files.where(video, unannotated[0], jpeg_dir / (unannotated[0] + '.jpg'))}: no "
        f"annotation {png_dir / (unannotated[0] + '.png')} ({len(frame_names)} frames, "
        f"{len(annotated)} annotations); DAVIS annotates every frame")
  frames, size = vos_files.read_frames(jpeg_dir, frame_names, video)
  label_maps = []
  for name in frame_names:
    path = png_dir / f"{name}.png"
    labels = vos_files.read_palette_png(path, video, name)
    vos_files.check_size(size, labels.shape, video, name, path, f"frame {jpeg_dir / name}.jpg")
    label_maps.append(labels)
  first_frame = vos_files.first_appearances(label_maps, features.IGNORE_LABEL)
  ids = sorted(first_frame)
  _check_numbering(ids, first_frame, frame_names, png_dir, video, remap_ids)
  return {
      "video": {
          "name": video,
          "frames": frames,
          "segmentations": [vos_files.encode_labels(labels) for labels in label_maps],
          "frame_names": frame_names,
      },
      "objects": {
          "ids": np.array(ids, dtype=np.int32),
          "first_frame": np.array([first_frame[i] for i in ids], dtype=np.int32),
      },
  }
