"""FEELVOS training: the train state, the sharded train step and the training loop.

API: `train_and_evaluate(config, workdir)` (what `main.py` runs), `validate_config`,
`create_train_state` (= `init_fn_and_abstract_state` + `materialize_train_state`),
`compile_train_step` / `train_step`, `load_pretrained` (= `read_pretrained` +
`place_pretrained`), `object_iou`.

The loss follows `config.model.head` (`training.objectives`: each head's training forward pass
and loss).

The SPMD recipe of big_vision: `jax.eval_shape` of the initialiser gives the state's shapes, from
which the shardings follow (`training.sharding`); `jax.jit(init, out_shardings=...)` creates the
state already in place and `jax.jit(train_step, in_shardings, out_shardings, donate_argnums=0)`
updates it. Each process feeds its own slice of the global batch.

The state and the step need no TensorFlow: the loop imports the input pipeline and clu's writers
(both import TF) when it runs, so the step compiles and runs where TF is not installed (the GPU
benchmarks).
"""
import functools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from feelvos_jax import config_checks
from feelvos_jax import console
from feelvos_jax import evaluation
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import models
from feelvos_jax.evaluation import split_evaluation
from feelvos_jax.training import checkpointing
from feelvos_jax.training import losses
from feelvos_jax.training import objectives
from feelvos_jax.training import optimizers
from feelvos_jax.training import sharding
from feelvos_jax.training import weights
from feelvos_jax.training import workdir_lock

TRAIN_KEYS = ("reference_frame", "previous_frame", "current_frame", "reference_labels",
              "previous_labels", "current_labels", "num_objects", "clip_frames", "clip_labels")
"""The batch entries the train step reads (the input pipeline may add more; the clip entries
only come with the memory heads "stm" and "rde", see `clip_frames`)."""


