"""What the benchmarks read of the machine they run on (CPU model, load, device memory) and
the shared timing helper; `benchmarks.records` writes it into every record."""
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def load_average() -> str:
  """The 1, 5 and 15 minute load averages, e.g. '2.10 / 1.85 / 1.40' ('unknown' if unavailable)."""
  try:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())
  except OSError:
    return "unknown"


def device_bytes(stat: str) -> int:
  """The first device's memory statistic `stat` ("bytes_in_use", "peak_bytes_in_use"), 0 where
  the backend reports none (CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats.get(stat, 0)) if stats else 0


def median_ms(function: Callable[..., Any], *args: Any, repeats: int) -> float:
  """Median wall milliseconds of `repeats` calls of `function(*args)` after one untimed
  (compiling) call; each call waits for its result (`jax.block_until_ready`)."""
  jax.block_until_ready(function(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)
