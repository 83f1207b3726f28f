"""Learning-rate schedules and the optimizer chain against the formulas, in NumPy."""
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from feelvos_jax.training import optimizers


def _optimizer_config(**overrides):
  config = common.get_base_config().optimizer
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("name", ["poly", "cosine", "constant"])
def test_schedule_matches_formula(name):
  config = _optimizer_config(schedule=name, warmup_steps=10, poly_power=0.9,
                             end_learning_rate=1e-4)
  schedule = optimizers.create_learning_rate_schedule(config, 0.01, 110)
  for step in [0, 3, 10, 35, 60, 109, 110]:
    if step < 10:
      expected = 0.01 * step / 10
    else:
      progress = (step - 10) / 100
      expected = {"poly": 1e-4 + (0.01 - 1e-4) * (1 - progress) ** 0.9,
                  "cosine": 1e-4 + (0.01 - 1e-4) * (1 + math.cos(math.pi * progress)) / 2,
                  "constant": 0.01}[name]
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step


def test_paper_schedule_has_no_warmup():
  schedule = optimizers.create_learning_rate_schedule(_optimizer_config(), 7e-4, 200_000)
  assert float(schedule(0)) == pytest.approx(7e-4)
  assert float(schedule(100_000)) == pytest.approx(7e-4 * 0.5**0.9, rel=1e-5)


def test_bad_values_are_rejected():
  with pytest.raises(ValueError, match="config.optimizer.schedule"):
    optimizers.create_learning_rate_schedule(_optimizer_config(schedule="step"), 0.1, 10)
  with pytest.raises(ValueError, match="config.optimizer.warmup_steps"):
    optimizers.create_learning_rate_schedule(_optimizer_config(warmup_steps=-1), 0.1, 10)
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optimizers.create_optimizer(_optimizer_config(name="lamb"), 0.1, 10)
  with pytest.raises(ValueError, match="config.optimizer.weight_decay"):
    optimizers.create_optimizer(_optimizer_config(weight_decay=-1.0), 0.1, 10)


@pytest.mark.parametrize("clip_mode", ["per_tensor", "global"])
def test_sgd_matches_numpy(clip_mode):
  """L2 on kernels added to the gradient, the clip (each tensor by its own norm, as TF's
  `clip_gradient_norms`, or all by the global norm), then momentum SGD."""
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads = [{name: rng.normal(size=value.shape).astype(np.float32) * 3
            for name, value in params.items()} for _ in range(3)]
  config = _optimizer_config(weight_decay=0.1, grad_clip_norm=2.0, momentum=0.9,
                             schedule="poly", warmup_steps=0, end_learning_rate=0.0,
                             grad_clip_mode=clip_mode)
  tx, schedule = optimizers.create_optimizer(config, 0.05, 10)
  state = tx.init(params)
  current = {name: jnp.asarray(value) for name, value in params.items()}
  expected = {name: value.astype(np.float64) for name, value in params.items()}
  trace = {name: np.zeros_like(value) for name, value in expected.items()}
  for step, grad in enumerate(grads):
    updates, state = tx.update(grad, state, current)
    current = optax.apply_updates(current, updates)
    decayed = {"kernel": grad["kernel"] + 0.1 * expected["kernel"], "bias": grad["bias"]}
    global_norm = math.sqrt(sum(float(np.sum(value**2)) for value in decayed.values()))
    learning_rate = 0.05 * (1 - step / 10) ** 0.9
    for name in expected:
      norm = global_norm if clip_mode == "global" else math.sqrt(np.sum(decayed[name]**2))
      trace[name] = decayed[name] * min(1.0, 2.0 / norm) + 0.9 * trace[name]
      expected[name] = expected[name] - learning_rate * trace[name]
    assert float(schedule(step)) == pytest.approx(learning_rate, rel=1e-6)
  for name in expected:
    np.testing.assert_allclose(np.asarray(current[name]), expected[name], rtol=1e-5, atol=1e-6)


def test_per_tensor_clip_leaves_small_gradients_and_rejects_unknown_modes():
  grads = {"big": jnp.full((4,), 3.0), "small": jnp.array([0.6, 0.8])}  # Norms 6 and 1.
  clipped, _ = optimizers.clip_each_by_norm(5.0).update(grads, optax.EmptyState())
  np.testing.assert_allclose(clipped["big"], np.full(4, 2.5), rtol=1e-6)
  np.testing.assert_array_equal(clipped["small"], grads["small"])
  with pytest.raises(ValueError, match="config.optimizer.grad_clip_mode=.layer. is not one of"):
    optimizers.create_optimizer(_optimizer_config(grad_clip_mode="layer"), 0.1, 10)


def test_adamw_decays_only_kernels():
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zero_grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
  config = _optimizer_config(name="adamw", weight_decay=0.5, schedule="constant",
                             grad_clip_norm=0.0)
  tx, _ = optimizers.create_optimizer(config, 0.1, 10)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["kernel"]), -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["bias"]), 0.0)
