"""Training checkpoints with Orbax: the last few plus the best by validation J&F, config beside;
and the SIGTERM watch that makes a preempted run save and stop.

Layout: `<workdir>/checkpoints/<step>/{state,config,checksums.json}`; `config` is the run's
ConfigDict as JSON, `checksums.json` the size and SHA-256 of every file of `state` and `config`
(written before Orbax renames the step's temporary folder into place, so a finalized step always
has it). Restores verify them first: a missing, truncated or changed file raises
`integrity.IntegrityError` naming it. Saves are asynchronous; `close()` waits for them. A
workdir whose checkpoint was written by an incompatible config is refused before anything is
compiled or written.
"""
import errno
import functools
import json
import os
import signal
import threading
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from feelvos_jax import config_checks
from feelvos_jax import models
from feelvos_jax.training import integrity

BEST_METRIC = "J&F-Mean"
"""Validation metric (higher is better) that picks the best checkpoint."""

CHECKSUMS = "checksums.json"
"""File of a checkpoint's step folder: {"files": {path in the step folder: {size, sha256}}}."""

_ITEMS = ("state", "config")
"""The Orbax items of a checkpoint, one folder each in the step folder."""

# Model knobs that change neither the parameters nor what they mean: a run may resume with others.
_RUNTIME_MODEL_KEYS = ("dtype", "matching_chunk_size", "pretrained", "pretrained_min_fraction",
                       "pretrained_allow_partial", "memory_frames", "memory_every")


