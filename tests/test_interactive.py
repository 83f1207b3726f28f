"""Interactive segmentation (feelvos_jax/inference/interactive/, matching/incremental.py): tiny
backbone, 30x29 videos of 5 frames.

Every test but the compile-count one shares one model, so the steps compile once per session.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.models import upsampling

from feelvos_jax import models
from feelvos_jax.inference import interactive
from feelvos_jax.inference.interactive import routes
from feelvos_jax.inference.interactive import scribbles
from feelvos_jax.inference.interactive import steps
from feelvos_jax.matching import incremental
from feelvos_jax.inference import propagation
from feelvos_jax.models import feelvos
from tests import testing

NUM_FRAMES, HEIGHT, WIDTH = testing.INTERACTIVE_SHAPE
PADDED = 32  # The tiny backbone's output stride 16 pads 30x29 to 32x32.


@pytest.fixture(name="setup")
def setup_fixture():
  return testing.interactive_setup()


def cells_by_loops(mask):
  """Loops of the stroke rule: the mask drawn 3 pixels wide marks cell (i, j) where it covers
  at least half of the in-frame pixels of rows 4i-2..4i+1, columns 4j-2..4j+1; with no such
  cell, the first cell of largest coverage."""
  height, width = mask.shape
  drawn = np.zeros_like(mask)
  for y, x in zip(*np.nonzero(mask)):
    drawn[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
  h, w = -(-height // 4), -(-width // 4)
  coverage = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      window = drawn[max(4 * i - 2, 0):4 * i + 2, max(4 * j - 2, 0):4 * j + 2]
      coverage[i, j] = window.mean()
  cells = coverage >= 0.5
  if not cells.any():
    cells[np.unravel_index(np.argmax(coverage), cells.shape)] = True
  return cells


def test_mask_cells_match_loops():
  rng = np.random.default_rng(0)
  for shape, density in [((30, 29), 0.02), ((32, 32), 0.1), ((5, 9), 0.3), ((30, 29), 0.002)]:
    mask = rng.random(shape) < density
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    np.testing.assert_array_equal(scribbles.mask_cells(mask), cells_by_loops(mask))


def test_thin_strokes_mark_the_cells_they_dominate():
  """A one-pixel line marks the row of cells whose sample pixels it passes nearest; a line
  along the edge of their windows does not claim the cells beyond it."""
  for row, cell_row in [(8, 2), (9, 2), (10, 3), (11, 3), (13, 3)]:
    line = np.zeros((HEIGHT, WIDTH), bool)
    line[row, 3:26] = True
    cells = scribbles.mask_cells(line)
    assert np.flatnonzero(cells.any(axis=1)).tolist() == [cell_row], row
  corner = np.zeros((HEIGHT, WIDTH), bool)
  corner[10, 10] = True  # Dominates no window: the window it covers most only.
  assert np.argwhere(scribbles.mask_cells(corner)).tolist() == [[3, 3]]


def test_marked_cells_of_points_and_masks():
  """Scribble parsing without a model: points floor to their cell, masks mark every cell
  holding a True pixel; bad scribbles raise naming where they were given."""
  cells = scribbles.marked_cells([(1, 2), (13, 14.9), (29.9, 28.5)], (HEIGHT, WIDTH), "here")
  assert cells.shape == (8, 8)
  assert np.argwhere(cells).tolist() == [[0, 0], [3, 3], [7, 7]]
  mask = testing.box_mask(5, 3, 9, 13) | testing.box_mask(27, 26, 30, 29)
  np.testing.assert_array_equal(scribbles.marked_cells(mask, (HEIGHT, WIDTH), "here"),
                                cells_by_loops(mask))
  assert cells_by_loops(mask)[7, 7]
  for scribble, message in [([(30, 3)], r"here: point\(s\) \[\[30, 3\]\] \(y, x\) outside"),
                            ([(3, float("nan"))], "outside the 30x29 frame"),
                            ([], "empty scribble"), (np.zeros((HEIGHT, WIDTH), bool), "empty"),
                            (np.ones((PADDED, PADDED), bool), r"shape \(32, 32\)"),
                            ([(1, 2, 3)], "bool mask or a list of"), ([(1,), (2, 3)], "here")]:
    with pytest.raises(ValueError, match=message):
      scribbles.marked_cells(scribble, (HEIGHT, WIDTH), "here")


def test_reference_bucket():
  assert [scribbles.reference_bucket(n) for n in (0, 1, 32, 33, 257, 600, 1024)] == [
      32, 32, 32, 64, 512, 1024, 1024]


def direct_embed(model, variables, frames):
  """(features, embeddings) of the padded frames from one jitted `embed` call."""
  padded = np.full((len(frames), PADDED, PADDED, 3), propagation.PAD_PIXEL, np.uint8)
  padded[:, :HEIGHT, :WIDTH] = frames
  return jax.jit(functools.partial(model.apply, method="embed"))(variables, padded)


def direct_labels(model, variables, features, embeddings, marks, from_frame, chains, *,
                  num_objects, stacked=True):
  """{frame: [PADDED, PADDED] slot labels} recomputed from the model's own `segment` on the
  features and embeddings [T, h, w, C], as a propagation from `from_frame` along `chains` gives
  them.

  The reference: the frames holding marks (`marks` [T, h, w] slots, IGNORE_LABEL unmarked)
  stacked along the height as in video inference, or (not `stacked`) their marked cells alone
  as one row in frame order, as the session gathers them. The frame of interaction's previous
  frame is itself with its marks as labels and their one-hot as probabilities; a later frame's
  is the frame before it with its labels and softmax probabilities.
  """
  marked = marks != IGNORE_LABEL
  if stacked:
    rows = [t for t in range(len(marks)) if marked[t].any()]
    reference_embedding = jnp.concatenate([embeddings[t] for t in rows])[None]
    reference_labels = np.concatenate([marks[t] for t in rows])[None]
  else:
    reference_embedding = embeddings[marked][None, None]
    reference_labels = marks[marked][None, None]
  segment = jax.jit(functools.partial(model.apply, method="segment"))
  valid = np.zeros((PADDED, PADDED), bool)
  valid[:HEIGHT, :WIDTH] = True

  def segment_frame(t, previous):
    previous_embedding, previous_labels, previous_probs = previous
    logits = segment(variables, features[t:t + 1], embeddings[t:t + 1], reference_embedding,
                     reference_labels, previous_embedding[None], previous_labels[None],
                     previous_probs[None], jnp.array([num_objects]))
    upsampled = np.asarray(upsampling.upsample_logits(logits, (PADDED, PADDED)))[0]
    labels = np.where(valid, np.argmax(upsampled, axis=-1), IGNORE_LABEL)
    probs = np.asarray(jax.nn.softmax(logits[0], axis=-1))
    return labels, (embeddings[t], labels[::4, ::4], probs)

  slots = model.num_slots
  one_hot = (np.eye(slots)[np.minimum(marks[from_frame], slots - 1)]
             * marked[from_frame][..., None])
  expected = {}
  expected[from_frame], after = segment_frame(from_frame, (embeddings[from_frame],
                                                           marks[from_frame], one_hot))
  for chain in chains:
    previous = after
    for t in chain:
      expected[t], previous = segment_frame(t, previous)
  return expected


def test_matches_direct_segment_calls(setup):
  """Both chains from frame 2, recomputed from `embed`/`segment` on a stacked reference."""
  model, variables = setup
  frames = testing.interactive_frames()
  session = interactive.InteractiveSession(model, variables, frames, object_ids=[4, 9, 2],
                                           background_prior="none")
  object4_frame0 = testing.box_mask(8, 6, 20, 16)
  object9_frame3 = testing.box_mask(22, 20, 27, 25)
  background2 = np.eye(HEIGHT, WIDTH, dtype=bool)
  session.add_scribble(0, 4, object4_frame0)
  session.add_background_scribble(0, [(29, 28), (0.5, 27.9)])
  session.add_scribble(2, 4, [(5.5, 6.2), (17, 9)])
  session.add_background_scribble(2, background2)  # Claims cell (1, 1) of object 4's too.
  session.add_scribble(3, 9, object9_frame3)
  got = session.propagate(2, direction="both")

  # Slots: object 4 -> 1, object 9 -> 2; object 2 has no scribble and takes no part.
  h = PADDED // 4
  marks = np.full((NUM_FRAMES, h, h), IGNORE_LABEL, np.int32)
  marks[0][cells_by_loops(object4_frame0)] = 1
  marks[0, 29 // 4, 28 // 4] = marks[0, 0, 27 // 4] = 0
  marks[2, 5 // 4, 6 // 4] = marks[2, 17 // 4, 9 // 4] = 1
  marks[2][cells_by_loops(background2)] = 0
  marks[3][cells_by_loops(object9_frame3)] = 2
  marks[2, 1, 1] = IGNORE_LABEL  # Claimed by two labels in one interaction: left unmarked.
  stored = np.where(marks == IGNORE_LABEL, IGNORE_LABEL, np.array([0, 4, 9])[marks % 255])
  np.testing.assert_array_equal(session.references, stored)

  features, embeddings = direct_embed(model, variables, frames)
  np.testing.assert_allclose(session.embeddings, embeddings, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(session.features, features, rtol=1e-5, atol=1e-5)
  expected = direct_labels(model, variables, features, embeddings, marks, 2, ([3, 4], [1, 0]),
                           num_objects=2)
  lookup = np.array([0, 4, 9])
  for t in range(NUM_FRAMES):
    np.testing.assert_array_equal(got[t], lookup[expected[t][:HEIGHT, :WIDTH]],
                                  err_msg=f"frame {t}")
  assert got.shape == (NUM_FRAMES, HEIGHT, WIDTH) and got.dtype == np.int32
  assert set(np.unique(got)) == {0, 4, 9}  # Non-trivial, and object 2 is predicted nowhere.
  np.testing.assert_array_equal(session.labels, got)


def test_directions_cover_the_right_frames(setup, monkeypatch):
  model, variables = setup
  stepped = []
  original = steps.compiled_incremental_step

  def recording(step_model):
    step = original(step_model)

    def record(variables, state, features, embeddings, frame, *rest):
      stepped.append(int(frame))
      return step(variables, state, features, embeddings, frame, *rest)
    return record

  monkeypatch.setattr(steps, "compiled_incremental_step", recording)
  session = interactive.InteractiveSession(model, variables, testing.interactive_frames(1),
                                           object_ids=[1])
  session.add_scribble(2, 1, testing.box_mask(9, 9, 18, 18))
  session.add_background_scribble(2, testing.box_mask(0, 0, 3, 29))
  both = session.propagate(2, "both")
  assert stepped == [2, 3, 4, 1, 0]
  assert all((both[t] != 0).any() for t in range(NUM_FRAMES))

  fresh = interactive.InteractiveSession(model, variables, testing.interactive_frames(1),
                                         object_ids=[1])
  fresh.add_scribble(2, 1, testing.box_mask(9, 9, 18, 18))
  fresh.add_background_scribble(2, testing.box_mask(0, 0, 3, 29))
  del stepped[:]
  forward = fresh.propagate(2, "forward")
  assert stepped == [2, 3, 4]
  np.testing.assert_array_equal(forward[2:], both[2:])
  assert not forward[:2].any()  # Never propagated: still the initial background.
  fresh.add_scribble(3, 1, [(12, 20)])
  del stepped[:]
  backward = fresh.propagate(3, "backward")
  assert stepped == [3, 2, 1, 0]
  np.testing.assert_array_equal(backward[4], forward[4])  # Kept from the forward pass.
  np.testing.assert_array_equal(fresh.labels, backward)


def test_a_video_of_one_frame(setup):
  """No neighbouring pair of frames: the frame of interaction is segmented as in a longer
  video (its result depends on its own marked cells alone)."""
  model, variables = setup
  frames = testing.interactive_frames(3)
  labels = []
  for length in (1, 2):
    session = interactive.InteractiveSession(model, variables, frames[:length], object_ids=[1])
    session.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16))
    session.add_background_scribble(0, testing.box_mask(0, 0, 2, 29))
    labels.append(session.propagate(0, "both")[0])
  assert set(np.unique(labels[0])) == {0, 1}
  np.testing.assert_array_equal(labels[0], labels[1])


def test_points_and_mask_on_the_same_cells_agree(setup):
  model, variables = setup
  frames = testing.interactive_frames(2)
  with_points = interactive.InteractiveSession(model, variables, frames, object_ids=[1])
  with_points.add_scribble(1, 1, [(1, 2), (13, 14), (29.9, 28.5)])
  with_points.add_background_scribble(1, np.array([[20, 3], [0, 27]]))
  with_mask = interactive.InteractiveSession(model, variables, frames, object_ids=[1])
  mask = np.zeros((HEIGHT, WIDTH), bool)
  mask[0, 0] = mask[12, 12] = mask[28, 28] = True  # Sample pixels of (0, 0), (3, 3), (7, 7).
  with_mask.add_scribble(1, 1, mask)
  background = np.zeros((HEIGHT, WIDTH), bool)
  background[20, 0] = background[0, 24] = True  # Cells (5, 0), (0, 6).
  with_mask.add_background_scribble(1, background)
  np.testing.assert_array_equal(with_points.references, with_mask.references)
  assert (with_points.references != IGNORE_LABEL).sum() == 5
  np.testing.assert_array_equal(with_points.propagate(1, "both"),
                                with_mask.propagate(1, "both"))


def _bad_calls():
  points = [(3, 4)]
  return [
      (lambda s: s.add_scribble(0, 7, points), "object_id 7 is not an object"),
      (lambda s: s.add_scribble(NUM_FRAMES, 1, points), "frame must be a frame index"),
      (lambda s: s.add_scribble(-1, 1, points), "frame must be a frame index"),
      (lambda s: s.add_scribble(0, 1, [(30, 3)]), r"frame 0, object 1: point\(s\) \[\[30, 3\]\]"),
      (lambda s: s.add_scribble(0, 1, [(3, 4), (3, -0.5)]), "outside the 30x29 frame"),
      (lambda s: s.add_scribble(0, 1, []), "empty scribble"),
      (lambda s: s.add_scribble(0, 1, np.zeros((HEIGHT, WIDTH), bool)), "empty scribble"),
      (lambda s: s.add_scribble(0, 1, np.ones((PADDED, PADDED), bool)), r"shape \(32, 32\)"),
      (lambda s: s.add_scribble(0, 1, np.ones((HEIGHT, WIDTH), np.uint8)), "bool mask"),
      (lambda s: s.add_scribble(0, 1, [(1, 2, 3)]), "bool mask or a list of"),
      (lambda s: s.add_background_scribble(9, points), "frame must be a frame index"),
      (lambda s: s.add_object(1), "object 1 is already"),
      (lambda s: s.add_object(IGNORE_LABEL), r"ids must be ints in 1\.\.254"),
      (lambda s: s.propagate(NUM_FRAMES), "from_frame must be a frame index"),
      (lambda s: s.propagate(0, "sideways"), "direction must be one of"),
      (lambda s: s.propagate(4), "from_frame 4 holds no scribble"),
  ]


def test_bad_input_raises_and_leaves_the_state_unchanged(setup):
  model, variables = setup
  session = interactive.InteractiveSession(model, variables, testing.interactive_frames(3),
                                           object_ids=[1])
  session.add_object(2)
  session.add_background_scribble(0, testing.box_mask(0, 0, 2, 29))
  with pytest.raises(ValueError, match="no object of this video"):
    session.propagate(0)
  session.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16))
  session.propagate(0, "forward")

  def snapshot():
    return (session.object_ids, session.references, session.labels)

  before = snapshot()
  assert (before[1] != IGNORE_LABEL).any() and before[2].any()
  for call, message in _bad_calls():
    with pytest.raises(ValueError, match=message):
      call(session)
    after = snapshot()
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
  with pytest.raises(ValueError, match="already an object"):
    interactive.InteractiveSession(model, variables, testing.interactive_frames(),
                                   object_ids=[3, 3])
  with pytest.raises(ValueError, match="uint8"):
    interactive.InteractiveSession(model, variables,
                                   testing.interactive_frames().astype(np.float32))
  for name in ("distance_cache_bytes", "head_cache_bytes"):
    with pytest.raises(ValueError, match=f"{name} must be an int >= 0, got -1"):
      interactive.InteractiveSession(model, variables, testing.interactive_frames(), **{name: -1})


def test_embeds_once_and_compiles_once(setup, monkeypatch):
  """Counts executions of FEELVOS.embed (a debug callback) and jit traces of each function.

  A model and a frame size (36x29, padded to 48x32) of its own: every function traces afresh.
  """
  model, variables = setup
  model = model.clone(matching_chunk_size=1000)
  embedded = []
  original_embed = feelvos.FEELVOS.embed

  def counting_embed(self, frames, train=False):
    jax.debug.callback(lambda n: embedded.append(int(n)), frames.shape[0])
    return original_embed(self, frames, train)

  monkeypatch.setattr(feelvos.FEELVOS, "embed", counting_embed)
  with testing.count_traces() as traces:
    session = interactive.InteractiveSession(model, variables,
                                             testing.interactive_frames(4, height=36),
                                             object_ids=[1, 2], embed_batch_size=2)
    jax.effects_barrier()
  assert embedded == [2, 2, 2]  # 5 frames in 3 batches of 2 (one padding frame).
  assert traces["embed_frames"] == 1
  assert session.embedding_bytes == 6 * 12 * 8 * (8 + 8) * 4  # Tp x h x w x (D + E) x 4.

  with testing.count_traces() as traces:
    session.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16, height=36))
    session.add_scribble(0, 2, [(25, 3)])
    session.add_background_scribble(0, testing.box_mask(0, 0, 2, 29, height=36))
    session.propagate(0, "forward")
    session.add_scribble(3, 2, [(26, 5)])
    session.propagate(3, "both")
    session.add_background_scribble(4, [(1, 1)])
    session.propagate(4, "backward")
  # One step for the frames of interaction (local maps from cells, or from their own pair once
  # they hold labels) and the chains.
  assert traces["incremental_step"] == traces["frame_pair_distances"] == 1
  assert traces["start_state"] == 0  # The incremental route starts from NumPy states.
  assert traces["head_feature_part"] == 1
  # Pairs (t, t - 1) for t = 1..4, once each; frame 0 starts from its cells, frames 3 and 4
  # from their labels (self-pairs); then read by every later step: 1 + 4 + 4 hits.
  assert sorted(session._distances.keys()) == [(1, 0), (2, 1), (3, 2), (3, 3), (4, 3), (4, 4)]
  distances = session._distances
  assert (distances.misses, distances.hits, distances.refused) == (6, 9, 0)
  assert sorted(session._feature_parts.keys()) == [0, 1, 2, 3, 4]  # One per frame.
  assert session.feature_part_bytes == 5 * 12 * 8 * 8 * 4  # T x h x w x head_channels x 4.
  assert sorted(session._minima.keys()) == [0, 1, 2, 3, 4]
  slots = dict(session._minima.items())[0][1].shape[-1]
  assert session.minima_bytes == 5 * 12 * 8 * slots * 4  # T x h x w x K x 4.
  with testing.count_traces() as traces:
    for t in (0, 1, 3, 4):  # 4 x 9 x 8 cells: 288 reference pixels, the next bucket.
      session.add_background_scribble(t, np.ones((36, WIDTH), bool))
    session.add_scribble(2, 1, [(10, 10)])
    session.propagate(2, "both")
    session.propagate(1, "forward")
  # The full-frame strokes relabel marked cells: every frame is matched against all 288+
  # cells (the 512 bucket) once; propagate(1) then adds no cell (the 32 bucket, compiled).
  assert traces["incremental_step"] == traces["reference_rows"] == 1
  assert traces["frame_pair_distances"] == traces["head_feature_part"] == 0
  jax.effects_barrier()
  assert embedded == [2, 2, 2] and traces["embed_frames"] == 0


def numpy_pair_distances(current, previous, window):
  """[h, w, O] squared distances to previous[p + o], inf outside: loops."""
  height, width, _ = current.shape
  offsets = [(dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)]
  result = np.full((height, width, len(offsets)), np.inf)
  for y in range(height):
    for x in range(width):
      for o, (dy, dx) in enumerate(offsets):
        if 0 <= y + dy < height and 0 <= x + dx < width:
          result[y, x, o] = np.sum((current[y, x] - previous[y + dy, x + dx]) ** 2)
  return result


def numpy_local_maps(current, previous, labels, num_slots, window):
  """[h, w, K] FEELVOS distance to the nearest previous pixel of each slot in the window."""
  squared = numpy_pair_distances(current, previous, window)
  offsets = [(dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)]
  height, width, _ = current.shape
  result = np.ones((height, width, num_slots))
  for y in range(height):
    for x in range(width):
      for o, (dy, dx) in enumerate(offsets):
        if 0 <= y + dy < height and 0 <= x + dx < width and labels[y + dy, x + dx] < num_slots:
          slot = labels[y + dy, x + dx]
          result[y, x, slot] = min(result[y, x, slot], np.tanh(squared[y, x, o] / 2))
  return result


def test_marked_state_is_the_one_hot_of_the_marked_cells():
  """`marked_state` (NumPy) against loops and the one-hot of video propagation's start; the
  generic route's `start_state` adds the frame's embedding and the marked cells' row."""
  rng = np.random.default_rng(0)
  labels = rng.choice(np.array([0, 1, 2, IGNORE_LABEL], np.int32), size=(6, 7))
  state = steps.marked_state(labels, num_slots=3)
  assert sorted(state) == ["previous_labels", "previous_probs"]
  probs = np.zeros((6, 7, 4), np.float32)
  for y in range(6):
    for x in range(7):
      if labels[y, x] != IGNORE_LABEL:
        probs[y, x, labels[y, x]] = 1.0
  np.testing.assert_array_equal(state["previous_probs"], probs)
  assert state["previous_probs"].dtype == np.float32
  np.testing.assert_array_equal(state["previous_labels"], labels)
  np.testing.assert_array_equal(state["previous_probs"],
                                jax.nn.one_hot(labels, 4, dtype=jnp.float32))
  embeddings = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  slots = np.stack([np.full_like(labels, IGNORE_LABEL), labels])
  full = steps.start_state(embeddings, *scribbles.reference_index(slots, slots != IGNORE_LABEL),
                           np.int32(1), state)
  np.testing.assert_array_equal(full["previous_embedding"], embeddings[1])
  marked = labels != IGNORE_LABEL
  count = np.count_nonzero(marked)
  np.testing.assert_array_equal(full["reference_embedding"][0, :count], embeddings[1][marked])
  np.testing.assert_array_equal(full["reference_labels"][0, :count], labels[marked])
  assert full["reference_labels"].shape == (1, 32)
  assert (full["reference_labels"][0, count:] == IGNORE_LABEL).all()


