"""The `vos_folder` TFDS builder: your own videos from a folder, masks on some frames only."""
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import vos_folder as vos_folder_config
from datasets import fake_layouts
from datasets import palette
from datasets import registry
from datasets.vos_folder import vos_folder_dataset_builder
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.data import input_pipeline
from feelvos_jax.tools import data_check
from tests import testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset_config(manual_dir, data_dir):
  config = vos_folder_config.get_config().dataset
  config.manual_dir, config.data_dir = str(manual_dir), str(data_dir)
  return config


def test_frames_in_natural_order_and_unannotated_frames_ignored(tmp_path):
  truth = fake_layouts.write_fake_vos_folder(
      str(tmp_path / "videos"), num_frames=12, annotated=(0, 5, 10), validation=["clip_b"])
  assert truth["clip_a"].frame_names[2:4] == ["frame2", "frame3"]
  builder = testing.build(vos_folder_dataset_builder.Builder, tmp_path / "videos",
                          tmp_path / "data", None)
  testing.assert_matches(builder, truth)  # frame10 after frame9; 255 where no PNG.
  decoded = testing.examples(builder, "train")["clip_a"]
  segmentations = decoded["video"]["segmentations"][..., 0]
  assert (segmentations[1] == IGNORE_LABEL).all() and (segmentations[5] != IGNORE_LABEL).any()
  assert decoded["objects"]["ids"].tolist() == [3, 7]
  assert decoded["objects"]["first_frame"].tolist() == [0, 10]


def test_without_a_list_file_the_validation_split_is_a_seeded_draw(tmp_path):
  names = [f"video{i}" for i in range(12)]
  fake_layouts.write_fake_vos_folder(str(tmp_path / "videos"), videos=names, num_frames=2,
                                     annotated=(0,))
  root = vos_folder_dataset_builder.epath.Path(tmp_path / "videos")
  validation = vos_folder_dataset_builder.validation_videos(root, sorted(names))
  assert len(validation) == 1  # 10 % of 12, rounded.
  assert validation == vos_folder_dataset_builder.validation_videos(root, sorted(names))
  builder = testing.build(vos_folder_dataset_builder.Builder, root, tmp_path / "data", None)
  assert sorted(testing.examples(builder, "validation")) == validation
  assert sorted(testing.examples(builder, "train")) == sorted(set(names) - set(validation))


def test_registry_data_check_and_the_input_pipeline_read_it(tmp_path, capsys, caplog):
  fake_layouts.write_fake_vos_folder(str(tmp_path / "videos"), num_frames=6, annotated=(0, 3),
                                     size=(40, 48), validation=["clip_c"])
  config = _dataset_config(tmp_path / "videos", tmp_path / "data")
  counts = data_check.check_dataset(config, str(tmp_path / "sheet.png"), num_samples=2,
                                    num_frames=3, cell_height=24)
  assert counts["train"] == {"videos": 2, "frames": 12, "objects": 4, "annotated_frames": 4,
                             "max_objects_per_video": 2}
  assert counts["validation"]["videos"] == 1
  assert "vos_folder" in capsys.readouterr().out and (tmp_path / "sheet.png").exists()
  assert "--config.dataset.max_frame_gap=3" in caplog.text
  config.crop_size, config.min_object_pixels, config.prefetch = (32, 32), 1, 0
  config.max_frame_gap = 3  # Masks on frames 0 and 3 only (the builder's warning says so).
  videos = registry.load_builder(config).as_dataset(split="train")
  batch = next(input_pipeline.create_train_dataset(config, videos, batch_size_per_host=2,
                                                   max_objects=2, seed=0))
  assert batch["current_frame"].shape == (2, 32, 32, 3)
  assert (batch["reference_labels"] != IGNORE_LABEL).any()


def test_records_of_another_or_a_changed_folder_are_refused(tmp_path):
  for name in ("first", "second"):
    fake_layouts.write_fake_vos_folder(str(tmp_path / name), num_frames=4, annotated=(0, 2),
                                       validation=["clip_c"])
  registry.load_builder(_dataset_config(tmp_path / "first", tmp_path / "data"))
  registry.load_builder(_dataset_config(tmp_path / "first", tmp_path / "data"))  # Unchanged.
  with pytest.raises(ValueError, match="converted from another folder") as error:
    registry.load_builder(_dataset_config(tmp_path / "second", tmp_path / "data"))
  assert str(tmp_path / "first") in str(error.value)
  shutil.copy(tmp_path / "first" / "Annotations" / "clip_a" / "frame0.png",
              tmp_path / "first" / "Annotations" / "clip_a" / "frame1.png")
  with pytest.raises(ValueError, match="no longer match it"):
    registry.load_builder(_dataset_config(tmp_path / "first", tmp_path / "data"))


