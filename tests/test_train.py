"""The train step and loop on 8 fake CPU devices, with the tiny backbone and in-memory videos.

Every end-to-end run shares one config (`testing.tiny_config`), so the train step compiles once
per session: the runs after the first load it from the session's persistent compilation cache
(tests/conftest.py).
"""
import errno
import logging
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax import evaluation
from feelvos_jax import models
from feelvos_jax.data import input_pipeline
from feelvos_jax.training import checkpointing
from feelvos_jax.training import sharding
from feelvos_jax.training import train
from tests import testing


@pytest.fixture
def in_memory_videos(monkeypatch):
  monkeypatch.setattr(train, "_load_videos",
                      lambda dataset_config, split, decoders=None: testing.fake_videos())


def transform_batches(monkeypatch, transform):
  """Passes every training batch through transform(step_index, batch) (0-based index)."""
  original = input_pipeline.create_train_dataset

  def patched(*args, **kwargs):
    for index, batch in enumerate(original(*args, **kwargs), start=kwargs["start_step"]):
      yield transform(index, batch)

  monkeypatch.setattr(input_pipeline, "create_train_dataset", patched)


def assert_trees_equal(actual, expected):
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_object_iou_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (3, 14, 18)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.2] = IGNORE_LABEL
  num_objects = np.array([3, 1, 2], np.int32)
  labels[1][labels[1] > 1] = 0
  predicted, truth = logits.argmax(-1), labels[:, ::4, ::4]
  ious = []
  for b in range(3):
    for slot in range(1, num_objects[b] + 1):
      inside = truth[b] != IGNORE_LABEL
      pred = (predicted[b] == slot) & inside
      gt = truth[b] == slot
      if (pred | gt).sum():
        ious.append((pred & gt).sum() / (pred | gt).sum())
  np.testing.assert_allclose(float(train.object_iou(logits, labels, num_objects)), np.mean(ious),
                             rtol=1e-6)


@pytest.fixture(scope="module")
def initial_state():
  """The initial state of `testing.tiny_config` on all 8 devices, compiled `unoptimized` as
  the sharded-step test that compares steps compiled alike."""
  config = testing.tiny_config()
  mesh = sharding.create_mesh(config.mesh)
  model = models.build_model(config.model)
  with testing.unoptimized():
    return train.create_train_state(config, model, jax.random.PRNGKey(config.seed), mesh)


def _one_step(config, state, batch, devices):
  """One train step of `state` moved onto a (data, fsdp) mesh over `devices`."""
  mesh = jax.make_mesh(sharding.mesh_shape(config.mesh, len(devices)), sharding.BATCH_AXES,
                       devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2)
  state = jax.device_put(jax.device_get(state), sharding.state_shardings(state, mesh))
  step_fn = train.compile_train_step(config, state, mesh)
  state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
  jax.block_until_ready(step_fn(jax.tree.map(jax.numpy.copy, state),
                                sharding.global_batch(batch, mesh)))
  assert step_fn._cache_size() == 1  # The updated state does not trigger a recompile.
  return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device_step(initial_state):
  config = testing.tiny_config()
  with testing.unoptimized():
    state, metrics = _one_step(config, initial_state, testing.random_batch(config),
                               jax.devices()[:1])
  return testing.numpy_state(state), metrics


@pytest.mark.slow
@pytest.mark.unoptimized  # Sharded and single-device steps compiled alike, compared.
@pytest.mark.parametrize("fsdp", [1, 2])
def test_sharded_step_matches_single_device(fsdp, initial_state, single_device_step):
  config = testing.tiny_config()
  config.mesh.fsdp = fsdp
  assert len(jax.devices()) == 8
  state, metrics = _one_step(config, initial_state, testing.random_batch(config), jax.devices())
  expected_state, expected_metrics = single_device_step
  for name, value in expected_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               testing.numpy_state(state), expected_state)
  specs = {leaf.sharding.spec for leaf in jax.tree.leaves(state.params)}
  assert (sharding.P() in specs) and ((len(specs) > 1) == (fsdp > 1))