def test_local_maps_from_stored_distances_match_loops():
  """Both orientations of one stored pair against NumPy loops (window 2, 5x6 maps)."""
  rng = np.random.default_rng(7)
  first, second = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  labels = rng.integers(0, 4, (2, 5, 6)).astype(np.int32)
  labels[0, 0, 0] = labels[1, 2, 3] = IGNORE_LABEL
  distances = jax.jit(functools.partial(incremental.pair_distances, window=2, dilation=1))(
      second, first)
  np.testing.assert_allclose(distances, numpy_pair_distances(second, first, 2).transpose(2, 0, 1),
                             rtol=1e-5)
  maps = jax.jit(functools.partial(incremental.local_maps_from_distances, window=2,
                                   dilation=1, num_slots=3))
  # Frame `second` against its previous frame `first`, and `first` against `second`.
  np.testing.assert_allclose(maps(distances, labels[0], False),
                             numpy_local_maps(second, first, labels[0], 3, 2), atol=1e-5)
  np.testing.assert_allclose(maps(distances, labels[1], True),
                             numpy_local_maps(first, second, labels[1], 3, 2), atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 2])
def test_local_maps_from_cells_equal_those_from_stored_distances(dilation):
  """A frame against a few marked cells of itself (window 2, 6x7 maps, 9 cells of 3 slots
  and padding), against NumPy loops and the stored-distance route."""
  rng = np.random.default_rng(8)
  embedding = rng.normal(size=(6, 7, 3)).astype(np.float32)
  cells = rng.choice(42, 9, replace=False)
  labels = np.full(42, IGNORE_LABEL, np.int32)
  labels[cells] = rng.integers(0, 3, 9)
  index = np.concatenate([cells, [0, 0, 0]]).astype(np.int32)
  cell_labels = np.concatenate([labels[cells], [IGNORE_LABEL] * 3]).astype(np.int32)
  got = jax.jit(functools.partial(incremental.local_maps_from_cells, window=2,
                                  dilation=dilation, num_slots=3))(embedding, index, cell_labels)
  distances = incremental.pair_distances(embedding, embedding, window=2, dilation=dilation)
  stored = incremental.local_maps_from_distances(distances, labels.reshape(6, 7), False,
                                                 window=2, dilation=dilation, num_slots=3)
  np.testing.assert_allclose(got, stored, atol=1e-6)
  if dilation == 1:
    np.testing.assert_allclose(got, numpy_local_maps(embedding, embedding, labels.reshape(6, 7),
                                                     3, 2), atol=1e-5)
  assert (np.asarray(got) < 1).any() and (np.asarray(got) == 1).any()


