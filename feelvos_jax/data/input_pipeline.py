"""tf.data input pipelines: FEELVOS training samples and whole evaluation videos.

API: `create_train_dataset` (batches per host, resumable at any step) on `make_train_samples`
(one sample per video visit), `create_eval_videos` (whole padded videos), `train_settings`
(the checked `config.dataset` knobs), `LAZY_FRAME_DECODERS`.

Both pipelines take a `tf.data.Dataset` of decoded videos with the feature spec of
`datasets/features.py` (what `builder.as_dataset(split)` of every builder in `datasets/` gives):
`video/frames` [T, H, W, 3] uint8, `video/segmentations` [T, H, W, 1] uint8 (dataset object ids,
255 where a pixel or a whole frame is unannotated), `video/name`, `video/frame_names` [T],
`objects/ids` [N], `objects/first_frame` [N]. `video/frames` may instead be the encoded frames
[T] string (`builder.as_dataset(split, decoders=LAZY_FRAME_DECODERS)`): training then decodes
only the three frames a sample uses instead of the whole video.

Training sample (one per visit of a video), as in FEELVOS:
- Frames. A frame is *annotated* when any of its pixels is not 255. The previous and current frames
  are a uniformly random pair of annotated frames with 1 <= current - previous <= max_frame_gap,
  the gap counted in frames of the video (YouTube-VOS, annotated every 5th frame, uses
  max_frame_gap = 5 so that the pair is two consecutive annotated frames); with dataset.max_skip
  (STM's curriculum) the limit grows with the training step up to max_skip. With
  dataset.static_frames (STM's static-image pre-training) the previous and current frames are
  instead two random affine warps (`augmentation.random_affine`) of the augmented reference
  frame: synthetic videos of single images. The reference frame is
  the first annotated frame ("first") or a uniformly random annotated frame in which some object
  is visible ("random", the paper's choice; any annotated frame when none shows an object).
- Augmentation. Random scale in [min_scale, max_scale] (bilinear for images, nearest for labels,
  corners aligned as in DeepLab), padding at the bottom/right up to the crop size (image 128, the
  uint8 closest to the 127.5 mean; labels 255), a random crop of crop_size and a random
  horizontal flip. Previous and current frames share one scale, crop and flip; the reference
  frame is augmented on its own, as in the paper.
- Objects. The objects of a sample are the dataset ids visible in the augmented reference frame,
  in ascending id order, the first `max_objects` of them mapped to 1..N (N <= max_objects); the
  rest are dropped: their pixels become 255 in all three frames and `dropped_objects` counts them.
  Objects absent from the reference frame cannot be matched (FEELVOS only segments the objects of
  its reference), so their pixels in the previous and current frames become 255 (ignored).
- Memory clip (STM and RDE training, `clip_frames` = C > 0): the C annotated frames just before the
  previous frame, in time order, cropped like the pair (the front padded with the earliest of
  them, or with the previous frame when none precedes it); with static_frames, C more affine
  warps of the reference. Their labels are remapped like the others.
- Scribbles (`scribble_references` = p > 0, interactive segmentation): with probability p the
  reference labels are reduced to strokes along the middle of each object and, with
  probability 1/2 each, of the background or the interactive session's first-round background
  prior (`scribble_labels`), everything else ignored, so the model learns to match against a
  user's scribbles instead of a whole mask; rejection and object slots are decided on the
  full mask.
- Rejection. As in the official code, a candidate whose reference frame shows an object with
  fewer than min_object_pixels pixels at stride 4 (`labels[::4, ::4]`), or no object at all
  (a crop missing every object), is rejected and the reference frame and its augmentation are
  drawn again, up to `max_attempts` candidates (a bounded `tf.while_loop`, so every sample
  index still gives exactly one sample). When all attempts fail, the last candidate is kept
  with its too-small objects dropped (counted in `dropped_objects`), possibly with none.

Determinism and resumption: every random choice of sample i is a stateless function of
(seed, process_index, i), and the video order of epoch e is a seeded shuffle of this host's
videos with a seed derived from (seed, process_index, e). Sample i of a host is visit i % V of
epoch i // V (V videos per host), so a pipeline started at step s computes its first sample index
s * batch_size_per_host directly and only skips the at most V - 1 videos before it in its epoch.
"""
import dataclasses
from typing import Any, Iterator, Mapping, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from feelvos_jax import config_checks
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax.data import augmentation