@pytest.mark.slow
@pytest.mark.unoptimized
def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch, in_memory_videos,
                                                 uninterrupted_run):
  config = testing.tiny_config()
  _, expected = uninterrupted_run

  def crash_at_third_batch(index, batch):
    if index == 2:
      raise RuntimeError("simulated crash")
    return batch

  with monkeypatch.context() as patch:
    transform_batches(patch, crash_at_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
      train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.all_steps() == [2]
  checkpointer.close()
  resumed = testing.numpy_state(train.train_and_evaluate(config, str(tmp_path), evaluate=False))
  assert int(resumed["step"]) == 4
  assert_trees_equal(resumed, expected)


@pytest.mark.slow
@pytest.mark.unoptimized
def test_sigterm_saves_and_returns(tmp_path, monkeypatch, in_memory_videos):
  config = testing.tiny_config()

  def terminate_during_second_step(index, batch):
    if index == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  transform_batches(monkeypatch, terminate_during_second_step)
  state = train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  assert int(state.step) == 2
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.all_steps() == [2]
  assert_trees_equal(testing.numpy_state(checkpointer.restore(2, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))),
                     testing.numpy_state(state))
  checkpointer.close()
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
@pytest.mark.unoptimized
def test_nan_loss_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch,
                                                                   in_memory_videos):
  config = testing.tiny_config()

  def impossible_labels_at_third_step(index, batch):
    if index == 2:  # Objects labelled in padded slots: their logit is -inf, the loss inf.
      batch = dict(batch, num_objects=np.zeros_like(batch["num_objects"]),
                   current_labels=np.ones_like(batch["current_labels"]))
    return batch

  transform_batches(monkeypatch, impossible_labels_at_third_step)
  with pytest.raises(FloatingPointError, match="at step 3.*Last good checkpoint: step 2"):
    train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.all_steps() == [2]
  checkpointer.close()


def test_batch_size_not_divisible_fails_before_anything(tmp_path, in_memory_videos):
  config = testing.tiny_config()
  config.batch_size = 12
  with pytest.raises(ValueError, match=r"config.batch_size=12 .*device count \(8\)"):
    train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  assert not list(tmp_path.iterdir())


def test_missing_pretrained_file_fails_before_anything(tmp_path, in_memory_videos):
  config = testing.tiny_config()
  config.model.pretrained = str(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="config.model.pretrained=.*missing.npz"):
    train.train_and_evaluate(config, str(tmp_path / "workdir"), evaluate=False)
  assert not (tmp_path / "workdir").exists()


def test_weights_that_do_not_fit_fail_before_the_initialiser_compiles(tmp_path, monkeypatch,
                                                                      in_memory_videos):
  weights_file = tmp_path / "unrelated.npz"
  np.savez(weights_file, **{"encoder.weight": np.zeros((8, 3, 3, 3), np.float32)})
  config = testing.tiny_config()
  config.model.backbone, config.model.pretrained = "resnet50", str(weights_file)

  def compiled(*args, **kwargs):
    raise AssertionError("the initialiser was compiled before the weights were checked")
  monkeypatch.setattr(train, "materialize_train_state", compiled)
  with pytest.raises(ValueError, match=r"filled 0 of the 265 variables of the resnet50"):
    train.train_and_evaluate(config, str(tmp_path / "workdir"), evaluate=False)


def test_unknown_backbone_fails_before_anything(tmp_path, in_memory_videos):
  config = testing.tiny_config()
  config.model.backbone = "vgg16"
  with pytest.raises(ValueError, match="config.model.backbone='vgg16'"):
    train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.unoptimized
def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, in_memory_videos,
                                                     uninterrupted_run):
  workdir = tmp_path / "copy"
  shutil.copytree(uninterrupted_run[0], workdir)
  before = {path: path.stat().st_mtime_ns for path in workdir.rglob("*")}
  assert any(path.name == "checkpoints" for path in before)
  config = testing.tiny_config()
  config.model.embedding_dim = 6
  config.num_train_steps = 8
  with pytest.raises(ValueError, match=r"(?s)config.model.embedding_dim: checkpoint 4, config 6"
                                       r".*embedding.*checkpoint shape"):
    train.train_and_evaluate(config, str(workdir), evaluate=False)
  assert {path: path.stat().st_mtime_ns for path in workdir.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.unoptimized
def test_evaluation_hook_feeds_checkpoints_keeping_latest_and_best(tmp_path, monkeypatch,
                                                                   in_memory_videos):
  from feelvos_jax.evaluation import split_evaluation  # pylint: disable=g-import-not-at-top
  scores, calls = iter([0.9, 0.5]), []

  def fake_evaluate_dataset(model, variables, videos, config):
    names = [video["name"] for video in videos]
    calls.append((names, sorted(variables), config.num_eval_videos))
    table = dict.fromkeys(evaluation.GLOBAL_COLUMNS, 0.25)
    return dict(table, **{"J&F-Mean": next(scores), "num_videos": float(len(names))})

  monkeypatch.setattr(split_evaluation, "evaluate_dataset", fake_evaluate_dataset)
  config = testing.tiny_config()
  config.eval_every_steps, config.checkpoint_every_steps, config.keep_checkpoints = 2, 1, 1
  config.num_eval_videos = 2
  train.train_and_evaluate(config, str(tmp_path), evaluate=True)
  assert calls == [(["video0", "video1"], ["batch_stats", "params"], 2)] * 2
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=1)
  assert checkpointer.all_steps() == [2, 4]  # Step 2 has the best J&F, step 4 is the latest.
  checkpointer.close()