def clip_frames(config: ml_collections.ConfigDict) -> int:
  """Memory-clip frames C per training sample: config.dataset.clip_frames for the memory heads
  (STM, RDE), else 0.

  The clip joins the training memory between the reference and the previous frame (2 + C
  memory frames, each after the reference also a query, `objectives.read_every_frame`), so
  STM trains on a memory of several frames as its inference memory holds (the annotated
  frame, every N-th frame, the previous one) and RDE aggregates C + 1 frames into its
  recurrent embedding; with C = 0 STM trained on (reference, previous) alone and scored lower
  (docs/models.md, "Memory models")."""
  if config.model.head not in ("stm", "rde"):
    return 0
  return config_checks.int_at_least(config.dataset, "dataset.clip_frames", 0)


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: `step` counts the updates done (= batches consumed)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the config key for values that would fail later (or silently)."""
  devices, processes = jax.device_count(), jax.process_count()
  for key in ("batch_size", "num_train_steps", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "model.max_objects"):
    config_checks.positive_int(config, key)
  config_checks.int_at_least(config, "eval_every_steps", 0)  # 0 disables.
  config_checks.int_at_least(config, "num_eval_videos", -1)  # -1: all.
  config_checks.float_in(config, "learning_rate", 0.0)
  if config.batch_size % devices or config.batch_size % processes:
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the device "
                     f"count ({devices}) and the process count ({processes}).")
  sharding.mesh_shape(config.mesh, devices)
  models.build_model(config.model)  # Checks every model key it reads.
  _check_crop_size(config)
  pretrained = config.model.pretrained
  if pretrained and not (os.path.exists(pretrained) or os.path.exists(pretrained + ".index")):
    raise ValueError(f"config.model.pretrained={pretrained!r}: no such file or checkpoint.")
  config_checks.float_in(config, "model.pretrained_min_fraction", 0.0, 1.0)
  config_checks.one_of(config, "model.pretrained_allow_partial", (False, True))
  losses.hard_mining_fraction(0, top_k_percent=config.loss.top_k_percent,
                              ramp_steps=config.loss.hard_mining_ramp_steps)
  if config.model.head == "rde":
    config_checks.float_in(config, "loss.rde_guidance_weight", 0.0)
    config_checks.float_in(config, "loss.rde_correction_weight", 0.0)
  clip_frames(config)
  if config.model.head == "nearest_neighbor":  # PML's triplet loss.
    config_checks.positive_int(config, "loss.triplet_anchors_per_object")
    config_checks.float_in(config, "loss.triplet_margin", 0.0)
    config_checks.positive_int(config, "model.nearest_neighbors")
  optimizers.create_optimizer(config.optimizer, config.learning_rate, config.num_train_steps)


def _check_crop_size(config: ml_collections.ConfigDict) -> None:
  """ValueError naming config.dataset.crop_size unless each side reaches the backbone's output
  stride (and 2 x FEATURE_STRIDE) and the crop's stride-4 grid can hold an object of
  config.dataset.min_object_pixels (otherwise every sample is rejected and trains on no object,
  with loss 0)."""
  height, width = config_checks.int_tuple(config, "dataset.crop_size", length=2, low=1)
  low = max(2 * FEATURE_STRIDE, config.model.output_stride)
  if min(height, width) < low:
    raise ValueError(f"config.dataset.crop_size={(height, width)} must be at least {low} on each "
                     f"side: the backbone's output stride is config.model.output_stride="
                     f"{config.model.output_stride}")
  min_pixels = config_checks.int_at_least(config, "dataset.min_object_pixels", 0)
  cells = -(-height // FEATURE_STRIDE) * -(-width // FEATURE_STRIDE)
  if cells < min_pixels:
    raise ValueError(f"config.dataset.crop_size={(height, width)} has {cells} pixels at stride "
                     f"{FEATURE_STRIDE}, fewer than config.dataset.min_object_pixels="
                     f"{min_pixels}: every sample would be rejected and train on no object")


def make_init_fn(config: ml_collections.ConfigDict, model: flax.linen.Module,
                 tx: optax.GradientTransformation) -> Callable[[jax.Array], TrainState]:
  """init(rng) -> the initial TrainState; `rng` is a uint32 [2] PRNGKey."""

  def init(rng: jax.Array) -> TrainState:
    params_rng, matching_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "matching": matching_rng},
                           *models.example_inputs(model), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=state_rng, apply_fn=model.apply, tx=tx)

  return init


def _shardings(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, tree)


def init_fn_and_abstract_state(
    config: ml_collections.ConfigDict, model: flax.linen.Module,
    mesh: jax.sharding.Mesh) -> tuple[Callable[[jax.Array], TrainState], TrainState]:
  """(init(rng) -> TrainState, the TrainState as ShapeDtypeStructs with their shardings).

  Both share one optax transformation, so their (static) tree structures agree: restore into
  the abstract state or materialise it with `materialize_train_state`, not with a second call.
  """
  tx, _ = optimizers.create_optimizer(config.optimizer, config.learning_rate,
                                      config.num_train_steps)
  init = make_init_fn(config, model, tx)
  abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
  shardings = sharding.state_shardings(abstract, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return init, abstract


def materialize_train_state(init: Callable[[jax.Array], TrainState], abstract_state: TrainState,
                            rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """Runs `init(rng)` under jit, producing the state directly in the abstract state's shardings.

  `rng` (a uint32 [2] PRNGKey) must be the same on every process.
  """
  return jax.jit(init, in_shardings=sharding.replicated_sharding(mesh),
                 out_shardings=_shardings(abstract_state))(np.asarray(rng))


def create_train_state(config: ml_collections.ConfigDict, model: flax.linen.Module,
                       rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial TrainState from `rng`, created in its shardings on `mesh` (big_vision style:
  eval_shape -> shardings -> jit(init, out_shardings))."""
  init, abstract = init_fn_and_abstract_state(config, model, mesh)
  return materialize_train_state(init, abstract, rng, mesh)


def read_pretrained(params: Any, batch_stats: Any, path: str, backbone: str, *,
                    min_backbone_fraction: float = 1.0, allow_partial: bool = False,
                    head: str = "feelvos") -> tuple[Any, Any]:
  """The (params, batch_stats) trees of a pretrained file (see feelvos_jax/training/weights.py)
  for variables shaped as `params` / `batch_stats` (arrays or `jax.ShapeDtypeStruct`s: only
  shapes and dtypes are read, so this runs before any initialisation): the file's value where
  it has one, the given leaf elsewhere.

  Logs `loaded N of M variables` with the names left unmatched on either side (WARNING when
  there are any). ValueError naming the file for what `weights.load_pretrained` refuses, e.g.
  fewer than `min_backbone_fraction` of the backbone's variables unless `allow_partial`.
  """
  params, batch_stats, report = weights.load_pretrained(
      params, batch_stats, path, backbone, min_backbone_fraction=min_backbone_fraction,
      allow_partial=allow_partial, head=head)
  level = logging.WARNING if report.missing or report.unexpected else logging.INFO
  logging.log(level, "Pretrained %s: %s", path, report.summary())
  return params, batch_stats


