"""README.md stays true to the code: its configuration table lists every knob with its default."""
import pathlib
import re

from configs import common

_README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _flatten(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_configuration_table_lists_every_key_with_its_default():
  rows = dict(re.findall(r"^\| `([\w.]+)` \| `(.*?)` \|", _README.read_text(), re.M))
  expected = {key: repr(value) for key, value in _flatten(common.get_base_config())}
  assert sorted(rows) == sorted(expected), (
      f"README.md's configuration table lacks {sorted(set(expected) - set(rows))} and has "
      f"stale rows {sorted(set(rows) - set(expected))}")
  wrong = {key: (rows[key], default) for key, default in expected.items()
           if rows[key] != default}
  assert not wrong, f"README.md defaults (table, configs/common.py) differ: {wrong}"
