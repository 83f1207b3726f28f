"""The `davis2017` TFDS builder, built from fake data in the official layout, and the palette."""
import os
import re

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from datasets import fake_layouts
from datasets import palette
from datasets import registry
from datasets.davis2017 import davis2017_dataset_builder
from tests import testing


def _build(manual_dir, data_dir, config="480p"):
  return testing.build(davis2017_dataset_builder.Builder, manual_dir, data_dir, config)


def test_davis_palette_is_the_voc_colour_map():
  colours = palette.davis_palette()
  assert colours.shape == (256, 3) and colours.dtype == np.uint8
  known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
           5: (128, 0, 128), 8: (64, 0, 0), 20: (0, 64, 128), 255: (224, 224, 192)}
  for index, colour in known.items():
    assert tuple(colours[index]) == colour, index
  assert len({tuple(c) for c in colours}) == 256


def test_palette_image_round_trips_labels(tmp_path):
  labels = np.random.default_rng(0).integers(0, 256, size=(5, 7), dtype=np.uint8)
  palette.palette_image(labels).save(tmp_path / "labels.png")
  with Image.open(tmp_path / "labels.png") as image:
    assert image.mode == "P"
    np.testing.assert_array_equal(np.array(image), labels)
    assert np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3).tolist() == (
        palette.davis_palette().tolist())
  with pytest.raises(ValueError, match=r"\(5, 7, 1\)"):
    palette.palette_image(labels[..., None])


def test_both_configs_decode_to_the_written_ground_truth(tmp_path):
  davis = tmp_path / "manual" / "DAVIS"
  truth_480p = fake_layouts.write_fake_davis2017(
      str(davis), sequences={"train": ["bear", "camel"], "val": ["dog"]}, num_frames=4,
      num_objects=3, seed=1)
  truth_full = fake_layouts.write_fake_davis2017(
      str(davis), sequences={"train": ["bear", "camel"], "val": ["dog"]}, num_frames=3,
      size=(30, 40), seed=2, full_resolution=True)
  assert any(255 in video.segmentations for video in truth_480p.values())
  assert any(video.first_frame != [0] * len(video.ids) for video in truth_480p.values())

  builder = tfds.builder("davis2017/480p", data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "manual"), try_download_gcs=False))  # The folder holding DAVIS/.
  testing.assert_matches(builder, truth_480p)
  testing.assert_matches(_build(davis, tmp_path / "data", "full_resolution"), truth_full)


@pytest.fixture
def davis(tmp_path):
  """A fake DAVIS folder (train_a, train_b / val_a, 3 frames each) and its ground truth."""
  root = tmp_path / "manual" / "DAVIS"
  return root, fake_layouts.write_fake_davis2017(str(root))


def _save_jpeg(path, size):
  Image.fromarray(np.zeros(size + (3,), np.uint8)).save(path)


def _raise_missing_annotation(root):
  os.remove(root / "Annotations" / "480p" / "train_a" / "00001.png")
  return ["'train_a'", "'00001'", "00001.png", "every frame"]


def _raise_annotation_without_frame(root):
  os.remove(root / "JPEGImages" / "480p" / "val_a" / "00002.jpg")
  return ["'val_a'", "'00002'", "00002.jpg"]


def _raise_annotation_size(root):
  path = root / "Annotations" / "480p" / "train_b" / "00002.png"
  palette.palette_image(np.zeros((20, 32), np.uint8)).save(path)
  return ["'train_b'", "'00002'", str(path), "(20, 32)", "(24, 32)"]


def _raise_frame_size(root):
  path = root / "JPEGImages" / "480p" / "train_a" / "00001.jpg"
  _save_jpeg(path, (24, 30))
  return ["'train_a'", "'00001'", str(path), "(24, 30)", "(24, 32)"]


def _raise_corrupt_jpeg(root):
  path = root / "JPEGImages" / "480p" / "train_a" / "00001.jpg"
  path.write_bytes(b"not a jpeg at all")
  return ["'train_a'", "'00001'", str(path), "cannot decode"]


def _raise_truncated_jpeg(root):
  path = root / "JPEGImages" / "480p" / "val_a" / "00000.jpg"
  path.write_bytes(path.read_bytes()[:300])
  return ["'val_a'", "'00000'", str(path), "cannot decode"]


def _raise_greyscale_png(root):
  path = root / "Annotations" / "480p" / "train_b" / "00000.png"
  Image.fromarray(np.zeros((24, 32), np.uint8)).save(path)
  return ["'train_b'", "'00000'", str(path), "mode 'L'", "palette"]


def _raise_png_named_jpg(root):
  path = root / "JPEGImages" / "480p" / "train_b" / "00001.jpg"
  Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path, format="PNG")
  return ["'train_b'", "'00001'", str(path), "expected a JPEG"]


def _raise_empty_split_file(root):
  path = root / "ImageSets" / "2017" / "val.txt"
  path.write_text("\n")
  return [str(path), "no sequences"]


def _raise_missing_sequence(root):
  with open(root / "ImageSets" / "2017" / "train.txt", "a") as f:
    f.write("ghost\n")
  return ["'ghost'", str(root / "JPEGImages" / "480p" / "ghost")]


