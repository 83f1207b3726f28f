"""Tests of feelvos_jax/data/input_pipeline.py on small in-memory fake videos.

In the fake videos each object is a rectangle of one colour that encodes its dataset id, on a
background pattern whose blue channel encodes the frame index, so that labels and pixels can be
checked against each other after scaling, cropping and flipping.
"""
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from configs import common
from feelvos_jax.data import augmentation
from feelvos_jax.data import input_pipeline
from feelvos_jax.inference.interactive import scribbles

IGNORE = 255
BACKGROUND_BLUE = 10  # Background blue: BACKGROUND_BLUE + 10 * frame index (< 100 up to 9 frames).

VIDEO_SIGNATURE = {
    "video": {
        "name": tf.TensorSpec([], tf.string),
        "frames": tf.TensorSpec([None, None, None, 3], tf.uint8),
        "segmentations": tf.TensorSpec([None, None, None, 1], tf.uint8),
        "frame_names": tf.TensorSpec([None], tf.string),
    },
    "objects": {
        "ids": tf.TensorSpec([None], tf.int32),
        "first_frame": tf.TensorSpec([None], tf.int32),
    },
}


def object_colour(object_id):
  """RGB of dataset id `object_id` (< 50): blue 200 tells objects from background."""
  return np.array([100 + 3 * object_id, 250 - 2 * object_id, 200], np.uint8)


def colour_id(pixel):
  return (int(pixel[0]) - 100) // 3


def make_video(name, height, width, num_frames, rectangles, annotated=None):
  """A fake video.

  Args:
    name: video name.
    height, width, num_frames: size.
    rectangles: {id: (top, left, bottom, right, first_frame, last_frame)} drawn in id order.
    annotated: [num_frames] bools (default all); unannotated frames are entirely 255.

  Returns:
    A dict with the feature structure of datasets/features.py (numpy values).
  """
  rows, cols = np.mgrid[:height, :width]
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  segmentations = np.zeros((num_frames, height, width, 1), np.uint8)
  for t in range(num_frames):
    frames[t, ..., 0] = 10 + (3 * rows + 5 * cols) % 40
    frames[t, ..., 1] = 10 + (7 * rows + 2 * cols) % 40
    frames[t, ..., 2] = BACKGROUND_BLUE + 10 * t
  first_frames = []
  for object_id, (top, left, bottom, right, first, last) in sorted(rectangles.items()):
    frames[first:last + 1, top:bottom, left:right] = object_colour(object_id)
    segmentations[first:last + 1, top:bottom, left:right] = object_id
    first_frames.append(first)
  if annotated is not None:
    segmentations[~np.asarray(annotated)] = IGNORE
  return {
      "video": {
          "name": name.encode(),
          "frames": frames,
          "segmentations": segmentations,
          "frame_names": np.array([f"{t:05d}".encode() for t in range(num_frames)]),
      },
      "objects": {
          "ids": np.array(sorted(rectangles), np.int32),
          "first_frame": np.array(first_frames, np.int32),
      },
  }


def as_dataset(videos):
  return tf.data.Dataset.from_generator(lambda: iter(videos), output_signature=VIDEO_SIGNATURE)


def dataset_config(**overrides):
  config = common.get_base_config().dataset
  config.crop_size = (16, 16)
  config.min_scale = 1.0
  config.max_scale = 1.0
  config.random_flip = False
  config.min_object_pixels = 0
  config.shuffle_buffer = 8
  config.prefetch = 1
  config.eval_pad_multiple = 1
  config.update(overrides)
  return config


def take_samples(config, videos, count, **kwargs):
  kwargs.setdefault("max_objects", 5)
  kwargs.setdefault("seed", 0)
  samples = input_pipeline.make_train_samples(config, as_dataset(videos), **kwargs)
  return list(samples.take(count).as_numpy_iterator())


