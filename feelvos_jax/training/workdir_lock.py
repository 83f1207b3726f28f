"""One run per workdir: the lock file that training, evaluation and export hold while they run.

`hold(workdir, mode)` creates `<workdir>/.lock` atomically (`O_CREAT | O_EXCL`) with the JSON
{host, pid, started (UTC, ISO 8601), mode, command} of the run, and deletes it when the run
ends, also by an exception or after a SIGTERM-save-and-stop. A run that finds the lock refuses
with `WorkdirLockedError` naming the holder. A lock whose process was killed (kill -9, a crash,
an out-of-memory kill) stays behind: when the holder ran on this host and its pid no longer
exists, the lock is stale, reported with a warning and taken over; a holder on another host
cannot be checked, and the error says to delete the file once that run is gone.

Several processes (one per host): process 0 takes the lock for all of them and tells the others
whether it got it.

Workdirs on object stores (`gs://...`) have no exclusive create: there the lock is written after
a check that it does not exist, so two runs started within the same moment can both pass.
"""
import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Any, Iterator, Optional
import uuid

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

LOCK_NAME = ".lock"
"""The lock file's name in the workdir."""

_ATTEMPTS = 3


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir's lock; the message names the lock file and its holder."""


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def _create(lock: epath.Path, text: str) -> None:
  """Creates `lock` holding `text`; FileExistsError if it exists (atomic on local disks)."""
  if _is_local(lock):
    descriptor = os.open(os.fspath(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(descriptor, "w") as file:
      file.write(text)
  elif lock.exists():
    raise FileExistsError(lock)
  else:
    lock.write_text(text)


def _describe(holder: dict[str, Any]) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, mode "
          f"{holder.get('mode')!r}, started {holder.get('started')}, command "
          f"{holder.get('command')!r}")


def _is_stale(holder: dict[str, Any]) -> bool:
  """Whether `holder` ran on this host and its process no longer exists."""
  if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
    return False
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # Alive, another user's.
    return False
  return False


def _take_over(lock: epath.Path, stale_text: str) -> None:
  """Removes the stale `lock` if it still holds `stale_text` (another run may have taken it
  over in the meantime: then its lock is put back)."""
  aside = lock.parent / f"{lock.name}.stale-{uuid.uuid4().hex}"
  try:
    lock.rename(aside)
  except FileNotFoundError:
    return
  if aside.read_text() != stale_text and not lock.exists():
    aside.rename(lock)
  else:
    aside.unlink()


def acquire(workdir: epath.PathLike, mode: str) -> epath.Path:
  """Takes the lock of `workdir` (created if missing) for this process.

  Args:
    workdir: the run's workdir.
    mode: what the run does ("train", "evaluate", "export", ...), recorded in the lock.

  Returns:
    The lock file; `release` it when the run ends.

  Raises:
    WorkdirLockedError: another run holds the lock (or it cannot be read); the message's last
      line names the lock file and the holder, and says how to proceed.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir / LOCK_NAME
  text = json.dumps({
      "host": socket.gethostname(), "pid": os.getpid(),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "mode": mode, "command": " ".join(sys.argv)})
  for _ in range(_ATTEMPTS):
    try:
      _create(lock, text)
      return lock
    except FileExistsError:
      pass
    try:
      found = lock.read_text()
    except FileNotFoundError:  # Released meanwhile: try again.
      continue
    try:
      holder = json.loads(found)
    except ValueError:
      holder = None
    if not isinstance(holder, dict):
      raise WorkdirLockedError(
          f"{workdir} is locked by {lock}, whose content cannot be read ({found[:200]!r}): if no "
          f"other run uses this workdir, delete {lock} and start again.")
    if not _is_stale(holder):
      raise WorkdirLockedError(
          f"{workdir} is in use by another run: {lock} is held by {_describe(holder)}. Wait for "
          f"that run to end; if it is gone, delete {lock} and start again.")
    logging.warning("Stale lock %s: its holder (%s) no longer runs; taking it over.", lock,
                    _describe(holder))
    _take_over(lock, found)
  raise WorkdirLockedError(
      f"{workdir}: could not take {lock} in {_ATTEMPTS} attempts (other runs keep taking it); "
      f"wait for them to end and start again.")


def release(lock: epath.Path) -> None:
  """Deletes `lock` if this process still holds it (else warns and leaves it)."""
  try:
    holder = json.loads(lock.read_text())
  except (FileNotFoundError, ValueError):
    holder = None
  if isinstance(holder, dict) and holder.get("pid") == os.getpid() and (
      holder.get("host") == socket.gethostname()):
    lock.unlink()
  else:
    logging.warning("Not deleting %s: this process (pid %d) no longer holds it (%s).", lock,
                    os.getpid(), holder)


@contextlib.contextmanager
def hold(workdir: epath.PathLike, mode: str) -> Iterator[Optional[epath.Path]]:
  """Holds the lock of `workdir` for the duration of the `with` block, on every process.

  Process 0 takes it (`acquire`) and releases it when the block ends, however it ends; with
  several processes, the others learn whether process 0 got it and raise if not.

  Args:
    workdir: the run's workdir (created if missing).
    mode: what the run does, recorded in the lock.

  Yields:
    The lock file on process 0, None on the others.

  Raises:
    WorkdirLockedError: another run holds the lock (see `acquire`).
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, mode)
    except Exception as caught:  # pylint: disable=broad-except (re-raised below)
      error = caught
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is None and not locked:
      raise WorkdirLockedError(
          f"Process 0 could not lock {epath.Path(workdir) / LOCK_NAME}: its log names the "
          f"holder.")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      release(lock)