def _mask_without_frame(root):
  palette.palette_image(np.zeros((24, 32), np.uint8)).save(
      root / "Annotations" / "clip_a" / "frame9.png")
  return ["'clip_a'", "'frame9'", "frame9.jpg"]


def _rgb_mask(root):
  path = root / "Annotations" / "clip_b" / "frame0.png"
  Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
  return ["'clip_b'", "'frame0'", str(path), "mode 'RGB'"]


def _video_without_masks(root):
  shutil.rmtree(root / "Annotations" / "clip_b")
  return ["'clip_b'", "no .png masks", str(root / "Annotations" / "clip_b")]


def _mask_of_another_size(root):
  path = root / "Annotations" / "clip_a" / "frame2.png"
  palette.palette_image(np.zeros((20, 32), np.uint8)).save(path)
  return ["'clip_a'", "'frame2'", str(path), "(20, 32)"]


def _unknown_validation_video(root):
  (root / "val.txt").write_text("clip_a\nghost\n")
  return [str(root / "val.txt"), "'ghost'"]


def _single_video(root):
  for name in ("clip_b", "clip_c"):
    shutil.rmtree(root / "JPEGImages" / name)
    shutil.rmtree(root / "Annotations" / name)
  return [str(root / "JPEGImages"), "at least two"]


@pytest.mark.parametrize("corrupt", [_mask_without_frame, _rgb_mask, _video_without_masks,
                                     _mask_of_another_size, _unknown_validation_video,
                                     _single_video])
def test_bad_input_raises_naming_the_video_and_file(tmp_path, corrupt):
  root = tmp_path / "videos"
  fake_layouts.write_fake_vos_folder(str(root), num_frames=4, annotated=(0, 2))
  expected = corrupt(root)
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    testing.build(vos_folder_dataset_builder.Builder, root, tmp_path / "data", None)
  for fragment in expected:
    assert fragment in str(error.value), (fragment, str(error.value))


@pytest.mark.slow
def test_folder_to_trained_model_to_segmented_video(tmp_path):
  """The README's path: a folder, data_check, a few training steps, segment a frame folder."""
  fake_layouts.write_fake_vos_folder(str(tmp_path / "videos"), num_frames=6, annotated=(0, 3),
                                     size=(32, 32), validation=["clip_c"])
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # Plumbing: files and commands, no numerics.
  env["PYTHONPATH"] = os.pathsep.join([REPOSITORY] + [p for p in [env.get("PYTHONPATH")] if p])
  common = ["--config=configs/vos_folder.py",
            f"--config.dataset.manual_dir={tmp_path / 'videos'}",
            f"--config.dataset.data_dir={tmp_path / 'data'}"]
  tiny = ["--config.batch_size=2", "--config.num_train_steps=2", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=2", "--config.eval_every_steps=0",
          "--config.dataset.max_frame_gap=3",
          "--config.optimizer.warmup_steps=1", "--config.dataset.crop_size=(32, 32)",
          "--config.dataset.min_object_pixels=1", "--config.dataset.prefetch=0",
          "--config.model.decoder_channels=8", "--config.model.embedding_dim=4",
          "--config.model.head_channels=8", "--config.model.head_num_layers=1"]

  def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPOSITORY, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  run("-m", "feelvos_jax.tools.data_check", *common, f"--output={tmp_path / 'sheet.png'}")
  trained = run("main.py", *common, *tiny, f"--workdir={tmp_path / 'run'}", "--mode=train")
  assert "step 2/2  loss" in trained.stderr
  segmented = run("-m", "feelvos_jax.segment", f"--video={tmp_path / 'videos/JPEGImages/clip_c'}",
                  f"--masks={tmp_path / 'videos/Annotations/clip_c'}",
                  f"--workdir={tmp_path / 'run'}", f"--output={tmp_path / 'out'}")
  assert "Segmented 1 video, 6 frames" in segmented.stdout
  assert len(list((tmp_path / "out" / "masks" / "clip_c").glob("*.png"))) == 6
