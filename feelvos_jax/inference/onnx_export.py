"""ONNX models of a checkpoint's propagation, and the onnxruntime runner that plays them.

`export(config, workdir)` (`main.py --mode=export --config.export.format=onnx`) reads the latest
checkpoint and writes, by default to `<workdir>/export_onnx`:

  manifest.json   format, checkpoint step, opset, buckets with their files, the size and
                  SHA-256 of every other file
  config.json     the run's config
  start_<H>x<W>x<objects>.onnx          the embedding step (`propagation.start_video`):
      frame [H, W, 3] uint8, given_labels [H, W] int32 -> embedding [h, w, E] float32,
      stride4_labels [h, w] int32, probs [h, w, 1 + S] float32   (h, w = H / 4, W / 4)
  step_<H>x<W>x<objects>_r<R>.onnx      the propagation step (`propagation.propagation_step`)
      for R = 1..max_reference_frames:
      reference_embedding [R*h, w, E], reference_labels [R*h, w], previous_embedding
      [h, w, E], previous_labels [h, w], previous_probs [h, w, 1 + S], frame [H, W, 3],
      paste_labels [H, W], num_objects [] int32, valid_size [2] int32 -> embedding,
      stride4_labels, probs (the next previous_*) and labels [H, W] int32

with the weights inside each model. Buckets, object chunks and padding are those of the
StableHLO bundle (`export.export_buckets`). `load(path)` verifies the files and returns an
`OnnxModel` whose `propagate` runs videos with onnxruntime through the same host loop
(`host_loop.run_video`); it builds no Flax model and reads no checkpoint. The conversion
(jax2onnx, after the rewrite of `onnx_graph`) and what it measured: docs/inference.md ("ONNX").
"""
import dataclasses
import importlib.util
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feelvos_jax import console
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import models
from feelvos_jax.inference import bundle
from feelvos_jax.inference import export as stablehlo_export
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import onnx_graph
from feelvos_jax.inference import propagation
from feelvos_jax.matching import global_maps
from feelvos_jax.training import checkpointing
from feelvos_jax.training import integrity
from feelvos_jax.training import workdir_lock

STATE_INPUTS = ("reference_embedding", "reference_labels", "previous_embedding",
                "previous_labels", "previous_probs")
"""The propagation state (`propagation.State`) as the step model's first inputs."""

FRAME_INPUTS = ("frame", "paste_labels", "num_objects", "valid_size")
"""The step model's other inputs, after the state."""

OUTPUTS = ("embedding", "stride4_labels", "probs")
"""What both models return: the next state's previous_embedding, previous_labels and
previous_probs (the step returns `labels` [H, W] after them)."""

MEMORY_HEADS = ("stm", "rde")
"""Model heads whose propagation keeps a memory of frames: not exported to ONNX."""


def _file_names(bucket: stablehlo_export.Bucket, max_reference_frames: int) -> dict[str, Any]:
  return {"start": f"start_{bucket.name}.onnx",
          "steps": {str(r): f"step_{bucket.name}_r{r}.onnx"
                    for r in range(1, max_reference_frames + 1)}}


