"""Video propagation with a FEELVOS-family model, in process: compile once per shape bucket.

- `VideoPropagator` / `propagate_video`: masks of every frame of a video from the masks given
  where each object first appears (the algorithm, buckets and chunking: `propagation`);
  `VideoPropagator.propagate_batch` / `propagate_in_batches`: many videos per step, those of
  one shape bucket stepped together (`host_loop.run_videos`).
- `propagator_from_config`: the propagator a run's config asks for (object buckets, sharded
  global matching).
- `to_local_device`: variables gathered onto this process's first device.
"""
import functools
import itertools
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from feelvos_jax import config_checks
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import memory_propagation
from feelvos_jax.inference import propagation


@functools.lru_cache(maxsize=16)
def _compiled_functions(model: nn.Module) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """Jitted `start_video` and `propagation_step` of a model, shared by every propagator (the
  model is hashable, so in-training evaluations reuse the compiled steps); a memory model's
  come from `memory_propagation`."""
  steps = memory_propagation if memory_propagation.is_memory_model(model) else propagation
  start = jax.jit(functools.partial(steps.start_video, model), static_argnames="num_slots")
  step = jax.jit(functools.partial(steps.propagation_step, model,
                                   objects_per_chunk=model.max_objects))
  return start, step


@functools.lru_cache(maxsize=16)
def _compiled_batch_functions(model: nn.Module) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """Jitted `start_videos` and `propagation_steps` of a model (a leading video axis), shared
  as `_compiled_functions`; one compilation per number of videos as well."""
  steps = memory_propagation if memory_propagation.is_memory_model(model) else propagation
  start = jax.jit(functools.partial(steps.start_videos, model),
                  static_argnames="num_slots")
  step = jax.jit(functools.partial(steps.propagation_steps, model,
                                   objects_per_chunk=model.max_objects))
  return start, step