def frame_index(image):
  """Frame index of an unscaled, unflipped crop from its background blue channel."""
  blue = image[..., 2][image[..., 2] < 100]
  values = np.unique(blue)
  assert values.size == 1, values
  return (int(values[0]) - BACKGROUND_BLUE) // 10


def remap(labels, object_ids):
  """NumPy reference of the id remapping: slot k for object_ids[k-1], 255 for other objects."""
  out = np.where((labels == 0) | (labels == IGNORE), labels, IGNORE).astype(np.int32)
  for slot, object_id in enumerate(object_ids, start=1):
    if object_id:
      out[labels == object_id] = slot
  return out


# ---------------------------------------------------------------------------------------------
# Resampling against NumPy.
# ---------------------------------------------------------------------------------------------


def reference_augment(image, labels, scaled_height, scaled_width, top, left, flip, crop):
  """Nested-loop NumPy reference of scale (corners aligned) + crop + pad + flip."""
  height, width = labels.shape
  out_image = np.full(crop + (3,), augmentation.PAD_PIXEL, np.uint8)
  out_labels = np.full(crop, IGNORE, np.int32)
  row_factor = np.float32(height - 1) / np.float32(max(scaled_height - 1, 1))
  col_factor = np.float32(width - 1) / np.float32(max(scaled_width - 1, 1))
  for i in range(crop[0]):
    for j in range(crop[1]):
      a = top + i
      b = left + (crop[1] - 1 - j if flip else j)
      if a >= scaled_height or b >= scaled_width:
        continue
      y, x = np.float32(a) * row_factor, np.float32(b) * col_factor
      y0, x0 = min(int(np.floor(y)), height - 1), min(int(np.floor(x)), width - 1)
      y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
      wy, wx = np.clip(y - y0, 0, 1), np.clip(x - x0, 0, 1)
      value = ((1 - wy) * ((1 - wx) * image[y0, x0].astype(np.float64) + wx * image[y0, x1])
               + wy * ((1 - wx) * image[y1, x0].astype(np.float64) + wx * image[y1, x1]))
      out_image[i, j] = np.clip(np.round(value), 0, 255)
      out_labels[i, j] = labels[min(int(np.floor(y + np.float32(0.5))), height - 1),
                                min(int(np.floor(x + np.float32(0.5))), width - 1)]
  return out_image, out_labels


@pytest.mark.parametrize("scaled_height,scaled_width,top,left,flip", [
    (7, 9, 0, 0, False),  # Identity: no scaling.
    (11, 14, 2, 5, True),  # Upscaled, cropped, flipped.
    (5, 6, 0, 0, True),  # Downscaled below the crop size: padded, flipped.
    (13, 4, 4, 0, False),  # Upscaled rows, padded columns.
])
def test_augment_frame_matches_numpy(scaled_height, scaled_width, top, left, flip):
  rng = np.random.default_rng(scaled_height * 100 + scaled_width)
  image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
  labels = rng.integers(0, 256, (7, 9)).astype(np.uint8)
  crop = (8, 7)
  window = augmentation.CropWindow(*(tf.constant(v) for v in (scaled_height, scaled_width,
                                                                   top, left)),
                                     flip=tf.constant(flip))
  got_image, got_labels = augmentation.augment_frame(tf.constant(image), tf.constant(labels),
                                                       window, crop)
  want_image, want_labels = reference_augment(image, labels, scaled_height, scaled_width, top,
                                              left, flip, crop)
  np.testing.assert_array_equal(got_labels.numpy(), want_labels)
  np.testing.assert_allclose(got_image.numpy().astype(int), want_image.astype(int), atol=1)
  assert got_image.dtype == tf.uint8 and got_labels.dtype == tf.int32


# ---------------------------------------------------------------------------------------------
# Training samples.
# ---------------------------------------------------------------------------------------------