def test_load_pretrained_replaces_variables_in_their_shardings(tmp_path):
  rng = np.random.default_rng(0)
  torch_kernel = rng.normal(size=(128, 3, 7, 7)).astype(np.float32)
  running_mean = rng.normal(size=(128,)).astype(np.float32)
  np.savez(tmp_path / "resnet.npz", **{"conv1.weight": torch_kernel,
                                       "bn1.running_mean": running_mean})
  state = train.TrainState(
      step=np.zeros((), np.int32), rng=np.zeros((2,), np.uint32), opt_state=(),
      params={"backbone": {"conv1": {"kernel": np.zeros((7, 7, 3, 128), np.float32)}},
              "head": {"kernel": np.ones((2, 2), np.float32)}},
      batch_stats={"backbone": {"bn1": {"mean": np.zeros((128,), np.float32)}}},
      apply_fn=None, tx=None)
  mesh = jax.make_mesh((4, 2), sharding.BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)
  state = jax.device_put(state, sharding.state_shardings(state, mesh))
  loaded = train.load_pretrained(state, str(tmp_path / "resnet.npz"), "resnet50")
  kernel = loaded.params["backbone"]["conv1"]["kernel"]
  np.testing.assert_array_equal(np.asarray(kernel), torch_kernel.transpose(2, 3, 1, 0))
  assert kernel.sharding == state.params["backbone"]["conv1"]["kernel"].sharding
  assert kernel.sharding.spec == sharding.P(None, None, None, "fsdp")
  np.testing.assert_array_equal(np.asarray(loaded.batch_stats["backbone"]["bn1"]["mean"]),
                                running_mean)
  np.testing.assert_array_equal(np.asarray(loaded.params["head"]["kernel"]), 1.0)


