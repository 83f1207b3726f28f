"""Test-wide setup: 8 fake CPU devices for sharding tests, TF kept off accelerators, one
persistent JAX compilation cache for the session, the `unoptimized` marker, and the module order.

`XLA_FLAGS` must be set before jax is first imported, which is why this lives in conftest.
"""
import collections
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from feelvos_jax.training import train  # noqa: E402
from tests import testing  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Modules with more `slow` tests run first, then those with more tests; each module's tests
  keep their order. Under pytest-xdist's `--dist loadfile` a free worker takes the next module,
  so starting with the costly ones leaves the many cheap ones to even out the end instead of one
  long module running alone (pytest.ini turns off xdist's own reordering, by test count only,
  which left the few-but-long end-to-end modules to the end)."""
  del config
  def module(item):
    return item.nodeid.split("::")[0]
  slow = collections.Counter(module(item) for item in items
                             if item.get_closest_marker("slow") is not None)
  count = collections.Counter(module(item) for item in items)
  items.sort(key=lambda item: (-slow[module(item)], -count[module(item)]))  # Stable sort.


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


@pytest.fixture(autouse=True, scope="session")
def _persistent_compilation_cache(request, tmp_path_factory):
  """Every compilation, however small, goes through one persistent cache: a program that several
  tests, processes or sessions compile identically compiles once (with unchanged code, the
  compile-bound test modules of a later session run about 3x faster).

  The folder is JAX_COMPILATION_CACHE_DIR when the environment names one, else
  `jax_compilation_cache` in pytest's cache (.pytest_cache/, git-ignored; `--cache-clear` empties
  it for a cold run; under `-p no:cacheprovider` a temporary folder of this session). Entries
  are never evicted, and one that a killed session left half-written makes JAX warn and compile
  again: `--cache-clear` removes both. The settings are exported as environment variables
  (JAX_COMPILATION_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS,
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES), which the subprocesses that tests start (main.py
  runs, notebook kernels) inherit. Yields the folder.
  """
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if not directory:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider.
    directory = str(cache.mkdir("jax_compilation_cache") if cache is not None
                    else tmp_path_factory.mktemp("jax_compilation_cache"))
  settings = {"jax_compilation_cache_dir": directory,
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": -1}  # -1: entries of any size.
  with pytest.MonkeyPatch.context() as patch:
    for name, value in settings.items():
      jax.config.update(name, value)
      patch.setenv(name.upper(), str(value))
    yield directory


@pytest.fixture(autouse=True)
def _unoptimized_marker(request):
  """Tests marked `unoptimized` (plumbing only: files, errors, control flow) compile inside
  `testing.unoptimized()`; fixtures of a wider scope are set up before this one, so an expensive
  one that such tests share enters the context itself."""
  if request.node.get_closest_marker("unoptimized") is None:
    yield
    return
  with testing.unoptimized():
    yield


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory):
  """(workdir, `testing.numpy_state` of the final state) of `testing.tiny_config` trained on
  `testing.fake_videos` without interruption, compiled `unoptimized`: the reference of the
  resume and fault tests, which train the same way (marked `unoptimized`, or in processes
  started with JAX_DISABLE_MOST_OPTIMIZATIONS=1)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  with pytest.MonkeyPatch.context() as patch, testing.unoptimized():
    patch.setattr(train, "_load_videos",
                  lambda dataset_config, split, decoders=None: testing.fake_videos())
    state = train.train_and_evaluate(testing.tiny_config(), str(workdir), evaluate=False)
  return workdir, testing.numpy_state(state)
