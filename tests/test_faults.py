"""Fault injection: two runs on one workdir, kill -9 during checkpoint writes and exports,
flipped, truncated and missing files in checkpoints and export bundles.

Every fault ends in an error whose last line names the file (or the lock and its holder), or in
a correct resume; never in silently wrong weights or lost checkpoints. The subprocess runs use
the in-memory videos and `testing.tiny_config` (training) or the checkpoint of `small_config`
(export), on 8 fake CPU devices as in-process.
"""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax import models
from feelvos_jax.data import input_pipeline
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.inference import export as export_lib
from feelvos_jax.training import checkpointing
from feelvos_jax.training import integrity
from feelvos_jax.training import optimizers
from feelvos_jax.training import train
from feelvos_jax.training import workdir_lock
from tests import testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flip(path, count, seed=0):
  """XORs `count` distinct bytes of the file at `path` with 0xFF."""
  data = bytearray(path.read_bytes())
  for offset in np.random.default_rng(seed).choice(len(data), count, replace=False):
    data[offset] ^= 0xFF
  path.write_bytes(bytes(data))


def _truncate(path):
  """Cuts the file at `path` to half its size."""
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _largest_file(folder):
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _last_line(error):
  return str(error).strip().splitlines()[-1]


def _dead_pid():
  """The pid of a process that has exited."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _write_lock(workdir, **holder):
  workdir.mkdir(parents=True, exist_ok=True)
  content = dict(host=socket.gethostname(), pid=os.getpid(), started="2030-01-01T00:00:00+00:00",
                 mode="train", command="main.py --workdir=elsewhere")
  content.update(holder)
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(content))


def _environment(unoptimized=False):
  """The drivers' environment; `unoptimized` compiles without XLA's optimizations (faster), for
  runs whose parameters are compared only with runs compiled the same way."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  if unoptimized:
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["PYTHONPATH"] = os.pathsep.join([REPOSITORY] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _start(driver, *args, unoptimized=False):
  return subprocess.Popen([sys.executable, "-c", driver] + [str(a) for a in args],
                          cwd=REPOSITORY, env=_environment(unoptimized), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


# --------------------------------------------------------------------------------------------
# The workdir lock.
# --------------------------------------------------------------------------------------------


def test_lock_holds_the_run_details_and_is_released(tmp_path):
  workdir = tmp_path / "run"
  with workdir_lock.hold(os.fspath(workdir), "export") as lock:
    holder = json.loads((workdir / ".lock").read_text())
    assert lock == workdir / ".lock"
  assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
  assert holder["mode"] == "export" and holder["started"].endswith("+00:00")
  assert holder["command"] == " ".join(sys.argv)
  assert sorted(p.name for p in workdir.iterdir()) == []


def test_lock_is_released_after_an_exception(tmp_path):
  with pytest.raises(RuntimeError, match="inside"):
    with workdir_lock.hold(os.fspath(tmp_path), "train"):
      raise RuntimeError("inside")
  assert not (tmp_path / ".lock").exists()


def test_second_holder_is_refused_with_the_holders_details(tmp_path):
  with workdir_lock.hold(os.fspath(tmp_path), "train"):
    with pytest.raises(workdir_lock.WorkdirLockedError) as error:
      with workdir_lock.hold(os.fspath(tmp_path), "evaluate"):
        pass
    assert (tmp_path / ".lock").exists()  # The refused run leaves the holder's lock alone.
  last = _last_line(error.value)
  assert f"{tmp_path / '.lock'} is held by pid {os.getpid()} on host {socket.gethostname()}" in last
  assert "mode 'train', started 20" in last
  assert last.endswith(f"if it is gone, delete {tmp_path / '.lock'} and start again.")
  assert not (tmp_path / ".lock").exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
  pid = _dead_pid()
  _write_lock(tmp_path, pid=pid)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(os.fspath(tmp_path), "train"):
      assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert f"Stale lock {tmp_path / '.lock'}: its holder (pid {pid} on host" in caplog.text
  assert "taking it over" in caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, message", [
    pytest.param(dict(host="another-host", pid=1),
                 "is held by pid 1 on host another-host, mode 'train'", id="another-host"),
    pytest.param(None, "whose content cannot be read", id="unreadable"),
])
def test_lock_that_cannot_be_checked_is_refused(tmp_path, content, message):
  """A holder on another host may be alive; an unreadable lock has no holder to check."""
  if content is None:
    (tmp_path / ".lock").write_text("{not json")
  else:
    _write_lock(tmp_path, **content)
  with pytest.raises(workdir_lock.WorkdirLockedError) as error:
    workdir_lock.acquire(os.fspath(tmp_path), "train")
  assert message in _last_line(error.value)
  assert f"delete {tmp_path / '.lock'}" in _last_line(error.value)
  assert (tmp_path / ".lock").exists()


