"""main.py end to end in subprocesses: command-line overrides, bad overrides, two processes.

The runs use the synthetic `tiny` dataset (generated once per module into a temporary TFDS
data dir) or the in-memory videos of tests/testing.py, the tiny backbone and 32x32 crops. They
check flags, files and control flow, never numerics, so the subprocesses compile with
`jax_disable_most_optimizations` (about half the compile time of the train step), and they share
the session's compilation cache (tests/conftest.py) through the environment.
"""
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from datasets import registry
from feelvos_jax.training import checkpointing
from tests import testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OVERRIDES = [
    "--config.batch_size=2", "--config.num_train_steps=2", "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=1", "--config.eval_every_steps=0",
    "--config.optimizer.warmup_steps=1", "--config.dataset.crop_size=(32, 32)",
    "--config.dataset.name=synthetic_vos/tiny", "--config.dataset.min_object_pixels=1",
    "--config.dataset.prefetch=0", "--config.model.decoder_channels=8",
    "--config.model.embedding_dim=4", "--config.model.max_objects=2", "--config.model.window=2",
    "--config.model.max_reference_pixels=16", "--config.model.head_channels=8",
    "--config.model.head_kernel_size=3", "--config.model.head_num_layers=1",
]


def _environment(num_devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  env["PYTHONPATH"] = os.pathsep.join([REPOSITORY] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _run_main(args, num_devices=1, timeout=600):
  return subprocess.run([sys.executable, os.path.join(REPOSITORY, "main.py")] + args,
                        cwd=REPOSITORY, env=_environment(num_devices), capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  """A TFDS data dir holding synthetic_vos/tiny, generated once."""
  data_dir = tmp_path_factory.mktemp("tfds")
  config = testing.tiny_config().dataset
  config.name, config.data_dir = "synthetic_vos/tiny", str(data_dir)
  registry.load_builder(config)
  return str(data_dir)


@pytest.mark.slow
def test_command_line_overrides_take_effect(tmp_path, tiny_data_dir):
  workdir = tmp_path / "run"
  result = _run_main(["--config=configs/synthetic.py", f"--workdir={workdir}", "--mode=train",
                      f"--config.dataset.data_dir={tiny_data_dir}", "--config.seed=7"]
                     + TINY_OVERRIDES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Process 0 of 1; 1 local / 1 global devices" in result.stderr
  assert "step 2/2" in result.stderr
  checkpointer = checkpointing.Checkpointer(str(workdir), keep=3)
  assert checkpointer.all_steps() == [1, 2]
  saved = checkpointer.saved_config(2)
  checkpointer.close()
  assert (saved["seed"], saved["num_train_steps"], saved["model"]["embedding_dim"]) == (7, 2, 4)
  assert saved["dataset"]["crop_size"] == [32, 32]
  assert any(path.name.startswith("events.out.tfevents") for path in workdir.iterdir())


def test_bad_override_fails_before_training(tmp_path):
  result = _run_main(["--config=configs/synthetic.py", f"--workdir={tmp_path}",
                      "--config.batch_size=eight"], timeout=300)
  assert result.returncode != 0
  assert "batch_size" in result.stderr
  assert not list(tmp_path.iterdir())


_TWO_PROCESS_DRIVER = textwrap.dedent("""\
    import os, signal, sys
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    import numpy as np
    from feelvos_jax.data import input_pipeline
    from feelvos_jax.training import train
    from tests import testing
    train._load_videos = lambda dataset_config, split, decoders=None: testing.fake_videos()
    original = input_pipeline.create_train_dataset
    def terminate_process_0_during_step_2(*args, **kwargs):
      for index, batch in enumerate(original(*args, **kwargs)):
        if index == 1 and process_id == 0:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch
    input_pipeline.create_train_dataset = terminate_process_0_during_step_2
    config = testing.tiny_config()
    config.batch_size, config.num_train_steps = 2, 20
    state = train.train_and_evaluate(config, workdir, evaluate=False)
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
            jax.tree_util.tree_flatten_with_path(state.params)[0]}
    np.savez(os.path.join(workdir, f"params_{process_id}.npz"), step=int(state.step), **flat)
    """)


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_agree_and_stop_together_on_sigterm(tmp_path):
  """Two CPU processes of one device each: one global batch split between them; a SIGTERM to
  process 0 makes both save the same step (JAX's preemption sync) and return."""
  port = _free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-c", _TWO_PROCESS_DRIVER, str(index), str(port), str(tmp_path)],
      cwd=REPOSITORY, env=_environment(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for index in range(2)]
  outputs = [process.communicate(timeout=600)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  first, second = (np.load(tmp_path / f"params_{index}.npz") for index in range(2))
  stop_step = int(first["step"])
  assert 2 <= stop_step < 20 and int(second["step"]) == stop_step
  for name in first.files:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.latest_step() == stop_step
  checkpointer.close()
