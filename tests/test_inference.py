"""Video propagation (feelvos_jax/inference/propagation.py, video_propagation.py).

Tiny backbone, 32x32 videos. Every test shares the two propagators of `testing.shared_setup`
(object buckets (5,) and (2,)), so each step shape compiles once per session.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datasets import fake_layouts
from feelvos_jax import evaluation
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax.data import augmentation
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.evaluation import writers
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import propagation
from feelvos_jax.inference import video_propagation
from feelvos_jax.models import upsampling
from feelvos_jax.training import checkpointing
from feelvos_jax.training import optimizers
from feelvos_jax.training import train
from tests import testing


@pytest.fixture(name="setup")
def setup_fixture():
  return testing.shared_setup()


def test_chunk_labels_matches_loops():
  rng = np.random.default_rng(0)
  labels = rng.choice([0, 1, 2, 3, 4, 5, 6, 255], size=(5, 7))
  got = np.asarray(propagation._chunk_labels(jnp.asarray(labels), jnp.int32(2), 2))
  expected = np.empty_like(labels)
  for (y, x), value in np.ndenumerate(labels):
    if value == 0:
      expected[y, x] = 0
    elif 3 <= value <= 4:
      expected[y, x] = value - 2
    else:
      expected[y, x] = IGNORE_LABEL
  np.testing.assert_array_equal(got, expected)


def test_first_steps_match_direct_model_calls(setup):
  """Frames 1 and 2 of a padded 30x29 video, recomputed from `embed`/`segment` by hand."""
  _, model, variables, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(3, 2, height=30, width=29, seed=1)
  got = testing.run(propagator, frames, labels, first_frame)

  model5 = model.clone(max_objects=5)
  padded = np.full((3, testing.SIZE, testing.SIZE, 3), propagation.PAD_PIXEL, np.uint8)
  padded[:, :30, :29] = frames
  embed = jax.jit(lambda frame: model5.apply(variables, frame[None], method="embed"))
  segment = jax.jit(functools.partial(model5.apply, method="segment"))
  _, reference = embed(padded[0])
  given = np.full((testing.SIZE, testing.SIZE), IGNORE_LABEL, np.int32)
  given[:30, :29] = labels[0]
  previous_labels = given[::4, ::4]
  previous_probs = np.eye(6)[np.minimum(previous_labels, 5)] * (previous_labels != 255)[..., None]
  previous = reference
  for t in (1, 2):
    features, embedding = embed(padded[t])
    logits = segment(variables, features, embedding, reference, given[None, ::4, ::4],
                     previous, previous_labels[None], previous_probs[None], jnp.array([2]))
    upsampled = np.asarray(upsampling.upsample_logits(logits, (testing.SIZE, testing.SIZE)))[0]
    expected = np.argmax(upsampled, axis=-1)
    np.testing.assert_array_equal(got[t], expected[:30, :29], err_msg=f"frame {t}")
    valid = np.zeros((testing.SIZE, testing.SIZE), bool)
    valid[:30, :29] = True
    previous_labels = np.where(valid, expected, IGNORE_LABEL)[::4, ::4]
    previous_probs = np.asarray(jax.nn.softmax(logits[0], axis=-1))
    previous = embedding
  np.testing.assert_array_equal(got[0], labels[0])


def test_shapes_ids_and_late_object(setup):
  _, _, _, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(5, 3, seed=2, appear=[0, 0, 2])
  labels[0, :2, :2] = IGNORE_LABEL  # Void in the given mask is predicted background.
  object_ids = [7, 3, 12]
  states = []
  original_plan = propagator.plan

  def recording_plan(*args):
    plan = original_plan(*args)

    def step(state, *rest):
      states.append(jax.tree.map(lambda x: x.shape, state))
      return plan.step(state, *rest)
    return host_loop.Plan(plan.height, plan.width, plan.objects_per_chunk, plan.num_chunks,
                          plan.start, step)

  got = np.stack(list(host_loop.run_video(recording_plan, frames,
                                            testing.annotations_of(labels, first_frame),
                                            first_frame, object_ids)))
  assert got.shape == (5, testing.SIZE, testing.SIZE) and got.dtype == np.int32
  assert set(np.unique(got)) <= {0, 3, 7, 12}
  lookup = np.array([0, 7, 3, 12])
  np.testing.assert_array_equal(got[0], np.where(labels[0] == 255, 0, lookup[labels[0] % 255]))
  assert not (got[:2] == 12).any()  # Object 3 is absent before frame 2 ...
  np.testing.assert_array_equal(got[2] == 12, labels[2] == 3)  # ... given exactly at frame 2 ...
  h = testing.SIZE // 4
  assert [s["reference_labels"] for s in states] == [(h, h), (h, h), (2 * h, h), (2 * h, h)]
  # ... and referenced from then on (embeddings at stride 4, labels in the stacked buffer).
  assert states[2]["reference_embedding"] == (2 * h, h, 8)


def test_reference_buffer_labels_only_new_objects():
  state = {"reference_embedding": jnp.zeros((2, 3, 4)), "reference_labels": jnp.zeros((2, 3)),
           "previous_embedding": jnp.ones((2, 3, 4))}
  paste = np.full((8, 12), IGNORE_LABEL, np.int32)
  paste[4:8, 0:4] = 3
  new = propagation.add_reference(state, paste)
  np.testing.assert_array_equal(new["reference_labels"][2:], paste[::4, ::4])
  np.testing.assert_array_equal(new["reference_embedding"][2:], np.ones((2, 3, 4)))
  assert new["reference_labels"].shape == (4, 3)


def test_compiles_once_per_bucket(setup):
  _, _, _, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(4, 3, seed=3, appear=[0, 0, 2])
  testing.run(propagator, frames, labels, first_frame)
  with testing.count_traces() as traces:
    # Same bucket: another video, another size padded to 32x32, other objects, R = 1 and 2.
    frames, labels, first_frame = testing.make_video(6, 2, height=29, width=31, seed=4,
                                                     appear=[0, 3])
    testing.run(propagator, frames, labels, first_frame)
    frames, labels, first_frame = testing.make_video(3, 4, seed=5)
    testing.run(propagator, frames, labels, first_frame)
  assert traces["start_video"] == traces["propagation_step"] == 0
  with testing.count_traces() as traces:
    # Another padded size is another bucket: one trace of each function, for all its frames.
    frames, labels, first_frame = testing.make_video(5, 1, height=testing.SIZE + 4, seed=6)
    testing.run(propagator, frames, labels, first_frame)
  assert traces["start_video"] == traces["propagation_step"] == 1


def test_chunked_objects_equal_unchunked(setup):
  _, _, _, whole, chunked = setup
  frames, labels, first_frame = testing.make_video(4, 5, seed=7)
  expected = testing.run(whole, frames, labels, first_frame)
  plan = chunked.plan(testing.SIZE, testing.SIZE, 5)
  assert (plan.objects_per_chunk, plan.num_chunks) == (2, 3)
  got = testing.run(chunked, frames, labels, first_frame)
  np.testing.assert_array_equal(got, expected)
  assert len(np.unique(expected[1:])) > 2  # Several objects are predicted, not just one.


@pytest.mark.slow
@pytest.mark.parametrize("shard_axis", ["query", "reference"])
def test_sharded_matching_gives_the_unsharded_masks(setup, shard_axis):
  """config.matching.shard_axis splits global matching over the 8 fake devices: same masks."""
  _, model, variables, whole, _ = setup
  assert jax.device_count() == 8
  sharded_model = video_propagation.sharded_matching_model(model, shard_axis)
  assert sharded_model.matching_mesh.shape == {"matching": 8}
  sharded = video_propagation.VideoPropagator(sharded_model, variables)
  frames, labels, first_frame = testing.make_video(3, 3, seed=11)
  expected = testing.run(whole, frames, labels, first_frame)
  np.testing.assert_array_equal(testing.run(sharded, frames, labels, first_frame), expected)
  assert len(np.unique(expected[1:])) > 2


def test_unknown_shard_axis_is_refused(setup):
  with pytest.raises(ValueError, match="config.matching.shard_axis"):
    video_propagation.sharded_matching_model(setup[1], "pixels")


def test_object_order_does_not_matter(setup):
  """Slots share one head: relabelling the objects relabels the prediction."""
  _, _, _, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(4, 3, seed=8)
  expected = testing.run(propagator, frames, labels, first_frame, object_ids=[4, 5, 6])
  permutation = np.array([0, 3, 1, 2])  # Input label 1 -> 3, 2 -> 1, 3 -> 2.
  permuted = np.where(labels == 255, 255, permutation[labels % 255])
  got = testing.run(propagator, frames, permuted, first_frame, object_ids=[5, 6, 4])
  # Slots run in another order, so float rounding may differ: a near-tie pixel may flip.
  assert np.mean(got != expected) < 1e-3
  assert len(np.unique(expected[1:])) > 2


def test_streams_frames_without_keeping_them(setup):
  _, _, _, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(6, 2, seed=9)
  expected = testing.run(propagator, frames, labels, first_frame)
  pulled = []

  def frame_stream():
    for t, frame in enumerate(frames):
      pulled.append(t)
      yield frame

  outputs = propagator.propagate(frame_stream(), testing.annotations_of(labels, first_frame),
                                 first_frame)
  for t, output in enumerate(outputs):
    assert len(pulled) <= t + 2  # Frame t is handed out while frame t + 1 is computed.
    np.testing.assert_array_equal(output, expected[t])
  assert len(pulled) == 6


def test_frames_before_the_first_annotation_are_background(setup):
  _, _, _, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(4, 2, seed=10, appear=[1, 1])
  got = testing.run(propagator, frames, labels, first_frame)
  assert not got[0].any()
  np.testing.assert_array_equal(got[1], labels[1])


@pytest.mark.parametrize("change, message", [
    (lambda v: dict(v, first_frame=[]), "no object"),
    (lambda v: dict(v, annotations={}), "no annotation is given"),
    (lambda v: dict(v, first_frame=[0, 5]), "objects whose first_frame is later"),
    (lambda v: dict(v, first_frame=[0, 5], annotations={
        0: np.where(v["annotations"][0] == 2, 0, v["annotations"][0]),
        5: v["annotations"][0]}), "3 frames, but an object first appears at frame 5"),
    (lambda v: dict(v, annotations={0: np.where(v["annotations"][0] == 2, 0,
                                                v["annotations"][0])}), "absent"),
    (lambda v: dict(v, annotations={0: v["annotations"][0] + 9 * (v["annotations"][0] == 2)}),
     r"label\(s\) \[11\]"),
    (lambda v: dict(v, frames=v["frames"].astype(np.float32)), "uint8"),
    (lambda v: dict(v, object_ids=[1]), "1 object_ids for 2 objects"),
])
def test_bad_input_raises(setup, change, message):
  _, _, _, propagator, _ = setup
  frames, labels, first_frame = testing.make_video(3, 2, seed=11)
  video = change({"frames": frames, "annotations": testing.annotations_of(labels, first_frame),
                  "first_frame": first_frame, "object_ids": None})
  with pytest.raises(ValueError, match=message):
    list(propagator.propagate(video["frames"], video["annotations"], video["first_frame"],
                              video["object_ids"], name="cows"))


def test_pad_pixel_matches_training_augmentation():
  assert propagation.PAD_PIXEL == augmentation.PAD_PIXEL


def test_propagate_write_evaluate_round_trip(setup, tmp_path):
  """Predictions written in the DAVIS layout score the same as in memory."""
  config, _, _, propagator, _ = setup
  root = tmp_path / "DAVIS"
  truth = fake_layouts.write_fake_davis2017(os.fspath(root), {"val": ["bear", "cows"]},
                                            num_frames=5, size=(24, 32), num_objects=3)
  predictions = tmp_path / "predictions"
  videos = []
  for name, video in truth.items():
    first = video.segmentations[0]
    given = [i for i in np.unique(first) if i not in (0, 255)]  # DAVIS: first-frame objects.
    remap = np.zeros(256, np.int64)
    remap[given] = np.arange(1, len(given) + 1)
    remap[255] = 255
    videos.append({
        "name": name, "frame_names": video.frame_names, "frames": video.frames,
        "segmentations": remap[video.segmentations], "object_ids": np.array(given),
        "first_frame": np.zeros(len(given), np.int32),
        "original_size": np.array(video.segmentations.shape[1:])})

  def write(video, prediction):
    writers.write_davis_predictions(os.fspath(predictions), video["name"],
                                    video["frame_names"], prediction)

  global_table, rows, count = split_evaluation.evaluate_videos(propagator, videos, write=write)
  assert count == 2 and len(rows) == 4
  from_files, file_rows = evaluation.evaluate_predictions(os.fspath(predictions),
                                                          os.fspath(root), "val")
  assert from_files == pytest.approx(global_table)
  assert [r["Sequence"] for r in file_rows] == [r["Sequence"] for r in rows]
  assert global_table["J&F-Mean"] > 0.0
  assert set(global_table) == set(evaluation.GLOBAL_COLUMNS)
  davis_config = config.copy_and_resolve_references()
  davis_config.dataset.eval_protocol = "davis2017"  # These videos are DAVIS's, the set is not.
  metrics = split_evaluation.evaluate_dataset(setup[1], setup[2], videos, davis_config)
  assert metrics == pytest.approx(dict(global_table, num_videos=2.0))


def test_restore_variables_from_a_training_checkpoint(setup, tmp_path):
  config, model, variables, _, _ = setup
  testing.save_checkpoint(config, model, variables, tmp_path, 3)
  restored, step = checkpointing.restore_variables(config, os.fspath(tmp_path), model)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  wider = testing.small_config()
  wider.model.embedding_dim = 16
  with pytest.raises(ValueError, match="does not fit config.model"):
    checkpointing.restore_variables(wider, os.fspath(tmp_path), models.build_model(wider.model))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpointing.restore_variables(config, os.fspath(tmp_path / "empty"), model)


def test_a_workdir_relative_to_the_current_directory_restores(setup, tmp_path, monkeypatch):
  """`--workdir=runs/a` as a user types it: Orbax alone refuses a relative checkpoint path."""
  config, model, variables, _, _ = setup
  testing.save_checkpoint(config, model, variables, tmp_path / "runs" / "a", 2)
  monkeypatch.chdir(tmp_path)
  restored, step = checkpointing.restore_variables(config, os.path.join("runs", "a"), model)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  checkpointer = checkpointing.Checkpointer(os.path.join("runs", "a"), keep=1)
  try:
    assert checkpointer.latest_step() == 2
    assert os.fspath(checkpointer.directory) == os.fspath(tmp_path / "runs" / "a" / "checkpoints")
  finally:
    checkpointer.close()


@pytest.mark.slow
def test_run_evaluation_on_the_synthetic_set(setup, tmp_path, capsys):
  """main.py --mode=evaluate: checkpoint -> propagate the split -> PNGs, tables and CSVs."""
  config, model, variables, _, _ = setup
  config = testing.small_config()
  config.dataset.name = "synthetic_vos/tiny_procedural"
  config.dataset.data_dir = os.fspath(tmp_path / "tfds")
  tx = optimizers.create_optimizer(config.optimizer, config.learning_rate,
                                   config.num_train_steps)[0]
  state = train.TrainState(step=jnp.array(5), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(1),
                           apply_fn=model.apply, tx=tx)
  workdir = tmp_path / "workdir"
  checkpointer = checkpointing.Checkpointer(os.fspath(workdir), keep=1)
  checkpointer.save(5, state, config)
  checkpointer.close()

  table = split_evaluation.run_evaluation(config, os.fspath(workdir))
  printed = capsys.readouterr().out
  assert "Checkpoint step 5: 8 videos of split 'validation'" in printed
  assert "J&F-Mean" in printed and set(table) == set(evaluation.GLOBAL_COLUMNS)
  assert 0.0 < table["J&F-Mean"] <= 1.0
  output = workdir / "predictions" / "validation"
  videos = sorted(p.name for p in output.iterdir() if p.is_dir())
  assert len(videos) == 8
  assert len(list((output / videos[0]).glob("*.png"))) == 8
  assert "Scored with the protocol youtube_vos" in printed
  assert (output / "global_results-validation-youtube_vos.csv").exists()
  assert (output / "per-sequence_results-validation-youtube_vos.csv").exists()
