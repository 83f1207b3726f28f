"""Checks of config values: one ValueError wording for every module, naming the full key.

Each check returns the value (as a Python int, float or tuple) or raises
`ValueError("config.model.max_objects must be an int >= 1, got 0")` (for a choice:
`"config.model.head='knn' is not one of ('feelvos', 'nearest_neighbor')"`). Ints and floats reject
bool (`True` is not a count), floats reject NaN and inf. Pure Python and NumPy: importing this
module imports neither JAX nor TensorFlow.

- Config level, `(config, key, ...)`: `positive_int`, `int_at_least`, `int_in`, `one_of`,
  `float_in`, `int_tuple`; `key` is the full dotted key ("model.max_objects") and `config` the
  root config or the section its leading parts name (`config.model` for "model.max_objects"),
  so a function handed `config.model` still reports `config.model.<key>`.
- Value level, `(value, name, ...)`: `check_int`, `check_float`, `check_int_tuple`,
  `check_choice`, for a value already in hand (a module attribute, an argument that defaults to a
  config value); `name` is what the message calls it.
- `is_int(value)`: a Python or NumPy integer that is not a bool.
"""
import math
from typing import Any, Optional, Sequence

import numpy as np


def is_int(value: Any) -> bool:
  """True for Python and NumPy integers, False for bools (and everything else)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))


def _int_range(low: Optional[int], high: Optional[int]) -> str:
  if high is None:
    return f">= {low}"
  if low is None:
    return f"<= {high}"
  return f"in [{low}, {high}]"


# ------------------------------------------------------------------------- value level
def check_int(value: Any, name: str, low: Optional[int] = None,
              high: Optional[int] = None) -> int:
  """`value` as an int; ValueError naming `name` unless an int (not bool) in [low, high]."""
  if (not is_int(value) or (low is not None and value < low)
      or (high is not None and value > high)):
    bounds = "" if low is None and high is None else " " + _int_range(low, high)
    raise ValueError(f"{name} must be an int{bounds}, got {value!r}")
  return int(value)


def check_float(value: Any, name: str, low: Optional[float] = None,
                high: Optional[float] = None, *, low_open: bool = False,
                high_open: bool = False) -> float:
  """`value` as a float; ValueError naming `name` unless a finite number (int or float, not
  bool) within the bounds (`low_open` / `high_open` exclude the bound itself)."""
  ok = _is_number(value) and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    if low is not None and high is not None:
      bounds = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
      bounds = f" {'>' if low_open else '>='} {low}"
    elif high is not None:
      bounds = f" {'<' if high_open else '<='} {high}"
    else:
      bounds = ""
    raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
  return float(value)


def check_int_tuple(value: Any, name: str, *, length: Optional[int] = None,
                    low: Optional[int] = None, high: Optional[int] = None) -> tuple[int, ...]:
  """`value` as a tuple of ints; ValueError naming `name` unless a tuple or list (of `length`
  entries when given) of ints (not bools) in [low, high]."""
  ok = isinstance(value, (tuple, list)) and (length is None or len(value) == length)
  ok = ok and all(is_int(v) and (low is None or v >= low) and (high is None or v <= high)
                  for v in value)
  if not ok:
    count = "" if length is None else f"{length} "
    bounds = "" if low is None and high is None else " " + _int_range(low, high)
    raise ValueError(f"{name} must be a tuple of {count}ints{bounds}, got {value!r}")
  return tuple(int(v) for v in value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
  """`value`; ValueError naming `name` and the choices unless it is one of `choices`."""
  if not any(value == choice and isinstance(value, bool) == isinstance(choice, bool)
             for choice in choices):  # True == 1, but a flag is not a count.
    raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}")
  return value


# ------------------------------------------------------------------------ config level
def lookup(config: Any, key: str) -> Any:
  """The value at dotted `key` of `config`: the root config, or the section that the key's
  leading parts name (`lookup(config.model, "model.window")` is `config.model.window`).
  KeyError naming `config.<key>` when it is missing."""
  parts = key.split(".")
  start = 0
  while start < len(parts) - 1 and not _has(config, parts[start]):
    start += 1
  node = config
  for part in parts[start:]:
    if not _has(node, part):
      raise KeyError(f"config.{key} is missing")
    node = node[part]
  return node


def _has(node: Any, part: str) -> bool:
  try:
    return part in node
  except TypeError:
    return False


def int_at_least(config: Any, key: str, low: int) -> int:
  """config.<key> as an int >= low; ValueError naming the key otherwise."""
  return check_int(lookup(config, key), f"config.{key}", low)


def positive_int(config: Any, key: str) -> int:
  """config.<key> as an int >= 1; ValueError naming the key otherwise."""
  return int_at_least(config, key, 1)


def int_in(config: Any, key: str, low: int, high: int) -> int:
  """config.<key> as an int in [low, high]; ValueError naming the key otherwise."""
  return check_int(lookup(config, key), f"config.{key}", low, high)


def float_in(config: Any, key: str, low: Optional[float] = None, high: Optional[float] = None,
             *, low_open: bool = False, high_open: bool = False) -> float:
  """config.<key> as a finite float within the bounds (see `check_float`)."""
  return check_float(lookup(config, key), f"config.{key}", low, high, low_open=low_open,
                     high_open=high_open)


def one_of(config: Any, key: str, choices: Sequence[Any]) -> Any:
  """config.<key> if it is one of `choices`; ValueError naming the key and the choices."""
  return check_choice(lookup(config, key), f"config.{key}", choices)


def int_tuple(config: Any, key: str, *, length: Optional[int] = None, low: Optional[int] = None,
              high: Optional[int] = None) -> tuple[int, ...]:
  """config.<key> as a tuple of ints (see `check_int_tuple`)."""
  return check_int_tuple(lookup(config, key), f"config.{key}", length=length, low=low,
                         high=high)


__all__ = ["check_choice", "check_float", "check_int", "check_int_tuple", "float_in",
           "int_at_least", "int_in", "int_tuple", "is_int", "lookup", "one_of", "positive_int"]