MAX_ATTEMPTS = 10
"""Reference-frame candidates drawn per training sample before keeping the last one."""

REFERENCE_FRAME_MODES = ("first", "random")

LAZY_FRAME_DECODERS = {"video": {"frames": tfds.decode.SkipDecoding()}}
"""`decoders` for `builder.as_dataset`: frames stay encoded [T] string until a sample needs them."""
_NUM_LABEL_VALUES = 256  # Labels are uint8 on disk: ids 1..254, 0 background, 255 ignore.


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """The validated `config.dataset` knobs of the training pipeline."""
  crop_size: tuple[int, int]
  min_scale: float
  max_scale: float
  random_flip: bool
  reference_frame: str
  max_frame_gap: int
  min_object_pixels: int
  shuffle_buffer: int
  prefetch: int
  max_skip: int = 0
  max_skip_ramp_steps: int = 0
  static_frames: bool = False
  scribble_references: float = 0.0

  def gap_limit(self, step: tf.Tensor) -> tf.Tensor:
    """The largest previous/current gap at training step `step` (int64 scalar): max_frame_gap,
    or with max_skip (STM's maximum-skip curriculum) growing linearly from max_frame_gap to
    max_skip over max_skip_ramp_steps."""
    if self.max_skip <= self.max_frame_gap:
      return tf.constant(self.max_frame_gap, tf.int64)
    progress = (tf.minimum(tf.cast(step, tf.float64) / self.max_skip_ramp_steps, 1.0)
                if self.max_skip_ramp_steps else tf.constant(1.0, tf.float64))
    extra = tf.floor(progress * (self.max_skip - self.max_frame_gap))
    return self.max_frame_gap + tf.cast(extra, tf.int64)

  @property
  def window_options(self) -> dict[str, Any]:
    """Keyword arguments of `augmentation.sample_crop_window`."""
    return dict(min_scale=self.min_scale, max_scale=self.max_scale, crop_size=self.crop_size,
                random_flip=self.random_flip)


def train_settings(dataset_config: ml_collections.ConfigDict) -> TrainSettings:
  """Validates the training knobs of `config.dataset`; ValueError names the bad key."""
  crop_size = config_checks.int_tuple(dataset_config, "dataset.crop_size", length=2, low=1)
  min_scale = config_checks.float_in(dataset_config, "dataset.min_scale", 0.0, low_open=True)
  max_scale = config_checks.float_in(dataset_config, "dataset.max_scale", 0.0, low_open=True)
  if min_scale > max_scale:
    raise ValueError(f"config.dataset.min_scale and config.dataset.max_scale must satisfy "
                     f"min_scale <= max_scale, got {min_scale} and {max_scale}")
  ints = {key: config_checks.int_at_least(dataset_config, f"dataset.{key}", minimum)
          for key, minimum in (("max_frame_gap", 1), ("min_object_pixels", 0),
                               ("shuffle_buffer", 1), ("prefetch", 0), ("max_skip", 0),
                               ("max_skip_ramp_steps", 0))}
  return TrainSettings(
      crop_size=crop_size, min_scale=min_scale, max_scale=max_scale,
      random_flip=bool(dataset_config.random_flip),
      static_frames=bool(dataset_config.get("static_frames", False)),
      scribble_references=config_checks.float_in(
          dataset_config, "dataset.scribble_references", 0.0, 1.0)
      if "scribble_references" in dataset_config else 0.0,
      reference_frame=config_checks.one_of(dataset_config, "dataset.reference_frame",
                                           REFERENCE_FRAME_MODES), **ints)


