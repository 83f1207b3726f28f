"""What the commands print for people: this project's log lines, progress bars, durations.

- `configure_logging(verbosity)`: at absl's default `--verbosity=0`, the log shows this
  project's INFO lines as bare messages and the libraries' warnings and errors
  (`WARNING: ...`), but not the libraries' INFO lines (Orbax alone logs every
  CheckpointManager option) nor their deprecation notices (addressed to this code, not to its
  users); TensorFlow's C++ log keeps to errors (`TF_CPP_MIN_LOG_LEVEL=2`) and its oneDNN
  notice is not printed (`TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow only decodes and augments the
  data here), unless the environment sets them. `--verbosity=1` and above leave absl's full
  log, every library's included.
- `progress(...)`: a tqdm progress bar on stderr (rate and ETA), drawn only when stderr is a
  terminal, so that logs and captured output stay free of bar redraws.
- `format_duration(seconds)`: "2m10s", "1h05m", "45s".
"""
import logging
import os
from typing import Any, Iterable, Optional

from absl import logging as absl_logging
import tqdm

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT_PATHS = tuple(os.path.join(_ROOT, name) + suffix for name, suffix in
                       (("feelvos_jax", os.sep), ("datasets", os.sep), ("main.py", "")))
"""Source files whose INFO lines `configure_logging` keeps: this package, the dataset builders
and main.py."""


class _ProjectInfoOnly(logging.Filter):
  """Keeps every record of this project's files; of the libraries', the warnings and errors
  that are not deprecation notices."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.pathname.startswith(_PROJECT_PATHS):
      return True
    return record.levelno >= logging.WARNING and "deprecat" not in record.getMessage()


class _PlainFormatter(logging.Formatter):
  """INFO lines as the bare message; WARNING and above prefixed with their level."""

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


def configure_logging(verbosity: int) -> None:
  """Applies the log policy of the module docstring (call after absl parsed the flags:
  `verbosity` is absl's `--verbosity`; before TensorFlow is imported, for its settings)."""
  if verbosity >= 1:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  absl_handler = absl_logging.get_absl_handler().python_handler
  absl_handler.setFormatter(_PlainFormatter("%(message)s"))
  # TensorFlow's logger prints through a handler of its own as well.
  for handler in [absl_handler] + logging.getLogger("tensorflow").handlers:
    if not any(isinstance(f, _ProjectInfoOnly) for f in handler.filters):
      handler.addFilter(_ProjectInfoOnly())


def progress(iterable: Optional[Iterable[Any]] = None, *, total: Optional[float] = None,
             desc: str = "", unit: str = "it", leave: bool = False) -> tqdm.tqdm:
  """A tqdm bar (count, rate, elapsed and ETA when `total` is known) on stderr; disabled when
  stderr is not a terminal (its `update` and `set_postfix` then do nothing)."""
  return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=None,
                   dynamic_ncols=True, smoothing=0.1)


def format_duration(seconds: float) -> str:
  """A short duration: "45s", "2m10s", "1h05m" (rounded to the second or the minute)."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
