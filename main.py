"""FEELVOS in JAX: train, evaluate or export from a config file.

  python main.py --config=configs/synthetic.py --workdir=/tmp/feelvos
  python main.py --config=configs/davis.py --config.batch_size=8 --workdir=DIR --mode=train

Several processes (one per host): pass --coordinator_address, --num_processes and --process_id,
or --distributed to let JAX detect the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes).
"""
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.inference import export
from feelvos_jax.training import train

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

_DELEGATES = {"evaluate": split_evaluation.run_evaluation, "export": export.export}
"""--mode=evaluate/export: `function(config, workdir)`."""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf.config.set_visible_devices([], "GPU")  # TF only feeds data; JAX owns the accelerators.
  delegate = _DELEGATES.get(_MODE.value)
  if _COORDINATOR.value or _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("Process %d of %d; %d local / %d global devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  if delegate is not None:
    delegate(_CONFIG.value, _WORKDIR.value)
  else:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                             evaluate=_MODE.value == "train_and_evaluate")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
