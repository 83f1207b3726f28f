"""A byte-bounded store of device arrays kept between propagations, with its counters."""
from typing import Any, Callable, Hashable, Optional

import jax


def value_bytes(value: Any) -> int:
  """Bytes of the arrays in `value` (an array, or a tuple holding arrays and scalars)."""
  return sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree_util.tree_leaves(value))


class BoundedCache:
  """Key -> value while the values' bytes (`value_bytes`) stay within `budget_bytes`.

  Admission, not eviction: a new value is kept only if it fits beside those already kept, and
  nothing is dropped to make room. A propagation walks the frames in order, the same frames
  every time: the values kept first are read again at the next propagation, where a
  least-recently-used policy would have dropped each of them before its next use. Putting a
  kept key replaces its value.

  Attributes:
    budget_bytes: the bound.
    used_bytes: bytes of the kept values.
    hits, misses: `get` calls that found a value, and those that did not.
    refused: values not kept for lack of room.
  """

  def __init__(self, budget_bytes: int):
    self.budget_bytes = budget_bytes
    self.used_bytes = 0
    self.hits = self.misses = self.refused = 0
    self._values: dict[Hashable, Any] = {}

  def __len__(self) -> int:
    return len(self._values)

  def __contains__(self, key: Hashable) -> bool:
    return key in self._values

  def keys(self) -> list[Hashable]:
    return list(self._values)

  def items(self) -> list[tuple[Hashable, Any]]:
    return list(self._values.items())

  def pop(self, key: Hashable) -> Optional[Any]:
    """Drops the value of `key` (None if not kept) and returns it; counts nothing."""
    value = self._values.pop(key, None)
    if value is not None:
      self.used_bytes -= value_bytes(value)
    return value

  def get(self, key: Hashable) -> Optional[Any]:
    """The kept value of `key`, or None; counts a hit or a miss."""
    value = self._values.get(key)
    if value is None:
      self.misses += 1
    else:
      self.hits += 1
    return value

  def put(self, key: Hashable, value: Any) -> bool:
    """Keeps `value` under `key` (replacing the key's value) if it fits; whether it is kept."""
    old = self._values.pop(key, None)
    if old is not None:
      self.used_bytes -= value_bytes(old)
    size = value_bytes(value)
    if self.used_bytes + size > self.budget_bytes:
      self.refused += 1
      return False
    self._values[key] = value
    self.used_bytes += size
    return True

  def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
    """The kept value of `key`, else `compute()`, kept if it fits."""
    value = self.get(key)
    if value is None:
      value = compute()
      self.put(key, value)
    return value
