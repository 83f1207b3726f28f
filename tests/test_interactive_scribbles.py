"""Scribbles in the DAVIS interactive format, the conflict rule, refining interactions and
`clear_references`, warm_up, and the protocol's frame candidates and ground-truth marks
(feelvos_jax/inference/interactive/): NumPy rasterisation, and sessions of the narrow model of
`testing.interactive_setup` on its 30x29 videos of 5 frames."""
import jax
import numpy as np
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference import interactive
from feelvos_jax.inference.interactive import protocol
from feelvos_jax.inference.interactive import scribbles
from feelvos_jax.inference.interactive import steps
from tests import testing

NUM_FRAMES, HEIGHT, WIDTH = testing.INTERACTIVE_SHAPE


def davis(paths_by_frame, num_frames=NUM_FRAMES):
  """{"scribbles": [...]} with `paths_by_frame` {frame: [(object_id, [[x, y], ...])]}."""
  return {"scribbles": [[{"path": path, "object_id": object_id}
                         for object_id, path in paths_by_frame.get(t, [])]
                        for t in range(num_frames)], "sequence": "test"}


def test_paths_are_rasterised_as_connected_strokes():
  """Normalised (x, y) scaled by (W - 1, H - 1) as davisinteractive does; consecutive points
  joined by 8-connected segments; one stroke per frame and object."""
  data = davis({1: [(2, [[0.0, 0.0], [1.0, 1.0]]), (0, [[0.5, 0.1]]),
                    (2, [[0.0, 1.0], [1.0, 1.0]])]})
  strokes = scribbles.davis_strokes(data, NUM_FRAMES, (HEIGHT, WIDTH), [2])
  assert [(frame, object_id) for frame, object_id, _ in strokes] == [(1, 2), (1, 0)]
  diagonal = strokes[0][2]
  assert diagonal[0, 0] and diagonal[HEIGHT - 1, WIDTH - 1] and diagonal[HEIGHT - 1].all()
  rows = np.flatnonzero(diagonal[:HEIGHT - 1, :WIDTH // 2].any(axis=1))
  assert rows.tolist() == list(range(len(rows)))  # No gap between consecutive rows.
  dot = strokes[1][2]
  assert np.argwhere(dot).tolist() == [[round(0.1 * (HEIGHT - 1)), 14]]


@pytest.mark.parametrize("data, message", [
    (davis({}, NUM_FRAMES + 1), "hold 6 frames, but the video has 5"),
    (davis({2: [(3, [[0.5, 0.5]])]}), r"frame 2, object 3 \(path 0\): object_id 3 is not"),
    (davis({4: [(1, [[0.5, 1.2]])]}), r"frame 4, object 1 \(path 0\): point\(s\) \[\[0.5, 1.2"),
    (davis({0: [(1, [[0.5, -0.01], [0.2, 0.2]])]}), "outside \\[0, 1\\]"),
    (davis({0: [(0, [])]}), "frame 0, object 0 .*non-empty list"),
    ({"paths": []}, "DAVIS interactive format"),
])
def test_bad_scribbles_name_the_frame_and_object(data, message):
  with pytest.raises(ValueError, match=message):
    scribbles.davis_strokes(data, NUM_FRAMES, (HEIGHT, WIDTH), [1, 2])


@pytest.fixture(name="session")
def session_fixture():
  model, variables = testing.interactive_setup()
  return interactive.InteractiveSession(model, variables, testing.interactive_frames(7),
                                        object_ids=[1, 2])


def test_add_scribbles_conflicts_and_refused_input(session):
  """Strokes of two labels over one cell in one interaction leave it unmarked; a later
  interaction replaces earlier marks; refused scribbles leave the session unchanged."""
  across = davis({2: [(1, [[0.1, 0.5], [0.9, 0.5]]), (0, [[0.5, 0.1], [0.5, 0.9]])]})
  assert session.add_scribbles(across) == [2]
  references = session.references[2]
  crossing = (round(0.5 * (HEIGHT - 1)) + 2) // 4, (round(0.5 * (WIDTH - 1)) + 2) // 4
  assert references[crossing] == IGNORE_LABEL
  assert (references == 1).sum() >= 4 and (references == 0).sum() >= 4
  before = session.references
  with pytest.raises(ValueError, match="frame 3, object 7"):
    session.add_scribbles(davis({1: [(2, [[0.2, 0.2]])], 3: [(7, [[0.2, 0.2]])]}))
  np.testing.assert_array_equal(session.references, before)
  session.end_interaction()
  session.add_scribbles(davis({2: [(2, [[0.5, 0.1], [0.5, 0.9]])]}))
  assert session.references[2][crossing] == 2


def test_first_round_without_background_strokes_uses_the_prior(session):
  """Object strokes alone: the 'far' prior matches distant cells as background (never shown
  in `references`), and keeps them when a correction adds a background stroke (which is added
  to them, not put in their place); the 'none' prior leaves them unmarked."""
  session.add_scribbles(davis({0: [(1, [[0.3, 0.3], [0.4, 0.4]])]}))
  effective = session.effective_references()
  assert (effective[0] == 0).any() and not (session.references == 0).any()
  far = np.argwhere(effective[0] == 0)
  assert np.hypot(far[:, 0] - 3, far[:, 1] - 3).min() > 0.25 * 8
  session.end_interaction()
  session.add_scribbles(davis({0: [(0, [[0.45, 0.5], [0.5, 0.5]])]}))
  stroke = session.references[0] == 0
  corrected = session.effective_references()[0] == 0
  assert stroke.any() and np.all(corrected[stroke])
  np.testing.assert_array_equal(corrected & ~stroke, (effective[0] == 0) & ~stroke)
  session.background_prior = "none"
  np.testing.assert_array_equal(session.effective_references(), session.references)
  session.background_prior = "border"
  ring = (session.effective_references()[0] == 0) & ~stroke
  assert ring[0].any() and not ring[2:-2, 2:-2].any()


def test_clear_references_keeps_the_embeddings_and_caches(session):
  session.add_scribbles(davis({1: [(1, [[0.3, 0.3], [0.5, 0.5]]), (0, [[0.0, 0.0], [1.0, 0.0]])]}))
  first = session.propagate(1, "both")
  embeddings, cached = session.embeddings, session.distance_bytes
  session.clear_references()
  assert (session.references == IGNORE_LABEL).all() and not session.labels.any()
  assert session.interacted_frames == () and session.embeddings is not None
  np.testing.assert_array_equal(session.embeddings, embeddings)
  assert session.distance_bytes == cached
  with pytest.raises(ValueError, match="no object of this video"):
    session.propagate(1)
  session.add_scribbles(davis({1: [(1, [[0.3, 0.3], [0.5, 0.5]]), (0, [[0.0, 0.0], [1.0, 0.0]])]}))
  np.testing.assert_array_equal(session.propagate(1, "both"), first)
  assert [timing["from_frame"] for timing in session.timings] == [1, 1]
  assert all(timing["seconds"] > 0 and timing["frames"] == NUM_FRAMES
             for timing in session.timings)


def keeping_head(variables, num_features):
  """The variables with a segmentation head whose slot logit is 10 x (previous probability)
  + 10 x (1 - local distance): centre taps 1, features and global maps weighted 0."""
  head = {name: dict(layer) for name, layer in variables["params"]["segmentation_head"].items()}
  for name, layer in head.items():
    if name == "logits":
      kernel = np.zeros(layer["kernel"].shape, np.float32)
      kernel[0, 0, :2, 0] = 10.0
      head[name] = {"kernel": kernel, "bias": np.zeros(layer["bias"].shape, np.float32)}
      continue
    depthwise = np.zeros(layer["depthwise_kernel"].shape, np.float32)
    centre = depthwise.shape[0] // 2
    depthwise[centre, centre] = 1.0
    pointwise = np.zeros(layer["pointwise_kernel"].shape, np.float32)
    bias = np.zeros(layer["pointwise_bias"].shape, np.float32)
    if name == "layer_0":
      pointwise[0, 0, num_features + 1, 0] = 1.0  # The previous probability.
      pointwise[0, 0, num_features + 2, 1] = -1.0  # 1 - the local distance.
      bias[1] = 1.0
    else:
      pointwise[0, 0, 0, 0] = pointwise[0, 0, 1, 1] = 1.0
    head[name] = {"depthwise_kernel": depthwise,
                  "depthwise_bias": np.zeros(layer["depthwise_bias"].shape, np.float32),
                  "pointwise_kernel": pointwise, "pointwise_bias": bias}
  params = dict(variables["params"], segmentation_head=head)
  return dict(variables, params=params)


def test_a_correction_does_not_remove_an_unstroked_object():
  """Round 1 marks objects 1 and 2 on frame 0; round 2 draws a background stroke beside
  object 1 on frame 3 only. Starting frame 3 from its labels keeps object 2 on every frame
  (marks alone on frame 3 would give object 2 no local match and no previous probability)."""
  model, variables = testing.interactive_setup()
  variables = keeping_head(variables, model.decoder_channels)
  session = interactive.InteractiveSession(model, variables, testing.interactive_frames(9),
                                           object_ids=[1, 2])
  session.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16))
  session.add_scribble(0, 2, testing.box_mask(22, 18, 29, 27))
  session.add_background_scribble(0, testing.box_mask(0, 0, 3, 29))
  before = session.propagate(0, "forward")
  object2 = (before == 2).sum(axis=(1, 2))
  assert (object2 > 20).all(), object2
  stroke = np.zeros((HEIGHT, WIDTH), bool)
  stroke[4, 2:20] = True
  session.add_background_scribble(3, stroke)
  after = session.propagate(3, "both")
  assert ((after == 2).sum(axis=(1, 2)) >= 0.5 * object2).all()
  assert (after == 1).any(axis=(1, 2)).all()
  assert (after[3][stroke] == 0).all()