def check_labels_match_pixels(image, labels, object_ids):
  """Interior object pixels carry their object's colour; background is never an object colour."""
  checked = 0
  for i in range(1, labels.shape[0] - 1):
    for j in range(1, labels.shape[1] - 1):
      window = labels[i - 1:i + 2, j - 1:j + 2]
      if not np.all(window == labels[i, j]):
        continue
      if 1 <= labels[i, j] < IGNORE:
        colour = object_colour(object_ids[labels[i, j] - 1]).astype(int)
        np.testing.assert_allclose(image[i, j].astype(int), colour, atol=1)
        checked += 1
      elif labels[i, j] == 0:
        assert image[i, j, 2] < 100
  return checked


def test_pair_shares_one_crop_and_labels_match_pixels():
  rectangles = {4: (2, 3, 9, 12, 0, 4), 9: (11, 1, 18, 8, 0, 4), 17: (10, 14, 19, 23, 0, 4)}
  videos = [make_video(f"static{v}", 20, 24, 5, rectangles) for v in range(3)]
  for video in videos:  # Static: every frame alike, so previous and current must coincide.
    video["video"]["frames"][..., 2] = np.where(
        video["video"]["frames"][..., 2] < 100, BACKGROUND_BLUE, video["video"]["frames"][..., 2])
  config = dataset_config(min_scale=0.8, max_scale=1.4, random_flip=True)
  samples = take_samples(config, videos, 12)
  checked = 0
  reference_differs = 0
  for sample in samples:
    np.testing.assert_array_equal(sample["previous_frame"], sample["current_frame"])
    np.testing.assert_array_equal(sample["previous_labels"], sample["current_labels"])
    num_objects = sample["num_objects"]
    ids = sample["object_ids"]
    assert 1 <= num_objects <= 3
    assert set(ids[:num_objects]) <= set(rectangles) and np.all(ids[num_objects:] == 0)
    assert np.all(np.diff(ids[:num_objects]) > 0)
    for part in ("reference", "previous"):
      labels = sample[f"{part}_labels"]
      assert set(np.unique(labels)) <= set(range(num_objects + 1)) | {IGNORE}
      checked += check_labels_match_pixels(sample[f"{part}_frame"], labels, ids)
    reference_differs += not np.array_equal(sample["reference_frame"], sample["previous_frame"])
  assert checked > 500
  assert reference_differs > 0, "the reference frame must be augmented on its own"


def test_ids_remapped_to_slots_and_extra_objects_dropped():
  quadrants = {3: (0, 0, 8, 8, 0, 2), 7: (0, 8, 8, 16, 0, 2), 12: (8, 0, 16, 8, 0, 2),
               40: (8, 8, 16, 16, 0, 2)}
  video = make_video("quadrants", 16, 16, 3, quadrants)
  samples = take_samples(dataset_config(random_flip=True), [video], 6, max_objects=2)
  flips = set()
  for sample in samples:
    assert sample["num_objects"] == 2 and sample["dropped_objects"] == 2
    np.testing.assert_array_equal(sample["object_ids"], [3, 7])
    for part in ("reference", "previous", "current"):
      image, labels = sample[f"{part}_frame"], sample[f"{part}_labels"]
      flipped = not np.array_equal(image[0, 0], object_colour(3))
      flips.add(flipped)
      source = video["video"]["segmentations"][0, ..., 0]  # Static video.
      source = source[:, ::-1] if flipped else source
      np.testing.assert_array_equal(labels, remap(source, [3, 7]))
  assert flips == {False, True}


