"""Inference bundles (feelvos_jax/inference/export.py): export a checkpoint, load it, same masks."""
import logging
import os

import numpy as np
import pytest

from feelvos_jax.inference import bundle as bundle_lib
from feelvos_jax.inference import export as export_lib
from feelvos_jax.vis import export as vis_export
from tests import testing


def export_config():
  config = testing.small_config()
  config.export.buckets = ((32, 32, 5), (48, 32, 2))
  config.export.max_reference_frames = 2
  config.export.platforms = ("cpu",)
  return config


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  """(workdir, bundle path, the loaded bundle) from a saved training checkpoint."""
  config = export_config()
  _, model, variables, _, _ = testing.shared_setup()
  workdir = tmp_path_factory.mktemp("workdir")
  testing.save_checkpoint(config, model, variables, workdir, 7)
  path = export_lib.export(config, os.fspath(workdir))
  return workdir, path, export_lib.load(path)


@pytest.mark.slow
def test_bundle_layout(bundle):
  workdir, path, loaded = bundle
  assert path == workdir / "export"
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "export"]  # No temp left.
  assert sorted(p.name for p in path.iterdir()) == [
      "config.json", "functions", "manifest.json", "variables"]
  assert sorted(p.name for p in (path / "functions").iterdir()) == [
      "start_32x32x5.bin", "start_48x32x2.bin", "step_32x32x5_r1.bin", "step_32x32x5_r2.bin",
      "step_48x32x2_r1.bin", "step_48x32x2_r2.bin"]
  assert loaded.checkpoint_step == 7
  assert loaded.config.model.embedding_dim == 8
  # Weights only: no optimizer state, no step, no rng.
  assert set(loaded.variables) == {"params", "batch_stats"}


@pytest.mark.slow
def test_exported_and_in_process_masks_are_identical(bundle):
  _, _, loaded = bundle
  in_process = testing.shared_setup()[3]
  # 5 objects, one appearing at frame 2 (two reference frames), 30x29 padded to 32x32.
  frames, labels, first_frame = testing.make_video(5, 5, height=30, width=29, seed=4,
                                                   appear=[0, 0, 0, 0, 2])
  expected = testing.run(in_process, frames, labels, first_frame)
  got = testing.run(loaded, frames, labels, first_frame)
  np.testing.assert_array_equal(got, expected)
  assert len(np.unique(got[1:])) > 2


@pytest.mark.slow
def test_bucket_choice_and_limits(bundle):
  _, _, loaded = bundle
  assert loaded.bucket_for(40, 30, 2).name == "48x32x2"
  assert loaded.bucket_for(20, 20, 3).name == "32x32x5"
  with pytest.raises(ValueError, match="no exported bucket holds a 32x32 video with 6 objects"):
    loaded.bucket_for(32, 32, 6)
  frames, labels, first_frame = testing.make_video(4, 3, seed=5, appear=[0, 1, 2])
  with pytest.raises(ValueError, match="config.export.max_reference_frames"):
    testing.run(loaded, frames, labels, first_frame)


@pytest.mark.slow
def test_a_bucket_larger_than_the_padded_frame_is_logged(bundle, caplog):
  """In-process inference pads 30x29 (output stride 16) to 32x32, the 32x32 bucket: no
  warning; 10x12 pads to 16x16 but runs in 32x32, with more padding: a warning."""
  _, _, loaded = bundle
  with caplog.at_level(logging.WARNING):
    loaded.plan(30, 29, 2)
    assert not caplog.records
    loaded.plan(10, 12, 1)
  assert "a 10x12 video runs in the 32x32 bucket" in caplog.text
  assert "export a 16x16 bucket" in caplog.text


@pytest.mark.slow
def test_export_replaces_a_bundle_atomically(bundle, tmp_path):
  workdir, _, _ = bundle
  config = export_config()
  config.export.buckets = ((32, 32, 1),)
  config.export.max_reference_frames = 1
  destination = tmp_path / "bundle"
  destination.mkdir()
  (destination / "stale.txt").write_text("old")
  export_lib.export(config, os.fspath(workdir), os.fspath(destination))
  assert not (destination / "stale.txt").exists()
  assert sorted(p.name for p in (destination / "functions").iterdir()) == [
      "start_32x32x1.bin", "step_32x32x1_r1.bin"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("key, value, message", [
    ("buckets", ((30, 32, 2),), "multiples of the output stride 16"),
    ("buckets", ((32, 32),), r"\(height, width, objects\)"),
    ("buckets", (), "empty"),
    ("max_reference_frames", 0, "config.export.max_reference_frames must be an int >= 1"),
])
def test_bad_export_config(key, value, message):
  config = export_config()
  config.export[key] = value
  with pytest.raises(ValueError, match=message):
    export_lib.export_buckets(config)


def test_load_rejects_a_folder_without_a_bundle(tmp_path):
  with pytest.raises(FileNotFoundError, match="not an inference bundle"):
    export_lib.load(tmp_path)


def test_a_bundle_of_another_kind_is_refused_naming_its_loader(tmp_path):
  vis = bundle_lib.write(tmp_path / "vis", {"format": bundle_lib.VIS.format}, lambda folder: None)
  with pytest.raises(ValueError, match=f"{vis} holds a video instance segmentation bundle, not "
                                       f"an inference bundle: load it with "
                                       f"feelvos_jax.vis.export.load"):
    export_lib.load(vis)
  vos = bundle_lib.write(tmp_path / "vos", {"format": bundle_lib.VOS.format}, lambda folder: None)
  with pytest.raises(ValueError, match="not a video instance segmentation bundle: load it with "
                                       "feelvos_jax.inference.export.load"):
    vis_export.load(vos)
  with pytest.raises(FileNotFoundError, match="not a video instance segmentation bundle: no "
                                              "manifest.json"):
    vis_export.load(tmp_path)
