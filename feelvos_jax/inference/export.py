"""Inference-only bundles: weights, config and StableHLO propagation steps of a checkpoint.

`export(config, workdir)` (what `main.py --mode=export` runs) reads the latest checkpoint of
`<workdir>/checkpoints` and writes (by default to `<workdir>/export`):

  manifest.json   format, checkpoint step, buckets, platforms, the function files, the size
                  and SHA-256 of every other file of the bundle, and its own checksum
  config.json     the run's config
  variables/      {'params', 'batch_stats'} (orbax StandardSave; no optimizer state)
  functions/      `jax.export`-serialized (StableHLO) functions, per bucket (H, W, objects):
                  start_<H>x<W>x<objects>.bin                    (`propagation.start_video`)
                  step_<H>x<W>x<objects>_r<R>.bin for R = 1..max (`propagation.propagation_step`
                  with R reference frames); memory models (STM, RDE) export one step, R = 1,
                  of `memory_propagation`, whose state has one size whatever the video

`load(path)` returns an `ExportedModel` that propagates videos with the deserialized functions
and the same host loop as in-process inference (`host_loop.run_video`), without building the
Flax model or a training state. A video runs in the smallest bucket whose height, width and
object count hold it, its frames padded to that bucket's size (a bucket larger than the
frames' padded size may give slightly different masks: docs/inference.md); object slots per
chunk and chunks follow `config.inference.object_buckets` as in-process. The bundle is written
into a temporary folder and renamed into place: a crash never leaves a half bundle (a crash
between moving the previous bundle aside and renaming the new one into place leaves the previous
one beside it, `.<name>.old-*`, which `load` then reads, with a warning). `load` verifies every
file against the manifest before reading any: a missing, truncated or changed file raises
`integrity.IntegrityError` naming it.
"""
import dataclasses
import functools
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feelvos_jax import config_checks
from feelvos_jax import console
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import models
from feelvos_jax.inference import bundle
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import memory_propagation
from feelvos_jax.inference import propagation
from feelvos_jax.training import checkpointing
from feelvos_jax.training import integrity
from feelvos_jax.training import workdir_lock



@dataclasses.dataclass(frozen=True)
class Bucket:
  """One exported shape: padded frame size and the object capacity.

  Attributes:
    height, width: padded frame size (multiples of the backbone's output stride).
    objects: most objects a video of this bucket may have.
    objects_per_chunk, num_chunks: the step's object slots (S = objects_per_chunk * num_chunks).
  """
  height: int
  width: int
  objects: int
  objects_per_chunk: int
  num_chunks: int

  @property
  def name(self) -> str:
    return f"{self.height}x{self.width}x{self.objects}"


def export_buckets(config: ml_collections.ConfigDict) -> list[Bucket]:
  """The Buckets of `config.export.buckets` (checked; ValueError names the key at fault)."""
  object_buckets = host_loop.check_object_buckets(
      config.inference.object_buckets or (config.model.max_objects,),
      "config.inference.object_buckets")
  multiple = max(FEATURE_STRIDE, config.model.output_stride)
  buckets = []
  for entry in config.export.buckets:
    height, width, objects = config_checks.check_int_tuple(
        entry, "config.export.buckets entries (height, width, objects)", length=3, low=1)
    if height % multiple or width % multiple:
      raise ValueError(f"config.export.buckets entry {tuple(entry)}: height and width must be "
                       f"multiples of the output stride {multiple}")
    if objects > propagation.MAX_OBJECTS:
      raise ValueError(f"config.export.buckets entry {tuple(entry)}: at most "
                       f"{propagation.MAX_OBJECTS} objects")
    objects_per_chunk, num_chunks = host_loop.bucket_slots(objects, object_buckets)
    buckets.append(Bucket(height, width, objects, objects_per_chunk, num_chunks))
  if not buckets:
    raise ValueError("config.export.buckets is empty: nothing to export")
  if len({b.name for b in buckets}) != len(buckets):
    raise ValueError(f"config.export.buckets has duplicates: {list(config.export.buckets)}")
  config_checks.positive_int(config, "export.max_reference_frames")
  exported_reference_frames(config)
  return buckets