def _fake_resnet_state(mesh_shape=(8, 1)):
  """A TrainState holding two backbone variables of a resnet (conv1, bn1 mean), sharded."""
  state = train.TrainState(
      step=np.zeros((), np.int32), rng=np.zeros((2,), np.uint32), opt_state=(),
      params={"backbone": {"conv1": {"kernel": np.zeros((7, 7, 3, 128), np.float32)}}},
      batch_stats={"backbone": {"bn1": {"mean": np.zeros((128,), np.float32)}}},
      apply_fn=None, tx=None)
  mesh = jax.make_mesh(mesh_shape, sharding.BATCH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  return jax.device_put(state, sharding.state_shardings(state, mesh))


def test_load_pretrained_warns_of_unmatched_names_and_refuses_too_few(tmp_path, caplog):
  path = str(tmp_path / "partial.npz")
  np.savez(path, **{"conv1.weight": np.ones((128, 3, 7, 7), np.float32),
                    "fc.weight": np.ones((10, 128), np.float32)})
  state = _fake_resnet_state()
  with pytest.raises(ValueError, match=r"filled 1 of the 2 variables .*'bn1.running_mean'.*"
                                       r"'fc.weight'.*pretrained_allow_partial=True"):
    train.load_pretrained(state, path, "resnet50")
  with caplog.at_level(logging.INFO):
    loaded = train.load_pretrained(state, path, "resnet50", min_backbone_fraction=0.5)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "loaded 1 of 2 variables (1 of 2 backbone variables)" in (
      warnings[0])
  assert "batch_stats/backbone/bn1/mean" in warnings[0] and "fc.weight" in warnings[0]
  np.testing.assert_array_equal(np.asarray(loaded.params["backbone"]["conv1"]["kernel"]), 1.0)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.load_pretrained(state, path, "resnet50", allow_partial=True)
  assert any(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.slow
@pytest.mark.unoptimized
def test_reached_num_train_steps_says_so_and_writes_nothing(tmp_path, in_memory_videos,
                                                            uninterrupted_run, caplog):
  workdir = tmp_path / "copy"
  shutil.copytree(uninterrupted_run[0], workdir)
  before = {path: path.stat().st_mtime_ns for path in workdir.rglob("*")}
  config = testing.tiny_config()
  config.num_train_steps = 2
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(config, str(workdir), evaluate=True)
  assert int(state.step) == 4
  assert caplog.records[-1].getMessage() == (
      f"Nothing to train: checkpoint step 4 in {workdir / 'checkpoints'} has reached "
      "config.num_train_steps=2 (raise it to train on).")
  assert {path: path.stat().st_mtime_ns for path in workdir.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.unoptimized
def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_earlier(tmp_path, monkeypatch,
                                                                         in_memory_videos):
  config = testing.tiny_config()  # Checkpoints at steps 2 and 4.
  write_config = ocp.JsonCheckpointHandler._save_fn

  async def disk_full_at_step_4(self, item, directory):
    if "4.orbax-checkpoint-tmp" in os.fspath(directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(directory / "metadata"))
    await write_config(self, item, directory)

  with monkeypatch.context() as patch:
    patch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full_at_step_4)
    with pytest.raises(checkpointing.DiskFullError) as error:
      train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  message = str(error.value)
  directory = tmp_path / "checkpoints"
  assert "\n" not in message
  assert message.startswith(f"no space left on the device writing checkpoint step 4 in "
                            f"{directory} (No space left on device: {directory}/4.")
  assert "the earlier checkpoints [2] are kept" in message
  assert message.endswith("then run again to resume from step 2")
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.all_steps() == [2]
  checkpointer.close()
  state = train.train_and_evaluate(config, str(tmp_path), evaluate=False)  # Resumes from 2.
  assert int(state.step) == 4


def nearest_neighbor_config():
  """`testing.tiny_config` in PML mode: triplet loss, 2 steps."""
  config = testing.tiny_config()
  config.model.head = "nearest_neighbor"
  config.model.nearest_neighbors = 3
  config.loss.triplet_anchors_per_object = 8
  config.num_train_steps = 2
  return config


@pytest.mark.slow
@pytest.mark.unoptimized
def test_nearest_neighbor_trains_with_the_triplet_loss_and_propagates(tmp_path, monkeypatch,
                                                                      in_memory_videos):
  from feelvos_jax.inference import video_propagation  # pylint: disable=g-import-not-at-top
  written = []
  write = train._write_train_metrics
  monkeypatch.setattr(train, "_write_train_metrics", lambda writer, step, fetched, *args: (
      written.extend(metrics for _, metrics in fetched), write(writer, step, fetched, *args)))
  config = nearest_neighbor_config()
  config.checkpoint_every_steps = 1
  state = train.train_and_evaluate(config, str(tmp_path), evaluate=False)
  assert int(state.step) == 2
  assert [sorted(metrics) for metrics in written] == [
      ["active_triplets", "grad_norm", "iou", "learning_rate", "loss"]] * 2
  assert all(np.isfinite(m["loss"]) and 0 <= m["active_triplets"] <= 1 for m in written)

  model = models.build_model(config.model)
  first, _ = checkpointing.restore_variables(config, str(tmp_path), model, step=1)
  variables, step = checkpointing.restore_variables(config, str(tmp_path), model)
  assert step == 2 and "segmentation_head" not in variables["params"]
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), variables["params"],
                         first["params"])
  assert all(jax.tree.leaves(changed["embedding"]))  # The triplet loss reached the embedding.
  video = next(iter(testing.fake_videos(num_videos=1, num_frames=3).as_numpy_iterator()))["video"]
  segmentations = video["segmentations"][..., 0].astype(np.int32)
  given = np.select([segmentations == 3, segmentations == 7], [1, 2], segmentations)
  masks = np.stack(list(video_propagation.propagate_video(
      model, variables, video["frames"], {0: given[0]}, [0, 0], [3, 7])))
  assert masks.shape == segmentations.shape
  np.testing.assert_array_equal(masks[0], np.where(segmentations[0] == IGNORE_LABEL, 0,
                                                   segmentations[0]))
  assert set(np.unique(masks[1:])) <= {0, 3, 7}


@pytest.mark.parametrize("key,value", [
    ("loss.triplet_margin", -0.1), ("loss.triplet_anchors_per_object", 0),
    ("model.nearest_neighbors", 0)])
def test_bad_nearest_neighbor_config_is_refused_naming_the_key(key, value):
  config = nearest_neighbor_config()
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(ValueError, match=f"config.{key} must be"):
    train.validate_config(config)
