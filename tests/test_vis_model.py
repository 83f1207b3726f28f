"""MaskTrack R-CNN's model, targets, detection post-processing and tracker: shapes, formulas
against NumPy, the authors' assignment rule on hand-made detections, and (slow) the loss and
gradients of 8 pairs (the same with the batch sharded over 8 fake devices), the end-to-end
train -> evaluate -> results JSON -> export -> bundle run on `synthetic_vis/tiny` (the
bundle's results equal in-process ones) and the paper's ResNet-50 network traced for its
shapes."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from feelvos_jax.training import sharding
from feelvos_jax.vis import detect
from feelvos_jax.vis import export as vis_export
from feelvos_jax.vis import heads
from feelvos_jax.vis import inference
from feelvos_jax.vis import losses
from feelvos_jax.vis import train as vis_train
from feelvos_jax.vis import train_step
from feelvos_jax.vis.model import MaskTrackRCNN

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_match_logits_softmax_is_the_papers_probability():
  rng = np.random.default_rng(0)
  queries, memory = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
  valid = np.asarray([True, True, False, True])
  logits = np.asarray(heads.match_logits(jnp.asarray(queries), jnp.asarray(memory),
                                         jnp.asarray(valid)))
  probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
  for i in range(3):
    products = np.exp(queries[i] @ memory[valid].T)
    denominator = 1.0 + products.sum()
    np.testing.assert_allclose(probabilities[i, 0], 1.0 / denominator, rtol=1e-5)
    np.testing.assert_allclose(probabilities[i, 1:][valid], products / denominator, rtol=1e-5)
    assert probabilities[i, 3] == 0.0


def test_tracker_opens_continues_and_resolves_duplicates():
  tracker = inference.Tracker(inference.InferenceConfig())
  boxes = np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  embeddings = np.asarray([[3.0, 0.0], [0.0, 3.0]], np.float32)
  first = tracker.assign(embeddings, boxes, np.asarray([0.9, 0.8]), np.asarray([1, 2]))
  assert first.tolist() == [0, 1]
  # Frame 2: instance 1 moved a little; a new instance of category 2 far away; a weaker
  # duplicate of instance 0.
  boxes2 = np.asarray([[21, 21, 31, 31], [50, 50, 60, 60], [1, 0, 11, 10], [0, 1, 10, 11]],
                      np.float32)
  embeddings2 = np.asarray([[0.0, 3.0], [-3.0, -3.0], [3.0, 0.0], [3.0, 0.0]], np.float32)
  ids = tracker.assign(embeddings2, boxes2, np.asarray([0.9, 0.9, 0.95, 0.3]),
                       np.asarray([2, 2, 1, 1]))
  assert ids.tolist() == [1, 2, 0, -1]
  np.testing.assert_array_equal(tracker.boxes[0], boxes2[2])  # The memory moved on.
  assert len(tracker.labels) == 3


def test_paste_masks_matches_loop():
  mask = np.random.default_rng(1).random((1, 4, 4)).astype(np.float32)
  box = np.asarray([[2.0, 1.0, 10.0, 9.0]], np.float32)
  paste = jax.jit(detect.paste_masks, static_argnums=(2, 3))
  got = np.asarray(paste(jnp.asarray(mask), jnp.asarray(box), 12, 14))[0]
  for y in range(12):
    for x in range(14):
      u = (x + 0.5 - 2.0) / 8.0 * 4 - 0.5
      v = (y + 0.5 - 1.0) / 8.0 * 4 - 0.5
      if not (-0.5 <= u <= 3.5 and -0.5 <= v <= 3.5):
        assert got[y, x] == 0.0
        continue
      u, v = np.clip(u, 0, 3), np.clip(v, 0, 3)
      x0, y0 = int(np.floor(u)), int(np.floor(v))
      x1, y1 = min(x0 + 1, 3), min(y0 + 1, 3)
      fu, fv = u - x0, v - y0
      expected = ((1 - fv) * ((1 - fu) * mask[0, y0, x0] + fu * mask[0, y0, x1])
                  + fv * ((1 - fu) * mask[0, y1, x0] + fu * mask[0, y1, x1]))
      assert got[y, x] == pytest.approx(expected, abs=1e-5)


def test_detections_apply_classwise_nms_and_threshold():
  proposals = jnp.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [40, 40, 50, 50]],
                          jnp.float32)
  # Classes (background, a, b): two overlapping "a" boxes, the same box as "b", a weak box.
  logits = jnp.log(jnp.asarray([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.1, 0.0, 0.9],
                                [0.98, 0.01, 0.01]]) + 1e-9)
  detections = jax.jit(detect.detections, static_argnames="max_detections")
  found = detections(logits, jnp.zeros((4, 3, 4)), proposals, jnp.ones((4,), bool),
                     jnp.asarray([64, 64]), max_detections=5)
  kept = np.asarray(found["valid"])
  assert sorted(np.asarray(found["labels"])[kept].tolist()) == [1, 2]
  np.testing.assert_allclose(np.asarray(found["scores"])[kept], [0.9, 0.9], rtol=1e-5)


def _tiny_model():
  return MaskTrackRCNN(num_classes=3, backbone="tiny", fpn_channels=16, fc_dim=32,
                       mask_channels=16)


def _tiny_batch(batch_size, height=64, width=64):
  """`batch_size` pairs: two instances (categories 1 and 2) in the same boxes, random images;
  the first instance is in the reference frame, the second is new."""
  boxes = np.asarray([[8, 8, 30, 28], [36, 30, 60, 60], [0, 0, 0, 0]], np.float32)
  masks = np.zeros((height, width, 3), np.uint8)
  masks[8:28, 8:30, 0] = 1
  masks[30:60, 36:60, 1] = 1
  rng = np.random.default_rng(0)
  tile = lambda x: np.repeat(x[None], batch_size, axis=0)
  images = lambda: rng.uniform(-1, 1, (batch_size, height, width, 3)).astype(np.float32)
  return {"image": images(), "reference_image": images(),
          "image_size": tile(np.asarray([height, width], np.int32)), "boxes": tile(boxes),
          "labels": tile(np.asarray([1, 2, 0], np.int32)), "masks": tile(masks),
          "reference_boxes": tile(boxes), "reference_labels": tile(np.asarray([1, 2, 0], np.int32)),
          "reference_index": tile(np.asarray([1, 0, 0], np.int32))}


@pytest.mark.slow
@pytest.mark.unoptimized
def test_losses_are_finite_trainable_and_the_same_sharded_over_8_devices():
  """The loss and gradients of 8 pairs: finite, reaching the tracking head, and the same with
  the batch split over the 8 fake devices (the training loop's batch sharding) as on one."""
  model = _tiny_model()
  batch = _tiny_batch(8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))

  def loss_and_grads(params, batch):
    return jax.value_and_grad(
        lambda p: train_step.compute_losses(model, {"params": p}, batch, jax.random.PRNGKey(1),
                                            losses.TargetConfig(rpn_samples=16,
                                                                rcnn_samples=16)),
        has_aux=True)(params)

  (loss, metrics), grads = jax.jit(loss_and_grads)(variables["params"], batch)
  assert np.isfinite(float(loss)) and metrics["positives"] > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  track_grad = grads["track_head"]["fc2"]["kernel"]
  assert float(jnp.abs(track_grad).sum()) > 0  # The tracking loss reaches its head.
  mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  assert mesh.devices.size == 8
  sharded_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  replicated = jax.device_put(variables["params"], sharding.replicated_sharding(mesh))
  (sharded_loss, sharded_metrics), sharded_grads = jax.jit(loss_and_grads)(replicated,
                                                                           sharded_batch)
  np.testing.assert_allclose(float(sharded_loss), float(loss), rtol=1e-5)
  for name in metrics:
    np.testing.assert_allclose(float(sharded_metrics[name]), float(metrics[name]), rtol=1e-5,
                               atol=1e-6, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(sharded_grads), jax.device_get(grads))