def test_chain_weights_fuse_between_the_new_interaction_and_the_nearest_earlier_one():
  """MiVOS's fusion: from frame 5 of 10 with earlier interactions at 8 and 1, the new
  prediction weighs |t - a| / (|t - a| + |t - 5|) (a the nearest earlier interaction) where a
  prediction is stored, 1 where none is or no earlier interaction lies on the chain."""
  stored = set(range(10)) - {9}
  forward, backward = steps.chain_weights(5, 10, "both", {8}, stored, False)
  assert forward == pytest.approx({6: 2 / 3, 7: 1 / 3, 8: 0.0, 9: 1.0})  # 9 stores nothing.
  assert backward == {4: 1.0, 3: 1.0, 2: 1.0, 1: 1.0, 0: 1.0}
  (forward,) = steps.chain_weights(5, 10, "forward", {8}, set(range(10)), False)
  assert forward[9] == pytest.approx(1 / (1 + 4))
  (backward,) = steps.chain_weights(9, 10, "backward", {5, 1}, set(range(10)), False)
  assert backward[3] == pytest.approx(2 / (2 + 6))  # Nearer to 1 (ahead) than to 5 (passed).
  assert backward[6] == pytest.approx(1 / (1 + 3))
  forward, backward = steps.chain_weights(5, 10, "both", {8, 1}, stored, True)
  assert forward == pytest.approx({6: 2 / 3, 7: 1 / 3})
  assert backward == pytest.approx({4: 3 / 4, 3: 2 / 4, 2: 1 / 4})
  assert steps.chain_weights(0, 3, "backward", set(), stored, False) == [{}]


