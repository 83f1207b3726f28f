"""Many videos per step (`host_loop.run_videos`, `VideoPropagator.propagate_batch` and
`propagate_in_batches`, `config.inference.video_batch_size` in evaluation).

Tiny backbone, 32x32 videos, the model of `testing.shared_setup` with the decisive hand-set
head of `testing.map_reading_variables`, object buckets (5,) and (2,). Every video runs its own
step's math under `jax.vmap`, and the reference frames another video adds are never matched;
but XLA:CPU sums the backbone's convolutions of B videos in another order than those of one,
so features differ by float32 rounding (about 1e-7). Hence: probabilities within 1e-5 of the
one-at-a-time ones, and labels equal wherever the decision is not a float32 near-tie, which
with this head is everywhere in these videos (a random head's near-ties flip).
"""
import functools

import numpy as np
import pytest

from feelvos_jax.evaluation import protocols
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import video_propagation
from tests import testing


@functools.cache
def _setup():
  """(config, model, variables, propagator with buckets (5,), with buckets (2,)): the shared
  model and compiled steps, with the map-reading head."""
  config, model, variables, _, _ = testing.shared_setup()
  variables = testing.map_reading_variables(variables, model.decoder_channels)
  return (config, model, variables, video_propagation.VideoPropagator(model, variables),
          video_propagation.VideoPropagator(model, variables, object_buckets=(2,)))


@pytest.fixture(name="setup")
def setup_fixture():
  return _setup()


def _video(num_frames, num_objects, seed, appear=None, height=testing.SIZE,
           width=testing.SIZE):
  """(host_loop.Video, its frames' ground truth) of `testing.make_video`."""
  frames, labels, first_frame = testing.make_video(num_frames, num_objects, height=height,
                                                   width=width, seed=seed, appear=appear)
  annotations = testing.annotations_of(labels, first_frame)
  return host_loop.Video(frames, annotations, first_frame, name=f"video{seed}"), labels


def _one_at_a_time(propagator, videos):
  return [np.stack(list(propagator.propagate(*video[:-1], name=video.name)))
          for video in videos]


@pytest.mark.slow
def test_batched_labels_equal_one_at_a_time(setup):
  """Different lengths, object counts, sizes of one bucket, objects appearing mid-video in
  some videos only, and frames before the first annotation."""
  _, _, _, propagator, _ = setup
  videos = [_video(6, 3, seed=20, appear=[0, 0, 2])[0],
            _video(3, 1, seed=21)[0],
            _video(5, 4, seed=22, appear=[1, 1, 3, 4], height=29, width=31)[0],
            _video(4, 2, seed=23)[0]]
  expected = _one_at_a_time(propagator, videos)
  with testing.count_traces() as traces:
    got = list(propagator.propagate_batch(videos))
  assert [g.shape for g in got] == [e.shape for e in expected]
  for index, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_array_equal(g, e, err_msg=f"video {index}")
    assert g.dtype == np.int32
  # One bucket: at most one start and one step per reference-buffer size (R = 1, 2, 3).
  assert traces["start_videos"] <= 1 and traces["propagation_steps"] <= 3
  assert not got[2][0].any()  # Before its first annotation: background.
  assert len(np.unique(expected[0][1:])) > 2  # Several objects are predicted.


@pytest.mark.slow
def test_chunked_objects_and_several_buckets(setup):
  """Objects in chunks (bucket (2,): 5 objects in 3 chunks, 1 object in 1), two plans: each
  plan's videos run together, the results come back in input order."""
  _, _, _, _, chunked = setup
  videos = [_video(4, 5, seed=30)[0], _video(3, 1, seed=31)[0],
            _video(5, 5, seed=32, appear=[0, 0, 0, 2, 2])[0]]
  plans = [chunked.plan(testing.SIZE, testing.SIZE, len(v.first_frame)) for v in videos]
  assert [(p.objects_per_chunk, p.num_chunks) for p in plans] == [(2, 3), (2, 1), (2, 3)]
  expected = _one_at_a_time(chunked, videos)
  got = list(chunked.propagate_batch(videos))
  for index, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_array_equal(g, e, err_msg=f"video {index}")


def _recording(plan_function, states, **options):
  """A planner whose plans append each step's input state to `states`."""
  def planner(*args):
    plan = plan_function(*args, **options)

    def step(state, *rest):
      states.append(state)
      return plan.step(state, *rest)
    return host_loop.Plan(plan.height, plan.width, plan.objects_per_chunk, plan.num_chunks,
                            plan.start, step)
  return planner


