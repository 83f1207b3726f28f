"""Video inference with a FEELVOS model: propagate videos, evaluate a split, restore weights.

- `VideoPropagator` / `propagate_video`: masks of every frame of a video from the masks given
  where each object first appears (the algorithm, buckets and chunking: `propagation`).
- `evaluate_dataset(model, variables, videos, config)`: validation J&F during training.
- `run_evaluation(config, workdir)`: `main.py --mode=evaluate`, from the latest checkpoint.
- `restore_variables`: params and batch stats of a training checkpoint, without the optimizer.
"""
import functools
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from absl import logging
from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import evaluation
from feelvos_jax import models
from feelvos_jax import propagation
from feelvos_jax import writers


@functools.lru_cache(maxsize=16)
def _compiled_functions(model: nn.Module) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """Jitted `start_video` and `propagation_step` of a model, shared by every propagator (the
  model is hashable, so in-training evaluations reuse the compiled steps)."""
  start = jax.jit(functools.partial(propagation.start_video, model), static_argnames="num_slots")
  step = jax.jit(functools.partial(propagation.propagation_step, model,
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
    self.object_buckets = propagation.check_object_buckets(
        object_buckets if object_buckets else (model.max_objects,), "object_buckets")
    self.pad_multiple = max(FEATURE_STRIDE, model.output_stride if pad_multiple is None
                            else pad_multiple)
    if self.pad_multiple % FEATURE_STRIDE:
      raise ValueError(f"pad_multiple must be a multiple of {FEATURE_STRIDE}, "
                       f"got {self.pad_multiple}")

  def plan(self, height: int, width: int, num_objects: int) -> propagation.Plan:
    """The Plan of a video of `height` x `width` frames with `num_objects` objects."""
    objects_per_chunk, num_chunks = propagation.bucket_slots(num_objects, self.object_buckets)
    start, step = _compiled_functions(self.model.clone(max_objects=objects_per_chunk))
    return propagation.Plan(
        height=propagation.round_up(height, self.pad_multiple),
        width=propagation.round_up(width, self.pad_multiple),
        objects_per_chunk=objects_per_chunk, num_chunks=num_chunks,
        start=functools.partial(start, self.variables,
                                num_slots=objects_per_chunk * num_chunks),
        step=functools.partial(step, self.variables))

  def propagate(self, frames: Iterable[np.ndarray], annotations: Mapping[int, np.ndarray],
                first_frame: Sequence[int], object_ids: Optional[Sequence[int]] = None, *,
                name: str = "video") -> Iterator[np.ndarray]:
    """Labels [H, W] int32 (in `object_ids`) of every frame, as a generator (see `run_video`)."""
    return propagation.run_video(self.plan, frames, annotations, first_frame, object_ids,
                                 name=name)


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


# --------------------------------------------------------------------------------------------
# Evaluation: propagate a split, score it, write the predictions.
# --------------------------------------------------------------------------------------------


def _to_local_device(variables: Any) -> Any:
  """The variables on this process's first device (gathered if sharded across processes)."""
  device = jax.local_devices()[0]

  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    return jax.device_put(x, device)

  return jax.tree.map(gather, variables)


def predict_video(propagator: Any, video: Mapping[str, Any]) -> np.ndarray:
  """Predicted dataset ids [T, H, W] uint8 of one `input_pipeline.create_eval_videos` video.

  The pipeline's padding is cropped off (`original_size`); the propagator pads again.
  `propagator` is a `VideoPropagator` or an `export.ExportedModel`.
  """
  height, width = (int(n) for n in video["original_size"])
  segmentations = video["segmentations"][:, :height, :width]
  first_frame = np.asarray(video["first_frame"])
  annotations = {int(t): segmentations[t] for t in np.unique(first_frame)}
  labels = propagator.propagate(video["frames"][:, :height, :width], annotations, first_frame,
                                video["object_ids"], name=video["name"])
  return np.stack([frame.astype(np.uint8) for frame in labels])


def _ground_truth_ids(video: Mapping[str, Any]) -> np.ndarray:
  """The video's segmentations [T, H, W] (cropped) in dataset ids, IGNORE_LABEL kept."""
  height, width = (int(n) for n in video["original_size"])
  lookup = np.zeros(256, np.int64)
  lookup[1:len(video["object_ids"]) + 1] = video["object_ids"]
  lookup[IGNORE_LABEL] = IGNORE_LABEL
  return lookup[video["segmentations"][:, :height, :width]]


def _scorable(ground_truth: np.ndarray) -> bool:
  """Whether every frame the protocol scores (1 .. T-2) holds an annotation."""
  scored = ground_truth[1:-1]
  return len(ground_truth) >= 3 and bool(
      np.all(np.any(scored != IGNORE_LABEL, axis=(1, 2))))


def evaluate_videos(propagator: Any, videos: Iterable[Mapping[str, Any]], *,
                    write: Optional[Callable[[Mapping[str, Any], np.ndarray], None]] = None
                    ) -> tuple[Optional[dict[str, float]], list[dict[str, Any]], int]:
  """Propagates and scores videos (the official semi-supervised protocol).

  Args:
    propagator: a `VideoPropagator` or an `export.ExportedModel`.
    videos: `input_pipeline.create_eval_videos` dicts.
    write: called with (video, predicted dataset ids [T, H, W]) for each video.

  Returns:
    (global table or None if no video had ground truth on its scored frames, per-object
    rows, videos propagated). Videos without annotations on frames 1..T-2 (YouTube-VOS
    validation) are propagated and written but not scored.
  """
  scores = []
  count = 0
  for video in videos:
    prediction = predict_video(propagator, video)
    count += 1
    if write is not None:
      write(video, prediction)
    ground_truth = _ground_truth_ids(video)
    if not _scorable(ground_truth):
      logging.info("Video %r has no ground truth on its scored frames: not scored.",
                   video["name"])
      continue
    scores.append(evaluation.evaluate_video(
        prediction, ground_truth, [int(i) for i in video["object_ids"]], name=video["name"],
        frame_names=video["frame_names"]))
  if not scores:
    return None, [], count
  global_table, rows = evaluation.summarize(scores)
  return global_table, rows, count


def _propagator(model: nn.Module, variables: Any,
                config: ml_collections.ConfigDict) -> VideoPropagator:
  """The VideoPropagator of a run's config (its object buckets)."""
  if config.matching.shard_axis:
    model = sharded_matching_model(model, config.matching.shard_axis)
  return VideoPropagator(model, variables, object_buckets=config.inference.object_buckets)


def sharded_matching_model(model: nn.Module, shard_axis: str) -> nn.Module:
  """`model` with global matching split over all devices (`config.matching.shard_axis`).

  shard_axis: "query" or "reference" (see `matching.global_matching_sharded`). The variables
  are unchanged; the masks equal the unsharded model's.
  """
  if shard_axis not in ("query", "reference"):
    raise ValueError(f"config.matching.shard_axis must be '', 'query' or 'reference', "
                     f"got {shard_axis!r}")
  mesh = jax.make_mesh((jax.device_count(),), ("matching",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return model.clone(matching_mesh=mesh, matching_shard_mode=shard_axis)


def evaluate_dataset(model: nn.Module, variables: Any, videos: Iterable[Mapping[str, Any]],
                     config: ml_collections.ConfigDict) -> dict[str, float]:
  """Validation J&F of `model` on `videos` (`input_pipeline.create_eval_videos` dicts).

  Returns:
    The global table: 'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
    'F-Decay' over all objects of the videos, plus 'num_videos'.

  Raises:
    ValueError: when no video has ground truth on the frames the protocol scores.
  """
  propagator = _propagator(model, _to_local_device(variables), config)
  global_table, _, count = evaluate_videos(propagator, videos)
  if global_table is None:
    raise ValueError(f"none of the {count} videos of config.dataset.eval_split="
                     f"{config.dataset.eval_split!r} has ground truth on the frames the "
                     f"protocol scores (1..T-2): nothing to evaluate")
  return dict(global_table, num_videos=float(count))


def example_inputs(model: nn.Module) -> tuple[jax.Array, ...]:
  """Small zero inputs in the argument order of `FEELVOS.__call__`, for `model.init`."""
  size = 4 * max(FEATURE_STRIDE, model.output_stride)
  h = size // FEATURE_STRIDE
  embedding = jnp.zeros((1, h, h, model.embedding_dim), jnp.float32)
  labels = jnp.zeros((1, h, h), jnp.int32)
  return (jnp.zeros((1, size, size, 3), jnp.float32), embedding, labels, embedding, labels,
          jnp.zeros((1, h, h, model.num_slots), jnp.float32), jnp.ones((1,), jnp.int32))


def _variable_shapes(model: nn.Module) -> Any:
  """ShapeDtypeStructs of the model's {'params', 'batch_stats'} (nothing is computed)."""
  key = jax.random.PRNGKey(0)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        {"params": key, "matching": key}, *example_inputs(model))


def restore_variables(config: ml_collections.ConfigDict, workdir: str, model: nn.Module,
                      step: Optional[int] = None) -> tuple[Any, int]:
  """{'params', 'batch_stats'} of a training checkpoint, without the optimizer state.

  Args:
    config: the run's config (named in errors).
    workdir: the training workdir; checkpoints are read from `<workdir>/checkpoints`.
    model: the module the variables are for; their shapes are checked against it.
    step: the checkpoint step (default: the latest).

  Returns:
    (variables on this process's first device, step).
  """
  directory = epath.Path(workdir) / "checkpoints"
  manager = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                "config": ocp.JsonCheckpointHandler()})
  try:
    if step is None:
      step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory} (train first: main.py "
                              f"--mode=train --workdir={workdir})")
    saved = manager.item_metadata(step)["state"].tree
    expected = _variable_shapes(model)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {}
    problems = []
    for collection in ("params", "batch_stats"):
      saved_leaves = {jax.tree_util.keystr(path): leaf for path, leaf in
                      jax.tree_util.tree_flatten_with_path(saved.get(collection, {}))[0]}
      for path, leaf in jax.tree_util.tree_flatten_with_path(expected.get(collection, {}))[0]:
        name = jax.tree_util.keystr(path)
        if name not in saved_leaves or tuple(saved_leaves[name].shape) != leaf.shape:
          found = saved_leaves[name].shape if name in saved_leaves else "missing"
          problems.append(f"{collection}{name}: checkpoint {found}, model {leaf.shape}")
      abstract[collection] = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
          saved.get(collection, {}))
    if problems:
      raise ValueError(
          f"checkpoint step {step} in {directory} does not fit config.model (backbone "
          f"{config.model.backbone!r}); differences:\n  " + "\n  ".join(problems[:20]))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))
  finally:
    manager.close()
  return {"params": restored.state["params"],
          "batch_stats": restored.state.get("batch_stats", {})}, int(step)


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict[str, float]]:
  """`main.py --mode=evaluate`: propagate `config.dataset.eval_split` with the latest checkpoint.

  Writes the predictions to `<workdir>/predictions/<split>/` (DAVIS layout `<video>/<frame>.png`;
  for YouTube-VOS the submission layout `Annotations/<video>/<frame>.png` and the zip
  `<workdir>/predictions/<split>.zip`), prints the global and per-object tables and writes them
  beside the predictions as the official tool's CSVs. Returns the global table (None when the
  split has no ground truth to score, as YouTube-VOS validation).
  """
  # The dataset code imports TensorFlow; inference itself does not need it.
  from datasets import registry  # pylint: disable=g-import-not-at-top
  from feelvos_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model)
  variables, step = restore_variables(config, workdir, model)
  split = config.dataset.eval_split
  output = epath.Path(workdir) / "predictions" / split
  output.mkdir(parents=True, exist_ok=True)
  youtube_vos = config.dataset.name.split("/")[0] == "youtube_vos"

  def write(video, prediction):
    if youtube_vos:
      writers.write_youtube_vos_predictions(os.fspath(output), video["name"],
                                            video["frame_names"], prediction)
    else:
      writers.write_davis_predictions(os.fspath(output), video["name"], video["frame_names"],
                                      prediction)

  videos = registry.load_builder(config.dataset).as_dataset(split=split, shuffle_files=False)
  propagator = _propagator(model, variables, config)
  global_table, rows, count = evaluate_videos(
      propagator, input_pipeline.create_eval_videos(config.dataset, videos), write=write)
  print(f"Checkpoint step {step}: {count} videos of split {split!r} propagated into {output}")
  if youtube_vos:
    zip_path = output.parent / f"{split}.zip"
    writers.zip_youtube_vos_submission(os.fspath(output), os.fspath(zip_path))
    print(f"YouTube-VOS submission zip: {zip_path}")
  if global_table is None:
    print("No ground truth on the scored frames of this split: nothing to score.")
    return None
  print(f"--------------------------- Global results for {split} ---------------------------")
  print(evaluation.format_table(evaluation.GLOBAL_COLUMNS, [global_table]))
  print(f"\n---------- Per sequence results for {split} ----------")
  print(evaluation.format_table(evaluation.PER_SEQUENCE_COLUMNS, rows))
  paths = evaluation.write_results_csv(os.fspath(output), split, global_table, rows)
  print("First and last frames not scored (semi-supervised protocol). Results saved in "
        + " and ".join(paths))
  return global_table