def test_frame_candidates_offer_the_robot_the_frames_without_scribbles():
  """The protocol's next_scribble_frame_candidates: None (every frame) under 'any'; the
  frames not interacted on under 'not_interacted', None again once all were."""
  candidates = protocol.frame_candidates
  assert candidates("any", 5, [1, 3]) is None
  assert candidates("not_interacted", 5, (3, 1)) == [0, 2, 4]
  assert candidates("not_interacted", 5, ()) == [0, 1, 2, 3, 4]
  assert candidates("not_interacted", 3, [2, 0, 1]) is None
  with pytest.raises(ValueError, match="frame_candidates must be one of"):
    candidates("worst", 3, [])


def test_ground_truth_marks_replace_the_strokes_of_the_interaction(session):
  """The driver's upper bound: each label of the annotation marks the cells it dominates, as
  one interaction after the robot's strokes (which it replaces); unknown ids are skipped."""
  annotation = np.zeros((HEIGHT, WIDTH), np.int64)
  annotation[:, :WIDTH // 2] = 1
  annotation[2:12, -12:-2] = 2
  annotation[-8:, -8:] = 9
  session.add_scribbles(davis({1: [(2, [[0.05, 0.5], [0.45, 0.5]])]}))  # Object 2 over 1.
  protocol.mark_ground_truth(session, 1, annotation)
  cells = {label: scribbles.mask_cells(annotation == label) for label in (0, 1, 2, 9)}
  references = session.references[1]
  for label in (0, 1, 2):
    alone = cells[label] & ~np.logical_or.reduce([c for k, c in cells.items() if k != label])
    assert alone.sum() >= 4
    assert (references[alone] == label).all()
  assert not (references == 9).any()
  assert (session.references[[0, 2, 3, 4]] == IGNORE_LABEL).all()


@pytest.mark.parametrize("committed", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["restored", "fresh"])
def test_after_warm_up_interactions_compile_nothing(committed):
  """`warm_up` compiles every step an interaction takes, on the protocol's path at 128x128:
  a new session's first propagation from object strokes (the prior adds enough background
  cells for a reference bucket above the first, and no global-matching minima are stored
  yet), then a correction whose chain is fused with the first round. The variables are
  committed to a device, as a restored checkpoint's are (jit then keys on where each operand
  lives, and host arrays beside device arrays missed the warm cache), or fresh."""
  model, variables = testing.interactive_setup()
  if committed:
    variables = jax.device_put(variables, jax.devices()[0])
  frames = np.random.default_rng(3).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
  interactive.InteractiveSession(model, variables, frames, object_ids=[1, 2]).warm_up(512, 2)
  session = interactive.InteractiveSession(model, variables, frames, object_ids=[1, 2])
  with testing.count_compiles() as compiles:
    session.add_scribbles(davis({1: [(1, [[0.2, 0.2], [0.4, 0.3]]),
                                     (2, [[0.6, 0.7], [0.8, 0.7]])]}, num_frames=4))
    session.propagate(1, "both")
    session.add_scribbles(davis({3: [(0, [[0.1, 0.9], [0.3, 0.9]])]}, num_frames=4))
    session.propagate(3, "both")
  assert (session.effective_references() != IGNORE_LABEL).sum() > 64
  assert not compiles, dict(compiles)