def _corrected_session(model, variables, frames, **kwargs):
  """frame-0 strokes segmenting frame 0 alone, then clicks on frame 3 propagated both ways
  (frame 3 starts from its marks; frame 0, interacted before, keeps its labels)."""
  session = interactive.InteractiveSession(model, variables, frames, object_ids=[1, 2],
                                           **kwargs)
  session.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16))
  session.add_scribble(0, 2, [(25, 20)])
  session.add_background_scribble(0, testing.box_mask(0, 0, 2, 29))
  first = session.propagate(0, "backward")
  session.add_scribble(3, 1, [(14, 12)])
  session.add_background_scribble(3, [(28, 2)])
  return first, session.propagate(3, "both"), session


def test_re_propagation_equals_a_fresh_session_and_the_generic_step(setup, monkeypatch):
  """A re-propagation (stored distances reused) gives the masks of a fresh session holding
  the same references, of one that stores nothing, of one that matches the frames of
  interaction through pair distances, and of the chunked `segment` step."""
  model, variables = setup
  frames = testing.interactive_frames(5)
  first, again, session = _corrected_session(model, variables, frames)
  np.testing.assert_array_equal(again[0], first[0])
  again = again[1:]  # A fresh session propagating once computes frame 0 too.
  fresh = interactive.InteractiveSession(model, variables, frames, object_ids=[1, 2])
  fresh.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16))
  fresh.add_scribble(0, 2, [(25, 20)])
  fresh.add_background_scribble(0, testing.box_mask(0, 0, 2, 29))
  fresh.add_scribble(3, 1, [(14, 12)])
  fresh.add_background_scribble(3, [(28, 2)])
  np.testing.assert_array_equal(fresh.references, session.references)
  np.testing.assert_array_equal(fresh.propagate(3, "both")[1:], again)
  _, uncached, nothing_kept = _corrected_session(model, variables, frames,
                                                 distance_cache_bytes=0, head_cache_bytes=0,
                                                 minima_cache_bytes=0)
  caches = (nothing_kept._distances, nothing_kept._feature_parts, nothing_kept._minima)
  assert not any(len(cache) for cache in caches) and all(cache.refused for cache in caches)
  assert nothing_kept.distance_bytes == nothing_kept.feature_part_bytes == 0
  assert nothing_kept.minima_bytes == 0
  np.testing.assert_array_equal(uncached[1:], again)
  assert (3, 3) not in session._distances  # Frames of interaction: from their cells ...
  monkeypatch.setattr(routes, "MAX_CELL_MATCHING", 0)  # ... or from stored self-pairs.
  _, self_pairs, with_self_pairs = _corrected_session(model, variables, frames)
  assert {(0, 0), (3, 3)} <= set(with_self_pairs._distances.keys())
  np.testing.assert_array_equal(self_pairs[1:], again)
  monkeypatch.setattr(feelvos.FEELVOS, "supports_incremental_matching",
                      property(lambda self: False))
  # Two chunks of one object via `segment`, global matching in chunks of 16 of the 64 query
  # pixels (the cached step matches all 64 at once, `global_chunk_size`).
  _, generic, generic_session = _corrected_session(model.clone(matching_chunk_size=16),
                                                   variables, frames, object_buckets=(1,))
  assert isinstance(generic_session._route, routes.GenericRoute)
  np.testing.assert_array_equal(generic[1:], again)
  assert len(np.unique(again)) == 3