def place_pretrained(state: TrainState, loaded: tuple[Any, Any]) -> TrainState:
  """`state` with the values of `read_pretrained(...)` (read from the state's shapes) in place of
  their initialisation, in the same shardings; leaves the file did not fill (still
  ShapeDtypeStructs) and the optimizer state (it does not depend on the parameter values at
  step 0) are kept."""
  def place(value: Any, like: jax.Array) -> jax.Array:
    if isinstance(value, jax.ShapeDtypeStruct):
      return like
    value = np.asarray(value)
    return jax.make_array_from_callback(like.shape, like.sharding, lambda index: value[index])

  params, batch_stats = loaded
  return state.replace(params=jax.tree.map(place, params, state.params),
                       batch_stats=jax.tree.map(place, batch_stats, state.batch_stats))


def load_pretrained(state: TrainState, path: str, backbone: str, **options: Any) -> TrainState:
  """`place_pretrained(state, read_pretrained(...))` for `state`'s shapes; `options` as
  `read_pretrained`'s."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        (state.params, state.batch_stats))
  return place_pretrained(state, read_pretrained(*shapes, path, backbone, **options))


def object_iou(logits: jax.Array, labels: jax.Array, num_objects: jax.Array) -> jax.Array:
  """Mean IoU over the real objects of a batch, at stride 4.

  Args:
    logits: [B, h, w, K] stride-4 logits.
    labels: [B, H, W] full-resolution labels (subsampled by `[::4, ::4]`).
    num_objects: [B] objects per sample, excluding the background.

  Returns:
    Scalar: mean of |pred & gt| / |pred | gt| over objects 1..num_objects whose union is
    non-empty; ignored pixels count for neither.
  """
  labels = labels[:, ::FEATURE_STRIDE, ::FEATURE_STRIDE]
  slots = jnp.arange(1, logits.shape[-1])
  valid = (labels != IGNORE_LABEL)[..., None]
  predicted = (jnp.argmax(logits, axis=-1)[..., None] == slots) & valid
  truth = labels[..., None] == slots
  intersection = jnp.sum(predicted & truth, axis=(1, 2))
  union = jnp.sum(predicted | truth, axis=(1, 2))
  counted = (slots[None, :] <= num_objects[:, None]) & (union > 0)
  ious = jnp.where(counted, intersection / jnp.maximum(union, 1), 0.0)
  return jnp.sum(ious) / jnp.maximum(jnp.sum(counted), 1)


def _global_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch: dict[str, jax.Array],
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on a global batch (see `TRAIN_KEYS` and the PREAMBLE's batch layout).

  Returns the new state and scalar metrics: loss, learning_rate (of this update), grad_norm
  (before clipping), iou (training batch) and kept_fraction (pixels in the bootstrapped loss)
  or, for `config.model.head = "nearest_neighbor"`, active_triplets (valid anchors whose
  triplet hinge is positive; the anchors are drawn with a key folded from the state's rng).
  """
  matching_rng = jax.random.fold_in(state.rng, state.step)
  nearest_neighbor = config.model.head == "nearest_neighbor"

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    return objectives.loss_and_logits(state.apply_fn, variables, batch, state.step,
                                      matching_rng, config)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, batch_stats, fraction)), grads = grad_fn(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  schedule = optimizers.create_learning_rate_schedule(config.optimizer, config.learning_rate,
                                                      config.num_train_steps)
  metrics = {"loss": loss, "learning_rate": schedule(state.step),
             "grad_norm": _global_norm(grads),
             "active_triplets" if nearest_neighbor else "kept_fraction": fraction,
             "iou": object_iou(logits, batch["current_labels"], batch["num_objects"])}
  return new_state, metrics


def compile_train_step(config: ml_collections.ConfigDict, state: TrainState,
                       mesh: jax.sharding.Mesh) -> Callable[..., Any]:
  """`train_step` jitted over `mesh`: the state (or its abstract twin) keeps its shardings and is
  donated, the batch is split over all devices, the metrics are replicated."""
  state_shardings = _shardings(state)
  return jax.jit(functools.partial(train_step, config=config),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated_sharding(mesh)),
                 donate_argnums=0)


