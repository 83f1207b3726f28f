"""The `youtube_vos` TFDS builder, built from fake data in the official layout."""
import json
import logging
import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from datasets import fake_layouts
from datasets import palette
from datasets.youtube_vos import youtube_vos_dataset_builder
from tests import testing


def _build(manual_dir, data_dir, config="2019"):
  return testing.build(youtube_vos_dataset_builder.Builder, manual_dir, data_dir, config)


def test_both_releases_decode_to_the_written_ground_truth(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  truth_2018 = fake_layouts.write_fake_youtube_vos(
      str(tmp_path / "manual" / "youtube_vos_2018"),
      videos={"train": ["0a1b", "0c2d"], "valid": ["1e3f", "2a4b"]}, num_frames=11, seed=1)
  truth_2019 = fake_layouts.write_fake_youtube_vos(
      str(tmp_path / "release_2019"), videos={"train": ["3c5d"], "valid": ["4e6f"]},
      num_frames=7, size=(16, 20), seed=2)
  valid = truth_2018["1e3f"]
  assert valid.first_frame == [0, 5]
  assert (valid.segmentations[5] != 1).all()  # Valid PNGs hold only the new objects.
  assert (valid.segmentations[[1, 2, 3, 4, 6, 7, 8, 9, 10]] == 255).all()

  builder = tfds.builder("youtube_vos/2018", data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "manual"), try_download_gcs=False))  # Holds youtube_vos_2018/.
  testing.assert_matches(builder, truth_2018)
  assert "2 videos; 16 of 22 frames have no annotation PNG" in caplog.text  # train
  assert "2 videos; 18 of 22 frames have no annotation PNG" in caplog.text  # validation
  testing.assert_matches(_build(tmp_path / "release_2019", tmp_path / "data", "2019"),
                         truth_2019)


@pytest.fixture
def release(tmp_path):
  """A fake release folder (train: train_a, train_b; valid: valid_a; 11 frames each)."""
  root = tmp_path / "manual"
  return root, fake_layouts.write_fake_youtube_vos(str(root))


def _edit_meta(path, edit):
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


def test_meta_object_without_any_mask_is_skipped_with_a_warning(release, tmp_path, caplog):
  root, truth = release
  _edit_meta(root / "train" / "meta.json", lambda meta: meta["videos"]["train_a"]["objects"]
             .update({"7": {"category": "fake", "frames": ["00000"]}}))
  caplog.set_level(logging.INFO)
  examples = testing.examples(_build(root, tmp_path / "data"), "train")
  assert examples["train_a"]["objects"]["ids"].tolist() == truth["train_a"].ids == [1, 2]
  assert re.search(r"video 'train_a': object 7 of .*meta\.json appears in no annotation PNG",
                   caplog.text)
  assert "1 objects of meta.json appear in no annotation PNG and were skipped" in caplog.text


def _save_jpeg(path, size):
  Image.fromarray(np.zeros(size + (3,), np.uint8)).save(path)


def _raise_annotation_without_frame(root):
  os.remove(root / "train" / "JPEGImages" / "train_b" / "00005.jpg")
  return ["'train_b'", "'00005'", "00005.png", "00005.jpg"]


def _raise_annotation_size(root):
  path = root / "valid" / "Annotations" / "valid_a" / "00005.png"
  palette.palette_image(np.zeros((24, 30), np.uint8)).save(path)
  return ["'valid_a'", "'00005'", str(path), "(24, 30)", "(24, 32)"]


def _raise_frame_size(root):
  path = root / "train" / "JPEGImages" / "train_a" / "00003.jpg"
  _save_jpeg(path, (20, 32))
  return ["'train_a'", "'00003'", str(path), "(20, 32)", "(24, 32)"]


def _raise_corrupt_jpeg(root):
  path = root / "valid" / "JPEGImages" / "valid_a" / "00007.jpg"
  path.write_bytes(path.read_bytes()[:200])
  return ["'valid_a'", "'00007'", str(path), "cannot decode"]


def _raise_rgb_png(root):
  path = root / "train" / "Annotations" / "train_a" / "00010.png"
  Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
  return ["'train_a'", "'00010'", str(path), "mode 'RGB'", "palette"]


def _raise_empty_meta(root):
  path = root / "valid" / "meta.json"
  path.write_text(json.dumps({"videos": {}}))
  return [str(path), "no videos"]


def _raise_missing_meta(root):
  path = root / "train" / "meta.json"
  os.remove(path)
  return [str(path), "does not exist"]


def _raise_id_missing_from_meta(root):
  _edit_meta(root / "train" / "meta.json",
             lambda meta: meta["videos"]["train_b"]["objects"].pop("2"))
  return ["'train_b'", "'00005'", "00005.png", "[2]", "meta.json"]


def _raise_video_without_folder(root):
  _edit_meta(root / "valid" / "meta.json",
             lambda meta: meta["videos"].update({"ghost": {"objects": {"1": {"frames": []}}}}))
  return ["'ghost'", str(root / "valid" / "JPEGImages" / "ghost"), "meta.json"]


def _raise_folder_not_in_meta(root):
  _edit_meta(root / "train" / "meta.json", lambda meta: meta["videos"].pop("train_a"))
  return ["'train_a'", "not listed in", "meta.json"]


def _raise_video_without_annotations(root):
  folder = root / "valid" / "Annotations" / "valid_a"
  for path in folder.iterdir():
    os.remove(path)
  return ["'valid_a'", str(folder), "no .png annotations"]


@pytest.mark.parametrize("corrupt", [
    _raise_annotation_without_frame, _raise_annotation_size, _raise_frame_size,
    _raise_corrupt_jpeg, _raise_rgb_png, _raise_empty_meta, _raise_missing_meta,
    _raise_id_missing_from_meta, _raise_video_without_folder, _raise_folder_not_in_meta,
    _raise_video_without_annotations,
])
def test_bad_input_raises_naming_the_video_and_file(release, tmp_path, corrupt):
  root, _ = release
  expected = corrupt(root)
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    _build(root, tmp_path / "data")
  for fragment in expected:
    assert fragment in str(error.value), (fragment, str(error.value))


def test_missing_or_mistyped_manual_dir_raises(release, tmp_path):
  root, _ = release
  missing = tmp_path / "no_such_folder"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    _build(missing, tmp_path / "data")
  wrong = root / "train"
  with pytest.raises(FileNotFoundError, match="No YouTube-VOS 2018 in manual dir " +
                     re.escape(str(wrong))):
    _build(wrong, tmp_path / "data", "2018")


def test_fake_writer_rejects_videos_too_short_for_a_second_object(tmp_path):
  with pytest.raises(ValueError, match=r"num_frames \(5\) must exceed annotation_step \(5\)"):
    fake_layouts.write_fake_youtube_vos(str(tmp_path), num_frames=5)
