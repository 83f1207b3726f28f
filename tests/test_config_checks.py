"""feelvos_jax.config_checks: every check accepts valid values and rejects bool, NaN, inf, wrong
types and out-of-range values with a message naming the full config key."""
import math
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from feelvos_jax import config_checks


def make_config(**model):
  """A ConfigDict without type safety, so that a test can put any bad value into it."""
  config = ml_collections.ConfigDict(type_safe=False)
  values = dict(max_objects=10, window=15, head="feelvos", dtype="float32",
                local_windows=(1, 2), margin=0.3, flag=True)
  config.model = ml_collections.ConfigDict({**values, **model}, type_safe=False)
  config.batch_size = 8
  return config


def test_importing_it_imports_neither_jax_nor_tensorflow():
  code = ("import sys; import feelvos_jax.config_checks; "
          "print('jax' in sys.modules, 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]


def test_lookup_from_the_root_or_from_the_section():
  config = make_config()
  assert config_checks.lookup(config, "model.window") == 15
  assert config_checks.lookup(config.model, "model.window") == 15
  assert config_checks.lookup(config, "batch_size") == 8
  with pytest.raises(KeyError, match=r"config\.model\.missing"):
    config_checks.lookup(config, "model.missing")


def test_is_int():
  assert config_checks.is_int(3) and config_checks.is_int(np.int32(3))
  for value in (True, np.bool_(True), 3.0, "3", None):
    assert not config_checks.is_int(value)


@pytest.mark.parametrize("section", [False, True])
def test_positive_int_and_int_at_least(section):
  config = make_config(max_objects=np.int64(4), window=0)
  source = config.model if section else config
  value = config_checks.positive_int(source, "model.max_objects")
  assert value == 4 and type(value) is int
  assert config_checks.int_at_least(source, "model.window", 0) == 0
  for bad in (0, -1, True, 2.0, "3", None):
    config.model.max_objects = bad
    with pytest.raises(ValueError, match=r"^config\.model\.max_objects must be an int >= 1, "
                                         rf"got {bad!r}$".replace("(", r"\(")):
      config_checks.positive_int(source, "model.max_objects")
  with pytest.raises(ValueError, match=r"config\.model\.window must be an int >= 1, got 0"):
    config_checks.int_at_least(source, "model.window", 1)


def test_int_in():
  config = make_config()
  assert config_checks.int_in(config, "model.window", 0, 15) == 15
  for bad in (16, -1, False, 1.5):
    config.model.window = bad
    with pytest.raises(ValueError, match=r"config\.model\.window must be an int in \[0, 15\]"):
      config_checks.int_in(config, "model.window", 0, 15)


def test_float_in():
  config = make_config()
  assert config_checks.float_in(config, "model.margin", 0.0) == 0.3
  config.model.margin = 2  # An int is a number.
  value = config_checks.float_in(config, "model.margin", 0.0, 2.0)
  assert value == 2.0 and type(value) is float
  for bad in (-0.1, math.nan, math.inf, -math.inf, "0.3", None):
    config.model.margin = bad
    with pytest.raises(ValueError, match=r"^config\.model\.margin must be a finite number >= 0"):
      config_checks.float_in(config, "model.margin", 0.0)
  # A ConfigDict casts True to 1.0 in a float field; a plain mapping keeps the bool.
  with pytest.raises(ValueError, match=r"config\.model\.margin must be a finite number, got True"):
    config_checks.float_in({"model": {"margin": True}}, "model.margin")
  config.model.margin = 0.0
  with pytest.raises(ValueError, match=r"config\.model\.margin must be a finite number in "
                                       r"\(0\.0, 1\.0\], got 0\.0"):
    config_checks.float_in(config, "model.margin", 0.0, 1.0, low_open=True)
  config.model.margin = 1.0
  with pytest.raises(ValueError, match=r"in \[0\.0, 1\.0\), got 1\.0"):
    config_checks.float_in(config, "model.margin", 0.0, 1.0, high_open=True)
  with pytest.raises(ValueError, match=r"must be a finite number < 1\.0"):
    config_checks.float_in(config, "model.margin", high=1.0, high_open=True)
  config.model.margin = math.nan
  with pytest.raises(ValueError, match=r"config\.model\.margin must be a finite number, got nan"):
    config_checks.float_in(config, "model.margin")


def test_one_of():
  config = make_config()
  assert config_checks.one_of(config.model, "model.head", ("feelvos", "nearest_neighbor")) == (
      "feelvos")
  config.model.head = "knn"
  with pytest.raises(ValueError, match=r"^config\.model\.head='knn' is not one of "
                                       r"\('feelvos', 'nearest_neighbor'\)$"):
    config_checks.one_of(config, "model.head", ("feelvos", "nearest_neighbor"))
  config.model.window = 1
  assert config_checks.one_of(config, "model.window", (1, 2)) == 1
  with pytest.raises(ValueError, match=r"config\.model\.flag=True is not one of \(1, 2\)"):
    config_checks.one_of(config, "model.flag", (1, 2))  # True == 1, but a flag is no count.
  assert config_checks.one_of(config, "model.flag", (True, False)) is True


def test_int_tuple():
  config = make_config()
  assert config_checks.int_tuple(config, "model.local_windows", low=0) == (1, 2)
  config.model.local_windows = [3, np.int32(4)]
  assert config_checks.int_tuple(config.model, "model.local_windows", length=2, low=1) == (3, 4)
  for bad in ((3,), (3, 4, 5), (3, 0), (3, True), (3, 4.0), "34", 3, None):
    config.model.local_windows = bad
    with pytest.raises(ValueError, match=r"^config\.model\.local_windows must be a tuple of 2 "
                                         r"ints >= 1, got"):
      config_checks.int_tuple(config, "model.local_windows", length=2, low=1)
  config.model.local_windows = ()
  assert config_checks.int_tuple(config, "model.local_windows", low=0) == ()


def test_value_level_checks_name_what_they_are_given():
  assert config_checks.check_int(5, "start_step", 0) == 5
  with pytest.raises(ValueError, match=r"^process_index must be an int in \[0, 1\], got 2$"):
    config_checks.check_int(2, "process_index", 0, 1)
  with pytest.raises(ValueError, match=r"^count must be an int, got 'a'$"):
    config_checks.check_int("a", "count")
  with pytest.raises(ValueError, match=r"^config\.loss\.top_k_percent must be a finite number "
                                       r"in \(0\.0, 1\.0\], got 1\.5$"):
    config_checks.check_float(1.5, "config.loss.top_k_percent", 0.0, 1.0, low_open=True)
  with pytest.raises(ValueError, match=r"^entries must be a tuple of 3 ints >= 1, got \(1, 2\)$"):
    config_checks.check_int_tuple((1, 2), "entries", length=3, low=1)
  with pytest.raises(ValueError, match=r"^axis='x' is not one of \('query', 'reference'\)$"):
    config_checks.check_choice("x", "axis", ("query", "reference"))
