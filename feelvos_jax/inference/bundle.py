"""Bundle folders (StableHLO and ONNX inference bundles, VIS bundles): written whole or not at
all, verified before anything in them is read.

  write(destination, entries, fill) -> destination
      `fill(folder)` writes the bundle's files into a new temporary folder beside
      `destination`; then manifest.json: `entries` (format, ...), the size and SHA-256 of every
      other file ("files") and the manifest's own checksum; then the folder is renamed into
      place. A bundle already at `destination` is renamed aside first (`.<name>.old-*`) and
      deleted after, with whatever interrupted writes left beside it. A crash never leaves a
      half bundle at `destination`; a crash between the two renames leaves the previous one
      aside, which `resolve` then finds.
  resolve(path) -> folder
      `path`, or the previous bundle left aside when `path` is missing.
  read_manifest(folder, kind) -> manifest
      The manifest, once it and every file it lists are verified against each other.

`KINDS` names what each format is and how to write one, for the errors.

The StableHLO bundles (VOS and VIS) hold the same three things, written by `write_compiled`
and read by `read_variables` / `read_function`: `config.json`, `variables/` (orbax
StandardSave of {'params', 'batch_stats'}) and `functions/` (`jax.export`-serialized).
`export_platforms(config)` is their checked `config.export.platforms`.
"""
import dataclasses
import hashlib
import json
import shutil
from typing import Any, Callable, Mapping
import uuid

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from feelvos_jax.training import integrity

MANIFEST = "manifest.json"
"""The file a loader reads first: format, contents and the checksums of the others."""


@dataclasses.dataclass(frozen=True)
class Kind:
  """One bundle format.

  Attributes:
    format: the manifest's "format" entry.
    name: what the folder holds, with its article ("an inference bundle").
    writer: the command that writes one, for the errors.
    loader: the function that loads one, for the errors.
  """
  format: str
  name: str
  writer: str
  loader: str


VOS = Kind("feelvos_jax.export/2", "an inference bundle", "main.py --mode=export",
           "feelvos_jax.inference.export.load")
"""StableHLO bundles of VOS models (2: with checksums)."""

ONNX = Kind("feelvos_jax.onnx/1", "ONNX models",
            "main.py --mode=export --config.export.format=onnx",
            "feelvos_jax.inference.onnx_export.load")
"""ONNX models of VOS models."""

VIS = Kind("feelvos_jax.vis_export/1", "a video instance segmentation bundle",
           "main.py --mode=export with a VIS config", "feelvos_jax.vis.export.load")
"""StableHLO bundles of MaskTrack R-CNN."""