def test_objects_absent_from_reference_and_unannotated_frames_are_ignored():
  rectangles = {5: (2, 2, 7, 9, 0, 6), 8: (9, 4, 14, 14, 2, 6)}  # Object 8 appears at frame 2.
  annotated = [True, False, True, False, True, False, True]
  video = make_video("late", 16, 16, 7, rectangles, annotated)
  video["video"]["segmentations"][0, 0, :] = IGNORE  # A void row in the first frame.
  segmentations = video["video"]["segmentations"][..., 0]
  config = dataset_config(reference_frame="first", max_frame_gap=2)
  for sample in take_samples(config, [video], 8):
    reference, previous, current = (frame_index(sample[f"{p}_frame"])
                                    for p in ("reference", "previous", "current"))
    assert reference == 0
    assert annotated[previous] and annotated[current] and current - previous == 2
    np.testing.assert_array_equal(sample["object_ids"], [5, 0, 0, 0, 0])
    assert sample["num_objects"] == 1 and sample["dropped_objects"] == 0
    for part, t in (("reference", reference), ("previous", previous), ("current", current)):
      np.testing.assert_array_equal(sample[f"{part}_labels"], remap(segmentations[t], [5]))
    assert np.any(sample["current_labels"][9:14, 4:14] == IGNORE)  # Object 8, unmatched.


def test_random_reference_frame_shows_objects():
  rectangles = {5: (2, 2, 7, 9, 3, 6)}  # Visible from frame 3 only.
  video = make_video("appears", 16, 16, 7, rectangles)
  config = dataset_config(reference_frame="random", max_frame_gap=3)
  references, gaps = set(), set()
  for sample in take_samples(config, [video], 16):
    references.add(frame_index(sample["reference_frame"]))
    previous, current = (frame_index(sample[f"{p}_frame"]) for p in ("previous", "current"))
    gaps.add(current - previous)
  assert references <= {3, 4, 5, 6} and len(references) > 1
  assert gaps <= {1, 2, 3} and len(gaps) > 1


def test_padding_when_the_frame_is_smaller_than_the_crop():
  video = make_video("small", 12, 12, 2, {2: (3, 3, 9, 9, 0, 1)})
  sample = take_samples(dataset_config(), [video], 1)[0]
  for part in ("reference", "previous", "current"):
    image, labels = sample[f"{part}_frame"], sample[f"{part}_labels"]
    assert np.all(labels[12:] == IGNORE) and np.all(labels[:, 12:] == IGNORE)
    assert np.all(image[12:] == augmentation.PAD_PIXEL)
    assert np.all(image[:, 12:] == augmentation.PAD_PIXEL)
    t = frame_index(image[:12, :12])
    np.testing.assert_array_equal(image[:12, :12], video["video"]["frames"][t])
    np.testing.assert_array_equal(labels[:12, :12],
                                  remap(video["video"]["segmentations"][t, ..., 0], [2]))


def test_min_object_pixels_rejects_small_reference_objects():
  # Object 6 covers 2x2 pixels (no stride-4 pixel) in frames 0-1 and 8x8 (4 at stride 4) in 2-3.
  video = make_video("grows", 16, 16, 4, {6: (5, 5, 7, 7, 0, 1)})
  video["video"]["frames"][2:, 4:12, 4:12] = object_colour(6)
  video["video"]["segmentations"][2:, 4:12, 4:12] = 6
  config = dataset_config(reference_frame="random", min_object_pixels=3, max_frame_gap=3)
  for sample in take_samples(config, [video], 12):
    assert frame_index(sample["reference_frame"]) in (2, 3)
    assert sample["num_objects"] == 1 and sample["dropped_objects"] == 0
    assert np.sum(sample["reference_labels"][::4, ::4] == 1) >= 3


def test_a_reference_crop_without_objects_is_drawn_again():
  """Object 3 fills columns 40-63 of 16x64 frames: a 16x16 crop misses it about half the
  time, and each miss is redrawn (10 attempts), so every sample shows the object."""
  video = make_video("wide", 16, 64, 3, {3: (0, 40, 16, 64, 0, 2)})
  samples = take_samples(dataset_config(reference_frame="random"), [video], 24)
  assert [int(sample["num_objects"]) for sample in samples] == [1] * 24
  assert all(np.any(sample["reference_labels"] == 1) for sample in samples)
  previous_shows = [bool(np.any(sample["previous_labels"] == 1)) for sample in samples]
  assert not all(previous_shows)  # The pair's own crop still misses it sometimes.


