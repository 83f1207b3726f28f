"""Bad input to main.py: refused before anything is written, in one last line that names it.

In-process: the config checks of `train.validate_config` and the override parser of
`feelvos_jax.config_overrides`. In subprocesses (slow: each starts JAX and TensorFlow): what
main.py prints at the bottom of stderr for a user error, and the traceback behind --verbosity=1.
"""
import math
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from feelvos_jax import config_overrides
from feelvos_jax.training import train
from tests import testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("changes,message", [
    ({"dataset.crop_size": (12, 12)},
     "config.dataset.crop_size=(12, 12) must be at least 16 on each side: the backbone's output "
     "stride is config.model.output_stride=16"),
    ({"dataset.crop_size": (64, 6), "model.output_stride": 8},
     "config.dataset.crop_size=(64, 6) must be at least 8 on each side"),
    ({"dataset.crop_size": (16, 16), "dataset.min_object_pixels": 20},
     "config.dataset.crop_size=(16, 16) has 16 pixels at stride 4, fewer than "
     "config.dataset.min_object_pixels=20: every sample would be rejected and train on no "
     "object"),
    ({"dataset.crop_size": (32,)}, "config.dataset.crop_size must be a tuple of 2 ints"),
    ({"learning_rate": math.nan}, "config.learning_rate must be a finite number >= 0.0, got nan"),
    ({"learning_rate": math.inf}, "config.learning_rate must be a finite number >= 0.0, got inf"),
    ({"optimizer.end_learning_rate": math.nan},
     "config.optimizer.end_learning_rate must be a finite number >= 0.0, got nan"),
    ({"optimizer.name": "sgd", "optimizer.momentum": math.nan},
     "config.optimizer.momentum must be a finite number in [0.0, 1.0), got nan"),
    ({"optimizer.schedule": "poly", "optimizer.poly_power": math.inf},
     "config.optimizer.poly_power must be a finite number > 0.0, got inf"),
    ({"model.pretrained_min_fraction": 1.5},
     "config.model.pretrained_min_fraction must be a finite number in [0.0, 1.0], got 1.5"),
    ({"model.backbone": "vgg16"}, "config.model.backbone='vgg16' is not one of"),
])
def test_config_that_cannot_train_is_refused_naming_the_key(changes, message):
  config = testing.tiny_config()
  config.update_from_flattened_dict(changes)
  with pytest.raises(ValueError) as error:
    train.validate_config(config)
  assert str(error.value).startswith(message), str(error.value)


def _parse_config(argv):
  """The config that `--config=configs/synthetic.py` plus `argv` parse to, with the parser of
  main.py, in flags of its own."""
  argv = ["test", "--config=configs/synthetic.py"] + argv
  flag_values = flags.FlagValues()
  config_overrides.replace_repeated_tuple_overrides()
  config = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)
  flag_values(argv)
  return config.value


def test_repeated_overrides_replace_tuples_included(monkeypatch):
  monkeypatch.chdir(REPOSITORY)
  config = _parse_config(["--config.dataset.crop_size=(1,2)", "--config.dataset.crop_size=(4,7)",
                          "--config.model.local_windows=3", "--config.batch_size=2",
                          "--config.batch_size=4",
                          "--config.export.buckets=((128, 128, 5),)"])
  assert config.dataset.crop_size == (4, 7)  # Not (1, 2, 4, 7).
  assert config.model.local_windows == (3,)
  assert config.batch_size == 4
  assert config.export.buckets == ((128, 128, 5),)
  assert _parse_config([]).dataset.crop_size == (96, 96)


def _run_main(args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # Error paths only: no numerics.
  env["PYTHONPATH"] = os.pathsep.join([REPOSITORY] + [p for p in [env.get("PYTHONPATH")] if p])
  return subprocess.run([sys.executable, os.path.join(REPOSITORY, "main.py")] + args,
                        cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=timeout)


def _last_line(result):
  return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("args,last_line", [
    (["--config.dataset.crop_size=(64,64)", "--config.dataset.crop_size=(12,12)"],
     "error: config.dataset.crop_size=(12, 12) must be at least 16 on each side: the backbone's "
     "output stride is config.model.output_stride=16"),
    (["--config.learning_rate=nan"],
     "error: config.learning_rate must be a finite number >= 0.0, got nan"),
    (["--config.batch_size=eight"],
     "error: flag --config.batch_size=eight: invalid literal for int() with base 10: 'eight'"),
    (["--config.model.pretrained=missing_weights.npz", "--config.model.backbone=resnet50"],
     "error: config.model.pretrained='missing_weights.npz': no such file or checkpoint."),
])
def test_user_error_is_one_last_line_and_nothing_is_written(tmp_path, args, last_line):
  workdir = tmp_path / "run"
  result = _run_main(["--config=configs/synthetic.py", f"--workdir={workdir}"] + args)
  assert result.returncode == 1, result.stderr[-3000:]
  assert _last_line(result) == last_line
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_a_file_in_the_workdir_path_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = _run_main(["--config=configs/synthetic.py", f"--workdir={blocker / 'run'}",
                      "--config.num_train_steps=1"])
  assert result.returncode == 1
  assert _last_line(result).startswith("error: ") and str(blocker) in _last_line(result)


@pytest.mark.slow
def test_verbosity_1_shows_the_chained_traceback(tmp_path):
  result = _run_main(["--config=configs/synthetic.py", f"--workdir={tmp_path / 'run'}",
                      "--config.learning_rate=nan", "--verbosity=1"])
  assert result.returncode != 0
  assert "Traceback (most recent call last)" in result.stderr
  assert ("ValueError: config.learning_rate must be a finite number >= 0.0, got nan"
          in result.stderr)


@pytest.mark.slow
def test_weights_matching_nothing_stop_the_run_naming_the_file(tmp_path):
  weights = tmp_path / "unrelated.npz"
  np.savez(weights, **{"encoder.weight": np.zeros((8, 3, 3, 3), np.float32)})
  result = _run_main(["--config=configs/synthetic.py", f"--workdir={tmp_path / 'run'}",
                      "--config.model.backbone=resnet50", f"--config.model.pretrained={weights}",
                      "--config.model.decoder_channels=8", "--config.model.embedding_dim=4",
                      "--config.model.head_channels=8", "--config.model.head_num_layers=1",
                      "--config.batch_size=1"], timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  assert _last_line(result).startswith(
      f"error: config.model.pretrained={str(weights)!r} filled 0 of the 265 variables of the "
      "resnet50 backbone")
  assert _last_line(result).endswith("set --config.model.pretrained_allow_partial=True to load "
                                     "it anyway")