@pytest.mark.parametrize("corrupt", [
    _raise_missing_annotation, _raise_annotation_without_frame, _raise_annotation_size,
    _raise_frame_size, _raise_corrupt_jpeg, _raise_truncated_jpeg, _raise_greyscale_png,
    _raise_png_named_jpg, _raise_empty_split_file, _raise_missing_sequence,
])
def test_bad_input_raises_naming_the_video_and_file(davis, tmp_path, corrupt):
  root, _ = davis
  expected = corrupt(root)
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    _build(root, tmp_path / "data")
  for fragment in expected:
    assert fragment in str(error.value), (fragment, str(error.value))


def test_missing_or_mistyped_manual_dir_raises(davis, tmp_path):
  root, _ = davis
  missing = tmp_path / "no_such_folder"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    _build(missing, tmp_path / "data")
  wrong = root / "JPEGImages"
  with pytest.raises(FileNotFoundError, match="No DAVIS 2017 dataset in manual dir " +
                     re.escape(str(wrong))):
    _build(wrong, tmp_path / "data")
  with pytest.raises(FileNotFoundError, match=re.escape(str(root / "JPEGImages" /
                                                            "Full-Resolution"))):
    _build(root, tmp_path / "data", "full_resolution")


def test_greyscale_and_cmyk_jpegs_decode_to_rgb(davis, tmp_path):
  root, truth = davis
  folder = root / "JPEGImages" / "480p" / "train_a"
  frames = truth["train_a"].frames
  grey = Image.fromarray(frames[1]).convert("L")
  grey.save(folder / "00001.jpg", quality=95)
  Image.fromarray(frames[2]).convert("CMYK").save(folder / "00002.jpg", quality=95)
  with Image.open(folder / "00002.jpg") as image:
    assert image.mode == "CMYK"
    expected_cmyk = np.array(image.convert("RGB"), dtype=float)
  examples = testing.examples(_build(root, tmp_path / "data"), "train")
  decoded = examples["train_a"]["video"]["frames"]
  assert decoded.shape == frames.shape
  expected_grey = np.repeat(np.array(grey, dtype=float)[..., None], 3, axis=-1)
  assert np.abs(decoded[1] - expected_grey).mean() < testing.MAX_MEAN_JPEG_ERROR
  assert np.abs(decoded[2] - expected_cmyk).mean() < testing.MAX_MEAN_JPEG_ERROR


def _relabel(root, video, frames, old, new):
  """Rewrites pixels `old` as `new` in the annotation PNGs of `frames` of `video`."""
  folder = root / "Annotations" / "480p" / video
  for frame in frames:
    with Image.open(folder / f"{frame}.png") as image:
      labels = np.array(image)
    labels[labels == old] = new
    palette.palette_image(labels).save(folder / f"{frame}.png")


def _stray_index(root, video, frame, value):
  """Sets one pixel of `video`'s annotation `frame` to `value`."""
  path = root / "Annotations" / "480p" / video / f"{frame}.png"
  with Image.open(path) as image:
    labels = np.array(image)
  labels[-1, -1] = value
  palette.palette_image(labels).save(path)


@pytest.mark.parametrize("corrupt,ids,frame", [
    # A gap: object 2 (from frame 1 on) renumbered 5.
    (lambda root: _relabel(root, "train_b", ["00000", "00001", "00002"], 2, 5), "[1, 5]",
     "00001"),
    (lambda root: _stray_index(root, "train_b", "00002", 9), "[1, 2, 9]", "00002"),
])
def test_ids_that_are_not_one_to_n_are_refused_naming_video_and_file(davis, tmp_path, corrupt,
                                                                     ids, frame):
  root, _ = davis
  corrupt(root)
  with pytest.raises(ValueError) as error:
    _build(root, tmp_path / "data")
  message = str(error.value)
  path = root / "Annotations" / "480p" / "train_b" / f"{frame}.png"
  assert message.startswith(f"video 'train_b' frame '{frame}' ({path}): object id "), message
  assert f"the video's ids {ids} are not 1.." in message
  assert message.endswith("or build with config.dataset.remap_ids=True to map the ids to 1..N")


def test_remap_ids_keeps_such_videos_with_their_ids(davis, tmp_path):
  root, truth = davis
  _relabel(root, "train_b", ["00000", "00001", "00002"], 2, 5)
  config = ml_collections.ConfigDict({"name": "davis2017/480p", "data_dir": str(tmp_path / "d"),
                                      "manual_dir": str(root), "remap_ids": True})
  decoded = testing.examples(registry.load_builder(config), "train")["train_b"]
  assert decoded["objects"]["ids"].tolist() == [1, 5]
  expected = truth["train_b"].segmentations.copy()
  expected[expected == 2] = 5
  np.testing.assert_array_equal(decoded["video"]["segmentations"][..., 0], expected)
  config.name = "synthetic_vos/tiny"
  with pytest.raises(ValueError, match=r"config.dataset.remap_ids=True: 'synthetic_vos/tiny' "
                                       "has no such option"):
    registry.load_builder(config)