def _train(workdir):
  train.train_and_evaluate(testing.tiny_config(), workdir, evaluate=False)


def _evaluate(workdir):
  split_evaluation.run_evaluation(testing.small_config(), workdir)


def _export(workdir):
  export_lib.export(export_config(), workdir)


@pytest.mark.parametrize("run", [_train, _evaluate, _export])
def test_train_evaluate_and_export_refuse_a_locked_workdir(tmp_path, run):
  _write_lock(tmp_path, host="another-host", pid=4321, mode="train")
  with pytest.raises(workdir_lock.WorkdirLockedError) as error:
    run(os.fspath(tmp_path))
  assert "is held by pid 4321 on host another-host, mode 'train'" in _last_line(error.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


_TRAIN_DRIVER = textwrap.dedent("""\
    import os, signal, sys, time
    workdir, seed, fault = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from feelvos_jax.training import checkpointing
    from feelvos_jax.training import train
    from tests import testing
    train._load_videos = lambda dataset_config, split, decoders=None: testing.fake_videos()
    Checkpointer = checkpointing.Checkpointer

    def kill():
      os.kill(os.getpid(), signal.SIGKILL)

    if fault == "pause":  # Holds the lock until the file argv[4] exists.
      restore_or_initialize = train._restore_or_initialize
      def paused(*args, **kwargs):
        while not os.path.exists(sys.argv[4]):
          time.sleep(0.1)
        return restore_or_initialize(*args, **kwargs)
      train._restore_or_initialize = paused
    elif fault == "save_started":  # Step 4's asynchronous write has begun.
      save = Checkpointer.save
      def save_then_kill(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == 4:
          kill()
      Checkpointer.save = save_then_kill
    elif fault in ("before_checksums", "after_checksums"):  # Step 4 written, not committed.
      write_checksums = Checkpointer._write_checksums
      def write_with_kill(self):
        if self._saving_step == 4 and fault == "before_checksums":
          kill()
        write_checksums(self)
        if self._saving_step == 4:
          kill()
      Checkpointer._write_checksums = write_with_kill
    elif fault == "after_commit":  # Step 4 committed; Orbax's manager not closed.
      def close_then_kill(self):
        self.wait_until_finished()
        kill()
      Checkpointer.close = close_then_kill
    config = testing.tiny_config()
    config.seed = seed
    train.train_and_evaluate(config, workdir, evaluate=False)
    """)


def _wait_for(path, process, timeout=300):
  deadline = time.time() + timeout
  while not path.exists():
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.time() < deadline, f"{path} did not appear"
    time.sleep(0.2)


@pytest.mark.slow
def test_two_runs_on_one_workdir_the_second_is_refused_naming_the_first(tmp_path):
  workdir = tmp_path / "run"
  first = _start(_TRAIN_DRIVER, workdir, 1, "pause", tmp_path / "go", unoptimized=True)
  try:
    _wait_for(workdir / ".lock", first)
    second = _start(_TRAIN_DRIVER, workdir, 2, "none", unoptimized=True)
    output = second.communicate(timeout=600)[0]
    assert second.returncode != 0
    last = output.strip().splitlines()[-1]
    assert "WorkdirLockedError" in last
    assert f"{workdir / '.lock'} is held by pid {first.pid}" in last and "mode 'train'" in last
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
    (tmp_path / "go").touch()
    output = first.communicate(timeout=600)[0]
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, output[-3000:]
  assert not (workdir / ".lock").exists()
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=3)
  assert checkpointer.all_steps() == [2, 4]
  assert {checkpointer.saved_config(step)["seed"] for step in (2, 4)} == {1}
  checkpointer.close()


@pytest.mark.slow
@pytest.mark.unoptimized
def test_sigterm_save_and_stop_releases_the_lock(tmp_path, monkeypatch, in_memory_videos):
  original = input_pipeline.create_train_dataset

  def terminate_at_the_first_batch(*args, **kwargs):
    for batch in original(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_dataset", terminate_at_the_first_batch)
  state = train.train_and_evaluate(testing.tiny_config(), os.fspath(tmp_path), evaluate=False)
  assert int(state.step) == 1
  assert not (tmp_path / ".lock").exists()


# --------------------------------------------------------------------------------------------
# Training checkpoints.
# --------------------------------------------------------------------------------------------


def _save_small_checkpoints(workdir, steps=(2, 4)):
  """Checkpoints of a small float tree at `steps`; returns (tree, abstract tree)."""
  rng = np.random.default_rng(0)
  tree = {"params": {f"w{i}": rng.normal(size=(64, 80)).astype(np.float32) for i in range(4)}}
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=3)
  for step in steps:
    checkpointer.save(step, tree, testing.tiny_config())
  checkpointer.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  return tree, abstract


