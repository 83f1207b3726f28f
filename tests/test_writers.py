"""Tests of feelvos_jax.writers: palette PNG round trips, validation, atomicity, the zip."""
import io
import os
import zipfile

import numpy as np
from PIL import Image
import pytest

from datasets import palette
from feelvos_jax.evaluation import writers


def read_png(path):
  with Image.open(path) as image:
    return image.mode, np.array(image), np.array(image.getpalette()[:768]).reshape(256, 3)


def random_labels(seed, shape, ids):
  rng = np.random.default_rng(seed)
  return rng.choice(np.array(ids), size=shape).astype(np.int32)


def test_davis_round_trip(tmp_path):
  labels = random_labels(0, (3, 7, 9), [0, 1, 2, 5, 255])
  names = ["00000", "00001", "00002"]
  paths = writers.write_davis_predictions(str(tmp_path), "bear", names, labels)
  assert paths == [str(tmp_path / "bear" / f"{n}.png") for n in names]
  for t, path in enumerate(paths):
    mode, values, colours = read_png(path)
    assert mode == "P"
    np.testing.assert_array_equal(values, labels[t])
    np.testing.assert_array_equal(colours, palette.davis_palette())
  assert sorted(os.listdir(tmp_path / "bear")) == [f"{n}.png" for n in names]


def test_single_frame_and_custom_palette(tmp_path):
  custom = np.random.default_rng(1).integers(0, 256, (256, 3)).astype(np.uint8)
  labels = random_labels(2, (5, 6), [0, 3])
  (path,) = writers.write_davis_predictions(str(tmp_path), "s", ["00010"], labels, custom)
  _, values, colours = read_png(path)
  np.testing.assert_array_equal(values, labels)
  np.testing.assert_array_equal(colours, custom)


def test_youtube_vos_layout_keeps_ids(tmp_path):
  labels = random_labels(3, (2, 4, 5), [0, 3, 7])
  paths = writers.write_youtube_vos_predictions(str(tmp_path), "0a2f", ["00005", "00010"],
                                                labels)
  assert paths == [str(tmp_path / "Annotations" / "0a2f" / f"{n}.png")
                   for n in ("00005", "00010")]
  for t, path in enumerate(paths):
    mode, values, _ = read_png(path)
    assert mode == "P"
    np.testing.assert_array_equal(values, labels[t])


@pytest.mark.parametrize("labels,names,match", [
    (np.zeros((2, 4, 4), np.float32), ["a", "b"], r"Video 'v'.*integer"),
    (np.zeros((2, 2, 4, 4), np.int32), ["a", "b"], r"Video 'v'.*\[T, H, W\]"),
    (np.zeros((2, 4, 4), np.int32), ["a"], r"Video 'v'.*1 names for 2 frames"),
    (np.zeros((2, 4, 4), np.int32), "ab", r"Video 'v'.*a string"),
    (np.stack([np.zeros((4, 4)), np.full((4, 4), 256)]).astype(np.int32), ["a", "b"],
     r"Video 'v', frame 'b'.*0..255.*256..256"),
    (np.full((1, 4, 4), -1, np.int16), ["a"], r"Video 'v', frame 'a'.*-1..-1"),
    (np.zeros((2, 4, 4), np.int32), ["a", "a"], r"Video 'v'.*duplicates"),
    (np.zeros((1, 4, 4), np.int32), ["../x"], r"Video 'v'.*'../x'"),
])
def test_validation_errors(tmp_path, labels, names, match):
  with pytest.raises(ValueError, match=match):
    writers.write_davis_predictions(str(tmp_path), "v", names, labels)
  assert not os.path.exists(tmp_path / "v") or not os.listdir(tmp_path / "v")


def test_bad_video_name_and_palette(tmp_path):
  with pytest.raises(ValueError, match="plain folder"):
    writers.write_youtube_vos_predictions(str(tmp_path), "a/b", ["0"], np.zeros((2, 2), int))
  with pytest.raises(ValueError, match="palette"):
    writers.write_davis_predictions(str(tmp_path), "v", ["0"], np.zeros((2, 2), int),
                                    np.zeros((255, 3)))


def test_crash_while_encoding_keeps_old_file(tmp_path, monkeypatch):
  old = random_labels(4, (1, 6, 6), [0, 1])
  (path,) = writers.write_davis_predictions(str(tmp_path), "s", ["00000"], old)
  with open(path, "rb") as f:
    old_bytes = f.read()

  def failing_encoder(image, file, filename):
    del image, filename
    file.write(b"\x89PNG\r\n\x1a\n partial")
    raise OSError("disk full")

  monkeypatch.setitem(Image.SAVE, "PNG", failing_encoder)
  with pytest.raises(OSError, match="disk full"):
    writers.write_davis_predictions(str(tmp_path), "s", ["00000"], old + 1)
  with open(path, "rb") as f:
    assert f.read() == old_bytes
  assert os.listdir(tmp_path / "s") == ["00000.png"]
  monkeypatch.undo()
  writers.write_davis_predictions(str(tmp_path), "s", ["00000"], old + 1)
  np.testing.assert_array_equal(read_png(path)[1], old[0] + 1)
  assert os.listdir(tmp_path / "s") == ["00000.png"]


def test_atomic_write_cleans_up(tmp_path):
  target = str(tmp_path / "file.bin")

  def interrupted(file):
    file.write(b"half")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    writers.atomic_write(target, interrupted)
  assert os.listdir(tmp_path) == []
  writers.atomic_write(target, lambda f: f.write(b"whole"))
  with open(target, "rb") as f:
    assert f.read() == b"whole"


def test_zip_layout(tmp_path):
  out = str(tmp_path / "submission")
  first = random_labels(5, (2, 4, 5), [0, 1, 2])
  second = random_labels(6, (1, 4, 5), [0, 4])
  writers.write_youtube_vos_predictions(out, "vid_b", ["00000", "00005"], first)
  writers.write_youtube_vos_predictions(out, "vid_a", ["00010"], second)
  with open(os.path.join(out, "Annotations", "vid_a", ".00010.png.x.tmp"), "wb") as f:
    f.write(b"leftover of a crash")
  zip_path = str(tmp_path / "submission.zip")
  names = writers.zip_youtube_vos_submission(out, zip_path)
  expected = ["Annotations/", "Annotations/vid_a/", "Annotations/vid_a/00010.png",
              "Annotations/vid_b/", "Annotations/vid_b/00000.png", "Annotations/vid_b/00005.png"]
  assert names == expected
  with zipfile.ZipFile(zip_path) as archive:
    assert archive.namelist() == expected
    assert {name.split("/")[0] for name in archive.namelist()} == {"Annotations"}
    with Image.open(io.BytesIO(archive.read("Annotations/vid_b/00005.png"))) as image:
      assert image.mode == "P"
      np.testing.assert_array_equal(np.array(image), first[1])
  assert sorted(os.listdir(tmp_path)) == ["submission", "submission.zip"]


def test_zip_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Annotations"):
    writers.zip_youtube_vos_submission(str(tmp_path), str(tmp_path / "x.zip"))
  os.makedirs(tmp_path / "Annotations" / "empty")
  with pytest.raises(ValueError, match="no video folder with PNG"):
    writers.zip_youtube_vos_submission(str(tmp_path), str(tmp_path / "x.zip"))