def test_global_matching_is_incremental_and_equals_matching_every_cell(setup, monkeypatch):
  """Added cells alone are matched against the stored minima; a relabelled cell or a new
  object taking part makes every cell matched again. Each propagation gives the labels and
  minima of a fresh session holding the same references (every cell matched)."""
  model, variables = setup
  frames = testing.interactive_frames(6)
  matched = []
  original = steps.compiled_reference_rows

  def recording(embeddings, index, labels):
    matched.append(int((labels != IGNORE_LABEL).sum()))
    return original(embeddings, index, labels)

  monkeypatch.setattr(steps, "compiled_reference_rows", recording)
  rounds = [
      (0, lambda s: (s.add_scribble(0, 1, testing.box_mask(8, 6, 20, 16)),
                     s.add_background_scribble(0, testing.box_mask(0, 0, 2, 29))), "forward"),
      (3, lambda s: (s.add_scribble(3, 1, [(14, 12), (19, 13)]),
                     s.add_background_scribble(3, [(28, 2)])), "both"),
      (3, lambda s: s.add_background_scribble(3, [(14, 12)]), "backward"),  # Relabels a cell.
      (2, lambda s: s.add_scribble(2, 1, [(10, 10)]), "both"),
      (4, lambda s: s.add_scribble(4, 2, [(25, 20)]), "both"),  # Object 2 takes part.
      (1, lambda s: s.add_scribble(1, 1, [(6, 10)]), "both"),
  ]
  session = interactive.InteractiveSession(model, variables, frames, object_ids=[1, 2],
                                           background_prior="none")
  counts = []
  for done, (frame, interaction, direction) in enumerate(rounds):
    interaction(session)
    del matched[:]
    got = session.propagate(frame, direction)
    counts.append(matched[:])
    fresh = interactive.InteractiveSession(model, variables, frames, object_ids=[1, 2],
                                           background_prior="none")
    for _, earlier, _ in rounds[:done + 1]:
      earlier(fresh)
      fresh.end_interaction()  # As the session's propagations do between its rounds.
    np.testing.assert_array_equal(fresh.references, session.references)
    expected = fresh.propagate(frame, direction)
    minima, fresh_minima = dict(session._minima.items()), dict(fresh._minima.items())
    for t in sorted(fresh_minima):  # The frames this propagation covers.
      if not done:  # Later rounds start from the labels and fuse: only the minima agree.
        np.testing.assert_array_equal(got[t], expected[t], err_msg=f"frame {t}")
      np.testing.assert_allclose(minima[t][1], fresh_minima[t][1], rtol=1e-6)
  # Frame 0: the box's 4 x 3 cells and the 8 cells of the top rows; then 3 clicks.
  assert counts[0] == [20]
  assert counts[1] == [3]  # Every frame extends round 0's minima: the clicks alone.
  # Round 2 relabels a click cell: frames 3..0 match all 23 cells, frame 4 keeps round 1's.
  assert counts[2] == [23]
  # Frames 0..3 extend round 2's minima (the click alone); frame 4's, from round 1, hold
  # the relabelled cell: all 24 cells.
  assert counts[3] == [1, 24]
  assert counts[4] == [25]  # Object 2 takes part: new slots, all cells.
  assert counts[5] == [1]