def test_batched_state_has_a_leading_video_axis_and_close_probabilities(setup):
  _, _, _, propagator, _ = setup
  videos = [_video(3, 2, seed=40)[0], _video(4, 2, seed=41, appear=[0, 2])[0]]
  batched = []
  host_loop.run_videos(_recording(propagator.plan, batched, batched=True), videos)
  h = testing.SIZE // 4
  assert [s["reference_labels"].shape for s in batched] == [(2, h, h), (2, h, h), (2, 2 * h, h)]
  assert batched[0]["previous_probs"].shape == (2, h, h, 6)
  assert batched[0]["previous_probs"].dtype == np.float32
  for index, video in enumerate(videos):
    alone = []
    list(host_loop.run_video(_recording(propagator.plan, alone), *video[:-1]))
    for step, state in enumerate(alone):
      np.testing.assert_allclose(batched[step]["previous_probs"][index],
                                 state["previous_probs"], atol=1e-5)


@pytest.mark.slow
def test_propagate_in_batches_holds_at_most_batch_size_videos(setup):
  _, _, _, propagator, _ = setup
  # Two buckets, 32x32 and 32x48 (not 48x32, whose first compilation test_inference counts).
  videos = [_video(3, n, seed=50 + n, width=testing.SIZE + 4 * (n % 2))[0]
            for n in (1, 2, 3, 4)]
  expected = _one_at_a_time(propagator, videos)
  pulled = []

  def stream():
    for index, video in enumerate(videos):
      pulled.append(index)
      yield index, video

  got = {}
  for index, labels in propagator.propagate_in_batches(stream(), batch_size=2):
    assert len(pulled) - len(got) <= 2  # Never more than two videos waiting or running.
    got[index] = labels
  assert sorted(got) == list(range(4))
  for index in range(4):
    np.testing.assert_array_equal(got[index], expected[index], err_msg=f"video {index}")


def test_errors_name_the_video(setup):
  _, _, _, propagator, _ = setup
  good = _video(3, 2, seed=60)[0]
  late = good._replace(first_frame=[0, 5], name="cows")
  with pytest.raises(ValueError, match="'cows'.*objects whose first_frame is later"):
    list(propagator.propagate_batch([good, late]))
  short = _video(3, 2, seed=61, appear=[0, 2])[0]
  short = short._replace(frames=short.frames[:2], name="goats")
  with pytest.raises(ValueError, match="'goats': 2 frames, but an object first appears at"):
    list(propagator.propagate_batch([good, short]))
  empty = good._replace(frames=[], name="sheep")
  with pytest.raises(ValueError, match="'sheep': 0 frames"):
    list(propagator.propagate_batch([empty]))


def test_sharded_matching_is_refused(setup):
  _, model, variables, _, _ = setup
  sharded = video_propagation.VideoPropagator(
      video_propagation.sharded_matching_model(model, "query"), variables)
  with pytest.raises(ValueError, match="config.matching.shard_axis"):
    sharded.propagate_batch([_video(3, 1, seed=70)[0]])


@pytest.mark.slow
def test_evaluation_with_video_batch_size_matches_one_at_a_time(setup):
  config, model, variables, propagator, _ = setup
  videos = []
  for seed, (num_frames, num_objects) in enumerate([(4, 2), (5, 3), (3, 1), (4, 2)]):
    video, labels = _video(num_frames, num_objects, seed=80 + seed)
    videos.append({
        "name": video.name, "frame_names": [f"{t:05d}" for t in range(num_frames)],
        "frames": video.frames, "segmentations": labels,
        "object_ids": np.arange(1, num_objects + 1) * 2,
        "first_frame": np.zeros(num_objects, np.int32),
        "original_size": np.array(labels.shape[1:])})
  protocol = protocols.protocol_for(config.dataset)
  expected = split_evaluation.evaluate_videos(propagator, videos, protocol=protocol)
  assert expected[0] is not None and expected[0]["J&F-Mean"] > 0.5
  batched_config = config.copy_and_resolve_references()
  batched_config.inference.video_batch_size = 3
  written = []
  got = split_evaluation.evaluate_videos(
      propagator, iter(videos), protocol=protocol, video_batch_size=3,
      write=lambda video, prediction: written.append(video["name"]))
  assert got == expected
  assert sorted(written) == sorted(v["name"] for v in videos)
  assert (split_evaluation.evaluate_dataset(model, variables, videos, batched_config)
          == dict(expected[0], num_videos=4.0))