# --------------------------------------------------------------------------------------------
# The training loop.
# --------------------------------------------------------------------------------------------


def _load_videos(dataset_config: ml_collections.ConfigDict, split: str, *,
                 decoders: Optional[dict[str, Any]] = None) -> Any:
  """The split's videos as a tf.data.Dataset, from the builder registry."""
  from datasets import registry  # pylint: disable=g-import-not-at-top (imports TF lazily)
  return registry.load_builder(dataset_config).as_dataset(split=split, shuffle_files=False,
                                                          decoders=decoders)


def _evaluate(model: flax.linen.Module, state: TrainState,
              config: ml_collections.ConfigDict) -> dict[str, float]:
  """Validation J&F via `feelvos_jax.split_evaluation.evaluate_dataset`.

  Every process evaluates the same `config.num_eval_videos` videos of `config.dataset.eval_split`.
  """
  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top (imports TF)
  videos = _load_videos(config.dataset, config.dataset.eval_split)
  if config.num_eval_videos >= 0:
    videos = videos.take(config.num_eval_videos)
  videos = input_pipeline.create_eval_videos(config.dataset, videos,
                                             pad_multiple=config.dataset.eval_pad_multiple)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results = split_evaluation.evaluate_dataset(model, variables, videos, config)
  return {name: float(value) for name, value in results.items() if np.ndim(value) == 0}


def _check_finite(history: list[tuple[int, dict[str, jax.Array]]],
                  checkpointer: checkpointing.Checkpointer) -> list[tuple[int, dict[str, float]]]:
  """Fetches the metrics of the steps since the last check; raises FloatingPointError at the
  first step whose loss is not finite (nothing from it on is ever saved)."""
  fetched = [(step, jax.device_get(metrics)) for step, metrics in history]
  for step, metrics in fetched:
    if not np.isfinite(metrics["loss"]):
      checkpointer.wait_until_finished()
      raise FloatingPointError(
          f"Training loss is {metrics['loss']} at step {step}; training stopped without saving "
          f"that state. Last good checkpoint: step {checkpointer.latest_step()} in "
          f"{checkpointer.directory}.")
  return fetched


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat


def _restore_or_initialize(checkpointer: checkpointing.Checkpointer,
                           init: Callable[[jax.Array], TrainState], abstract_state: TrainState,
                           config: ml_collections.ConfigDict,
                           mesh: jax.sharding.Mesh) -> TrainState:
  """The latest checkpoint's state (refused if `config` is incompatible with it or its files do
  not match their checksums), else the initial state of `config.seed` with the pretrained
  weights of `config.model.pretrained`."""
  latest = checkpointer.latest_step()
  if latest is not None:
    checkpointer.check_compatible(latest, config, abstract_state)
    logging.info("Resuming from checkpoint %d in %s.", latest, checkpointer.directory)
    return checkpointer.restore(latest, abstract_state)
  loaded = None
  if config.model.pretrained:  # Read first: a file that does not fit fails before compiling.
    loaded = read_pretrained(abstract_state.params, abstract_state.batch_stats,
                             config.model.pretrained, config.model.backbone,
                             min_backbone_fraction=config.model.pretrained_min_fraction,
                             allow_partial=config.model.pretrained_allow_partial,
                             head=config.model.head)
  state = materialize_train_state(init, abstract_state, jax.random.PRNGKey(config.seed), mesh)
  return state if loaded is None else place_pretrained(state, loaded)