def test_global_chunk_size():
  model, _ = testing.interactive_setup()
  assert steps.global_chunk_size(model.clone(matching_chunk_size=1000), 256) == 2**16
  assert steps.global_chunk_size(model.clone(matching_chunk_size=1000), 2**20) == 1000
  assert steps.global_chunk_size(model.clone(matching_chunk_size=None), 256) is None


VARIANTS = {
    "feelvos": {}, "pml": dict(head="nearest_neighbor"),
    "background_matching": dict(background_matching=True),
    "matching_bias": dict(matching_bias=True), "local_windows": dict(local_windows=(1, 2)),
    "global_atrous_rate": dict(global_atrous_rate=2),
    "instance_attention": dict(instance_attention=True),
}
"""`config.model` overrides of each model variant."""


def variant_model(name):
  config = testing.small_config()
  config.model.update(VARIANTS[name])
  return models.build_model(config.model)


@functools.cache
def variant_setup(name):
  """(model, variables) of a variant, random weights (plain FEELVOS:
  `testing.interactive_setup`'s)."""
  if name == "feelvos":
    return testing.interactive_setup()
  model = variant_model(name)
  return model, testing.random_variables(model)


def test_only_plain_feelvos_supports_incremental_matching():
  """The capability that picks a session's route: PML, every CFBI option and sharded matching
  take the generic step."""
  model = variant_model("feelvos")
  assert model.supports_incremental_matching
  assert not model.clone(matching_shard_mode="query").supports_incremental_matching
  for name in sorted(set(VARIANTS) - {"feelvos"}):
    assert not variant_model(name).supports_incremental_matching, name


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_session_of_every_model_variant(name):
  """Strokes on frame 0 propagated forward, then clicks on frame 3 propagated both ways: every
  frame's labels are those of the model's own `segment` steps on the session's embeddings and
  marked cells (with the background prior's), stacked along the height as in video inference
  (with `global_atrous_rate`, which grids the reference, on the session's row of marked cells
  instead)."""
  model, variables = variant_setup(name)
  first, again, session = _corrected_session(model, variables, testing.interactive_frames(5))
  np.testing.assert_array_equal(again[0], first[0])  # Interacted before: kept.
  route = routes.IncrementalRoute if name == "feelvos" else routes.GenericRoute
  assert isinstance(session._route, route)
  # What the session matches: its marks and the background prior's cells beside them.
  marks = session.effective_references().astype(np.int32)  # Objects 1, 2 in slots 1, 2.
  expected = direct_labels(model, variables, session.features, session.embeddings, marks, 3,
                           ([4], [2, 1, 0]), num_objects=2,
                           stacked=name != "global_atrous_rate")
  for t in range(1, NUM_FRAMES):
    np.testing.assert_array_equal(again[t], expected[t][:HEIGHT, :WIDTH], err_msg=f"frame {t}")
  assert {0, 1} <= set(np.unique(again))