def test_min_object_pixels_drops_objects_when_attempts_run_out():
  video = make_video("tiny", 16, 16, 3, {6: (5, 5, 7, 7, 0, 2), 9: (8, 8, 16, 16, 0, 2)})
  config = dataset_config(reference_frame="random", min_object_pixels=3)
  for sample in take_samples(config, [video], 3, max_attempts=3):
    assert sample["num_objects"] == 1 and sample["dropped_objects"] == 1
    np.testing.assert_array_equal(sample["object_ids"][:2], [9, 0])
    for part in ("reference", "previous", "current"):
      labels = sample[f"{part}_labels"]
      assert np.all(labels[5:7, 5:7] == IGNORE) and np.all(labels[8:, 8:] == 1)


def test_video_without_a_frame_pair_raises_naming_the_video():
  video = make_video("sparse_video", 16, 16, 4, {1: (0, 0, 8, 8, 0, 3)},
                     annotated=[True, False, True, False])
  with pytest.raises(tf.errors.InvalidArgumentError, match="sparse_video"):
    take_samples(dataset_config(max_frame_gap=1), [video], 1)


# ---------------------------------------------------------------------------------------------
# Batches: determinism, resumption, sharding.
# ---------------------------------------------------------------------------------------------


def numbered_videos(count):
  """Videos whose single object id (v + 1) tells which video a sample came from."""
  return [make_video(f"video{v}", 16, 16, 3, {v + 1: (2, 2, 14, 14, 0, 2)})
          for v in range(count)]


def take_batches(config, videos, count, **kwargs):
  kwargs.setdefault("batch_size_per_host", 2)
  kwargs.setdefault("max_objects", 3)
  kwargs.setdefault("seed", 0)
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  iterator = input_pipeline.create_train_dataset(config, as_dataset(videos), **kwargs)
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_the_contract_shapes_and_are_deterministic():
  config = dataset_config(min_scale=0.7, max_scale=1.3, random_flip=True, crop_size=(12, 16))
  videos = numbered_videos(5)
  first = take_batches(config, videos, 3)
  batch = first[0]
  for part in ("reference", "previous", "current"):
    assert batch[f"{part}_frame"].shape == (2, 12, 16, 3)
    assert batch[f"{part}_frame"].dtype == np.uint8
    assert batch[f"{part}_labels"].shape == (2, 12, 16)
    assert batch[f"{part}_labels"].dtype == np.int32
  for key, shape in (("num_objects", (2,)), ("dropped_objects", (2,)), ("object_ids", (2, 3))):
    assert batch[key].shape == shape and batch[key].dtype == np.int32
  assert_batches_equal(first, take_batches(config, videos, 3))
  other_seed = take_batches(config, videos, 3, seed=1)
  assert any(not np.array_equal(a["reference_frame"], b["reference_frame"])
             for a, b in zip(first, other_seed))


def test_resuming_at_a_step_continues_the_same_stream():
  config = dataset_config(min_scale=0.7, max_scale=1.3, random_flip=True)
  videos = numbered_videos(5)  # 5 videos, 2 per batch: batches 3-4 cross an epoch boundary.
  from_start = take_batches(config, videos, 5)
  resumed = take_batches(config, videos, 2, start_step=3)
  assert_batches_equal(from_start[3:], resumed)


def test_each_epoch_visits_every_video_once_and_hosts_are_disjoint():
  config = dataset_config()
  videos = numbered_videos(6)
  seen = []
  for process_index in range(2):
    batches = take_batches(config, videos, 6, batch_size_per_host=1,
                           process_index=process_index, process_count=2)
    ids = [int(batch["object_ids"][0, 0]) for batch in batches]
    assert sorted(ids[:3]) == sorted(ids[3:])  # Two epochs of the host's three videos.
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(1, 7))


def encoded(videos):
  """The videos with PNG-encoded frames [T] string, as LAZY_FRAME_DECODERS gives them."""
  out = []
  for video in videos:
    frames = [tf.io.encode_png(frame).numpy() for frame in video["video"]["frames"]]
    out.append({"video": dict(video["video"], frames=np.array(frames, object)),
                "objects": video["objects"]})
  return out


