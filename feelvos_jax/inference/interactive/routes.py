"""How `InteractiveSession.propagate` segments each frame: two routes to the same labels.

- `GenericRoute` (any model): `steps.generic_step`, the model's whole `segment` step on the
  stored embeddings, global matching against every marked cell.
- `IncrementalRoute` (models with `supports_incremental_matching`: plain FEELVOS, unsharded):
  `steps.incremental_step`, with the label-free parts stored between propagations in
  `BoundedCache`s (pair distances of neighbouring frames, the head's feature parts) and each
  frame's global-matching minima, so that a frame whose references only gained cells is
  matched against the added cells alone.

Both turn a `Propagation` into (the state at the frame of interaction,
run(state, frame, previous) -> (state, labels [Hp, Wp] uint8 slots)).
"""
import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import IGNORE_LABEL
from feelvos_jax.inference import propagation
from feelvos_jax.inference.interactive import scribbles
from feelvos_jax.inference.interactive import steps
from feelvos_jax.inference.interactive.cache import BoundedCache

MAX_CELL_MATCHING = 256
"""The frame of interaction is matched locally against its marked cells directly
(`local_maps_from_cells`) when it holds at most this many, else through the stored
`pair_distances` of the frame with itself."""

Runner = Callable[[propagation.State, int, int], tuple[propagation.State, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Propagation:
  """One `propagate` call, as the routes read it.

  Attributes:
    references: [T, h, w] uint8 object ids of the marked cells (0 background, IGNORE_LABEL
      unmarked).
    present: the objects taking part, in slot order (slots 1..n).
    slots: [T, h, w] int32, the references in slots (`scribbles.slot_maps`).
    objects_per_chunk: M, object slots per compiled step.
    num_slots: S, object slots of all chunks.
    from_frame: the frame of interaction.
    first_next: the frame the chains step to right after it (None: no chain).
    valid_size: [2] int32, the frames' (height, width) before padding.
    start: the state at the frame of interaction, {previous_labels [h, w] int32 slots,
      previous_probs [h, w, 1 + S] float32} (NumPy): its marked cells and their one-hot
      (`steps.marked_state`), or its current labels and probabilities overridden there.
    from_marks: whether `start` holds the marked cells alone (the frame of interaction may
      then be matched locally against its cells directly).
  """
  references: np.ndarray
  present: tuple[int, ...]
  slots: np.ndarray
  objects_per_chunk: int
  num_slots: int
  from_frame: int
  first_next: Optional[int]
  valid_size: np.ndarray
  start: dict[str, np.ndarray]
  from_marks: bool

  @property
  def num_objects(self) -> np.int32:
    return np.int32(len(self.present))


class GenericRoute:
  """Any model: each frame is `steps.generic_step`, object slots in chunks of M."""

  def __init__(self, model: nn.Module, variables: Any, features: jax.Array,
               embeddings: jax.Array):
    self._model, self._variables = model, variables
    self._features, self._embeddings = features, embeddings

  def start(self, plan: Propagation) -> tuple[propagation.State, Runner]:
    """(`steps.start_state` at the frame of interaction, run)."""
    slots, frame = plan.slots, plan.from_frame
    state = steps.compiled_start_state(
        self._embeddings, *scribbles.reference_index(slots, slots != IGNORE_LABEL),
        np.int32(frame), plan.start)
    step = steps.compiled_generic_step(self._model.clone(max_objects=plan.objects_per_chunk))

    def run(state, frame, previous):
      del previous  # The state holds the previous frame's embedding.
      return step(self._variables, state, self._features, self._embeddings, np.int32(frame),
                  plan.num_objects, plan.valid_size)
    return state, run


@dataclasses.dataclass(frozen=True, eq=False)
class MarkedVersion:
  """The objects taking part and the references [T, h, w] that stored minima were taken over,
  shared by the frames of one propagation (compared by identity; a `BoundedCache` counts the
  minima's bytes only)."""
  present: tuple[int, ...]
  references: np.ndarray


class IncrementalRoute:
  """Plain FEELVOS matching (`supports_incremental_matching`): `steps.incremental_step` on
  stored label-free parts.

  The caches: `distances` (pair (u, v) -> `pair_distances` [O, h, w]), `feature_parts`
  (frame -> `head_feature_part` [1, h, w, C]) and `minima` (frame -> (`MarkedVersion`, its
  global-matching minima [h, w, 1 + S])). A frame whose stored minima were taken with the same
  objects taking part, over references that every present reference extends (cells only
  added, none relabelled), is matched against the added cells only; any other frame against
  all marked cells, from minima of inf. Either way the map equals matching every marked cell.
  """

  def __init__(self, model: nn.Module, variables: Any, features: jax.Array,
               embeddings: jax.Array, *, distances: BoundedCache,
               feature_parts: BoundedCache, minima: BoundedCache):
    self._model = model
    self._head_variables = {"params": variables["params"]["segmentation_head"]}
    self._features, self._embeddings = features, embeddings
    self._distances, self._feature_parts, self._minima = distances, feature_parts, minima
    self._device = next(iter(embeddings.devices()))

  def start(self, plan: Propagation) -> tuple[dict[str, np.ndarray], Runner]:
    """(`plan.start`, run); run stores each frame's new minima under this propagation's
    `MarkedVersion`."""
    version = MarkedVersion(plan.present, plan.references.copy())
    marked = plan.references != IGNORE_LABEL
    rows: dict[Optional[MarkedVersion], tuple[jax.Array, jax.Array]] = {}
    extended: dict[MarkedVersion, bool] = {}
    no_minima = jnp.full(marked.shape[1:] + (1 + plan.num_slots,), jnp.inf, jnp.float32)
    no_maps = jnp.zeros_like(no_minima)
    step = steps.compiled_incremental_step(self._model)

    def stored_minima(frame: int) -> tuple[Optional[MarkedVersion], jax.Array]:
      """(the version the frame's minima extend, or None; those minima)."""
      stored = self._minima.get(frame)
      if stored is None:
        return None, no_minima
      base = stored[0]
      if base not in extended:
        old_marked = base.references != IGNORE_LABEL
        extended[base] = (base.present == plan.present and np.array_equal(
            base.references[old_marked], plan.references[old_marked]))
      return stored if extended[base] else (None, no_minima)

    def run(state, frame, previous):
      base, minima = stored_minima(frame)
      if base not in rows:
        cells = marked if base is None else marked & (base.references == IGNORE_LABEL)
        rows[base] = steps.compiled_reference_rows(
            self._embeddings, *scribbles.reference_index(plan.slots, cells))
      cell_maps, pair, backward, from_cells = self._local_operands(plan, frame, previous,
                                                                   no_maps)
      # Committed to one device whatever made them (host start state, stand-ins, outputs of
      # steps on restored variables): jit keys its cache on operand placement too, and a mix
      # warm_up did not meet would compile inside a timed interaction.
      state, cell_maps, pair, minima = jax.device_put((state, cell_maps, pair, minima),
                                                      self._device)
      state, labels, minima = step(
          self._head_variables, state, self._features, self._embeddings, np.int32(frame),
          self._feature_part(frame), cell_maps, pair, backward, from_cells,
          *rows[base], minima, plan.num_objects, plan.valid_size)
      self._minima.put(frame, (version, minima))
      return state, labels
    return plan.start, run

  def _local_operands(self, plan: Propagation, frame: int, previous: int,
                      no_maps: jax.Array) -> tuple[jax.Array, jax.Array, np.bool_, np.bool_]:
    """`incremental_step`'s local-matching operands (cell_maps, pair, backward, from_cells) of
    `frame` against `previous`: for the frame of interaction with at most MAX_CELL_MATCHING
    marked cells `local_maps_from_cells`, else the stored `pair_distances` (cell maps: the
    unread `no_maps`). The step reads no pair beside cell maps, but needs an operand of its
    shape: the pair the chain reads next (stored for it now), or zeros without a chain."""
    window, dilation = self._model.window, self._model.dilation
    if frame == previous:
      own = plan.references[frame] != IGNORE_LABEL
      if plan.from_marks and np.count_nonzero(own) <= MAX_CELL_MATCHING:
        cell_maps = steps.compiled_cell_maps(window, dilation, 1 + plan.num_slots)(
            self._embeddings, np.int32(frame), *scribbles.reference_index(plan.slots[frame],
                                                                          own))
        if plan.first_next is None:
          side = 2 * window + 1
          unused = jnp.zeros((side * side,) + plan.slots.shape[1:], jnp.float32)
        else:
          unused = self._pair(plan.first_next, frame)[0]
        return cell_maps, unused, np.bool_(False), np.bool_(True)
    return (no_maps,) + self._pair(frame, previous) + (np.bool_(False),)

  def _pair(self, frame: int, previous: int) -> tuple[jax.Array, np.bool_]:
    """(`pair_distances` of the pair, backward flag) for `frame` matched locally against
    `previous` (itself, or a neighbour), computed once per pair while the cache has room."""
    if previous == frame - 1:
      key, backward = (frame, previous), False
    elif previous == frame + 1:
      key, backward = (previous, frame), True
    else:
      key, backward = (frame, frame), False
    def compute():
      return steps.compiled_pair_distances(self._model.window, self._model.dilation)(
          self._embeddings, np.int32(key[0]), np.int32(key[1]))
    return self._distances.get_or_compute(key, compute), np.bool_(backward)

  def _feature_part(self, frame: int) -> jax.Array:
    """`head_feature_part` of a frame, computed once while the cache has room."""
    def compute():
      return steps.compiled_head_feature_part(self._model)(self._head_variables, self._features,
                                                           np.int32(frame))
    return self._feature_parts.get_or_compute(frame, compute)