def _with_reference_frames(state: propagation.State, reference_frames: int) -> propagation.State:
  """The ShapeDtypeStructs of a one-reference-frame `state` with R reference frames."""
  def stacked(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((reference_frames * x.shape[0],) + x.shape[1:], x.dtype)
  return dict(state, reference_embedding=stacked(state["reference_embedding"]),
              reference_labels=stacked(state["reference_labels"]))


def exported_reference_frames(config: ml_collections.ConfigDict) -> int:
  """Step files per bucket: config.export.max_reference_frames, or 1 for a memory model
  (STM, RDE), whose one step serves any number of annotated frames up to
  config.model.memory_frames (ValueError naming it when below max_reference_frames)."""
  if config.model.head not in ("stm", "rde"):
    return config.export.max_reference_frames
  if config.model.memory_frames < config.export.max_reference_frames:
    raise ValueError(f"config.model.memory_frames={config.model.memory_frames} is below "
                     f"config.export.max_reference_frames={config.export.max_reference_frames}:"
                     f" the memory could not hold the frames where objects are given")
  return 1


def _function_files(bucket: Bucket, max_reference_frames: int) -> dict[str, Any]:
  return {"start": f"start_{bucket.name}.bin",
          "steps": {str(r): f"step_{bucket.name}_r{r}.bin"
                    for r in range(1, max_reference_frames + 1)}}


def export_functions(model: Any, variables: Any, bucket: Bucket, max_reference_frames: int,
                     platforms: Sequence[str]) -> dict[str, bytes]:
  """Serialized start and step functions of one bucket: file name -> bytes."""
  model = model.clone(max_objects=bucket.objects_per_chunk)
  abstract_variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  frame = jax.ShapeDtypeStruct((bucket.height, bucket.width, 3), jnp.uint8)
  labels = jax.ShapeDtypeStruct((bucket.height, bucket.width), jnp.int32)
  num_slots = bucket.objects_per_chunk * bucket.num_chunks
  memory = memory_propagation.is_memory_model(model)
  steps = memory_propagation if memory else propagation
  start = jax.jit(functools.partial(steps.start_video, model, num_slots=num_slots))
  files = _function_files(bucket, 1 if memory else max_reference_frames)
  serialized = {files["start"]: jax.export.export(start, platforms=platforms)(
      abstract_variables, frame, labels).serialize()}
  initial_state = jax.eval_shape(start, abstract_variables, frame, labels)
  step = jax.jit(functools.partial(steps.propagation_step, model,
                                   objects_per_chunk=bucket.objects_per_chunk))
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  valid_size = jax.ShapeDtypeStruct((2,), jnp.int32)
  for reference_frames, file_name in files["steps"].items():
    state = (initial_state if memory
             else _with_reference_frames(initial_state, int(reference_frames)))
    exported = jax.export.export(step, platforms=platforms)(
        abstract_variables, state, frame, labels, scalar, valid_size)
    serialized[file_name] = exported.serialize()
  return serialized


def export(config: ml_collections.ConfigDict, workdir: str,
           export_dir: Optional[str] = None) -> epath.Path:
  """Writes the inference bundle of the latest checkpoint in `<workdir>/checkpoints`.

  Args:
    config: the run's config (its `export` section picks buckets and platforms).
    workdir: the training workdir, locked while exporting (`workdir_lock.hold`).
    export_dir: destination folder (default `<workdir>/export`); replaced if it exists.

  Returns:
    The bundle's folder.

  Raises:
    ValueError: a bad `config.export` value (before anything is read or written).
    workdir_lock.WorkdirLockedError: another run holds the workdir.
    integrity.IntegrityError: the checkpoint's files do not match their checksums.
  """
  buckets = export_buckets(config)
  platforms = bundle.export_platforms(config)
  with workdir_lock.hold(workdir, "export"):
    return _export(config, workdir, export_dir, buckets, platforms)


def _export(config: ml_collections.ConfigDict, workdir: str, export_dir: Optional[str],
            buckets: Sequence[Bucket], platforms: tuple[str, ...]) -> epath.Path:
  """`export` once its config is checked and the workdir locked."""
  model = models.build_model(config.model)
  variables, step = checkpointing.restore_variables(config, workdir, model)
  functions = {}
  for bucket in console.progress(buckets, desc="Exporting buckets", unit="bucket"):
    logging.info("Exporting bucket %s (%d slots x %d chunks) for %s", bucket.name,
                 bucket.objects_per_chunk, bucket.num_chunks, platforms)
    functions.update(export_functions(model, variables, bucket,
                                      config.export.max_reference_frames, platforms))
  entries = {
      "format": bundle.VOS.format,
      "checkpoint_step": int(step),
      "jax_version": jax.__version__,
      "platforms": list(platforms),
      "max_reference_frames": int(config.export.max_reference_frames),
      "buckets": [dict(dataclasses.asdict(b),
                       **_function_files(b, exported_reference_frames(config)))
                  for b in buckets],
  }
  destination = bundle.write(
      export_dir or epath.Path(workdir) / "export", entries,
      lambda folder: bundle.write_compiled(folder, config, variables, functions))
  logging.info("Wrote the inference bundle of step %d to %s", step, destination)
  return destination


class ExportedModel:
  """A bundle loaded for inference: `propagate` runs videos with its serialized functions."""

  def __init__(self, path: epath.PathLike):
    """Reads the bundle at `path` (see the module docstring) after verifying its files.

    Raises:
      FileNotFoundError: no bundle at `path`.
      ValueError: a bundle of another format.
      integrity.IntegrityError: a file of the bundle is missing, truncated, changed or cannot
        be parsed; the message names it.
    """
    self.path = bundle.resolve(path)
    manifest = bundle.read_manifest(self.path, bundle.VOS)
    self.manifest = manifest
    self.config = ml_collections.ConfigDict(integrity.read_json(self.path / "config.json"))
    self.checkpoint_step = manifest["checkpoint_step"]
    fields = [field.name for field in dataclasses.fields(Bucket)]
    self.buckets = []
    self._files = {}
    for entry in manifest["buckets"]:
      bucket = Bucket(**{field: entry[field] for field in fields})
      self.buckets.append(bucket)
      self._files[bucket.name] = {"start": entry["start"], "steps": entry["steps"]}
    self.variables = bundle.read_variables(self.path)
    self._functions = {}

  def _function(self, file_name: str) -> Any:
    if file_name not in self._functions:
      self._functions[file_name] = bundle.read_function(self.path, file_name)
    return self._functions[file_name]

  def bucket_for(self, height: int, width: int, num_objects: int) -> Bucket:
    """The smallest bucket (by area, then objects) holding the video; ValueError if none."""
    fitting = [b for b in self.buckets
               if b.height >= height and b.width >= width and b.objects >= num_objects]
    if not fitting:
      raise ValueError(
          f"no exported bucket holds a {height}x{width} video with {num_objects} objects; "
          f"buckets (height, width, objects): "
          f"{[(b.height, b.width, b.objects) for b in self.buckets]} (config.export.buckets)")
    return min(fitting, key=lambda b: (b.height * b.width, b.objects))

  def plan(self, height: int, width: int, num_objects: int) -> host_loop.Plan:
    """The Plan of a video (see `host_loop.run_video`) from the bundle's functions."""
    bucket = self.bucket_for(height, width, num_objects)
    multiple = max(FEATURE_STRIDE, self.config.model.output_stride)
    padded = (host_loop.round_up(height, multiple), host_loop.round_up(width, multiple))
    if (bucket.height, bucket.width) != padded:
      logging.warning(
          "a %dx%d video runs in the %dx%d bucket: more padding than in-process inference "
          "(%dx%d), so its masks may differ slightly; export a %dx%d bucket for the same masks "
          "(config.export.buckets)", height, width, bucket.height, bucket.width, *padded,
          *padded)
    files = self._files[bucket.name]
    start = self._function(files["start"])
    h = bucket.height // FEATURE_STRIDE
    variables = self.variables

    def step(state, frame, paste_labels, num_objects, valid_size):
      reference_frames = (state["reference_labels"].shape[0] // h
                          if "reference_labels" in state else 1)
      if str(reference_frames) not in files["steps"]:
        raise ValueError(
            f"the video needs {reference_frames} reference frames (objects first appearing "
            f"in that many frames) but the bundle was exported with at most "
            f"{len(files['steps'])} (config.export.max_reference_frames)")
      function = self._function(files["steps"][str(reference_frames)])
      return function(variables, state, frame, paste_labels, num_objects, valid_size)

    memory = self.config.model.get("head", "feelvos") in ("stm", "rde")
    return host_loop.Plan(height=bucket.height, width=bucket.width,
                            objects_per_chunk=bucket.objects_per_chunk,
                            num_chunks=bucket.num_chunks,
                            start=functools.partial(start, variables), step=step,
                            max_annotated_frames=(self.config.model.memory_frames if memory
                                                  else None))

  def propagate(self, frames: Iterable[np.ndarray], annotations: Mapping[int, np.ndarray],
                first_frame: Sequence[int], object_ids: Optional[Sequence[int]] = None, *,
                name: str = "video") -> Iterator[np.ndarray]:
    """Labels [H, W] int32 of every frame, as `video_propagation.VideoPropagator.propagate`."""
    return host_loop.run_video(self.plan, frames, annotations, first_frame, object_ids,
                                 name=name)


def load(path: epath.PathLike) -> ExportedModel:
  """Loads the bundle that `export` wrote to `path` (raises as `ExportedModel`)."""
  return ExportedModel(path)