def encoded_dataset(videos):
  signature = {"video": dict(VIDEO_SIGNATURE["video"], frames=tf.TensorSpec([None], tf.string)),
               "objects": VIDEO_SIGNATURE["objects"]}
  return tf.data.Dataset.from_generator(lambda: iter(encoded(videos)),
                                        output_signature=signature)


def test_encoded_frames_give_the_same_samples_and_eval_videos():
  config = dataset_config(min_scale=0.7, max_scale=1.3, random_flip=True, eval_pad_multiple=8)
  videos = numbered_videos(3)
  decoded = input_pipeline.make_train_samples(config, as_dataset(videos), max_objects=3, seed=0)
  lazy = input_pipeline.make_train_samples(config, encoded_dataset(videos), max_objects=3,
                                           seed=0)
  for want, got in zip(decoded.take(4).as_numpy_iterator(), lazy.take(4).as_numpy_iterator()):
    assert_batches_equal([want], [got])
  want = list(input_pipeline.create_eval_videos(config, as_dataset(videos)))
  got = list(input_pipeline.create_eval_videos(config, encoded_dataset(videos)))
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_videos_without_the_feature_spec_raise():
  videos = as_dataset(numbered_videos(1)).map(
      lambda video: {"video": dict(video["video"], frames=tf.cast(video["video"]["frames"],
                                                                  tf.float32)),
                     "objects": video["objects"]})
  with pytest.raises(ValueError, match="video/frames"):
    input_pipeline.make_train_samples(dataset_config(), videos, max_objects=2, seed=0)
  no_objects = as_dataset(numbered_videos(1)).map(lambda video: {"video": video["video"]})
  with pytest.raises(ValueError, match="objects/ids"):
    next(input_pipeline.create_eval_videos(dataset_config(), no_objects))


def test_scribble_labels_are_strokes_inside_each_region_on_the_stride4_grid():
  rng = np.random.default_rng(0)
  rows, cols = np.mgrid[:70, :90]
  labels = np.zeros((70, 90), np.int32)
  labels[(rows - 30) ** 2 + (cols - 30) ** 2 < 22 ** 2] = 1  # A disc.
  labels[8:60, 60:84] = 2  # A rectangle.
  labels[64:, :] = IGNORE  # Unannotated rows.
  labels[(rng.random(labels.shape) < 0.02) & (labels == 0)] = IGNORE  # And scattered pixels.
  labels[0, 0] = 3  # One pixel of an object: one cell, kept.
  got = input_pipeline.scribble_labels(tf.constant(labels), 4).numpy()
  grid = labels[::4, ::4]
  strokes = got[::4, ::4]
  # Each stride-4 cell spans its 4x4 pixels.
  np.testing.assert_array_equal(got, np.repeat(np.repeat(strokes, 4, 0), 4, 1)[:70, :90])
  assert strokes[0, 0] == 3
  for label in range(3):
    marked = strokes == label
    assert 0 < marked.sum() < 0.5 * (grid == label).sum()  # Strokes, not regions.
    assert np.all(grid[marked] == label)
    assert scipy.ndimage.label(marked, np.ones((3, 3)))[1] == 1  # One connected stroke.
    if label:  # Objects: along the middle, away from the region's edge.
      assert scipy.ndimage.binary_erosion(grid == label, border_value=1)[marked].mean() > 0.8
  assert np.all(strokes[grid == IGNORE] == IGNORE)
  with_prior = input_pipeline.scribble_labels(tf.constant(labels), 4, True).numpy()[::4, ::4]
  objects = (strokes != 0) & (strokes != IGNORE)
  np.testing.assert_array_equal(with_prior[objects], strokes[objects])  # The same objects,
  background = with_prior == 0  # the background where the session's prior puts it.
  np.testing.assert_array_equal(
      background, scribbles.with_background_prior(
          np.where(objects, strokes, IGNORE)[None], (72, 92), "far")[0] == 0)
  assert background.any()