def numpy_feature_part(features, head_params):
  """[h, w, C] layer 0's pointwise bias + pointwise(ReLU(depthwise(features) + bias)), the
  depthwise conv zero-padded to keep h, w: loops over pixels and taps."""
  layer = {name: np.asarray(value, np.float64) for name, value in head_params["layer_0"].items()}
  height, width, channels = features.shape
  size = layer["depthwise_kernel"].shape[0]
  before = (size - 1) // 2
  hidden = np.zeros((height, width, channels))
  for y in range(height):
    for x in range(width):
      for i in range(size):
        for j in range(size):
          if 0 <= y + i - before < height and 0 <= x + j - before < width:
            hidden[y, x] += (layer["depthwise_kernel"][i, j, 0, :channels]
                             * features[y + i - before, x + j - before])
  hidden = np.maximum(hidden + layer["depthwise_bias"][:channels], 0.0)
  return layer["pointwise_bias"] + hidden @ layer["pointwise_kernel"][0, 0, :channels]


def test_head_feature_part_matches_loops_and_keeps_the_logits(setup):
  """`head_feature_part` against NumPy loops; the head given it returns exactly the logits of
  the model's own (vmapped) head on the same features and maps."""
  model, variables = setup
  rng = np.random.default_rng(3)
  features = rng.normal(size=(2, 6, 7, model.decoder_channels)).astype(np.float32)
  head_variables = {"params": variables["params"]["segmentation_head"]}
  part = jax.jit(functools.partial(steps.head_feature_part, model))(
      head_variables, features, np.int32(1))
  assert part.shape == (1, 6, 7, model.head_channels)
  np.testing.assert_allclose(part[0], numpy_feature_part(features[1], head_variables["params"]),
                             rtol=1e-4, atol=1e-4)
  maps = rng.random((1, 6, 7, 3, steps.HEAD_MAPS)).astype(np.float32)
  head = steps.segmentation_head(model)
  given = jax.jit(jax.vmap(
      lambda slot_maps: head.apply(head_variables, features[1:], slot_maps, feature_part=part),
      in_axes=3, out_axes=3))(maps)
  full = jax.jit(lambda f, m: model.apply(
      variables, f, m, method=lambda module, f, m: module.segmentation_head(f, m)))(
          features[1:], maps)
  assert given.shape == (1, 6, 7, 3)
  np.testing.assert_array_equal(given, full)
  with pytest.raises(ValueError,
                     match="feature_part / feature_part_only do not combine with guidance"):
    head.apply(head_variables, features[1:], maps[..., 0, :], guidance=np.ones((1, 4)),
               feature_part=part)
