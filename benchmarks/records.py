"""Benchmark records: one JSON line per measured case in `benchmarks/results/<benchmark>.jsonl`.

Every benchmark appends its figures here instead of writing markdown; `python -m
benchmarks.report` turns the latest record of each case into BENCHMARKS.md. A record:

    {"benchmark": "inference",                      # the module under benchmarks/
     "case": "cpu/tiny/float32/480x854/1-obj",      # stable id: backend / setting
     "kind": "speed",                               # "speed", "memory" or "accuracy"
     "table": "",                                   # optional: the benchmark's sub-table
     "params": {"backbone": "tiny", ...},           # the case's setting, shown as columns
     "figures": {"throughput": {"value": 2.23, "unit": "frames/s"}, ...},
     "note": "...",                                 # optional
     "command": "python -m benchmarks.inference --frames=10",  # as run from the repo root
     "machine": {"cpu": ..., "cpu_count": ..., "backend": ..., "device": ...,
                 "device_count": ..., "os": ...},
     "load": {"start": "1.22 / 0.65 / 0.71", "end": "1.64 / 0.87 / 0.78"},
     "versions": {"python": ..., "jax": ..., "jaxlib": ..., "flax": ..., ...},
     "commit": "5641e80+dirty",
     "date": "2026-11-26T10:02:11Z"}

A field that was not recorded holds "unrecorded". The results directory is
`benchmarks/results/`, or `$FEELVOS_BENCHMARK_RESULTS`, or a benchmark's `--results_dir`.
"""
import argparse
import datetime
import fcntl
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
from typing import Any, Iterable, Mapping, Sequence

from benchmarks import machine

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS_ENV = "FEELVOS_BENCHMARK_RESULTS"
KINDS = ("speed", "memory", "accuracy")
UNRECORDED = "unrecorded"
FIELDS = ("benchmark", "case", "kind", "table", "params", "figures", "note", "command",
          "machine", "load", "versions", "commit", "date")
"""Every key a record may have, in the order it is written."""
REQUIRED = ("benchmark", "case", "kind", "figures", "command", "machine", "load", "versions",
            "commit", "date")

_VERSIONED = (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"),
              ("tensorflow", "tensorflow"), ("tensorflow_datasets", "tensorflow-datasets"),
              ("torch", "torch"))
"""(module, distribution): versions recorded for the modules the benchmark imported."""

# An absolute path other than a /tmp/ scratch directory (the README's workdir examples use
# /tmp/...): a slash that starts a word and is followed by a name.
ABSOLUTE_PATH = re.compile(r"(?:^|[\s`'\"=(\[,:])(/(?!tmp/)[A-Za-z_.~][^\s`'\"]*)")
# A tracker number: "issue", "stop", "PR", "pull request" or "ticket" (or "#") and a number.
TRACKER_NUMBER = re.compile(r"\b(?:issues?|stops?|PRs?|pull requests?|tickets?)\s*#?\d+"
                            r"|(?<![\w&])#\d+", re.IGNORECASE)


def slug(text: Any) -> str:
  """`text` as a case-id part: lower case, runs of other characters than [a-z0-9._] as '-'."""
  return re.sub(r"[^a-z0-9._]+", "-", str(text).lower()).strip("-") or "-"


def case_id(*parts: Any) -> str:
  """A stable case id from its parts, e.g. ('cpu', 'tiny', '3 obj') -> 'cpu/tiny/3-obj'."""
  return "/".join(slug(part) for part in parts)


def figure(value: float | int, unit: str = "") -> dict[str, Any]:
  """A named number's value (a float kept to 6 significant digits) and unit ('' for a plain
  number)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"a figure is a number, got {value!r}")
  if isinstance(value, float):
    value = float(f"{value:.6g}")
  return {"value": value, "unit": unit}


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
  """`python -m <module> <argv>` as run from the repository root: the repository's absolute
  path removed from the arguments, and `--results_dir` (where the records go, not what they
  measure) left out."""
  argv = list(sys.argv[1:] if argv is None else argv)
  root = str(ROOT) + os.sep
  kept = []
  while argv:
    arg = argv.pop(0)
    if arg == "--results_dir" and argv:
      argv.pop(0)
    elif not arg.startswith("--results_dir="):
      kept.append(arg.replace(root, ""))
  return " ".join(shlex.quote(word) for word in ["python", "-m", module] + kept)


def machine_info() -> dict[str, Any]:
  """CPU model and count, JAX backend, first device's kind and the device count, the OS."""
  import jax  # pylint: disable=g-import-not-at-top (records of a benchmark that imports it)
  devices = jax.devices()
  return {"cpu": machine.cpu_model(), "cpu_count": os.cpu_count() or UNRECORDED,
          "backend": devices[0].platform, "device": devices[0].device_kind,
          "device_count": len(devices), "os": platform.platform(terse=True)}


def versions() -> dict[str, str]:
  """Python's version and those of the JAX stack and of TensorFlow, TFDS and PyTorch where
  the process imported them."""
  found = {"python": platform.python_version()}
  for module, distribution in _VERSIONED:
    if module in ("jax", "jaxlib", "flax") or module in sys.modules:
      try:
        found[module] = importlib.metadata.version(distribution)
      except importlib.metadata.PackageNotFoundError:
        found[module] = UNRECORDED
  return found


def git_commit() -> str:
  """The short hash of HEAD, '+dirty' when tracked files differ from it ('unrecorded' outside
  a git checkout)."""
  def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
  try:
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return UNRECORDED
  return commit + ("+dirty" if dirty else "")


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def results_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
  """`override`, else $FEELVOS_BENCHMARK_RESULTS, else benchmarks/results/."""
  return pathlib.Path(override or os.environ.get(RESULTS_ENV) or RESULTS_DIR)