def export_models(model: Any, variables: Any, bucket: stablehlo_export.Bucket,
                  max_reference_frames: int) -> dict[str, bytes]:
  """Serialized ONNX start and step models of one bucket: file name -> bytes.

  Global matching is traced in its XLA form (`global_maps.GLOBAL_MATCHING_KERNEL` "xla"
  while tracing): the fused kernel is a CUDA-only custom call.
  """
  model = model.clone(max_objects=bucket.objects_per_chunk)
  variables = jax.tree.map(np.asarray, variables)
  num_slots = bucket.objects_per_chunk * bucket.num_chunks
  frame = jax.ShapeDtypeStruct((bucket.height, bucket.width, 3), jnp.uint8)
  labels = jax.ShapeDtypeStruct((bucket.height, bucket.width), jnp.int32)

  def start(frame, given_labels):
    state = propagation.start_video(model, variables, frame, given_labels, num_slots=num_slots)
    return [state[name] for name in STATE_INPUTS[2:]]

  def step(*args):
    state = dict(zip(STATE_INPUTS, args[:len(STATE_INPUTS)]))
    new_state, new_labels = propagation.propagation_step(
        model, variables, state, *args[len(STATE_INPUTS):],
        objects_per_chunk=bucket.objects_per_chunk)
    return [new_state[name] for name in STATE_INPUTS[2:]] + [new_labels]

  files = _file_names(bucket, max_reference_frames)
  kernel = global_maps.GLOBAL_MATCHING_KERNEL
  global_maps.GLOBAL_MATCHING_KERNEL = "xla"
  try:
    serialized = {files["start"]: onnx_graph.to_onnx(
        start, [frame, labels], name=f"start_{bucket.name}", input_names=["frame", "given_labels"],
        output_names=OUTPUTS).SerializeToString()}
    embedding, stride4_labels, probs = jax.eval_shape(start, frame, labels)
    for reference_frames, file_name in files["steps"].items():
      stacked = int(reference_frames)
      arguments = [
          jax.ShapeDtypeStruct((stacked * embedding.shape[0],) + embedding.shape[1:],
                               embedding.dtype),
          jax.ShapeDtypeStruct((stacked * stride4_labels.shape[0],) + stride4_labels.shape[1:],
                               stride4_labels.dtype),
          embedding, stride4_labels, probs, frame, labels,
          jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32)]
      serialized[file_name] = onnx_graph.to_onnx(
          step, arguments, name=f"step_{bucket.name}_r{reference_frames}",
          input_names=STATE_INPUTS + FRAME_INPUTS,
          output_names=OUTPUTS + ("labels",)).SerializeToString()
  finally:
    global_maps.GLOBAL_MATCHING_KERNEL = kernel
  return serialized


def export(config: ml_collections.ConfigDict, workdir: str,
           export_dir: Optional[str] = None) -> epath.Path:
  """Writes the ONNX models of the latest checkpoint in `<workdir>/checkpoints`.

  Args:
    config: the run's config (`export.buckets`, `export.max_reference_frames`).
    workdir: the training workdir, locked while exporting.
    export_dir: destination folder (default `<workdir>/export_onnx`); replaced if it exists.

  Returns:
    The folder.

  Raises:
    ValueError: a bad `config.export` value, a memory model (STM, RDE), or jax2onnx is not
      installed (the message names config.export.format and how to install it).
    workdir_lock.WorkdirLockedError, integrity.IntegrityError: as `export.export`.
  """
  buckets = stablehlo_export.export_buckets(config)
  if config.model.head in MEMORY_HEADS:
    raise ValueError(f"config.model.head={config.model.head!r}: the ONNX export covers the "
                     f"FEELVOS family (heads 'feelvos', 'nearest_neighbor'); export memory "
                     f"models with --config.export.format=stablehlo")
  if importlib.util.find_spec("jax2onnx") is None:
    raise ValueError("config.export.format='onnx' needs jax2onnx, which is not installed: "
                     "pip install --no-deps jax2onnx==0.17.1 (README, \"Export\")")
  with workdir_lock.hold(workdir, "export"):
    model = models.build_model(config.model)
    variables, step = checkpointing.restore_variables(config, workdir, model)
    destination = epath.Path(export_dir or epath.Path(workdir) / "export_onnx")
    write(destination, config, model, variables, step, buckets)
  logging.info("Wrote the ONNX models of step %d to %s", step, destination)
  return destination


def write(destination: epath.PathLike, config: ml_collections.ConfigDict, model: Any,
          variables: Any, step: int, buckets: Sequence[stablehlo_export.Bucket]) -> None:
  """Writes the models of `buckets` with `variables`, config.json and the manifest as a bundle
  at `destination` (`bundle.write`: replaced whole if it exists, never left half-written)."""
  def fill(folder: epath.Path) -> None:
    for bucket in console.progress(buckets, desc="Exporting ONNX buckets", unit="bucket"):
      files = export_models(model, variables, bucket, config.export.max_reference_frames)
      for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    (folder / "config.json").write_text(config.to_json_best_effort(indent=2))

  entries = {
      "format": bundle.ONNX.format, "checkpoint_step": int(step), "opset": onnx_graph.OPSET,
      "max_reference_frames": int(config.export.max_reference_frames),
      "buckets": [dict(dataclasses.asdict(b),
                       **_file_names(b, config.export.max_reference_frames))
                  for b in buckets],
  }
  bundle.write(destination, entries, fill)


