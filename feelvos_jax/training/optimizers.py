"""The optax optimizer and learning-rate schedule described by `config.optimizer`.

Paper setting: momentum SGD 0.9, lr 7e-4 with poly decay (power 0.9), L2 weight decay 4e-5 on the
convolution kernels (added to the gradient like the official code's regularisation loss), and
each parameter's gradient clipped to norm 5 on its own, as the official code's
`slim.learning.clip_gradient_norms(grads_and_vars, 5.0)` (`grad_clip_mode = "per_tensor"`);
`"global"` scales all gradients together by their joint norm instead (`optax.clip_by_global_norm`).
"""
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from feelvos_jax import config_checks

Schedule = Callable[[jax.Array], jax.Array]

_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCHEDULES = ("poly", "cosine", "constant")
_CLIP_MODES = ("per_tensor", "global")


def create_learning_rate_schedule(optimizer_config: ml_collections.ConfigDict,
                                  learning_rate: float, num_train_steps: int) -> Schedule:
  """Linear warm-up from 0 to `learning_rate`, then poly / cosine / constant until the last step.

  poly:   end + (lr - end) * (1 - t / T) ** poly_power,  T = num_train_steps - warmup_steps
  cosine: end + (lr - end) * (1 + cos(pi * t / T)) / 2
  where t counts the steps after the warm-up.
  """
  name = config_checks.one_of(optimizer_config, "optimizer.schedule", _SCHEDULES)
  warmup_steps = config_checks.int_at_least(optimizer_config, "optimizer.warmup_steps", 0)
  config_checks.check_float(learning_rate, "config.learning_rate", 0.0)
  end_value = config_checks.float_in(optimizer_config, "optimizer.end_learning_rate", 0.0)
  decay_steps = max(num_train_steps - warmup_steps, 1)
  if name == "poly":
    power = config_checks.float_in(optimizer_config, "optimizer.poly_power", 0.0, low_open=True)
    decay = optax.polynomial_schedule(init_value=learning_rate, end_value=end_value,
                                      power=power, transition_steps=decay_steps)
  elif name == "cosine":
    decay = optax.cosine_decay_schedule(init_value=learning_rate, decay_steps=decay_steps,
                                        alpha=end_value / learning_rate if learning_rate else 0.0)
  else:
    decay = optax.constant_schedule(learning_rate)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(init_value=0.0, end_value=learning_rate,
                                 transition_steps=warmup_steps)
  return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
  """Scales each gradient tensor g to norm at most `max_norm` on its own:
  g * min(1, max_norm / ||g||) (TF's `clip_by_norm` per variable)."""
  def clip(updates: optax.Updates, params: optax.Params | None = None) -> optax.Updates:
    del params
    def one(gradient: jax.Array) -> jax.Array:
      norm = jnp.sqrt(jnp.sum(jnp.square(gradient.astype(jnp.float32))))
      scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
      return (gradient * scale).astype(gradient.dtype)
    return jax.tree.map(one, updates)
  return optax.stateless(clip)


def _is_kernel(params: optax.Params) -> optax.Params:
  """Weight-decay mask: True for convolution/dense kernels (ndim > 1), False for biases, norms."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def create_optimizer(optimizer_config: ml_collections.ConfigDict, learning_rate: float,
                     num_train_steps: int) -> Tuple[optax.GradientTransformation, Schedule]:
  """Returns (optax transformation, learning-rate schedule) for `config.optimizer`.

  Order of the chain: L2 decay added to the gradients (sgd/adam; kernels only), clipping
  (`grad_clip_mode`: each tensor by its own norm, or all by their global norm), then the update
  rule; adamw decays the weights decoupled, inside `optax.adamw`.
  """
  name = config_checks.one_of(optimizer_config, "optimizer.name", _OPTIMIZERS)
  weight_decay = config_checks.float_in(optimizer_config, "optimizer.weight_decay", 0.0)
  clip_norm = config_checks.float_in(optimizer_config, "optimizer.grad_clip_norm", 0.0)  # 0: off.
  clip_mode = config_checks.one_of(optimizer_config, "optimizer.grad_clip_mode", _CLIP_MODES)
  schedule = create_learning_rate_schedule(optimizer_config, learning_rate, num_train_steps)
  chain = []
  if weight_decay > 0 and name != "adamw":
    chain.append(optax.add_decayed_weights(weight_decay, mask=_is_kernel))
  if clip_norm > 0:
    chain.append(clip_each_by_norm(clip_norm) if clip_mode == "per_tensor"
                 else optax.clip_by_global_norm(clip_norm))
  if name == "sgd":
    momentum = config_checks.float_in(optimizer_config, "optimizer.momentum", 0.0, 1.0,
                                      high_open=True)
    chain.append(optax.sgd(schedule, momentum=momentum or None))
  elif name == "adam":
    chain.append(optax.adam(schedule))
  else:
    chain.append(optax.adamw(schedule, weight_decay=weight_decay, mask=_is_kernel))
  return optax.chain(*chain), schedule
