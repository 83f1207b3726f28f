"""Inference bundles of MaskTrack R-CNN: weights, config and the StableHLO per-frame detection.

`export(config, workdir)` (what `main.py --mode=export` runs for a VIS config) reads the latest
checkpoint of `<workdir>/checkpoints` and writes (by default to `<workdir>/export`), through
`inference.bundle.write` (never half-written, a previous bundle replaced whole):

  manifest.json   format (`bundle.VIS`), checkpoint step, platforms, max_size, the function
                  file of each padded frame shape, the size and SHA-256 of every other file
  config.json     the run's config (its `inference` section holds the tracker's weights)
  variables/      {'params', 'batch_stats'} (orbax StandardSave; no optimizer state)
  functions/      detect_<Hp>x<Wp>.bin: `inference.frame_detections`, `jax.export`-serialized:
                  (variables, image [1, Hp, Wp, 3] float32, image_size [2] int32) -> boxes
                  [D, 4], scores [D], labels [D], valid [D], embeddings [D, E], masks
                  [D, 28, 28]; one per shape of `inference.padded_shapes(max_size)` (the
                  landscape padding, and the square that portrait frames use)

`load(path)` verifies every file against the manifest, then returns an `ExportedSegmenter`: an
`inference.VideoSegmenter` whose detection is the deserialized function (no Flax model, no
training state), with the same tracker and mask pasting as in-process inference, so its
results file is the in-process one.
"""
import functools
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feelvos_jax.inference import bundle
from feelvos_jax.training import integrity
from feelvos_jax.training import workdir_lock
from feelvos_jax.vis import inference
from feelvos_jax.vis import train as vis_train


def _function_file(shape: tuple[int, int]) -> str:
  return f"detect_{shape[0]}x{shape[1]}.bin"


def export_functions(model: Any, variables: Any, max_size: tuple[int, int],
                     config: inference.InferenceConfig,
                     platforms: tuple[str, ...]) -> dict[str, bytes]:
  """Serialized `frame_detections` of every padded shape of `max_size`: file name -> bytes."""
  abstract_variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  detect = jax.jit(functools.partial(inference.frame_detections, model, config=config))
  image_size = jax.ShapeDtypeStruct((2,), jnp.int32)
  functions = {}
  for shape in inference.padded_shapes(max_size):
    image = jax.ShapeDtypeStruct((1,) + shape + (3,), jnp.float32)
    functions[_function_file(shape)] = jax.export.export(detect, platforms=platforms)(
        abstract_variables, image, image_size).serialize()
  return functions


def export(config: ml_collections.ConfigDict, workdir: str,
           export_dir: Optional[str] = None) -> epath.Path:
  """Writes the VIS inference bundle of the latest checkpoint in `<workdir>/checkpoints`.

  Args:
    config: the run's VIS config (`export.platforms`, `dataset.max_size`, `inference`).
    workdir: the training workdir, locked while exporting (`workdir_lock.hold`).
    export_dir: destination folder (default `<workdir>/export`); replaced if it exists.

  Returns:
    The bundle's folder.

  Raises:
    ValueError: config.export.platforms empty (before anything is read or written), or a
      checkpoint that does not fit `config`.
    FileNotFoundError: no checkpoint in the workdir.
    workdir_lock.WorkdirLockedError: another run holds the workdir.
    integrity.IntegrityError: the checkpoint's files do not match their checksums.
  """
  platforms = bundle.export_platforms(config)
  max_size = tuple(config.dataset.max_size)
  with workdir_lock.hold(workdir, "export"):
    model = vis_train.build_model(config)
    variables, step = vis_train.restore_variables(config, workdir, model)
    functions = export_functions(model, variables, max_size, vis_train.inference_config(config),
                                 platforms)
    entries = {
        "format": bundle.VIS.format,
        "checkpoint_step": int(step),
        "jax_version": jax.__version__,
        "platforms": list(platforms),
        "max_size": list(max_size),
        "functions": {f"{h}x{w}": _function_file((h, w))
                      for h, w in inference.padded_shapes(max_size)},
    }

    destination = bundle.write(
        export_dir or epath.Path(workdir) / "export", entries,
        lambda folder: bundle.write_compiled(folder, config, variables, functions))
  logging.info("Wrote the VIS inference bundle of step %d to %s", step, destination)
  return destination


class ExportedSegmenter(inference.VideoSegmenter):
  """A VIS bundle loaded for inference: `segment(frames, video_id)` as
  `inference.VideoSegmenter.segment`, with the bundle's detection functions."""

  def __init__(self, path: epath.PathLike):
    """Reads the bundle at `path` after verifying its files.

    Raises:
      FileNotFoundError: no bundle at `path`.
      ValueError: a bundle of another format or kind (the message names its loader).
      integrity.IntegrityError: a file of the bundle is missing, truncated, changed or cannot
        be parsed; the message names it.
    """
    self.path = bundle.resolve(path)
    self.manifest = bundle.read_manifest(self.path, bundle.VIS)
    self.config = ml_collections.ConfigDict(integrity.read_json(self.path / "config.json"))
    self.checkpoint_step = self.manifest["checkpoint_step"]
    self.variables = bundle.read_variables(self.path)
    self._functions = {}
    super().__init__(self._detect_exported, tuple(self.manifest["max_size"]),
                     vis_train.inference_config(self.config))

  def _detect_exported(self, image: np.ndarray, image_size: np.ndarray) -> dict[str, Any]:
    shape = f"{image.shape[1]}x{image.shape[2]}"
    if shape not in self.manifest["functions"]:
      raise ValueError(f"{self.path}: no detection function for {shape} frames (exported: "
                       f"{sorted(self.manifest['functions'])})")
    if shape not in self._functions:
      self._functions[shape] = bundle.read_function(self.path,
                                                        self.manifest["functions"][shape])
    return self._functions[shape](self.variables, image, image_size)


def load(path: epath.PathLike) -> ExportedSegmenter:
  """Loads the bundle that `export` wrote to `path` (raises as `ExportedSegmenter`)."""
  return ExportedSegmenter(path)