def problems(record: Mapping[str, Any]) -> list[str]:
  """What is wrong with a record: `schema_problems`, and an absolute path or a tracker number
  anywhere in its text (the tests hold the committed records to both)."""
  text = json.dumps(record, ensure_ascii=False)
  return (schema_problems(record)
          + [f"absolute path {path!r}" for path in ABSOLUTE_PATH.findall(text)]
          + [f"tracker number {match!r}" for match in TRACKER_NUMBER.findall(text)])


def schema_problems(record: Mapping[str, Any]) -> list[str]:
  """Missing or unknown keys, a kind other than `KINDS`, a figure that is not a number with
  a unit."""
  found = [f"missing {key!r}" for key in REQUIRED if key not in record]
  found += [f"unknown key {key!r}" for key in record if key not in FIELDS]
  if record.get("kind") not in KINDS:
    found.append(f"kind {record.get('kind')!r} is not one of {KINDS}")
  for name, value in dict(record.get("figures") or {}).items():
    if not (isinstance(value, dict) and set(value) == {"value", "unit"}
            and isinstance(value["value"], (int, float))
            and not isinstance(value["value"], bool)):
      found.append(f"figure {name!r} is not {{'value': number, 'unit': text}}: {value!r}")
  return found


def make_record(benchmark: str, case: str, figures: Mapping[str, Mapping[str, Any]], *,
                command: str, kind: str, params: Mapping[str, Any] | None = None,
                note: str = "", table: str = "", load_start: str | None = None
                ) -> dict[str, Any]:
  """A record of this process's machine, versions, commit and time (see the module doc)."""
  record = {"benchmark": benchmark, "case": case, "kind": kind}
  if table:
    record["table"] = table
  record["params"] = dict(params or {})
  record["figures"] = {name: dict(value) for name, value in figures.items()}
  if note:
    record["note"] = note
  record.update(command=command, machine=machine_info(),
                load={"start": load_start or UNRECORDED, "end": machine.load_average()},
                versions=versions(), commit=git_commit(), date=utc_now())
  # Only the schema: a path in an argument is for the report and the tests to refuse; a
  # finished measurement is not thrown away for it.
  errors = schema_problems(record)
  if errors:
    raise ValueError(f"benchmark record of {benchmark} {case}: {'; '.join(errors)}")
  return record


def write_lines(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  """Appends one JSON line per record to `path`, in one write under an exclusive lock (runs
  finishing at once never interleave their lines)."""
  data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    written = 0
    while written < len(data):
      written += os.write(descriptor, data[written:])
    os.fsync(descriptor)
  finally:
    os.close(descriptor)  # Closing releases the lock.


def append(benchmark: str, case: str, figures: Mapping[str, Mapping[str, Any]], *,
           command: str, kind: str, params: Mapping[str, Any] | None = None, note: str = "",
           table: str = "", load_start: str | None = None,
           directory: str | os.PathLike | None = None) -> dict[str, Any]:
  """Writes one record (`make_record`) as a line of `<directory>/<benchmark>.jsonl` and
  returns it."""
  record = make_record(benchmark, case, figures, command=command, kind=kind, params=params,
                       note=note, table=table, load_start=load_start)
  write_lines(results_dir(directory) / f"{benchmark}.jsonl", [record])
  return record


def read(directory: str | os.PathLike | None = None) -> list[dict[str, Any]]:
  """Every record of `<directory>/*.jsonl`, files in name order, lines in file order."""
  found = []
  for path in sorted(results_dir(directory).glob("*.jsonl")):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
      if line.strip():
        try:
          found.append(json.loads(line))
        except json.JSONDecodeError as error:
          raise ValueError(f"{path.name}:{number}: not JSON: {error}") from error
  return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The `--no_write` and `--results_dir` flags every argparse benchmark shares."""
  parser.add_argument("--no_write", action="store_true",
                      help="Print only: append no record to the results.")
  parser.add_argument("--results_dir", default=None,
                      help=f"Where to append records (default: ${RESULTS_ENV}, else "
                           "benchmarks/results/).")


class Run:
  """One run of a benchmark: its command and the load at its start, shared by its records.

  `append(case_parts, figures, ...)` prefixes the case with the JAX backend ("cpu", "gpu",
  "tpu"), so the same setting on another platform is another case, and writes the record at
  once (a run cut short keeps the cases it finished); with `write=False` it only returns it.
  """

  def __init__(self, benchmark: str, argv: Sequence[str] | None = None, *, write: bool = True,
               directory: str | os.PathLike | None = None):
    self.benchmark = benchmark
    self.command = command_line(f"benchmarks.{benchmark}", argv)
    self.write = write
    self.directory = directory
    self.load_start = machine.load_average()
    self.records: list[dict[str, Any]] = []

  def append(self, case_parts: Sequence[Any], figures: Mapping[str, Mapping[str, Any]], *,
             kind: str, params: Mapping[str, Any] | None = None, note: str = "",
             table: str = "") -> dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    case = case_id(jax.default_backend(), *case_parts)
    arguments = dict(command=self.command, kind=kind, params=params, note=note, table=table,
                     load_start=self.load_start)
    if self.write:
      record = append(self.benchmark, case, figures, directory=self.directory, **arguments)
    else:
      record = make_record(self.benchmark, case, figures, **arguments)
    self.records.append(record)
    return record

  def summary(self) -> str:
    """Where the run's records went (or that none were written)."""
    if not self.write:
      return f"{len(self.records)} record(s) not written (--no_write)."
    path = results_dir(self.directory) / f"{self.benchmark}.jsonl"
    return (f"{len(self.records)} record(s) appended to {path}; "
            "`python -m benchmarks.report` regenerates BENCHMARKS.md.")
