"""Tests of benchmarks.train_step's row configs (the timing itself is a benchmark, not a test)."""
import pytest

from benchmarks import train_step
from configs import synthetic


def test_synthetic_row_overrides_set_typed_values_and_keep_strings():
  config = train_step.with_overrides(
      synthetic.get_config(), "model.head=rde+dataset.clip_frames=0+model.rde_affinity=dot")
  assert config.model.head == "rde"
  assert config.dataset.clip_frames == 0 and isinstance(config.dataset.clip_frames, int)
  assert config.model.rde_affinity == "dot"
  assert synthetic.get_config().model.head != "rde"


def test_synthetic_row_override_without_a_value_names_it():
  with pytest.raises(ValueError, match="'model.head' is not key.path=value"):
    train_step.with_overrides(synthetic.get_config(), "model.head")


def test_synthetic_row_override_of_an_unknown_key_is_refused():
  with pytest.raises(KeyError, match="no key .model.no_such_key"):
    train_step.with_overrides(synthetic.get_config(), "model.no_such_key=1")
