"""The data-check command and the dataset registry (tiny synthetic config, data in tmp_path)."""
import pathlib
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import synthetic
from datasets import features
from datasets import palette
from datasets import registry
from feelvos_jax.tools import data_check

_CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"


class FakeManualVos(tfds.core.GeneratorBasedBuilder):
  """A builder that, like DAVIS, reads its raw videos from the manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract the raw videos into the manual directory."

  def _info(self):
    return self.dataset_info_from_configs(features=features.vos_features("png"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(dl_manager.manual_dir)}

  def _generate_examples(self, path):
    for video in sorted(path.iterdir()):
      yield video.name, {}


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_main_prints_counts_and_writes_the_sheet(tiny_data_dir, tmp_path, capsys, monkeypatch):
  output = tmp_path / "sheets" / "sheet.png"
  argv = [
      "data_check", f"--config={_CONFIG_FILE}", "--config.dataset.name=synthetic_vos/tiny",
      f"--config.dataset.data_dir={tiny_data_dir}", f"--output={output}",
      "--num_samples=3", "--num_frames=4", "--cell_height=40",
  ]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv.
  try:
    data_check.main(data_check.parse_flags(argv))
  finally:
    data_check.FLAGS.unparse_flags()
  printed = capsys.readouterr().out
  assert "synthetic_vos/tiny" in printed
  rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()
          if line.split() and line.split()[0] in ("train", "validation")}
  videos, frames, _, annotated, most = (int(value) for value in rows["train"])
  assert (videos, frames, annotated) == (32, 256, 256) and 1 <= most <= 5
  assert rows["validation"][:2] == ["8", "64"]
  sheet = np.asarray(Image.open(output))
  pad = data_check.CELL_PADDING
  assert sheet.shape == (3 * (40 + pad) + pad, 4 * (40 + pad) + pad, 3)
  assert sheet[pad:-pad, pad:-pad].std() > 10


def test_split_counts_match_the_examples(tiny_data_dir):
  config = synthetic.get_config()
  config.dataset.name = "synthetic_vos/tiny"
  config.dataset.data_dir = str(tiny_data_dir)
  builder = registry.load_builder(config.dataset)
  counts = data_check.split_counts(builder, "validation")
  objects = sum(len(example["objects"]["ids"])
                for example in builder.as_dataset(split="validation").as_numpy_iterator())
  assert counts == {"videos": 8, "frames": 64, "objects": objects, "annotated_frames": 64,
                    "max_objects_per_video": counts["max_objects_per_video"]}
  assert 8 <= objects <= 40


def test_video_counts_skip_unannotated_frames():
  segmentations = np.full((4, 3, 3, 1), 255, np.uint8)
  segmentations[1, 0, 0] = 0
  segmentations[3, 2, 1] = 2
  assert data_check.video_counts(segmentations, 2) == {
      "videos": 1, "frames": 4, "objects": 2, "annotated_frames": 2, "max_objects_per_video": 2}


def test_overlay_tints_objects_and_draws_contours():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
  labels = np.zeros((5, 6), np.int32)
  labels[1:4, 1:4] = 1
  labels[0, 5] = 255
  overlay = data_check.overlay_masks(frame, labels)
  colours = palette.davis_palette().astype(np.float64)
  for row, col in np.ndindex(5, 6):
    label = labels[row, col]
    neighbours = [labels[r, c] for r, c in ((row - 1, col), (row + 1, col), (row, col - 1),
                                            (row, col + 1)) if 0 <= r < 5 and 0 <= c < 6]
    if label == 0:
      expected = frame[row, col]
    elif label == 1 and any(n != label for n in neighbours):
      expected = colours[1]
    else:
      colour = np.full(3, 128.0) if label == 255 else colours[label]
      expected = np.round(0.55 * frame[row, col] + 0.45 * colour)
    np.testing.assert_allclose(overlay[row, col], expected, atol=1)
  assert (overlay[2, 2] != colours[1]).any()


def test_unknown_dataset_names_the_config_key_and_the_choices():
  config = synthetic.get_config()
  config.dataset.name = "no_such_dataset/small"
  with pytest.raises(ValueError, match=r"config\.dataset\.name.*synthetic_vos/tiny"):
    registry.load_builder(config.dataset)
  config.dataset.name = "synthetic_vos/huge"
  with pytest.raises(ValueError, match=r"synthetic_vos/huge.*synthetic_vos/small"):
    registry.load_builder(config.dataset)


def test_missing_manual_data_names_the_manual_dir(tmp_path, monkeypatch):
  builders = {**registry.registered_builders(), "fake_manual_vos": FakeManualVos}
  monkeypatch.setattr(registry, "registered_builders", lambda: builders)
  config = synthetic.get_config()
  config.dataset.name = "fake_manual_vos"
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.dataset.manual_dir = str(tmp_path / "missing")
  with pytest.raises(ValueError,
                     match=r"(?s)config\.dataset\.manual_dir=.*missing.*Extract the raw"):
    registry.load_builder(config.dataset)