KINDS = {kind.format: kind for kind in (VOS, ONNX, VIS)}
"""Every format this version writes, by its manifest entry."""


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
  """SHA-256 of the manifest's canonical JSON without its own "checksum" entry."""
  content = {key: value for key, value in manifest.items() if key != "checksum"}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write(destination: epath.PathLike, entries: Mapping[str, Any],
          fill: Callable[[epath.Path], None]) -> epath.Path:
  """Writes a bundle at `destination` (module docstring); returns it as an epath.Path.

  Args:
    destination: the bundle's folder; replaced if it exists; its parent is created.
    entries: the manifest's entries (at least "format"), JSON-serialisable.
    fill: writes the bundle's files into the folder it is given (it exists and is empty).
  """
  destination = epath.Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  temporary = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex}"
  try:
    temporary.mkdir()
    fill(temporary)
    manifest = dict(entries, files=integrity.file_checksums(temporary))
    manifest["checksum"] = manifest_checksum(manifest)
    (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if destination.exists():
      destination.rename(destination.parent / f".{destination.name}.old-{uuid.uuid4().hex}")
    temporary.rename(destination)
    for pattern in (f".{destination.name}.old-*", f".{destination.name}.tmp-*"):
      for leftover in destination.parent.glob(pattern):
        shutil.rmtree(leftover)
  finally:
    if temporary.exists():
      shutil.rmtree(temporary)
  return destination


def resolve(path: epath.PathLike) -> epath.Path:
  """`path`, or the previous bundle beside it when a crash stopped a write's swap (`path` is
  missing and exactly one `.<name>.old-*` folder is there)."""
  path = epath.Path(path)
  if path.exists() or not path.parent.exists():
    return path
  previous = list(path.parent.glob(f".{path.name}.old-*"))
  if len(previous) != 1:
    return path
  logging.warning("%s is missing: an export stopped while replacing it. Loading the previous "
                  "bundle, left at %s; the next export writes a bundle to %s again.", path,
                  previous[0], path)
  return previous[0]


def read_manifest(folder: epath.Path, kind: Kind) -> dict[str, Any]:
  """The manifest of the `kind` bundle in `folder`, once it and every file it lists are
  verified.

  Raises:
    FileNotFoundError: `folder` has no manifest.json.
    ValueError: the manifest has another format: an older version of `kind` (export again)
      or another kind of bundle (the message names its loader).
    integrity.IntegrityError: manifest.json cannot be parsed or was edited, or a file it lists
      is missing or has another size or SHA-256; the message names the file.
  """
  again = f"export the checkpoint again ({kind.writer})"
  manifest_path = folder / MANIFEST
  if not manifest_path.exists():
    raise FileNotFoundError(f"{folder} is not {kind.name}: no {MANIFEST} ({kind.writer} "
                            f"writes one)")
  try:
    manifest = integrity.read_json(manifest_path)
  except integrity.IntegrityError as error:
    raise integrity.IntegrityError(f"{error}: {again}") from error
  if not isinstance(manifest, dict):
    raise integrity.IntegrityError(f"{manifest_path} holds a JSON {type(manifest).__name__}, "
                                   f"not the manifest's object")
  found = manifest.get("format")
  if found in KINDS and found != kind.format:
    other = KINDS[found]
    raise ValueError(f"{folder} holds {other.name}, not {kind.name}: load it with "
                     f"{other.loader}")
  if found != kind.format:
    raise ValueError(f"{manifest_path}: format {found!r}, this version reads "
                     f"{kind.format!r}: {again}")
  if manifest.get("checksum") != manifest_checksum(manifest):
    raise integrity.IntegrityError(f"{manifest_path} was changed after it was written (its "
                                   f"checksum does not match its content): {again}")
  problems = integrity.problems(folder, manifest["files"], MANIFEST)
  if problems:
    raise integrity.IntegrityError(f"{kind.name[0].upper()}{kind.name[1:]} {folder} is "
                                   f"damaged: {'; '.join(problems)}. Export the checkpoint "
                                   f"again.")
  return manifest


def export_platforms(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.export.platforms as a tuple; ValueError when it is empty."""
  platforms = tuple(config.export.platforms)
  if not platforms:
    raise ValueError("config.export.platforms is empty: name at least one, e.g. ('cpu',)")
  return platforms


def write_compiled(folder: epath.Path, config: ml_collections.ConfigDict, variables: Any,
                   functions: Mapping[str, bytes]) -> None:
  """Writes a StableHLO bundle's files into the new `folder`: `functions` (file name ->
  serialized bytes) into functions/, `variables` (a pytree of arrays) into variables/, the
  config as config.json (a `fill` for `write`)."""
  (folder / "functions").mkdir()
  for file_name, data in functions.items():
    (folder / "functions" / file_name).write_bytes(bytes(data))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(folder / "variables", variables)
  checkpointer.wait_until_finished()
  checkpointer.close()
  (folder / "config.json").write_text(config.to_json_best_effort(indent=2))


def read_variables(folder: epath.Path) -> Any:
  """The variables `write_compiled` wrote into `folder`, on the first device."""
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(folder / "variables").item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  variables = checkpointer.restore(folder / "variables", abstract)
  checkpointer.close()
  return variables


def read_function(folder: epath.Path, file_name: str) -> Any:
  """The jitted call of the `jax.export`-serialized function `folder`/functions/`file_name`."""
  exported = jax.export.deserialize(bytearray((folder / "functions" / file_name).read_bytes()))
  return jax.jit(exported.call)