def _check_videos(videos: tf.data.Dataset) -> None:
  """ValueError unless `videos` has the feature structure of `datasets/features.py`."""
  spec = videos.element_spec
  required = {"video": ("name", "frames", "segmentations", "frame_names"),
              "objects": ("ids", "first_frame")}
  missing = [f"{group}/{key}" for group, keys in required.items() for key in keys
             if not isinstance(spec, dict) or not isinstance(spec.get(group), dict)
             or key not in spec[group]]
  if missing:
    raise ValueError(f"videos must have the features of datasets/features.py; missing "
                     f"{missing} in {spec}")
  frames, segmentations = spec["video"]["frames"], spec["video"]["segmentations"]
  if not ((frames.dtype == tf.uint8 and frames.shape.rank == 4 and frames.shape[-1] == 3)
          or (frames.dtype == tf.string and frames.shape.rank == 1)):
    raise ValueError(f"videos: video/frames must be [T, H, W, 3] uint8 or encoded [T] string, "
                     f"got {frames}")
  if segmentations.dtype != tf.uint8 or segmentations.shape.rank != 4:
    raise ValueError(f"videos: video/segmentations must be [T, H, W, 1] uint8, got "
                     f"{segmentations}")


def _decode_frame(encoded: tf.Tensor) -> tf.Tensor:
  """An encoded (PNG/JPEG) frame as [H, W, 3] uint8."""
  return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)


