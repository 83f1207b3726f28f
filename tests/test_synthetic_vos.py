"""The synthetic VOS builder and its generator (tiny config, data in tmp_path)."""
import dataclasses
import pathlib
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import datasets.synthetic_vos  # noqa: F401  (registers the builder)
from datasets.synthetic_vos import generator
from datasets.synthetic_vos import motion
from datasets.synthetic_vos import rendering
from datasets.synthetic_vos import shapes
from datasets.synthetic_vos import textures


def _no_network(*args, **kwargs):
  raise AssertionError(f"network access attempted: {args}")


def _prepare(data_dir: pathlib.Path, download_config=None):
  """Prepares synthetic_vos/tiny with every socket connection failing."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket, "create_connection", _no_network)
    patch.setattr(socket, "getaddrinfo", _no_network)
    builder = tfds.builder("synthetic_vos/tiny", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=download_config)
  return builder


def _load(builder, split):
  dataset = builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False))
  examples = {}
  for example in tfds.as_numpy(dataset):
    examples[example["video"]["name"].decode()] = example
  return examples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  builder = _prepare(tmp_path_factory.mktemp("tfds"),
                     tfds.download.DownloadConfig(try_download_gcs=False))
  return builder, {split: _load(builder, split) for split in ("train", "validation")}


def test_prepares_from_nothing_without_network(tiny):
  builder, examples = tiny
  assert builder.info.splits["train"].num_examples == 32
  assert builder.info.splits["validation"].num_examples == 8
  assert len(examples["train"]) == 32 and len(examples["validation"]) == 8
  assert str(builder.version) == "1.0.0" and "1.0.0" in builder.RELEASE_NOTES


def test_rebuild_is_byte_identical(tiny, tmp_path):
  builder, _ = tiny
  again = _prepare(tmp_path)  # TFDS's default download config must not reach the network.
  records = sorted(pathlib.Path(builder.data_dir).glob("*.tfrecord*"))
  assert records
  for record in records:
    assert (pathlib.Path(again.data_dir) / record.name).read_bytes() == record.read_bytes()


def test_shapes_dtypes_and_frame_names(tiny):
  _, examples = tiny
  for split in examples.values():
    for name, example in split.items():
      video = example["video"]
      assert video["frames"].shape == (8, 64, 64, 3) and video["frames"].dtype == np.uint8
      assert video["segmentations"].shape == (8, 64, 64, 1)
      assert video["segmentations"].dtype == np.uint8
      assert [n.decode() for n in video["frame_names"]] == [f"{t:05d}" for t in range(8)], name
      assert example["objects"]["ids"].dtype == np.int32
      assert example["objects"]["first_frame"].dtype == np.int32


def test_ids_and_first_frames_match_the_masks(tiny):
  _, examples = tiny
  late_videos = {"train": 0, "validation": 0}
  for split, videos in examples.items():
    for name, example in videos.items():
      segmentation = example["video"]["segmentations"][..., 0]
      ids = example["objects"]["ids"]
      num_objects = len(ids)
      assert 1 <= num_objects <= 5, name
      np.testing.assert_array_equal(ids, np.arange(1, num_objects + 1))
      np.testing.assert_array_equal(np.unique(segmentation), np.arange(num_objects + 1))
      for object_id, first in zip(ids, example["objects"]["first_frame"]):
        present = (segmentation == object_id).any(axis=(1, 2))
        assert first == np.flatnonzero(present)[0], (name, object_id)
        assert present[first] and not present[:first].any()
      late_videos[split] += int((example["objects"]["first_frame"] > 0).any())
  assert late_videos["train"] > 0 and late_videos["validation"] > 0


def test_objects_move_and_copying_the_first_mask_fails(tiny):
  _, examples = tiny
  ious = []
  for example in examples["validation"].values():
    segmentation = example["video"]["segmentations"][..., 0]
    for object_id, first in zip(example["objects"]["ids"], example["objects"]["first_frame"]):
      reference = segmentation[first] == object_id
      for frame in segmentation[first + 1:]:
        truth = frame == object_id
        union = (reference | truth).sum()
        ious.append((reference & truth).sum() / union if union else 1.0)
  assert len(ious) > 20
  assert np.mean(ious) < 0.5


def test_occlusion_and_exit_and_return_happen(tiny):
  builder, examples = tiny
  params = builder.builder_config.video_params
  occluded_objects, returning_objects = 0, 0
  for index in range(builder.builder_config.num_train_videos):
    video = generator.generate_video(params, (0, 0, index), *generator.video_scenario(index))
    stored = examples["train"][f"train_{index:05d}"]["video"]
    np.testing.assert_array_equal(video.frames, stored["frames"])
    np.testing.assert_array_equal(video.segmentation, stored["segmentations"][..., 0])
    for j, amodal in enumerate(video.amodal_masks):
      occluded = amodal & (video.segmentation > j + 1)
      occluded_objects += int(occluded.any())
      in_frame = amodal.any(axis=(1, 2))
      visible = (video.segmentation == j + 1).any(axis=(1, 2))
      if generator.leaves_and_returns(amodal):
        assert not in_frame.all() and in_frame[0]
        gap = np.flatnonzero(~in_frame)
        assert visible[:gap[0]].any() and visible[gap[-1]:].any()
        returning_objects += 1
    if video.exiting_object >= 0:
      assert generator.leaves_and_returns(video.amodal_masks[video.exiting_object])
  assert occluded_objects > 0 and returning_objects > 0


def test_splits_are_disjoint(tiny):
  _, examples = tiny
  train_frames = {example["video"]["frames"].tobytes() for example in examples["train"].values()}
  for name, example in examples["validation"].items():
    assert example["video"]["frames"].tobytes() not in train_frames, name
  assert not set(examples["train"]) & set(examples["validation"])


def test_procedural_path_uses_no_photographs(monkeypatch):
  monkeypatch.setattr(textures, "load_photo", _no_network)
  monkeypatch.setattr(shapes, "photo_shape", _no_network)
  params = generator.VideoParams(32, 32, 4, use_photos=False)
  for index in range(4):
    first = generator.generate_video(params, (7, 0, index), *generator.video_scenario(index))
    second = generator.generate_video(params, (7, 0, index), *generator.video_scenario(index))
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.segmentation, second.segmentation)


def test_place_sprite_matches_per_pixel_formula():
  rng = np.random.default_rng(0)
  sprite = rng.random((7, 7)) < 0.6
  track = motion.Track(centre=rng.uniform(-2.0, 12.0, (3, 2)), angle=rng.uniform(0, 6.3, 3),
                       scale=rng.uniform(0.5, 2.0, 3))
  placement = rendering.place_sprite(sprite, track, (9, 11), birth_frame=1)
  expected = np.zeros((3, 9, 11), bool)
  for t in range(1, 3):
    cos, sin, scale = np.cos(track.angle[t]), np.sin(track.angle[t]), track.scale[t]
    for row in range(9):
      for col in range(11):
        d_row, d_col = row - track.centre[t, 0], col - track.centre[t, 1]
        u = (cos * d_col + sin * d_row) / scale + 3.5
        v = (-sin * d_col + cos * d_row) / scale + 3.5
        if 0 <= u < 7 and 0 <= v < 7:
          expected[t, row, col] = sprite[int(np.floor(v)), int(np.floor(u))]
  np.testing.assert_array_equal(placement.mask, expected)
  assert expected[1:].any()


def test_visible_masks_and_paint_follow_depth_order():
  rng = np.random.default_rng(1)
  amodal = rng.random((3, 2, 4, 5)) < 0.5
  visible = rendering.visible_masks(amodal)
  for j in range(3):
    for t, row, col in np.ndindex(2, 4, 5):
      nearer = any(amodal[k, t, row, col] for k in range(j + 1, 3))
      assert visible[j, t, row, col] == (amodal[j, t, row, col] and not nearer)
  textures_ = [np.full((2, 2, 3), 50.0 * (j + 1)) for j in range(3)]
  placements = [rendering.Placement(index=np.full((2, 4, 5), 5), mask=m) for m in amodal]
  frames, segmentation = rendering.paint(np.zeros((2, 4, 5, 3)), placements, textures_)
  for t, row, col in np.ndindex(2, 4, 5):
    top = max([j + 1 for j in range(3) if amodal[j, t, row, col]], default=0)
    assert segmentation[t, row, col] == top
    assert (frames[t, row, col] == 50 * top).all()


def test_view_canvas_is_bilinear():
  rng = np.random.default_rng(2)
  canvas = rng.uniform(0, 255, (9, 10, 3)).astype(np.float32)
  offsets = np.array([[0.25, 1.5], [2.9, 0.0]])
  frames = rendering.view_canvas(canvas, offsets, (5, 6))
  for t, (o_row, o_col) in enumerate(offsets):
    for row, col in np.ndindex(5, 6):
      y, x = row + o_row, col + o_col
      y0, x0 = int(np.floor(y)), int(np.floor(x))
      fy, fx = y - y0, x - x0
      value = ((1 - fy) * (1 - fx) * canvas[y0, x0] + (1 - fy) * fx * canvas[y0, x0 + 1]
               + fy * (1 - fx) * canvas[y0 + 1, x0] + fy * fx * canvas[y0 + 1, x0 + 1])
      np.testing.assert_allclose(frames[t, row, col], value, rtol=1e-5, atol=1e-3)
  with pytest.raises(ValueError, match="canvas"):
    rendering.view_canvas(canvas, np.array([[4.5, 0.0]]), (5, 6))


def test_event_helpers():
  masks = np.zeros((5, 2, 2), bool)
  masks[[0, 1, 4], 0, 0] = True
  assert generator.leaves_and_returns(masks)
  assert not generator.leaves_and_returns(masks[:3])
  visible = np.zeros((2, 5, 2, 2), bool)
  visible[0, 3, 1, 1] = True
  np.testing.assert_array_equal(generator.first_visible_frames(visible), [3, -1])


def test_bad_params_raise():
  with pytest.raises(ValueError, match="num_frames"):
    generator.VideoParams(64, 64, 2)
  with pytest.raises(ValueError, match="height"):
    generator.VideoParams(8, 64, 8)
  with pytest.raises(ValueError, match="max_objects"):
    generator.VideoParams(64, 64, 8, max_objects=1)
  with pytest.raises(ValueError, match="motion_period"):
    generator.VideoParams(64, 64, 8, motion_period=9)
  with pytest.raises(ValueError, match="appearance_drift"):
    generator.VideoParams(64, 64, 8, appearance_drift=1.0)


def test_long_videos_repeat_the_exit_and_drift_in_colour():
  """The long config's two properties on a small video: the exiting object leaves and returns
  once per motion period, and the drift changes object colours but never the background."""
  params = generator.VideoParams(48, 48, 64, use_photos=False, motion_period=16,
                                 appearance_drift=0.25)
  video = generator.generate_video(params, (0, 0, 2), *generator.video_scenario(2))
  in_frame = video.amodal_masks[video.exiting_object].any(axis=(1, 2))
  exits = np.flatnonzero(in_frame[:-1] & ~in_frame[1:])
  assert len(exits) >= 3, in_frame.astype(int)
  still = dataclasses.replace(params, appearance_drift=0.0)
  plain = generator.generate_video(still, (0, 0, 2), *generator.video_scenario(2))
  np.testing.assert_array_equal(video.segmentation, plain.segmentation)
  background = video.segmentation == 0
  np.testing.assert_array_equal(video.frames[background], plain.frames[background])
  changed = np.abs(video.frames.astype(int) - plain.frames)[~background].mean()
  assert changed > 5.0


def test_apply_gains_scales_each_objects_pixels_of_each_frame():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
  segmentation = rng.integers(0, 3, (3, 4, 5)).astype(np.uint8)
  gains = rng.uniform(0.7, 1.3, (2, 3, 3)).astype(np.float32)
  expected = frames.astype(np.float32)
  for t in range(3):
    for j in range(2):
      mask = segmentation[t] == j + 1
      expected[t][mask] *= gains[j, t]
  expected = np.clip(np.round(expected), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(generator.apply_gains(frames, segmentation, gains), expected)
  drift = generator.drift_gains(rng, 10, 2, 0.25)
  assert drift.shape == (2, 10, 3) and drift.min() >= 0.75 and drift.max() <= 1.25