def test_scribble_references_replace_reference_labels_with_that_probability():
  rectangles = {5: (2, 2, 14, 14, 0, 2), 8: (18, 4, 30, 30, 0, 2)}
  video = make_video("two", 32, 32, 3, rectangles)
  config = dataset_config(crop_size=(32, 32), scribble_references=0.5)
  samples = take_samples(config, [video], 16, max_objects=2)
  scribbled = priors = 0
  for sample in samples:
    reference = sample["reference_labels"]
    full = remap(video["video"]["segmentations"][0, ..., 0], [5, 8])
    np.testing.assert_array_equal(sample["previous_labels"], full)  # Only the reference.
    if np.array_equal(reference, full):
      continue
    scribbled += 1
    strokes = [input_pipeline.scribble_labels(tf.constant(full), 3, prior).numpy()
               for prior in (False, True)]
    assert any(np.array_equal(reference, option) for option in strokes)
    priors += np.array_equal(reference, strokes[1])
  assert 0 < scribbled < 16 and 0 < priors < scribbled


# ---------------------------------------------------------------------------------------------
# Configuration errors.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("crop_size", (16,)),
    ("crop_size", (16, 16, 3)),
    ("crop_size", (16.0, 16)),
    ("max_frame_gap", 0),
    ("reference_frame", "last"),
    ("min_scale", 2.0),
    ("min_object_pixels", -1),
    ("scribble_references", 1.5),
])
def test_bad_config_raises_naming_the_key(key, value):
  config = dataset_config()
  with config.unlocked():
    config[key] = value
  with pytest.raises(ValueError, match=f"config.dataset.{key}"):
    input_pipeline.make_train_samples(config, as_dataset(numbered_videos(1)), max_objects=2,
                                      seed=0)


def test_bad_arguments_raise_naming_them():
  videos = as_dataset(numbered_videos(1))
  with pytest.raises(ValueError, match="process_index"):
    input_pipeline.make_train_samples(dataset_config(), videos, max_objects=2, seed=0,
                                      process_index=2, process_count=2)
  with pytest.raises(ValueError, match="No training videos for process 1 of 2"):
    input_pipeline.make_train_samples(dataset_config(), videos, max_objects=2, seed=0,
                                      process_index=1, process_count=2)
  with pytest.raises(ValueError, match="batch_size_per_host"):
    next(input_pipeline.create_train_dataset(dataset_config(), videos, batch_size_per_host=0,
                                             max_objects=2, seed=0))


# ---------------------------------------------------------------------------------------------
# Evaluation videos.
# ---------------------------------------------------------------------------------------------


def test_eval_videos_remap_ids_and_pad():
  video = make_video("eval_video", 10, 13, 3, {5: (0, 0, 4, 4, 1, 2), 2: (5, 5, 9, 12, 0, 2)})
  video["video"]["segmentations"][0, 9, 0] = IGNORE
  second = make_video("second", 8, 8, 2, {1: (0, 0, 8, 8, 0, 1)})
  config = dataset_config(eval_pad_multiple=4)
  examples = list(input_pipeline.create_eval_videos(config, as_dataset([video, second])))
  assert [example["name"] for example in examples] == ["eval_video", "second"]
  example = examples[0]
  assert example["frame_names"] == ["00000", "00001", "00002"]
  np.testing.assert_array_equal(example["original_size"], [10, 13])
  np.testing.assert_array_equal(example["object_ids"], [2, 5])
  np.testing.assert_array_equal(example["first_frame"], [0, 1])
  assert example["num_objects"] == 2
  assert example["frames"].shape == (3, 12, 16, 3) and example["frames"].dtype == np.uint8
  assert example["segmentations"].shape == (3, 12, 16)
  assert example["segmentations"].dtype == np.int32
  np.testing.assert_array_equal(example["frames"][:, :10, :13], video["video"]["frames"])
  assert np.all(example["frames"][:, 10:] == augmentation.PAD_PIXEL)
  assert np.all(example["frames"][:, :, 13:] == augmentation.PAD_PIXEL)
  assert np.all(example["segmentations"][:, 10:] == IGNORE)
  assert np.all(example["segmentations"][:, :, 13:] == IGNORE)
  source = video["video"]["segmentations"][..., 0]
  np.testing.assert_array_equal(example["segmentations"][:, :10, :13], remap(source, [2, 5]))
  assert examples[1]["frames"].shape == (2, 8, 8, 3)

  unpadded = next(input_pipeline.create_eval_videos(config, as_dataset([video]), pad_multiple=1))
  assert unpadded["frames"].shape == (3, 10, 13, 3)


