"""Test-wide setup: 8 fake CPU devices for sharding tests, TF kept off accelerators.

`XLA_FLAGS` must be set before jax is first imported, which is why this lives in conftest.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _tensorflow_off_accelerators():
  """TF must never grab GPU memory that JAX needs."""
  try:
    import tensorflow as tf
  except ImportError:
    yield
    return
  tf.config.set_visible_devices([], "GPU")
  yield