def _json_round_trip(value: Any) -> Any:
  """What `value` reads back as from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def _differences(saved: Any, current: Any, prefix: str) -> list[str]:
  """`prefix.key: checkpoint X, config Y` for every differing leaf of two nested dicts."""
  if isinstance(saved, dict) and isinstance(current, dict):
    lines = []
    for key in sorted(set(saved) | set(current)):
      lines += _differences(saved.get(key, "<missing>"), current.get(key, "<missing>"),
                            f"{prefix}.{key}")
    return lines
  return [] if saved == current else [f"{prefix}: checkpoint {saved!r}, config {current!r}"]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def verify_checkpoint(directory: epath.Path, step: int, steps: list[int]) -> None:
  """Checks the files of checkpoint `step` in `directory` against its `CHECKSUMS`.

  A checkpoint without `CHECKSUMS` (written by a version before checksums) is left unverified,
  with a warning.

  Args:
    directory: the checkpoints folder (`<workdir>/checkpoints`).
    step: the checkpoint to check (its folder is `<directory>/<step>`).
    steps: all checkpoint steps in `directory`, to name the one to fall back to.

  Raises:
    integrity.IntegrityError: `CHECKSUMS` cannot be read, or a file it lists is missing or has
      another size or SHA-256. The message names the files and says which folder to delete to
      fall back to the previous checkpoint; nothing is deleted.
  """
  folder = directory / str(step)
  record_path = folder / CHECKSUMS
  if not record_path.exists():
    logging.warning("Checkpoint %s has no %s (written before checkpoints carried checksums): "
                    "restoring it unverified.", folder, CHECKSUMS)
    return
  try:
    record = integrity.read_json(record_path)
  except integrity.IntegrityError as error:
    found = [str(error)]
  else:
    files = record.get("files") if isinstance(record, dict) else None
    found = (integrity.problems(folder, files, CHECKSUMS) if isinstance(files, dict) and files
             else [f"{record_path} lists no files"])
  if found:
    previous = max((s for s in steps if s < step), default=None)
    fallback = (f"to fall back to checkpoint step {previous}, delete {folder}"
                if previous is not None else "there is no older checkpoint to fall back to")
    raise integrity.IntegrityError(
        f"Checkpoint step {step} in {directory} is corrupted: {'; '.join(found)}. Nothing was "
        f"changed; {fallback}.")


class DiskFullError(OSError):
  """A save ran out of disk space (or quota). The message is one line naming the step, the
  checkpoints folder, the checkpoints kept (the earlier ones are untouched) and the unfinished
  temporary folder, which Orbax ignores when it restores."""


def checkpoint_directory(workdir: str) -> epath.Path:
  """`<workdir>/checkpoints`; a local workdir given relative to the current directory is made
  absolute (Orbax refuses relative checkpoint paths), a URL (gs://...) is kept as given."""
  workdir = os.fspath(workdir)
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
  return epath.Path(workdir) / "checkpoints"


class Checkpointer:
  """Saves and restores the TrainState of one workdir.

  Keeps the `keep` most recent checkpoints plus the one with the highest `BEST_METRIC` among
  those saved with metrics. Every step it saves carries `CHECKSUMS`; `saved_config`,
  `check_compatible` and `restore` verify a step's files (once per step) before reading them.
  """

  def __init__(self, workdir: str, *, keep: int):
    keep = config_checks.check_int(keep, "config.keep_checkpoints", 1)
    self.directory = checkpoint_directory(workdir)
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
        enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums))
    self._saving_step: Optional[int] = None
    self._verified: set[int] = set()
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def _write_checksums(self) -> None:
    """Writes `CHECKSUMS` into the temporary folder of the step being saved.

    Orbax calls this on the primary process once every file of the step is written and before
    it renames the temporary folder to `<step>` (the commit), so a kill at any point leaves
    either an uncommitted folder (ignored by Orbax) or a step with its checksums.
    """
    step = self._saving_step
    folders = [name for name in ocp.path.step.tmp_checkpoints(self.directory)
               if name.split(".")[0] == str(step)]
    if len(folders) != 1:
      raise RuntimeError(f"Cannot write {CHECKSUMS} of checkpoint step {step}: expected one "
                         f"temporary folder of it in {self.directory}, found {folders}.")
    folder = self.directory / folders[0]
    files = {f"{item}/{name}": entry for item in _ITEMS
             for name, entry in integrity.file_checksums(folder / item).items()}
    (folder / CHECKSUMS).write_text(json.dumps({"files": files}, indent=1))

  def verify(self, step: int) -> None:
    """`verify_checkpoint` of `step` (once per step and Checkpointer)."""
    if step not in self._verified:
      verify_checkpoint(self.directory, step, self.all_steps())
      self._verified.add(step)

  def latest_step(self) -> Optional[int]:
    """The newest saved step, None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved (kept) step."""
    return list(self._manager.all_steps())

  def saved_config(self, step: int) -> dict[str, Any]:
    """The config JSON saved with checkpoint `step` (verified first, see `verify`)."""
    self.verify(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored.config

  def check_compatible(self, step: int, config: ml_collections.ConfigDict,
                       abstract_state: Any) -> None:
    """Raises ValueError if checkpoint `step` cannot be resumed by `config` / `abstract_state`.

    Compared: the model section of the saved config (except runtime-only knobs), the optimizer
    name (its state must match), and the shapes of `params` and `batch_stats`. Raises
    `integrity.IntegrityError` first if the step's files do not match their checksums.
    """
    saved = self.saved_config(step)
    current = _json_round_trip(config.to_dict())
    saved_model = {k: v for k, v in saved.get("model", {}).items() if k not in _RUNTIME_MODEL_KEYS}
    current_model = {k: v for k, v in current["model"].items() if k not in _RUNTIME_MODEL_KEYS}
    problems = _differences(saved_model, current_model, "config.model")
    problems += _differences(saved.get("optimizer", {}).get("name"),
                             current["optimizer"]["name"], "config.optimizer.name")
    metadata = self._manager.item_metadata(step)["state"].tree
    for collection in ("params", "batch_stats"):
      saved_shapes = _shapes(metadata.get(collection, {}))
      current_shapes = _shapes(getattr(abstract_state, collection))
      for name in sorted(set(saved_shapes) | set(current_shapes)):
        if saved_shapes.get(name) != current_shapes.get(name):
          problems.append(f"{collection}{name}: checkpoint shape {saved_shapes.get(name)}, "
                          f"model shape {current_shapes.get(name)}")
    if problems:
      raise ValueError(
          f"The checkpoint at step {step} in {self.directory} was written by an incompatible "
          f"config; use another --workdir (nothing was changed). Differences:\n  "
          + "\n  ".join(problems))

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores checkpoint `step` into `abstract_state` (ShapeDtypeStructs with shardings).

    Raises:
      integrity.IntegrityError: a file of the step does not match its checksums (see `verify`).
    """
    self.verify(step)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored.state

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           metrics: Optional[Mapping[str, float]] = None) -> None:
    """Starts an asynchronous save of `state` (and the config JSON) as checkpoint `step`.

    `metrics` (validation results holding `BEST_METRIC`) make it a candidate for the best.
    """
    if metrics is not None:
      metrics = {BEST_METRIC: float(metrics[BEST_METRIC])}
    self.wait_until_finished()  # The checksums callback reads `_saving_step`.
    self._saving_step = step
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(_json_round_trip(config.to_dict()))),
          metrics=metrics, force=True)
    except OSError as error:
      self._raise_if_disk_full(error)
      raise

  def wait_until_finished(self) -> None:
    """Blocks until the asynchronous saves have been written.

    Raises:
      DiskFullError: the disk (or quota) filled up during a save (see `DiskFullError`).
    """
    try:
      self._manager.wait_until_finished()
    except OSError as error:
      self._raise_if_disk_full(error)
      raise

  def _raise_if_disk_full(self, error: OSError) -> None:
    """`DiskFullError` from `error` if it reports a full disk or quota; otherwise returns."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
      return
    step = self._saving_step
    self._manager.reload()  # Its list of steps still holds the failed one.
    kept = self.all_steps()
    partial = [os.fspath(self.directory / name)
               for name in ocp.path.step.tmp_checkpoints(self.directory)
               if name.split(".")[0] == str(step)]
    resume = f"run again to resume from step {max(kept)}" if kept else "run again"
    raise DiskFullError(
        f"no space left on the device writing checkpoint step {step} in {self.directory} "
        f"({error.strerror}: {error.filename}); the earlier checkpoints {kept} are kept: free "
        f"space (the unfinished {', '.join(partial) or 'step'} can go), then {resume}"
    ) from error

  def close(self) -> None:
    """Waits for pending saves and releases the manager (`DiskFullError` as in
    `wait_until_finished`)."""
    try:
      self.wait_until_finished()
    finally:
      self._manager.close()


class PreemptionWatcher:
  """Tells the training loop when to save and stop after a SIGTERM.

  One process: a SIGTERM handler sets a flag (the previous handler is restored by `close`).
  Several processes: JAX's distributed runtime catches the preemption notice and agrees on a
  step every process reaches (`multihost_utils.reached_preemption_sync_point`), so all of them
  save the same step.
  """

  def __init__(self):
    self._signalled = False
    self._multiprocess = jax.process_count() > 1
    self._previous_handler = None
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    logging.warning("Received signal %d: saving a checkpoint after this step.", signum)
    self._signalled = True

  def should_stop(self, step: int) -> bool:
    """Called once per step by every process, with the step just completed."""
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    """Restores the SIGTERM handler that was installed before this watcher."""
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None


def _variable_shapes(model: nn.Module) -> Any:
  """ShapeDtypeStructs of the model's {'params', 'batch_stats'} (nothing is computed)."""
  key = jax.random.PRNGKey(0)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        {"params": key, "matching": key}, *models.example_inputs(model))


def _check_same_head(manager: ocp.CheckpointManager, step: int, directory: epath.Path,
                     config: ml_collections.ConfigDict) -> None:
  """ValueError naming config.model.head when checkpoint `step` was trained as another model
  (an RDE checkpoint holds every STM variable, so the shapes alone would not tell)."""
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  saved_head = (saved or {}).get("model", {}).get("head", "feelvos")
  if saved_head != config.model.head:
    raise ValueError(f"checkpoint step {step} in {directory} was trained with "
                     f"config.model.head={saved_head!r}, not {config.model.head!r}: evaluate "
                     f"it with --config.model.head={saved_head}")


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

  Raises:
    FileNotFoundError: no checkpoint in `<workdir>/checkpoints`.
    integrity.IntegrityError: a file of the checkpoint does not match its checksums.
    ValueError: the checkpoint's variables do not fit `model`.
  """
  directory = checkpoint_directory(workdir)
  manager = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                "config": ocp.JsonCheckpointHandler()})
  try:
    if step is None:
      step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory} (train first: main.py "
                              f"--mode=train --workdir={workdir})")
    verify_checkpoint(directory, step, list(manager.all_steps()))
    _check_same_head(manager, step, directory, config)
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