@pytest.mark.slow
def test_train_evaluate_export_and_bundle_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  overrides = ["--config.dataset.name=synthetic_vis/tiny", "--config.dataset.max_size=(64,64)",
               "--config.num_train_steps=2", "--config.log_every_steps=1",
               "--config.batch_size=2", "--config.eval_every_steps=0",
               "--config.model.fpn_channels=16", "--config.model.fc_dim=32",
               "--config.model.mask_channels=16",
               f"--config.dataset.data_dir={tmp_path / 'tfds'}"]
  command = [sys.executable, "main.py", "--config=configs/synthetic_vis.py",
             f"--workdir={workdir}"] + overrides
  # One CPU device (conftest gives this process 8 fake ones; the batch of 2 needs one); files and
  # formats are checked, not numerics, so XLA's optimizations are off (faster compiles).
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  subprocess.run(command, cwd=_ROOT, env=env, check=True, capture_output=True, text=True)
  predictions = workdir / "predictions" / "validation"
  results = json.loads((predictions / "results.json").read_text())
  assert (predictions / "results.zip").exists()
  for entry in results:
    assert set(entry) == {"video_id", "category_id", "score", "segmentations"}
    assert len(entry["segmentations"]) == 6
  evaluated = subprocess.run(command + ["--mode=evaluate"], cwd=_ROOT, env=env, check=True,
                             capture_output=True, text=True)
  assert "AP50" in evaluated.stdout and "frames/s" in evaluated.stdout
  scored = subprocess.run([sys.executable, "-m", "feelvos_jax.evaluate_vis",
                           f"--results={predictions / 'results.zip'}",
                           f"--annotations={predictions / 'instances.json'}"],
                          cwd=_ROOT, check=True, capture_output=True, text=True)
  assert scored.stdout.splitlines()[-1] in evaluated.stdout
  subprocess.run(command + ["--mode=export", "--config.export.platforms=('cpu',)"], cwd=_ROOT,
                 env=env, check=True, capture_output=True, text=True)
  loaded = vis_export.load(workdir / "export")
  assert sorted(p.name for p in (workdir / "export" / "functions").iterdir()) == [
      "detect_64x64.bin"]
  assert loaded.checkpoint_step == 2 and set(loaded.variables) == {"params", "batch_stats"}
  model = vis_train.build_model(loaded.config)
  variables, _ = vis_train.restore_variables(loaded.config, str(workdir), model)
  in_process = inference.VideoSegmenter.from_model(
      model, variables, (64, 64), vis_train.inference_config(loaded.config))
  videos = list(vis_train.decoded_videos(vis_train.load_builder(loaded.config), "validation", 2))
  instances = 0
  for video in videos:
    frames, video_id = video["video"]["frames"], int(video["video"]["id"])
    expected, got = in_process.segment(frames, video_id), loaded.segment(frames, video_id)
    assert [r["segmentations"] for r in got] == [r["segmentations"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected],
                               rtol=1e-5)
    assert [r["category_id"] for r in got] == [r["category_id"] for r in expected]
    instances += len(expected)
  assert instances  # Detections were compared.


@pytest.mark.slow
def test_resnet50_pyramid_shapes_and_names():
  """The paper's network, traced only (no compilation): P2..P6 at strides 4..64, heads of the
  authors' sizes, backbone names as models/resnet.py's (torchvision layout)."""
  model = MaskTrackRCNN(num_classes=40)
  images = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  params = variables["params"]
  assert "layer4_2" in params["encoder"] and "downsample_0" in params["encoder"]["layer1_0"]
  assert params["box_head"]["fc1"]["kernel"].shape == (7 * 7 * 256, 1024)
  assert params["track_head"]["fc2"]["kernel"].shape == (1024, 1024)
  assert params["mask_head"]["logits"]["kernel"].shape == (1, 1, 256, 41)
  pyramid = jax.eval_shape(lambda v, x: model.apply(v, x, method=MaskTrackRCNN.pyramid),
                           variables, images)
  assert [level.shape for level in pyramid] == [(1, 64 // s, 96 // s, 256)
                                                for s in (4, 8, 16, 32)] + [(1, 1, 2, 256)]
