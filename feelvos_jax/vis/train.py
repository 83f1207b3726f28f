"""The training loop and evaluation of MaskTrack R-CNN (`config.task == "vis"`).

`main.py` calls `train_and_evaluate(config, workdir, evaluate=...)` or `evaluate(config,
workdir)` for a VIS config. Shared with the VOS loop: the TrainState, the mesh and shardings,
the orbax Checkpointer (checksums, keep-last, compatibility check), the workdir lock and the clu
metric writer; VIS-specific: the model, the pair sampler (`input_pipeline`), the step
(`train_step`) and the evaluation (whole videos -> results JSON and zip -> YouTube-VIS AP
when the split has ground truth). Outputs: `<workdir>/checkpoints`, TensorBoard logs in
`<workdir>`, `<workdir>/predictions/<split>/results.json` and `results.zip`.
"""
import functools
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from feelvos_jax.training import checkpointing
from feelvos_jax.training import sharding
from feelvos_jax.training import workdir_lock
from feelvos_jax.training import train as vos_train
from feelvos_jax.training.train import TrainState
from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import inference
from feelvos_jax.vis import input_pipeline
from feelvos_jax.vis import losses
from feelvos_jax.vis import metrics as vis_metrics
from feelvos_jax.vis import results as results_io
from feelvos_jax.vis import train_step as step_lib
from feelvos_jax.vis.model import MaskTrackRCNN

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict) -> MaskTrackRCNN:
  """The MaskTrack R-CNN of `config.model`."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype={config.model.dtype!r}: one of {sorted(DTYPES)}")
  return MaskTrackRCNN(num_classes=config.model.num_classes, backbone=config.model.backbone,
                       fpn_channels=config.model.fpn_channels, fc_dim=config.model.fc_dim,
                       mask_channels=config.model.mask_channels,
                       dtype=DTYPES[config.model.dtype])


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from lr / 3 (the authors' warmup_ratio) over `optimizer.warmup_steps`,
  then lr x 0.1 at each of `optimizer.decay_steps` (the paper's step policy), or, without
  decay steps, `optimizer.schedule` ("constant" or "cosine" to 0 at the last step)."""
  optimizer = config.optimizer
  rate, warmup = config.learning_rate, optimizer.warmup_steps
  if optimizer.decay_steps:
    after = optax.piecewise_constant_schedule(
        rate, {int(s) - warmup: 0.1 for s in optimizer.decay_steps})
  elif optimizer.schedule == "cosine":
    after = optax.cosine_decay_schedule(rate, max(config.num_train_steps - warmup, 1))
  elif optimizer.schedule == "constant":
    after = optax.constant_schedule(rate)
  else:
    raise ValueError(f"config.optimizer.schedule={optimizer.schedule!r}: 'constant' or "
                     "'cosine' (with decay_steps: step decay)")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(rate / 3, rate, warmup), after], [warmup])


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """L2 weight decay on kernels, global-norm clipping, then SGD with momentum or Adam."""
  optimizer = config.optimizer
  schedule = learning_rate_schedule(config)
  chain = []
  if optimizer.weight_decay:
    chain.append(optax.add_decayed_weights(
        optimizer.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
  if optimizer.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(optimizer.grad_clip_norm))
  if optimizer.name == "sgd":
    chain.append(optax.sgd(schedule, momentum=optimizer.momentum))
  elif optimizer.name == "adam":
    chain.append(optax.adam(schedule))
  else:
    raise ValueError(f"config.optimizer.name={optimizer.name!r}: 'sgd' or 'adam'")
  return optax.chain(*chain)


def target_config(config: ml_collections.ConfigDict) -> losses.TargetConfig:
  """The sampling knobs of `config.targets`."""
  targets = config.targets
  return losses.TargetConfig(rpn_samples=targets.rpn_samples,
                             rpn_positive_fraction=targets.rpn_positive_fraction,
                             rcnn_samples=targets.rcnn_samples,
                             rcnn_positive_fraction=targets.rcnn_positive_fraction)


def inference_config(config: ml_collections.ConfigDict) -> inference.InferenceConfig:
  """The test-time knobs of `config.inference`."""
  return inference.InferenceConfig(**config.inference.to_dict())


def abstract_train_state(config, model, tx, mesh):
  """(init(rng) -> TrainState, the TrainState as ShapeDtypeStructs with their shardings)."""
  height, width = input_pipeline.padded_size(tuple(config.dataset.max_size))

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    variables = model.init(params_rng, jnp.zeros((1, height, width, 3), jnp.float32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(variables["params"]), rng=state_rng,
                      apply_fn=model.apply, tx=tx)

  abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
  shardings = sharding.state_shardings(abstract, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return init, abstract


def read_pretrained(config: ml_collections.ConfigDict, abstract: TrainState):
  """The (params, batch_stats) of `config.model.pretrained` (a torchvision ResNet-50/101 state
  dict as .npz, into the pyramid's encoder; `training.weights`) for `abstract`'s shapes, or None
  without one. Reads shapes only, so a file that does not fit the model is refused (ValueError
  naming it) before anything compiles."""
  path = config.model.get("pretrained", "")
  if not path:
    return None
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        (abstract.params, abstract.batch_stats))
  return vos_train.read_pretrained(*shapes, path, config.model.backbone, head="masktrack")


def _restore_or_initialize(checkpointer, init, abstract, config, mesh) -> TrainState:
  """The latest checkpoint's state, or a new one (with the pretrained weights, if any)."""
  latest = checkpointer.latest_step()
  if latest is not None:
    checkpointer.check_compatible(latest, config, abstract)
    logging.info("Resuming from checkpoint %d in %s.", latest, checkpointer.directory)
    return checkpointer.restore(latest, abstract)
  pretrained = read_pretrained(config, abstract)
  state = jax.jit(init, in_shardings=sharding.replicated_sharding(mesh),
                  out_shardings=jax.tree.map(lambda x: x.sharding, abstract))(
                      np.asarray(jax.random.PRNGKey(config.seed)))
  return state if pretrained is None else vos_train.place_pretrained(state, pretrained)


def load_builder(config: ml_collections.ConfigDict):
  """The prepared TFDS builder of `config.dataset` (the registry's, generated on first use)."""
  from datasets import registry  # pylint: disable=g-import-not-at-top (imports TF lazily)
  return registry.load_builder(config.dataset)


def decoded_videos(builder, split: str, limit: int = -1):
  """The split's examples as NumPy (the first `limit`; -1: all), in the records' order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  if limit >= 0:
    dataset = dataset.take(limit)
  return tfds.as_numpy(dataset)


def evaluate_split(config: ml_collections.ConfigDict, model: MaskTrackRCNN, variables: dict,
                   builder, output_dir: str) -> dict[str, float]:
  """Segments `config.dataset.eval_split`, writes `results.json` and `results.zip` into
  `output_dir` (and the split's ground truth as `instances.json` when it has some) and returns
  the YouTube-VIS metrics (none without ground truth) plus `frames_per_second`."""
  segmenter = inference.VideoSegmenter.from_model(
      model, variables, tuple(config.dataset.max_size), inference_config(config))
  videos = list(decoded_videos(builder, config.dataset.eval_split, config.num_eval_videos))
  results, fps = inference.segment_videos(segmenter, videos)
  results_io.write_submission(results, os.path.join(output_dir, "results.json"),
                              os.path.join(output_dir, "results.zip"))
  names = builder.info.metadata["categories"]
  truth = annotation_io.dataset_from_videos(videos, names)
  scores = {}
  if truth["annotations"]:
    results_io.write_json(truth, os.path.join(output_dir, "instances.json"))
    scores = vis_metrics.evaluate(truth, results)
  scores["frames_per_second"] = fps
  return scores


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       evaluate: bool = True) -> TrainState:
  """Trains MaskTrack R-CNN (resuming from `workdir`), evaluating every `eval_every_steps`
  and at the end when `evaluate`; returns the final state."""
  with workdir_lock.hold(workdir, "train_and_evaluate" if evaluate else "train"):
    return _train(config, workdir, evaluate)


def _train(config, workdir, evaluate) -> TrainState:
  from clu import metric_writers  # pylint: disable=g-import-not-at-top (imports TF)
  mesh = sharding.create_mesh(config.mesh)
  model = build_model(config)
  tx = create_optimizer(config)
  init, abstract = abstract_train_state(config, model, tx, mesh)
  checkpointer = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  state = _restore_or_initialize(checkpointer, init, abstract, config, mesh)
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  step_fn = jax.jit(
      functools.partial(step_lib.train_step, model=model, schedule=learning_rate_schedule(config),
                        config=target_config(config),
                        proposal_options={"pre_nms": config.inference.proposals,
                                          "post_nms": config.inference.proposals,
                                          "max_proposals": config.inference.proposals}),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated_sharding(mesh)), donate_argnums=0)
  builder = load_builder(config)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  train = builder.as_dataset(split=config.dataset.train_split, shuffle_files=True)
  train = train.repeat().shuffle(config.dataset.shuffle_buffer, seed=config.seed)
  batches = input_pipeline.train_batches(
      tfds.as_numpy(train), config.batch_size // jax.process_count(),
      tuple(config.dataset.max_size), config.targets.max_instances,
      seed=config.seed + int(state.step) + 1000 * jax.process_index(),
      flip_probability=config.dataset.flip_probability)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  history = []
  start = int(state.step)
  tick = time.perf_counter()
  for step in range(start + 1, config.num_train_steps + 1):
    state, step_metrics = step_fn(state, sharding.global_batch(next(batches), mesh))
    history.append(step_metrics)
    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      fetched = jax.device_get(history)
      means = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      if not np.isfinite(means["train/loss"]):
        raise FloatingPointError(f"Training loss is {means['train/loss']} near step {step}.")
      seconds = time.perf_counter() - tick
      means["train/steps_per_sec"] = len(fetched) / seconds
      writer.write_scalars(step, means)
      logging.info("step %d/%d  loss %.3f  track acc %.2f  box acc %.2f  %.2f steps/s", step,
                   config.num_train_steps, means["train/loss"], means["train/track_accuracy"],
                   means["train/box_accuracy"], means["train/steps_per_sec"])
      history, tick = [], time.perf_counter()
    last = step == config.num_train_steps
    if step % config.checkpoint_every_steps == 0 or last:
      checkpointer.save(step, state, config)
    if evaluate and ((config.eval_every_steps and step % config.eval_every_steps == 0) or last):
      checkpointer.wait_until_finished()
      scores = evaluate_split(config, model, {"params": state.params,
                                              "batch_stats": state.batch_stats}, builder,
                              os.path.join(workdir, "predictions", config.dataset.eval_split))
      writer.write_scalars(step, {f"eval/{k}": v for k, v in scores.items()})
      logging.info("step %d: %s\n%s", step, config.dataset.eval_split,
                   vis_metrics.format_table(scores) if "AP" in scores else "no ground truth")
      tick = time.perf_counter()
  checkpointer.wait_until_finished()
  checkpointer.close()
  writer.flush()
  return state


def restore_variables(config: ml_collections.ConfigDict, workdir: str,
                      model: MaskTrackRCNN) -> tuple[dict, int]:
  """({params, batch_stats} of the latest checkpoint in `workdir`, its step); the checkpoint
  is checked against `config` first (ValueError if incompatible, FileNotFoundError if none)."""
  mesh = sharding.create_mesh(config.mesh)
  _, abstract = abstract_train_state(config, model, create_optimizer(config), mesh)
  checkpointer = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    latest = checkpointer.latest_step()
    if latest is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory} (train first)")
    checkpointer.check_compatible(latest, config, abstract)
    state = checkpointer.restore(latest, abstract)
  finally:
    checkpointer.close()
  return {"params": state.params, "batch_stats": state.batch_stats}, latest


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`--mode=evaluate`: the latest checkpoint on `config.dataset.eval_split` (results JSON and
  zip in `<workdir>/predictions/<split>/`, metrics printed when the split has ground truth)."""
  with workdir_lock.hold(workdir, "evaluate"):
    model = build_model(config)
    variables, step = restore_variables(config, workdir, model)
    output = os.path.join(workdir, "predictions", config.dataset.eval_split)
    scores = evaluate_split(config, model, variables, load_builder(config), output)
    print(f"step {step}, {config.dataset.eval_split}: results in {output}")
    if "AP" in scores:
      print(vis_metrics.format_table(scores))
    print(f"{scores['frames_per_second']:.2f} frames/s")
    return scores
