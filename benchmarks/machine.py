"""What every benchmark section records about the machine it ran on, how it is written, and the
shared timing helper."""
import datetime
import fcntl
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax

BENCHMARKS_FILE = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


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


def section_text(title: str, lines_or_text: str | Sequence[str], command: str) -> str:
  """A BENCHMARKS.md section: `## title, date`, then machine, versions and command lines, then
  the body (a string as is; a sequence of strings one per line)."""
  if not title or "\n" in title:
    raise ValueError(f"title must be one non-empty line, got {title!r}.")
  if not command:
    raise ValueError("command must name how the figures were produced, got an empty string.")
  body = lines_or_text if isinstance(lines_or_text, str) else "\n".join(lines_or_text)
  device = jax.devices()[0]
  header = [
      f"## {title}, {datetime.date.today().isoformat()}",
      "",
      f"- Machine: {cpu_model()}, {os.cpu_count()} CPUs visible, {device.platform} backend "
      f"({device.device_kind}), Python {platform.python_version()}; load average (1 / 5 / 15 "
      f"min) when written: {load_average()}",
      f"- Versions: JAX {jax.__version__}",
      f"- Command: `{command}`",
      "",
  ]
  return "\n".join(header) + body.rstrip("\n") + "\n"


def append_section(title: str, lines_or_text: str | Sequence[str], command: str,
                   path: str | os.PathLike = BENCHMARKS_FILE) -> str:
  """Appends `section_text(...)` to `path` (BENCHMARKS.md) and returns the text.

  The section goes in with one write under an exclusive lock, preceded by a blank line, so
  benchmarks finishing at the same time never interleave their sections.
  """
  text = section_text(title, lines_or_text, command)
  data = ("\n" + text).encode()
  descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    written = 0
    while written < len(data):
      written += os.write(descriptor, data[written:])
    os.fsync(descriptor)
  finally:
    os.close(descriptor)  # Closing releases the lock.
  return text



def report(title: str, lines_or_text: str | Sequence[str], command: str, *, write: bool,
           path: str | os.PathLike = BENCHMARKS_FILE) -> None:
  """Prints a benchmark's section (`section_text`) and, if `write`, appends it to `path`
  (`append_section`): the one ending every benchmark's `--no_write` choice shares."""
  if write:
    print(append_section(title, lines_or_text, command, path=path))
  else:
    print(section_text(title, lines_or_text, command))

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
