"""FEELVOS in JAX: train, evaluate or export from a config file.

  python main.py --config=configs/synthetic.py --workdir=/tmp/feelvos
  python main.py --config=configs/davis.py --config.batch_size=8 --workdir=DIR --mode=train

Several processes (one per host): pass --coordinator_address, --num_processes and --process_id,
or --distributed to let JAX detect the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes).
`--compilation_cache=DIR` (or $JAX_COMPILATION_CACHE_DIR) keeps compiled steps for later runs.

A repeated override replaces the earlier one, tuples included (`feelvos_jax.config_overrides`).
The log shows this project's lines (one per logged step, the validation table) and the
libraries' warnings; `--verbosity=1` adds every library's INFO log (`feelvos_jax.console`).
A user error (a bad flag or config value, a missing or bad file, a locked or incompatible
workdir, a full disk) ends the run with one line `error: <message>` on stderr, exit status 1;
`--verbosity=1` shows the traceback instead.
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from feelvos_jax import config_overrides
from feelvos_jax import console
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.inference import export
from feelvos_jax.inference import onnx_export
from feelvos_jax.training import train
from feelvos_jax.training import workdir_lock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train_and_evaluate",
                          ["train", "evaluate", "train_and_evaluate", "export"], "What to run.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "jax.distributed.initialize() with cluster auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Index of this process.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Folder of JAX's persistent compilation cache (jax_compilation_cache_dir; local or gs://): "
    "later runs reuse the compiled train, evaluation and export steps. Default: "
    "$JAX_COMPILATION_CACHE_DIR, which JAX reads itself; none if unset.")

EXPORT_FORMATS = {"stablehlo": export.export, "onnx": onnx_export.export}
"""config.export.format -> the exporter (`function(config, workdir)`)."""


def _export(config, workdir: str):
  if config.export.format not in EXPORT_FORMATS:
    raise ValueError(f"config.export.format={config.export.format!r}: one of "
                     f"{sorted(EXPORT_FORMATS)}")
  return EXPORT_FORMATS[config.export.format](config, workdir)


_DELEGATES = {"evaluate": split_evaluation.run_evaluation, "export": _export}
"""--mode=evaluate/export: `function(config, workdir)`."""

USER_ERRORS = (ValueError, OSError, FloatingPointError, workdir_lock.WorkdirLockedError)
"""What a user can fix: config values and files (ValueError; the messages name the key or
file), files and disks (OSError), a diverging run (FloatingPointError), a workdir held by another
run. Reported as one line unless --verbosity >= 1; anything else keeps its traceback."""


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a bad flag or override is one line `error: ...` (exit status 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(f"error: {error}")


def _run() -> None:
  if _CONFIG.value.get("task", "vos") == "vis":  # Video instance segmentation (configs/ytvis.py).
    from feelvos_jax.vis import export as vis_export  # pylint: disable=g-import-not-at-top
    from feelvos_jax.vis import train as vis_train  # pylint: disable=g-import-not-at-top
    if _MODE.value == "export":
      vis_export.export(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "evaluate":
      vis_train.evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      vis_train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                   evaluate=_MODE.value == "train_and_evaluate")
    return
  delegate = _DELEGATES.get(_MODE.value)
  if delegate is not None:
    delegate(_CONFIG.value, _WORKDIR.value)
  else:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                             evaluate=_MODE.value == "train_and_evaluate")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure_logging(flags.FLAGS.verbosity)
  if _COMPILATION_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE.value)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (after its log settings)
  tf.config.set_visible_devices([], "GPU")  # TF only feeds data; JAX owns the accelerators.
  if _COORDINATOR.value or _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("Process %d of %d; %d local / %d global devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  logging.info("Persistent compilation cache: %s",
               jax.config.jax_compilation_cache_dir or "none (--compilation_cache)")
  try:
    _run()
  except USER_ERRORS as error:
    if flags.FLAGS.verbosity >= 1:
      raise
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  config_overrides.replace_repeated_tuple_overrides()
  app.run(main, flags_parser=parse_flags)