def _write_train_metrics(writer: Any, step: int, fetched: list[tuple[int, dict[str, float]]],
                         seconds: float, config: ml_collections.ConfigDict) -> None:
  """Means of the metrics of the steps in `fetched` (done in `seconds`) to `writer` (a clu
  `metric_writers.MetricWriter`), and one log line: step, loss, IoU, steps/s and the ETA of
  the remaining steps at that speed (evaluations not counted)."""
  means = {f"train/{name}": float(np.mean([metrics[name] for _, metrics in fetched]))
           for name in fetched[-1][1]}
  means["train/steps_per_sec"] = len(fetched) / seconds
  means["train/examples_per_sec"] = means["train/steps_per_sec"] * config.batch_size
  writer.write_scalars(step, means)
  remaining = (config.num_train_steps - step) / means["train/steps_per_sec"]
  logging.info("step %d/%d  loss %.3f  IoU %.2f  %.2f steps/s  ETA %s", step,
               config.num_train_steps, means["train/loss"], means["train/iou"],
               means["train/steps_per_sec"], console.format_duration(remaining))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       evaluate: bool = True) -> TrainState:
  """Trains (resuming from the latest checkpoint in `workdir`), evaluating every
  `config.eval_every_steps` when `evaluate`; returns the final state.

  Checkpoints every `config.checkpoint_every_steps`, at the end, after each evaluation and on
  SIGTERM (then returns early). A non-finite loss raises FloatingPointError before anything
  from that step on is saved. Once `config` is valid, the workdir is locked for the run
  (`workdir_lock.hold`): WorkdirLockedError if another run holds it. A latest checkpoint whose
  files do not match their checksums raises `integrity.IntegrityError` naming them (no older
  one is restored in its place). A latest checkpoint at or beyond `config.num_train_steps`
  is restored and returned with a warning naming both steps; nothing is written.
  """
  validate_config(config)
  with workdir_lock.hold(workdir, "train_and_evaluate" if evaluate else "train"):
    return _train_and_evaluate(config, workdir, evaluate=evaluate)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                        evaluate: bool) -> TrainState:
  """`train_and_evaluate` once `config` is valid and the workdir locked."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top (imports TF)
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  from feelvos_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top (imports TF)
  if config.matching.shard_axis:
    logging.warning("config.matching.shard_axis=%r is for inference: training splits the batch "
                    "over the devices, each matching its own samples.", config.matching.shard_axis)
  mesh = sharding.create_mesh(config.mesh)
  logging.info("Mesh %s over %d devices, %d processes.", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  model = models.build_model(config.model)
  init, abstract_state = init_fn_and_abstract_state(config, model, mesh)
  checkpointer = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  state = _restore_or_initialize(checkpointer, init, abstract_state, config, mesh)
  start_step = int(state.step)
  if start_step >= config.num_train_steps:
    checkpointer.close()
    logging.warning("Nothing to train: checkpoint step %d in %s has reached "
                    "config.num_train_steps=%d (raise it to train on).", start_step,
                    checkpointer.directory, config.num_train_steps)
    return state
  step_fn = compile_train_step(config, abstract_state, mesh)
  batches = input_pipeline.create_train_dataset(
      config.dataset, _load_videos(config.dataset, config.dataset.train_split,
                                   decoders=input_pipeline.LAZY_FRAME_DECODERS),
      batch_size_per_host=config.batch_size // jax.process_count(),
      max_objects=config.model.max_objects, seed=config.seed, start_step=start_step,
      clip_frames=clip_frames(config))

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                           every_steps=config.log_every_steps, every_secs=None)]
  if config.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5,
                                          first_profile=start_step + 10))
  eval_available = evaluate and config.eval_every_steps > 0
  watcher = checkpointing.PreemptionWatcher()
  history: list[tuple[int, dict[str, jax.Array]]] = []
  last_flush = time.time()
  try:
    for step in range(start_step + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = {key: value for key, value in next(batches).items() if key in TRAIN_KEYS}
        state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
      history.append((step, metrics))
      for hook in hooks:
        hook(step)
      last = step == config.num_train_steps
      preempted = watcher.should_stop(step)
      eval_now = eval_available and (step % config.eval_every_steps == 0 or last)
      save_now = step % config.checkpoint_every_steps == 0 or last or preempted or eval_now
      if step % config.log_every_steps == 0 or save_now:
        fetched = _check_finite(history, checkpointer)
        now = time.time()
        _write_train_metrics(writer, step, fetched, now - last_flush, config)
        history, last_flush = [], now
      eval_metrics = _evaluate(model, state, config) if eval_now else None
      if eval_metrics is not None:
        writer.write_scalars(step, {f"eval/{name}": value for name, value in eval_metrics.items()})
        logging.info("step %d: validation J&F of %d videos\n%s", step,
                     eval_metrics["num_videos"],
                     evaluation.format_table(evaluation.GLOBAL_COLUMNS, [eval_metrics]))
        last_flush = time.time()  # Training speed excludes the evaluation.
      if save_now:
        checkpointer.save(step, state, config, metrics=eval_metrics)
      if preempted:
        logging.warning("SIGTERM: saved checkpoint %d in %s, stopping.", step,
                        checkpointer.directory)
        break
  finally:
    watcher.close()
    writer.flush()
    checkpointer.close()
  return state