def test_checkpoint_records_the_checksums_of_its_files(tmp_path):
  tree, abstract = _save_small_checkpoints(tmp_path)
  folder = tmp_path / "checkpoints" / "4"
  files = json.loads((folder / "checksums.json").read_text())["files"]
  on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.parent != folder)
  assert sorted(files) == on_disk and any(name.startswith("config/") for name in files)
  assert files == {f"{item}/{name}": entry for item in ("state", "config")
                   for name, entry in integrity.file_checksums(folder / item).items()}
  checkpointer = checkpointing.Checkpointer(os.fspath(tmp_path), keep=3)
  jax.tree.map(np.testing.assert_array_equal, checkpointer.restore(4, abstract), tree)
  checkpointer.close()


def _data_file(folder):
  return _largest_file(folder / "state")


def _unlink(path):
  path.unlink()


@pytest.mark.parametrize("file, damage, what", [
    pytest.param(_data_file, lambda p: _flip(p, 64), "has another SHA-256",
                 id="data-64-bytes-flipped"),
    pytest.param(lambda f: f / "config" / "metadata", lambda p: _flip(p, 1),
                 "has another SHA-256", id="config-1-byte-flipped"),
    pytest.param(_data_file, _truncate, "bytes, checksums.json recorded", id="data-truncated"),
    pytest.param(lambda f: f / "state" / "_METADATA", _unlink, "is missing",
                 id="metadata-deleted"),
])
def test_damaged_checkpoint_file_fails_the_restore_naming_the_file(tmp_path, file, damage, what):
  _, abstract = _save_small_checkpoints(tmp_path)
  folder = tmp_path / "checkpoints" / "4"
  path = file(folder)
  damage(path)
  checkpointer = checkpointing.Checkpointer(os.fspath(tmp_path), keep=3)
  with pytest.raises(integrity.IntegrityError) as error:
    checkpointer.restore(4, abstract)
  checkpointer.close()
  last = _last_line(error.value)
  assert f"{path} " in last and what in last
  assert f"to fall back to checkpoint step 2, delete {folder}" in last
  assert folder.exists()  # Nothing is deleted.


def test_checkpoint_without_checksums_restores_with_a_warning(tmp_path, caplog):
  tree, abstract = _save_small_checkpoints(tmp_path, steps=(2,))
  folder = tmp_path / "checkpoints" / "2"
  (folder / "checksums.json").unlink()
  checkpointer = checkpointing.Checkpointer(os.fspath(tmp_path), keep=3)
  with caplog.at_level(logging.WARNING):
    restored = checkpointer.restore(2, abstract)
  checkpointer.close()
  jax.tree.map(np.testing.assert_array_equal, restored, tree)
  assert f"Checkpoint {folder} has no checksums.json" in caplog.text


def test_unreadable_checksums_fail_the_restore_naming_them(tmp_path):
  _, abstract = _save_small_checkpoints(tmp_path, steps=(2,))
  record = tmp_path / "checkpoints" / "2" / "checksums.json"
  _truncate(record)
  checkpointer = checkpointing.Checkpointer(os.fspath(tmp_path), keep=3)
  with pytest.raises(integrity.IntegrityError) as error:
    checkpointer.restore(2, abstract)
  checkpointer.close()
  last = _last_line(error.value)
  assert f"{record} cannot be parsed as JSON" in last
  assert "there is no older checkpoint to fall back to" in last


@pytest.fixture
def in_memory_videos(monkeypatch):
  monkeypatch.setattr(train, "_load_videos",
                      lambda dataset_config, split, decoders=None: testing.fake_videos())