def test_eval_video_with_unlisted_label_raises_naming_the_video():
  video = make_video("broken_video", 8, 8, 2, {3: (0, 0, 4, 4, 0, 1)})
  video["video"]["segmentations"][1, 6, 6] = 4
  with pytest.raises(tf.errors.InvalidArgumentError, match="broken_video"):
    list(input_pipeline.create_eval_videos(dataset_config(), as_dataset([video])))
  with pytest.raises(ValueError, match="pad_multiple"):
    next(input_pipeline.create_eval_videos(dataset_config(), as_dataset([video]),
                                           pad_multiple=0))


# ---------------------------------------------------------------------------------------------
# Integration with the synthetic TFDS builder.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_tiny(tmp_path_factory):
  """config.dataset for synthetic_vos/tiny (64x64, 8 frames) and its prepared builder."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from datasets import registry  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config().dataset
  config.name = "synthetic_vos/tiny"
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.crop_size = (48, 48)
  return config, registry.load_builder(config)


def test_synthetic_builder_training_batches(synthetic_tiny):
  config, builder = synthetic_tiny
  iterator = input_pipeline.create_train_dataset(
      config, builder.as_dataset(split="train"), batch_size_per_host=4, max_objects=3, seed=0,
      process_index=0, process_count=1)
  for batch in (next(iterator), next(iterator)):
    assert batch["reference_frame"].shape == (4, 48, 48, 3)
    assert batch["current_labels"].shape == (4, 48, 48)
    for index in range(4):
      num_objects = batch["num_objects"][index]
      assert 0 <= num_objects <= 3
      assert np.all(batch["object_ids"][index, num_objects:] == 0)
      assert np.all(batch["object_ids"][index, :num_objects] >= 1)
      for part in ("reference", "previous", "current"):
        labels = batch[f"{part}_labels"][index]
        assert set(np.unique(labels)) <= set(range(num_objects + 1)) | {IGNORE}
      reference_stride = batch["reference_labels"][index, ::4, ::4]
      visible = [np.sum(reference_stride == slot) for slot in range(1, num_objects + 1)]
      assert all(count >= config.min_object_pixels for count in visible)


def test_synthetic_builder_eval_videos_match_the_dataset(synthetic_tiny):
  config, builder = synthetic_tiny
  raw = list(builder.as_dataset(split="validation").as_numpy_iterator())
  examples = list(input_pipeline.create_eval_videos(
      config, builder.as_dataset(split="validation"), pad_multiple=1))
  assert len(examples) == len(raw) == 8
  for video, example in zip(raw, examples):
    assert example["name"] == video["video"]["name"].decode()
    np.testing.assert_array_equal(example["frames"], video["video"]["frames"])
    np.testing.assert_array_equal(example["object_ids"], np.sort(video["objects"]["ids"]))
    np.testing.assert_array_equal(
        example["segmentations"],
        remap(video["video"]["segmentations"][..., 0], example["object_ids"]))
    for slot, first in enumerate(example["first_frame"], start=1):
      assert first == np.argmax(np.any(example["segmentations"] == slot, axis=(1, 2)))