def _frame_at(frames: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """Frame `index` [H, W, 3] uint8 of decoded [T, H, W, 3] or encoded [T] frames."""
  return _decode_frame(frames[index]) if frames.dtype == tf.string else frames[index]


def _hide_gpus_from_tensorflow() -> None:
  """Keeps TF off accelerators so that JAX has all their memory."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow was initialised with GPUs visible; the input pipeline may "
                      "take accelerator memory from JAX.")


# --------------------------------------------------------------------------------------------
# Training samples.
# --------------------------------------------------------------------------------------------


def _random_true_index(mask: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
  """A uniformly random index of a True entry of mask [M] (which must have one), int32."""
  candidates = tf.cast(tf.where(mask)[:, 0], tf.int32)
  choice = tf.random.stateless_uniform([], key, 0, tf.size(candidates), dtype=tf.int32)
  return candidates[choice]


def _choose_pair(annotated: tf.Tensor, max_frame_gap: int | tf.Tensor, key: tf.Tensor,
                 name: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """A random (previous, current) pair of annotated frames at most max_frame_gap apart."""
  num_frames = tf.size(annotated)
  index = tf.range(num_frames)
  gap = index[None, :] - index[:, None]  # [previous, current] -> current - previous.
  valid = (annotated[:, None] & annotated[None, :] & (gap >= 1) & (gap <= max_frame_gap))
  has_pair = tf.debugging.Assert(tf.reduce_any(valid), [
      "Video", name, "has no two annotated frames at most config.dataset.max_frame_gap =",
      max_frame_gap, "frames apart"])
  with tf.control_dependencies([has_pair]):
    flat = _random_true_index(tf.reshape(valid, [-1]), key)
  return flat // num_frames, flat % num_frames


def _clip_indices(annotated: tf.Tensor, previous: tf.Tensor, clip_frames: int) -> tf.Tensor:
  """The `clip_frames` annotated frames before `previous`, ascending, [C] int32; the front
  repeats the earliest of them, or `previous` when none precedes it."""
  before = tf.cast(tf.where(annotated[:previous])[:, 0], tf.int32)
  earliest = tf.cond(tf.size(before) > 0, lambda: before[0], lambda: tf.cast(previous, tf.int32))
  padded = tf.concat([tf.fill([clip_frames], earliest), before], axis=0)
  return padded[tf.size(padded) - clip_frames:]


def _object_counts(labels: tf.Tensor) -> tf.Tensor:
  """Pixels per label value 0..255 of int32 labels, [256] int32."""
  return tf.math.bincount(tf.reshape(labels, [-1]), minlength=_NUM_LABEL_VALUES,
                          maxlength=_NUM_LABEL_VALUES, dtype=tf.int32)


def skeleton_strokes(grid: np.ndarray, num_labels: int, prior_background: bool) -> np.ndarray:
  """[h, w] int32 labels -> the skeleton (`skimage.morphology.skeletonize`, the thinning the
  DAVIS interactive robot draws its scribbles along) of each object's region (labels
  1..num_labels - 1), IGNORE_LABEL elsewhere; a region too small to thin is kept whole. The
  background (0): its skeleton too, or with `prior_background` the cells the interactive
  session's 'far' background prior marks for these object strokes
  (`scribbles.with_background_prior`), as in a first interaction, which marks objects only."""
  # pylint: disable=g-import-not-at-top (only scribbles need them)
  from skimage import morphology
  from feelvos_jax.inference.interactive import scribbles
  strokes = np.full(grid.shape, IGNORE_LABEL, np.int32)
  for label in range(1 if prior_background else 0, num_labels):
    region = grid == label
    skeleton = morphology.skeletonize(region)
    strokes[skeleton if skeleton.any() else region] = label
  if prior_background:
    size = (grid.shape[0] * FEATURE_STRIDE, grid.shape[1] * FEATURE_STRIDE)
    strokes = scribbles.with_background_prior(strokes[None], size, "far")[0]
  return strokes


def scribble_labels(labels: tf.Tensor, num_labels: int,
                    prior_background: tf.Tensor | bool = False) -> tf.Tensor:
  """Labels [H, W] int32 (0..num_labels - 1, IGNORE_LABEL elsewhere) reduced to scribbles: on
  the stride-4 grid the model matches (`labels[::4, ::4]`), each object's region is replaced by
  its skeleton (`skeleton_strokes`), a connected stroke one cell wide along its middle, as a
  user or the DAVIS interactive robot draws inside each object; the background likewise, or
  (`prior_background`, a bool scalar) the session's background prior of a first interaction;
  every other cell becomes IGNORE_LABEL. Each cell spans its 4x4 pixels, so `[::4, ::4]` of the
  result is the grid of strokes."""
  grid = labels[::FEATURE_STRIDE, ::FEATURE_STRIDE]
  strokes = tf.numpy_function(lambda g, prior: skeleton_strokes(g, num_labels, bool(prior)),
                              [grid, prior_background], tf.int32, stateful=False)
  strokes.set_shape(grid.shape)
  rows = tf.range(tf.shape(labels)[0]) // FEATURE_STRIDE
  cols = tf.range(tf.shape(labels)[1]) // FEATURE_STRIDE
  return tf.gather(tf.gather(strokes, rows), cols, axis=1)


def _make_sample(sample_index: tf.Tensor, video: Mapping[str, Any], *, settings: TrainSettings,
                 max_objects: int, base_key: tf.Tensor, max_attempts: int,
                 samples_per_step: int = 1, clip_frames: int = 0) -> dict[str, tf.Tensor]:
  """One training sample of `video`, a pure function of (base_key, sample_index)."""
  frames = video["video"]["frames"]
  segmentations = video["video"]["segmentations"][..., 0]
  name = video["video"]["name"]
  height, width = tf.shape(segmentations)[1], tf.shape(segmentations)[2]
  annotated = tf.reduce_any(segmentations != IGNORE_LABEL, axis=[1, 2])
  with_objects = tf.reduce_any((segmentations != 0) & (segmentations != IGNORE_LABEL), axis=[1, 2])
  reference_pool = with_objects if settings.reference_frame == "random" else annotated
  reference_pool = tf.cond(tf.reduce_any(reference_pool), lambda: reference_pool,
                           lambda: annotated)

  key = tf.random.experimental.stateless_fold_in(base_key, sample_index)
  pair_key, pair_window_key, reference_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 3))
  if not settings.static_frames:
    gap_limit = settings.gap_limit(sample_index // samples_per_step)
    previous, current = _choose_pair(annotated, tf.cast(gap_limit, tf.int32), pair_key, name)
    pair_window = augmentation.sample_crop_window(pair_window_key, height, width,
                                                  **settings.window_options)
    previous_frame, previous_labels = augmentation.augment_frame(
        _frame_at(frames, previous), segmentations[previous], pair_window, settings.crop_size)
    current_frame, current_labels = augmentation.augment_frame(
        _frame_at(frames, current), segmentations[current], pair_window, settings.crop_size)
    clip = [augmentation.augment_frame(_frame_at(frames, index), segmentations[index],
                                       pair_window, settings.crop_size)
            for index in tf.unstack(_clip_indices(annotated, previous, clip_frames),
                                    num=clip_frames)]

  def reference_candidate(attempt):
    frame_key, window_key = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(reference_key, attempt), 2))
    if settings.reference_frame == "first":
      index = tf.cast(tf.argmax(tf.cast(reference_pool, tf.int32)), tf.int32)
    else:
      index = _random_true_index(reference_pool, frame_key)
    window = augmentation.sample_crop_window(window_key, height, width,
                                             **settings.window_options)
    image, labels = augmentation.augment_frame(_frame_at(frames, index), segmentations[index],
                                               window, settings.crop_size)
    present = _object_counts(labels)[1:IGNORE_LABEL] > 0
    stride_counts = _object_counts(labels[::FEATURE_STRIDE, ::FEATURE_STRIDE])[1:IGNORE_LABEL]
    large_enough = present & (stride_counts >= settings.min_object_pixels)
    # Every object shown is large enough, and the crop shows at least one (the official code
    # drops samples without foreground in the reference).
    accepted = tf.reduce_all(tf.equal(present, large_enough)) & tf.reduce_any(large_enough)
    return image, labels, present, large_enough, accepted

  def retry(attempt, *unused_candidate):
    return (attempt + 1,) + reference_candidate(attempt + 1)

  def not_done(attempt, *candidate):
    return tf.logical_and(tf.logical_not(candidate[-1]), attempt < max_attempts - 1)

  _, reference_frame, reference_labels, present, large_enough, _ = tf.while_loop(
      not_done, retry, (tf.constant(0),) + reference_candidate(tf.constant(0)))
  if settings.static_frames:
    previous_key, current_key = tf.unstack(tf.random.experimental.stateless_split(pair_key, 2))
    previous_frame, previous_labels = augmentation.random_affine(
        reference_frame, reference_labels, previous_key)
    current_frame, current_labels = augmentation.random_affine(
        reference_frame, reference_labels, current_key)
    clip_key = tf.random.experimental.stateless_fold_in(key, 3)
    clip = [augmentation.random_affine(reference_frame, reference_labels,
                                       tf.random.experimental.stateless_fold_in(clip_key, index))
            for index in range(clip_frames)]

  kept = large_enough & (tf.cumsum(tf.cast(large_enough, tf.int32)) <= max_objects)
  slots = tf.where(kept, tf.cumsum(tf.cast(kept, tf.int32)), IGNORE_LABEL)
  lookup = tf.concat([[0], slots, [IGNORE_LABEL]], axis=0)
  kept_ids = tf.cast(tf.where(kept)[:, 0], tf.int32) + 1
  num_objects = tf.size(kept_ids)
  object_ids = tf.pad(kept_ids, [[0, max_objects - num_objects]])
  object_ids.set_shape([max_objects])
  reference_labels = tf.gather(lookup, reference_labels)
  if settings.scribble_references:
    draw, background_draw = tf.unstack(tf.random.stateless_uniform(
        [2], tf.random.experimental.stateless_fold_in(key, 4)))
    reference_labels = tf.cond(
        draw < settings.scribble_references,
        lambda: scribble_labels(reference_labels, max_objects + 1, background_draw < 0.5),
        lambda: reference_labels)
  sample = {
      "reference_frame": reference_frame,
      "previous_frame": previous_frame,
      "current_frame": current_frame,
      "reference_labels": reference_labels,
      "previous_labels": tf.gather(lookup, previous_labels),
      "current_labels": tf.gather(lookup, current_labels),
      "num_objects": num_objects,
      "dropped_objects": tf.reduce_sum(tf.cast(present, tf.int32)) - num_objects,
      "object_ids": object_ids,
  }
  if clip_frames:
    sample["clip_frames"] = tf.stack([image for image, _ in clip])
    sample["clip_labels"] = tf.gather(lookup, tf.stack([labels for _, labels in clip]))
  return sample


def _count_videos(videos: tf.data.Dataset) -> int:
  cardinality = int(videos.cardinality())
  if cardinality == tf.data.INFINITE_CARDINALITY:
    raise ValueError("videos must be a finite dataset of videos, got an infinite one")
  if cardinality == tf.data.UNKNOWN_CARDINALITY:
    cardinality = int(videos.reduce(np.int64(0), lambda count, _: count + 1))
  return cardinality


def make_train_samples(dataset_config: ml_collections.ConfigDict, videos: tf.data.Dataset, *,
                       max_objects: int, seed: int, start_index: int = 0, process_index: int = 0,
                       process_count: int = 1, max_attempts: int = MAX_ATTEMPTS,
                       samples_per_step: int = 1, clip_frames: int = 0) -> tf.data.Dataset:
  """The endless stream of this host's training samples, unbatched, from sample `start_index`.

  Args:
    dataset_config: `config.dataset` (crop_size, min_scale, max_scale, random_flip,
      reference_frame, max_frame_gap, min_object_pixels, shuffle_buffer are used).
    videos: finite dataset of videos (feature spec of `datasets/features.py`, frames decoded or
      encoded, see the module docstring) that gives the same videos in the same order on
      every iteration (e.g. TFDS `builder.as_dataset(split)`, default shuffle_files=False).
    max_objects: object slots besides the background (`config.model.max_objects`).
    seed: seeds the video order and every random choice.
    start_index: index of the first sample of this host (step * batch_size_per_host).
    process_index: this host; it reads the videos `videos.shard(process_count, process_index)`.
    process_count: number of hosts.
    max_attempts: reference-frame candidates per sample (see the module docstring).
    samples_per_step: this host's samples per training step (sample i belongs to step
      i // samples_per_step, which sets the gap limit of the max-skip curriculum).
    clip_frames: C, the memory clip's frames (STM and RDE training; module docstring); 0: none.

  Returns:
    Samples: reference_frame / previous_frame / current_frame [h, w, 3] uint8,
    reference_labels / previous_labels / current_labels [h, w] int32 (0 background, 1..N,
    255 ignore), num_objects [] int32 (N), dropped_objects [] int32, object_ids [max_objects]
    int32 (dataset id of slot 1..max_objects, 0 when empty); (h, w) = crop_size; with
    clip_frames, clip_frames [C, h, w, 3] uint8 and clip_labels [C, h, w] int32.
  """
  _hide_gpus_from_tensorflow()
  settings = train_settings(dataset_config)
  _check_videos(videos)
  config_checks.check_int(max_objects, "max_objects", 1, IGNORE_LABEL - 1)
  config_checks.check_int(start_index, "start_index", 0)
  config_checks.check_int(process_count, "process_count", 1)
  config_checks.check_int(max_attempts, "max_attempts", 1)
  config_checks.check_int(clip_frames, "clip_frames (config.dataset.clip_frames)", 0)
  config_checks.check_int(process_index, "process_index", 0, process_count - 1)

  host_videos = videos.shard(process_count, process_index)
  num_videos = _count_videos(host_videos)
  if num_videos == 0:
    raise ValueError(f"No training videos for process {process_index} of {process_count} "
                     f"(config.dataset.name={dataset_config.name!r})")
  host_key = tf.constant([seed, process_index], tf.int64)
  sample_key = tf.random.experimental.stateless_fold_in(host_key, 0)
  epoch_key = tf.random.experimental.stateless_fold_in(host_key, 1)
  buffer_size = min(settings.shuffle_buffer, num_videos)

  def epoch_videos(epoch):
    epoch_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(epoch_key, epoch), minval=None,
        maxval=None, dtype=tf.int64)
    return host_videos.shuffle(buffer_size, seed=epoch_seed, reshuffle_each_iteration=False)

  first_epoch, skipped = divmod(start_index, num_videos)
  logging.info("Training input: process %d of %d reads %d videos; sample %d is visit %d of "
               "epoch %d.", process_index, process_count, num_videos, start_index, skipped,
               first_epoch)
  video_stream = (tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
                  .flat_map(epoch_videos).skip(skipped))
  samples = tf.data.Dataset.zip(tf.data.Dataset.counter(start_index), video_stream)
  samples = samples.map(
      lambda index, video: _make_sample(index, video, settings=settings, max_objects=max_objects,
                                        base_key=sample_key, max_attempts=max_attempts,
                                        samples_per_step=samples_per_step,
                                        clip_frames=clip_frames),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  return samples.with_options(options)


def _log_dropped_objects(batches: Iterator[dict[str, np.ndarray]]
                         ) -> Iterator[dict[str, np.ndarray]]:
  total = 0
  for batch in batches:
    dropped = int(batch["dropped_objects"].sum())
    if dropped:
      total += dropped
      logging.log_every_n_seconds(
          logging.WARNING, "Input pipeline dropped %d reference objects in this batch (%d so "
          "far): more than max_objects, or too small after all attempts.", 60, dropped, total)
    yield batch


def create_train_dataset(dataset_config: ml_collections.ConfigDict, videos: tf.data.Dataset, *,
                         batch_size_per_host: int, max_objects: int, seed: int,
                         start_step: int = 0, process_index: Optional[int] = None,
                         process_count: Optional[int] = None, clip_frames: int = 0
                         ) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this host's training batches (numpy), starting at batch `start_step`.

  Batch s holds samples s*B .. s*B+B-1 of this host (B = batch_size_per_host), each entry of
  `make_train_samples` stacked on a leading [B] axis. The same arguments give the same batches;
  `start_step=s` gives exactly batches s, s+1, ... of the pipeline started at 0.

  Args:
    dataset_config: `config.dataset`.
    videos: finite dataset of videos in a fixed order (see `make_train_samples`).
    batch_size_per_host: B, the global batch divided by the number of hosts.
    max_objects: object slots besides the background (`config.model.max_objects`).
    seed: seeds the video order and every random choice.
    start_step: first batch to produce (resuming from a checkpoint).
    process_index: this host (default `jax.process_index()`).
    process_count: number of hosts (default `jax.process_count()`).
    clip_frames: the memory clip's frames per sample (see `make_train_samples`).
  """
  config_checks.check_int(batch_size_per_host, "batch_size_per_host", 1)
  config_checks.check_int(start_step, "start_step", 0)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  samples = make_train_samples(
      dataset_config, videos, max_objects=max_objects, seed=seed,
      start_index=start_step * batch_size_per_host, process_index=process_index,
      process_count=process_count, samples_per_step=batch_size_per_host,
      clip_frames=clip_frames)
  batches = samples.batch(batch_size_per_host, drop_remainder=True,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if dataset_config.prefetch:
    batches = batches.prefetch(dataset_config.prefetch)
  return _log_dropped_objects(batches.as_numpy_iterator())


# --------------------------------------------------------------------------------------------
# Evaluation videos.
# --------------------------------------------------------------------------------------------


def _prepare_eval_video(video: Mapping[str, Any], pad_multiple: int) -> dict[str, tf.Tensor]:
  """Remaps ids to 1..N in ascending dataset-id order and pads frames to pad_multiple."""
  name = video["video"]["name"]
  frames = video["video"]["frames"]
  if frames.dtype == tf.string:
    frames = tf.map_fn(_decode_frame, frames,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  segmentations = tf.cast(video["video"]["segmentations"][..., 0], tf.int32)
  order = tf.argsort(video["objects"]["ids"])
  object_ids = tf.cast(tf.gather(video["objects"]["ids"], order), tf.int32)
  first_frame = tf.cast(tf.gather(video["objects"]["first_frame"], order), tf.int32)
  num_objects = tf.size(object_ids)

  ids_valid = tf.debugging.Assert(
      tf.reduce_all(object_ids >= 1) & tf.reduce_all(object_ids < IGNORE_LABEL)
      & tf.reduce_all(object_ids[1:] > object_ids[:-1]),
      ["Video", name, "has objects/ids outside 1..254 or repeated:", object_ids])
  with tf.control_dependencies([ids_valid]):
    lookup = tf.tensor_scatter_nd_update(
        tf.fill([_NUM_LABEL_VALUES], IGNORE_LABEL), object_ids[:, None],
        tf.range(1, num_objects + 1))
  lookup = tf.tensor_scatter_nd_update(lookup, [[0]], [0])
  present = _object_counts(segmentations) > 0
  known = tf.not_equal(lookup, IGNORE_LABEL) | tf.equal(tf.range(_NUM_LABEL_VALUES), IGNORE_LABEL)
  labels_valid = tf.debugging.Assert(
      tf.reduce_all(known | ~present),
      ["Video", name, "has label values not listed in objects/ids:",
       tf.where(present & ~known)[:, 0], "objects/ids:", object_ids])
  with tf.control_dependencies([labels_valid]):
    segmentations = tf.gather(lookup, segmentations)

  height, width = tf.shape(segmentations)[1], tf.shape(segmentations)[2]
  pad_height = (-height) % pad_multiple
  pad_width = (-width) % pad_multiple
  paddings = [[0, 0], [0, pad_height], [0, pad_width]]
  return {
      "name": name,
      "frame_names": video["video"]["frame_names"],
      "frames": tf.pad(frames, paddings + [[0, 0]], constant_values=augmentation.PAD_PIXEL),
      "segmentations": tf.pad(segmentations, paddings, constant_values=IGNORE_LABEL),
      "object_ids": object_ids,
      "first_frame": first_frame,
      "num_objects": num_objects,
      "original_size": tf.stack([height, width]),
  }


def create_eval_videos(dataset_config: ml_collections.ConfigDict, videos: tf.data.Dataset, *,
                       pad_multiple: Optional[int] = None) -> Iterator[dict[str, Any]]:
  """Iterator over whole videos at native resolution for evaluation, in dataset order.

  Args:
    dataset_config: `config.dataset` (its eval_pad_multiple is the default pad_multiple).
    videos: dataset of videos (feature spec of `datasets/features.py`; encoded frames are
      decoded here).
    pad_multiple: frames are padded at the bottom/right to a multiple of this (1: no padding).

  Yields:
    dicts of numpy values: frames [T, Hp, Wp, 3] uint8 (padding PAD_PIXEL), segmentations
    [T, Hp, Wp] int32 (0 background, 1..N the objects in ascending dataset-id order, 255 ignore,
    unannotated frames and padding), object_ids [N] int32 (dataset id of object 1..N),
    first_frame [N] int32, num_objects int32 N, original_size [2] int32 (H, W) before padding,
    name str, frame_names list of T str. No object limit: inference chunks objects.
  """
  _hide_gpus_from_tensorflow()
  if pad_multiple is None:
    pad_multiple = dataset_config.eval_pad_multiple
  config_checks.check_int(pad_multiple, "pad_multiple (config.dataset.eval_pad_multiple)", 1)
  _check_videos(videos)
  prepared = videos.map(lambda video: _prepare_eval_video(video, int(pad_multiple)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(1)
  for example in prepared.as_numpy_iterator():
    example["name"] = example["name"].decode("utf-8")
    example["frame_names"] = [frame.decode("utf-8") for frame in example["frame_names"]]
    yield example