class VideoPropagator:
  """Propagates videos with one FEELVOS model, compiling once per shape bucket.

  The object axis of each step is padded to the smallest of `object_buckets` that holds the
  video's objects (a clone of `model` with that `max_objects`; the weights do not depend on
  it), or split into chunks of the largest bucket. Frames are padded to a multiple of
  `pad_multiple` (default: the backbone's output stride).
  """

  def __init__(self, model: nn.Module, variables: Any, *,
               object_buckets: Optional[Sequence[int]] = None,
               pad_multiple: Optional[int] = None):
    """See the class docstring; `variables` = {'params', 'batch_stats'}."""
    self.model = model
    self.variables = jax.device_put(variables)
    self.object_buckets = host_loop.check_object_buckets(
        object_buckets if object_buckets else (model.max_objects,), "object_buckets")
    self.pad_multiple = max(FEATURE_STRIDE, model.output_stride if pad_multiple is None
                            else pad_multiple)
    if self.pad_multiple % FEATURE_STRIDE:
      raise ValueError(f"pad_multiple must be a multiple of {FEATURE_STRIDE}, "
                       f"got {self.pad_multiple}")

  def plan(self, height: int, width: int, num_objects: int, *,
           batched: bool = False) -> host_loop.Plan:
    """The Plan of a video of `height` x `width` frames with `num_objects` objects; with
    `batched`, its functions take a leading video axis (`host_loop.run_videos`)."""
    objects_per_chunk, num_chunks = host_loop.bucket_slots(num_objects, self.object_buckets)
    compiled = _compiled_batch_functions if batched else _compiled_functions
    start, step = compiled(self.model.clone(max_objects=objects_per_chunk))
    return host_loop.Plan(
        height=host_loop.round_up(height, self.pad_multiple),
        width=host_loop.round_up(width, self.pad_multiple),
        objects_per_chunk=objects_per_chunk, num_chunks=num_chunks,
        start=functools.partial(start, self.variables,
                                num_slots=objects_per_chunk * num_chunks),
        step=functools.partial(step, self.variables),
        max_annotated_frames=(self.model.memory_frames
                              if memory_propagation.is_memory_model(self.model) else None))

  def propagate(self, frames: Iterable[np.ndarray], annotations: Mapping[int, np.ndarray],
                first_frame: Sequence[int], object_ids: Optional[Sequence[int]] = None, *,
                name: str = "video") -> Iterator[np.ndarray]:
    """Labels [H, W] int32 (in `object_ids`) of every frame, as a generator (see `run_video`)."""
    return host_loop.run_video(self.plan, frames, annotations, first_frame, object_ids,
                                 name=name)

  def propagate_batch(self, videos: Sequence[host_loop.Video]) -> Iterator[np.ndarray]:
    """Labels [T, H, W] int32 (in its `object_ids`) of each video, in order: the videos of one
    shape bucket (padded size, object slots and chunks) are stepped together, vmapped over
    the videos (`host_loop.run_videos`); the labels are those `propagate` gives.

    All the videos' labels are kept until the last video of the call ends. ValueError with
    sharded global matching, which does not batch under vmap.
    """
    if self.model.matching_shard_mode:
      raise ValueError("videos propagated together (config.inference.video_batch_size > 1) "
                       "do not combine with sharded global matching "
                       f"(config.matching.shard_axis={self.model.matching_shard_mode!r})")
    return iter(host_loop.run_videos(functools.partial(self.plan, batched=True), videos))

  def propagate_in_batches(self, videos: Iterable[tuple[Any, host_loop.Video]],
                           batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
    """(tag, labels [T, H, W] int32) of every (tag, video), as `propagate_batch` computes them,
    holding at most `batch_size` videos: when that many are waiting, those of the shape bucket
    with the most of them run together; at the end of `videos`, each bucket's rest. Results
    come in the order they finish, not in input order (the tags say which is which).
    """
    config_checks.check_int(batch_size, "config.inference.video_batch_size", 1)
    waiting = {}  # Plan bucket -> [(tag, video)], in input order.
    for tag, video in videos:
      stream = iter(video.frames)
      first = next(stream, None)
      video = video._replace(frames=itertools.chain([] if first is None else [first], stream))
      waiting.setdefault(self._bucket(first, video), []).append((tag, video))
      if sum(len(group) for group in waiting.values()) >= batch_size:
        yield from self._run_waiting(waiting, max(waiting, key=lambda k: len(waiting[k])))
    while waiting:
      yield from self._run_waiting(waiting, next(iter(waiting)))

  def _bucket(self, first_frame: Optional[np.ndarray],
              video: host_loop.Video) -> Optional[tuple[int, int, int, int]]:
    """(padded height, padded width, slots per chunk, chunks) of a video whose first frame is
    `first_frame` (None without frames or objects: `run_videos` then raises)."""
    num_objects = np.size(video.first_frame)
    if first_frame is None or np.ndim(first_frame) < 2 or not num_objects:
      return None
    plan = self.plan(*np.shape(first_frame)[:2], num_objects)
    return plan.height, plan.width, plan.objects_per_chunk, plan.num_chunks

  def _run_waiting(self, waiting: dict[Any, list[tuple[Any, host_loop.Video]]],
                   bucket: Any) -> Iterator[tuple[Any, np.ndarray]]:
    """Propagates and removes the waiting videos of one bucket: (tag, labels) each."""
    group = waiting.pop(bucket)
    labels = self.propagate_batch([video for _, video in group])
    return ((tag, video_labels) for (tag, _), video_labels in zip(group, labels))


def propagate_video(model: nn.Module, variables: Any, frames: Iterable[np.ndarray],
                    annotations: Mapping[int, np.ndarray], first_frame: Sequence[int],
                    object_ids: Optional[Sequence[int]] = None, *,
                    object_buckets: Optional[Sequence[int]] = None,
                    pad_multiple: Optional[int] = None,
                    name: str = "video") -> Iterator[np.ndarray]:
  """Propagates one video; a generator of [H, W] int32 labels per frame.

  Args:
    model: the FEELVOS module (`models.build_model(config.model)`).
    variables: its {'params', 'batch_stats'}.
    frames: [T, H, W, 3] uint8 array or an iterable of [H, W, 3] uint8 frames (streamed).
    annotations: frame index -> [H, W] label map (0 background, 1..N, IGNORE_LABEL void) for
      each frame in `first_frame`.
    first_frame: [N] frame where object n+1 is first annotated.
    object_ids: [N] ids written for objects 1..N (default 1..N).
    object_buckets: object slots per compiled step (default: the model's max_objects).
    pad_multiple: frames are padded to a multiple of this (default: the output stride).
    name: video name for error messages.

  For many videos, make one `VideoPropagator` and call its `propagate`: its compiled steps are
  reused across videos.
  """
  propagator = VideoPropagator(model, variables, object_buckets=object_buckets,
                               pad_multiple=pad_multiple)
  return propagator.propagate(frames, annotations, first_frame, object_ids, name=name)


def sharded_matching_model(model: nn.Module, shard_axis: str) -> nn.Module:
  """`model` with global matching split over all devices (`config.matching.shard_axis`).

  shard_axis: "query" or "reference" (see `matching.global_matching_sharded`). The variables
  are unchanged; the masks equal the unsharded model's.
  """
  config_checks.check_choice(shard_axis, "config.matching.shard_axis", ("query", "reference"))
  mesh = jax.make_mesh((jax.device_count(),), ("matching",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return model.clone(matching_mesh=mesh, matching_shard_mode=shard_axis)


def propagator_from_config(model: nn.Module, variables: Any,
                config: ml_collections.ConfigDict) -> VideoPropagator:
  """The VideoPropagator of a run's config: `config.inference.object_buckets`, and global
  matching sharded over all devices when `config.matching.shard_axis` is set."""
  if config.matching.shard_axis:
    model = sharded_matching_model(model, config.matching.shard_axis)
  return VideoPropagator(model, variables, object_buckets=config.inference.object_buckets)


def to_local_device(variables: Any) -> Any:
  """The variables on this process's first device (gathered if sharded across processes)."""
  device = jax.local_devices()[0]

  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    return jax.device_put(x, device)

  return jax.tree.map(gather, variables)