@pytest.mark.slow
@pytest.mark.unoptimized
def test_training_refuses_a_damaged_latest_checkpoint_until_it_is_deleted(
    tmp_path, uninterrupted_run, in_memory_videos):
  """No silent fall back to step 2: the error names the file and the folder to delete; then
  training resumes from step 2 and ends with the uninterrupted run's parameters."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted_run[0], workdir)
  folder = workdir / "checkpoints" / "4"
  damaged = _largest_file(folder / "state")
  _flip(damaged, 64)
  config = testing.tiny_config()
  with pytest.raises(integrity.IntegrityError) as error:
    train.train_and_evaluate(config, os.fspath(workdir), evaluate=False)
  last = _last_line(error.value)
  assert f"{damaged} has another SHA-256 than checksums.json recorded" in last
  assert f"to fall back to checkpoint step 2, delete {folder}" in last
  model = models.build_model(config.model)
  with pytest.raises(integrity.IntegrityError, match=str(damaged)):  # Evaluate and export.
    checkpointing.restore_variables(config, os.fspath(workdir), model)
  assert folder.exists() and not (workdir / ".lock").exists()
  shutil.rmtree(folder)
  state = train.train_and_evaluate(config, os.fspath(workdir), evaluate=False)
  assert int(state.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               uninterrupted_run[1]["params"])


@pytest.mark.slow
@pytest.mark.unoptimized
@pytest.mark.parametrize("fault, steps_left", [
    pytest.param("save_started", ([2], [2, 4]), id="save_started"),
    pytest.param("before_checksums", ([2],), id="before_checksums"),
    pytest.param("after_checksums", ([2],), id="after_checksums"),
    pytest.param("after_commit", ([2, 4],), id="after_commit")])
def test_kill_9_during_a_checkpoint_write_resumes_from_the_newest_complete_checkpoint(
    tmp_path, uninterrupted_run, in_memory_videos, caplog, fault, steps_left):
  workdir = tmp_path / "run"
  process = _start(_TRAIN_DRIVER, workdir, testing.tiny_config().seed, fault, unoptimized=True)
  output = process.communicate(timeout=600)[0]
  assert process.returncode == -signal.SIGKILL, output[-3000:]
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=3)
  assert checkpointer.all_steps() in [list(steps) for steps in steps_left]
  checkpointer.close()
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(testing.tiny_config(), os.fspath(workdir), evaluate=False)
  assert f"Stale lock {workdir / '.lock'}: its holder (pid {process.pid}" in caplog.text
  assert int(state.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               uninterrupted_run[1]["params"])
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=3)
  assert checkpointer.all_steps() == [2, 4]
  for step in (2, 4):
    checkpointer.verify(step)
    assert (workdir / "checkpoints" / str(step) / "checksums.json").exists()
  checkpointer.close()


# --------------------------------------------------------------------------------------------
# Export bundles.
# --------------------------------------------------------------------------------------------


def export_config():
  config = testing.small_config()
  config.export.buckets = ((32, 32, 2),)
  config.export.max_reference_frames = 1
  config.export.platforms = ("cpu",)
  return config


def _save_checkpoint(workdir, step, scale=1.0):
  """A checkpoint of `shared_setup`'s variables (times `scale`) at `step`."""
  config = export_config()
  _, model, variables, _, _ = testing.shared_setup()
  params = jax.tree.map(lambda x: x * scale, variables["params"])
  tx = optimizers.create_optimizer(config.optimizer, config.learning_rate,
                                   config.num_train_steps)[0]
  state = train.TrainState(step=jnp.array(step), params=params,
                           batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                           rng=jax.random.PRNGKey(0), apply_fn=model.apply, tx=tx)
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=3)
  checkpointer.save(step, state, config)
  checkpointer.close()
  return params


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(workdir with checkpoint 7 and its bundle in `export/`, the bundle's params)."""
  workdir = tmp_path_factory.mktemp("exported")
  params = _save_checkpoint(workdir, 7)
  export_lib.export(export_config(), os.fspath(workdir))
  return workdir, params


def test_bundle_manifest_records_every_file(exported):
  workdir, params = exported
  bundle = workdir / "export"
  manifest = json.loads((bundle / "manifest.json").read_text())
  assert manifest["format"] == "feelvos_jax.export/2"
  on_disk = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
  assert sorted(manifest["files"]) == [name for name in on_disk if name != "manifest.json"]
  loaded = export_lib.load(bundle)
  jax.tree.map(np.testing.assert_array_equal, loaded.variables["params"], params)


def _replace_text(path, old, new):
  """Replaces `old` (present once) by `new` in the text file at `path`."""
  text = path.read_text()
  assert text.count(old) == 1, (old, text)
  path.write_text(text.replace(old, new))


def _weights(bundle):
  return _largest_file(bundle / "variables")


def _step_function(bundle):
  return bundle / "functions" / "step_32x32x2_r1.bin"


def _start_function(bundle):
  return bundle / "functions" / "start_32x32x2.bin"


def _config(bundle):
  return bundle / "config.json"


def _manifest(bundle):
  return bundle / "manifest.json"


@pytest.mark.parametrize("file, damage, what", [
    pytest.param(_weights, lambda p: _flip(p, 256), "has another SHA-256",
                 id="weights-256-bytes-flipped"),
    pytest.param(_step_function, lambda p: _flip(p, 1), "has another SHA-256",
                 id="function-1-byte-flipped"),
    pytest.param(_weights, _truncate, "bytes, manifest.json recorded", id="weights-truncated"),
    pytest.param(_start_function, _truncate, "bytes, manifest.json recorded",
                 id="function-truncated"),
    pytest.param(_start_function, _unlink, "is missing", id="function-deleted"),
    pytest.param(_config, _unlink, "is missing", id="config-deleted"),
    pytest.param(_config, lambda p: _replace_text(p, '"window": 3', '"window": 5'),
                 "has another SHA-256", id="config-edited"),
    pytest.param(_manifest, _truncate, "cannot be parsed as JSON", id="manifest-truncated"),
    pytest.param(_manifest, lambda p: _replace_text(p, '"checkpoint_step": 7',
                                                    '"checkpoint_step": 8'),
                 "was changed after it was written", id="manifest-edited"),
])
def test_damaged_bundle_fails_to_load_naming_the_file(exported, tmp_path, file, damage, what):
  bundle = tmp_path / "bundle"
  shutil.copytree(exported[0] / "export", bundle)
  path = file(bundle)
  damage(path)
  with pytest.raises(integrity.IntegrityError) as error:
    export_lib.load(bundle)
  last = _last_line(error.value)
  assert f"{path} " in last and what in last


def test_bundle_of_an_older_format_is_refused_asking_for_a_new_export(exported, tmp_path):
  bundle = tmp_path / "bundle"
  shutil.copytree(exported[0] / "export", bundle)
  _replace_text(bundle / "manifest.json", '"format": "feelvos_jax.export/2"',
                '"format": "feelvos_jax.export/1"')
  with pytest.raises(ValueError) as error:
    export_lib.load(bundle)
  assert _last_line(error.value) == (
      f"{bundle / 'manifest.json'}: format 'feelvos_jax.export/1', this version reads "
      f"'feelvos_jax.export/2': export the checkpoint again (main.py --mode=export)")


_EXPORT_DRIVER = textwrap.dedent("""\
    import os, signal, sys
    workdir, fault = sys.argv[1], sys.argv[2]
    import ml_collections
    from etils import epath
    import orbax.checkpoint as ocp
    from feelvos_jax.inference import export
    from feelvos_jax.training import checkpointing

    def kill(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGKILL)

    if fault == "writing":  # The functions written, the weights not.
      ocp.StandardCheckpointer.save = kill
    elif fault == "swapping":  # The previous bundle moved aside, the new one not in place.
      path_class = type(epath.Path(workdir))
      rename = path_class.rename
      def rename_then_kill(self, target):
        result = rename(self, target)
        if self.name == "export":
          kill()
        return result
      path_class.rename = rename_then_kill
    checkpointer = checkpointing.Checkpointer(workdir, keep=3)
    config = ml_collections.ConfigDict(checkpointer.saved_config(checkpointer.latest_step()))
    checkpointer.close()
    export.export(config, workdir)
    """)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["writing", "swapping"])
def test_kill_9_during_export_leaves_the_previous_bundle_loadable(exported, tmp_path, caplog,
                                                                  fault):
  workdir = tmp_path / "run"
  shutil.copytree(exported[0], workdir)
  newer = _save_checkpoint(workdir, 9, scale=2.0)
  process = _start(_EXPORT_DRIVER, workdir, fault)
  output = process.communicate(timeout=600)[0]
  assert process.returncode == -signal.SIGKILL, output[-3000:]
  with caplog.at_level(logging.WARNING):
    loaded = export_lib.load(workdir / "export")
  assert loaded.checkpoint_step == 7
  jax.tree.map(np.testing.assert_array_equal, loaded.variables["params"], exported[1])
  if fault == "swapping":
    assert f"{workdir / 'export'} is missing: an export stopped while replacing it" in caplog.text
  export_lib.export(export_config(), os.fspath(workdir))  # Stale lock taken over, leftovers gone.
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "export"]
  loaded = export_lib.load(workdir / "export")
  assert loaded.checkpoint_step == 9
  jax.tree.map(np.testing.assert_array_equal, loaded.variables["params"], newer)