class OnnxModel:
  """ONNX models loaded into onnxruntime: `propagate` runs videos with them."""

  def __init__(self, path: epath.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """Reads the folder `export` wrote after verifying its files against the manifest.

    Raises:
      FileNotFoundError: no manifest.json in `path`.
      ValueError: another format.
      integrity.IntegrityError: a file is missing, truncated or changed (named).
    """
    self.path = bundle.resolve(path)
    manifest = bundle.read_manifest(self.path, bundle.ONNX)
    self.manifest = manifest
    self.config = ml_collections.ConfigDict(integrity.read_json(self.path / "config.json"))
    self.checkpoint_step = manifest["checkpoint_step"]
    fields = [field.name for field in dataclasses.fields(stablehlo_export.Bucket)]
    self.buckets = [stablehlo_export.Bucket(**{name: entry[name] for name in fields})
                    for entry in manifest["buckets"]]
    self._files = {entry_bucket.name: {"start": entry["start"], "steps": entry["steps"]}
                   for entry_bucket, entry in zip(self.buckets, manifest["buckets"])}
    self.providers = list(providers)
    self._sessions = {}

  def _session(self, file_name: str) -> Any:
    if file_name not in self._sessions:
      import onnxruntime  # pylint: disable=g-import-not-at-top (only running needs it)
      self._sessions[file_name] = onnxruntime.InferenceSession(
          str(self.path / file_name), providers=self.providers)
    return self._sessions[file_name]

  def bucket_for(self, height: int, width: int, num_objects: int) -> stablehlo_export.Bucket:
    """The smallest bucket holding the video, as `export.ExportedModel.bucket_for`."""
    fitting = [b for b in self.buckets
               if b.height >= height and b.width >= width and b.objects >= num_objects]
    if not fitting:
      raise ValueError(
          f"no exported bucket holds a {height}x{width} video with {num_objects} objects; "
          f"buckets (height, width, objects): "
          f"{[(b.height, b.width, b.objects) for b in self.buckets]} (config.export.buckets)")
    return min(fitting, key=lambda b: (b.height * b.width, b.objects))

  def plan(self, height: int, width: int, num_objects: int) -> host_loop.Plan:
    """The Plan of a video (`host_loop.run_video`) whose functions run the ONNX models."""
    bucket = self.bucket_for(height, width, num_objects)
    files = self._files[bucket.name]
    h = bucket.height // FEATURE_STRIDE

    def start(frame, given_labels):
      embedding, labels, probs = self._session(files["start"]).run(
          None, {"frame": np.asarray(frame, np.uint8),
                 "given_labels": np.asarray(given_labels, np.int32)})
      return dict(zip(STATE_INPUTS, (embedding, labels, embedding, labels, probs)))

    def step(state, frame, paste_labels, num_objects, valid_size):
      reference_frames = str(state["reference_labels"].shape[0] // h)
      if reference_frames not in files["steps"]:
        raise ValueError(
            f"the video needs {reference_frames} reference frames (objects first appearing "
            f"in that many frames) but the models were exported with at most "
            f"{len(files['steps'])} (config.export.max_reference_frames)")
      feed = {name: np.asarray(state[name]) for name in STATE_INPUTS}
      feed.update(frame=np.asarray(frame, np.uint8),
                  paste_labels=np.asarray(paste_labels, np.int32),
                  num_objects=np.asarray(num_objects, np.int32),
                  valid_size=np.asarray(valid_size, np.int32))
      embedding, labels, probs, full_labels = self._session(files["steps"][reference_frames]).run(
          None, feed)
      new_state = dict(state, previous_embedding=embedding, previous_labels=labels,
                       previous_probs=probs)
      return new_state, full_labels

    return host_loop.Plan(height=bucket.height, width=bucket.width,
                          objects_per_chunk=bucket.objects_per_chunk,
                          num_chunks=bucket.num_chunks, start=start, step=step)

  def propagate(self, frames: Iterable[np.ndarray], annotations: Mapping[int, np.ndarray],
                first_frame: Sequence[int], object_ids: Optional[Sequence[int]] = None, *,
                name: str = "video") -> Iterator[np.ndarray]:
    """Labels [H, W] int32 of every frame, as `export.ExportedModel.propagate`."""
    return host_loop.run_video(self.plan, frames, annotations, first_frame, object_ids,
                               name=name)


def load(path: epath.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)
         ) -> OnnxModel:
  """Loads the ONNX models that `export` wrote to `path` (raises as `OnnxModel`)."""
  return OnnxModel(path, providers)
