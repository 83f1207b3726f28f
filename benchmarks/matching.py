"""Global and local matching speed at 480p, stride 4 (query 120x214, C=100) on this machine.

    cd /work/main && /work/venv/bin/python -m benchmarks.matching [--quick] [--repeats=5]

Times `feelvos_jax.matching` (float32 and bfloat16 matmul inputs) beside other formulations of
the same math: a jnp per-object masked minimum over a chunked [chunk, R] distance matrix, a jnp
running minimum over shifted windows, naive jnp and NumPy versions (full [Q, R] or broadcast
[Q, R, C] distances, stacked [(2k+1)^2, H, W] local cost volumes) and, when `import torch`
works, the same math written the way public PyTorch VOS code does it (the official FEELVOS
recipe: per object, gather its reference pixels, chunked ||a||^2+||b||^2-2ab, minimum; local
matching as a loop over offsets). Versions too large for full size run at a reduced size, which
the table says, beside ours at that size. Reports ms per call (median after compilation, wall
and process CPU time), achieved GFLOP/s and GB/s and their ratio to the matmul GFLOP/s and
memory bandwidth measured in the same run; prints a table and appends it to BENCHMARKS.md.
"""
import argparse
import datetime
import functools
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from feelvos_jax import matching

_BENCHMARKS_FILE = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
_COMMAND = "cd /work/main && /work/venv/bin/python -m benchmarks.matching"

try:
  import torch
except ImportError:
  torch = None


# ------------------------------------------------------------------ measurement
def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
  """(median wall ms, median process-CPU ms) of fn() after one untimed call (compilation)."""
  jax.block_until_ready(fn())
  wall, cpu = [], []
  for _ in range(repeats):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(1e3 * (time.perf_counter() - start_wall))
    cpu.append(1e3 * (time.process_time() - start_cpu))
  return statistics.median(wall), statistics.median(cpu)


def _machine_peaks(matmul_size: int, bandwidth_mb: int, repeats: int) -> dict[str, float]:
  """Float32 matmul GFLOP/s (wall and per CPU-second) and copy/reduction GB/s."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (matmul_size, matmul_size))
  b = jax.random.normal(jax.random.fold_in(key, 1), (matmul_size, matmul_size))
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=lax.Precision.HIGHEST))
  wall, cpu = _timed(lambda: matmul(a, b), repeats)
  flops = 2.0 * matmul_size ** 3
  x = jnp.ones((bandwidth_mb * 2 ** 20 // 4,), jnp.float32)
  scale, total = jax.jit(lambda v: v * 2.0), jax.jit(jnp.sum)
  copy_wall, _ = _timed(lambda: scale(x), repeats)
  sum_wall, _ = _timed(lambda: total(x), repeats)
  return {"gflops": flops / wall / 1e6, "gflops_per_cpu_s": flops / cpu / 1e6,
          "copy_gbs": 2 * x.nbytes / copy_wall / 1e6, "read_gbs": x.nbytes / sum_wall / 1e6}


# ------------------------------------------------------------------ inputs
def _inputs(height: int, width: int, channels: int, num_objects: int, seed: int = 0):
  """Smooth embeddings with per-object offsets; the query is the reference moved by (2, 3)
  pixels plus noise, so nearest-neighbour distances spread over (0, 1). Objects are ellipses."""
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[:height, :width]
  labels = np.zeros((height, width), np.int32)
  for obj in range(1, num_objects):
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
    labels[((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1] = obj
  coarse = rng.normal(size=(max(height // 8, 1), max(width // 8, 1), channels))
  field = np.asarray(jax.image.resize(coarse, (height, width, channels), "linear"))
  offsets = rng.normal(size=(num_objects, channels)) / np.sqrt(channels)
  reference = (0.3 * field + offsets[labels]).astype(np.float32)
  query = np.roll(reference, (2, 3), axis=(0, 1))
  query = (query + 0.05 * rng.normal(size=query.shape)).astype(np.float32)
  return query, reference, labels


# ------------------------------------------------------------------ other formulations
def _per_object_min(values, labels, num_objects, fill):
  """[O, Q]: minimum over the last axis of `values` [Q, R] where labels [R] == o, object by
  object (a loop, so XLA cannot merge the objects into one [Q, R, O] temporary)."""
  return lax.map(lambda o: jnp.min(jnp.where(labels == o, values, fill), -1),
                 jnp.arange(num_objects))


@functools.partial(jax.jit, static_argnames=("num_objects", "chunk_size"))
def jnp_masked_min(query, reference, labels, num_objects, chunk_size):
  """Chunked [chunk, R] squared distances, then one masked minimum per object."""
  q = query.reshape(-1, query.shape[-1])
  r = reference.reshape(-1, reference.shape[-1])
  flat = labels.reshape(-1)
  r_sq = jnp.sum(r * r, -1)
  chunks = -(-q.shape[0] // chunk_size)
  padded = jnp.pad(q, ((0, chunks * chunk_size - q.shape[0]), (0, 0)))

  def chunk(x):
    d2 = jnp.sum(x * x, -1)[:, None] + r_sq[None] - 2.0 * x @ r.T
    return _per_object_min(d2, flat, num_objects, jnp.inf).T

  best = lax.map(chunk, padded.reshape(chunks, chunk_size, -1)).reshape(-1, num_objects)
  return jnp.tanh(0.5 * jnp.maximum(best[:q.shape[0]], 0.0)).reshape(
      query.shape[:2] + (num_objects,))


@functools.partial(jax.jit, static_argnames=("num_objects",))
def jnp_naive_global(query, reference, labels, num_objects):
  """The whole [Q, R] squared-distance matrix, then one masked minimum per object."""
  q = query.reshape(-1, query.shape[-1])
  r = reference.reshape(-1, reference.shape[-1])
  flat = labels.reshape(-1)
  d2 = jnp.maximum(jnp.sum(q * q, -1)[:, None] + jnp.sum(r * r, -1)[None] - 2.0 * q @ r.T, 0)
  best = _per_object_min(jnp.tanh(0.5 * d2), flat, num_objects, 1.0).T
  return best.reshape(query.shape[:2] + (num_objects,))


@functools.partial(jax.jit, static_argnames=("num_objects",))
def jnp_broadcast_global(query, reference, labels, num_objects):
  """Broadcast [Q, R, C] differences."""
  q = query.reshape(-1, 1, query.shape[-1])
  r = reference.reshape(1, -1, reference.shape[-1])
  dist = jnp.tanh(0.5 * jnp.sum((q - r) ** 2, -1))
  best = _per_object_min(dist, labels.reshape(-1), num_objects, 1.0).T
  return best.reshape(query.shape[:2] + (num_objects,))


def numpy_broadcast_global(query, reference, labels, num_objects):
  q = query.reshape(-1, 1, query.shape[-1])
  r = reference.reshape(1, -1, reference.shape[-1])
  dist = np.tanh(0.5 * np.sum((q - r) ** 2, -1))
  flat = labels.reshape(-1)
  best = np.stack([np.where(flat == o, dist, 1.0).min(1) for o in range(num_objects)], -1)
  return best.reshape(query.shape[:2] + (num_objects,))


def _offsets(window: int) -> list[tuple[int, int]]:
  return [(dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)]


@functools.partial(jax.jit, static_argnames=("num_objects", "window"))
def jnp_shifted_windows(query, previous, labels, num_objects, window):
  """Running per-object minimum over shifted copies of the padded previous frame."""
  height, width, _ = query.shape
  k = window
  padded = jnp.pad(previous, ((k, k), (k, k), (0, 0)))
  padded_labels = jnp.pad(labels, ((k, k), (k, k)), constant_values=-1)
  q_sq = jnp.sum(query * query, -1)
  p_sq = jnp.sum(padded * padded, -1)

  def body(i, best):
    dy, dx = i // (2 * k + 1), i % (2 * k + 1)
    shifted = lax.dynamic_slice(padded, (dy, dx, 0), (height, width, query.shape[-1]))
    d2 = q_sq + lax.dynamic_slice(p_sq, (dy, dx), (height, width)) - 2 * jnp.sum(
        query * shifted, -1)
    shifted_labels = lax.dynamic_slice(padded_labels, (dy, dx), (height, width))
    hit = shifted_labels[..., None] == jnp.arange(num_objects)
    return jnp.where(hit, jnp.minimum(best, d2[..., None]), best)

  best = lax.fori_loop(0, (2 * k + 1) ** 2, body,
                       jnp.full((height, width, num_objects), jnp.inf))
  return jnp.tanh(0.5 * jnp.maximum(best, 0.0))


@functools.partial(jax.jit, static_argnames=("num_objects", "window"))
def jnp_naive_local(query, previous, labels, num_objects, window):
  """Stacked [(2k+1)^2, H, W] distance volume (as the official code), then masked minima."""
  height, width, channels = query.shape
  k = window
  padded = jnp.pad(previous, ((k, k), (k, k), (0, 0)))
  padded_labels = jnp.pad(labels, ((k, k), (k, k)), constant_values=-1)
  starts = jnp.array([(dy + k, dx + k) for dy, dx in _offsets(k)])

  def one_offset(start):
    shifted = lax.dynamic_slice(padded, (start[0], start[1], 0), (height, width, channels))
    return (jnp.tanh(0.5 * jnp.sum((query - shifted) ** 2, -1)),
            lax.dynamic_slice(padded_labels, (start[0], start[1]), (height, width)))

  dist, shifted_labels = lax.map(one_offset, starts)
  return jnp.stack([jnp.min(jnp.where(shifted_labels == o, dist, 1.0), 0)
                    for o in range(num_objects)], -1)


def numpy_naive_local(query, previous, labels, num_objects, window):
  height, width, _ = query.shape
  k = window
  padded = np.pad(previous, ((k, k), (k, k), (0, 0)))
  padded_labels = np.pad(labels, ((k, k), (k, k)), constant_values=-1)
  best = np.ones((height, width, num_objects), np.float32)
  for dy, dx in _offsets(k):
    shifted = padded[k + dy:k + dy + height, k + dx:k + dx + width]
    dist = np.tanh(0.5 * np.sum((query - shifted) ** 2, -1))
    shifted_labels = padded_labels[k + dy:k + dy + height, k + dx:k + dx + width]
    for o in range(num_objects):
      np.minimum(best[..., o], np.where(shifted_labels == o, dist, 1.0), out=best[..., o])
  return best


def torch_global(query, reference, labels, num_objects, chunk_size):
  """Per object: its reference pixels (boolean mask), chunked ||a||^2+||b||^2-2ab, minimum.

  Inputs are torch tensors ([H, W, C], [H', W', C], [H', W']); returns a NumPy array.
  """
  with torch.no_grad():
    q = query.reshape(-1, query.shape[-1])
    r = reference.reshape(-1, reference.shape[-1])
    flat = labels.reshape(-1)
    q_sq = (q * q).sum(-1, keepdim=True)
    out = torch.ones(q.shape[0], num_objects)
    for o in range(num_objects):
      ref = r[flat == o]
      if ref.shape[0] == 0:
        continue
      ref_sq = (ref * ref).sum(-1)[None]
      for start in range(0, q.shape[0], chunk_size):
        x = q[start:start + chunk_size]
        d2 = torch.addmm(q_sq[start:start + chunk_size] + ref_sq, x, ref.T, alpha=-2.0)
        out[start:start + chunk_size, o] = torch.tanh(0.5 * d2.clamp_(min=0).min(1).values)
    return out.reshape(query.shape[:2] + (num_objects,)).numpy()


def torch_local(query, previous, labels, num_objects, window):
  """Loop over offsets of the padded previous frame, stacked volume, masked minima.

  Inputs are torch tensors ([H, W, C], [H, W, C], [H, W]); returns a NumPy array.
  """
  with torch.no_grad():
    height, width, _ = query.shape
    k = window
    q = query
    padded = torch.nn.functional.pad(previous, (0, 0, k, k, k, k))
    padded_labels = torch.nn.functional.pad(labels, (k, k, k, k), value=-1)
    dists, shifted_labels = [], []
    for dy, dx in _offsets(k):
      shifted = padded[k + dy:k + dy + height, k + dx:k + dx + width]
      dists.append(torch.tanh(0.5 * ((q - shifted) ** 2).sum(-1)))
      shifted_labels.append(padded_labels[k + dy:k + dy + height, k + dx:k + dx + width])
    dist, lab = torch.stack(dists), torch.stack(shifted_labels)
    best = [torch.where(lab == o, dist, torch.ones(())).min(0).values for o in range(num_objects)]
    return torch.stack(best, -1).numpy()


def _torch_thread_counts() -> list[int]:
  """PyTorch's default thread count and 1: on a shared machine a single thread can win."""
  return sorted({torch.get_num_threads(), 1}, reverse=True)


def _torch_threads(count: int, fn: Callable[[], object]) -> Callable[[], object]:
  """fn run with `count` PyTorch threads (the default count restored afterwards)."""
  def run():
    default = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
      return fn()
    finally:
      torch.set_num_threads(default)
  return run


# ------------------------------------------------------------------ the benchmark
class _Table:
  """Rows of measurements with their FLOP and byte counts, relative to the machine peaks."""

  def __init__(self, peaks: dict[str, float]):
    self.peaks = peaks
    self.rows: list[list[str]] = []
    # (op, case, size) -> implementation -> (wall ms, CPU ms, x matmul, x matmul (CPU)).
    self.cases: dict[tuple[str, str, str], dict[str, tuple[float, ...]]] = {}

  def add(self, op: str, case: str, size: str, impl: str, wall_ms: float, cpu_ms: float,
          flops: float, nbytes: float) -> None:
    gflops, gbs = flops / wall_ms / 1e6, nbytes / wall_ms / 1e6
    bandwidth = max(self.peaks["copy_gbs"], self.peaks["read_gbs"])
    of_matmul = gflops / self.peaks["gflops"]
    of_matmul_cpu = flops / cpu_ms / 1e6 / self.peaks["gflops_per_cpu_s"]
    measured = self.cases.setdefault((op, case, size), {})
    measured[impl] = (wall_ms, cpu_ms, of_matmul, of_matmul_cpu)
    ours = measured.get("ours f32")
    speedup = f"{wall_ms / ours[0]:.2f}" if ours else "-"
    self.rows.append([
        op, case, size, impl, f"{wall_ms:.1f}", f"{cpu_ms:.1f}", f"{gflops:.1f}",
        f"{of_matmul:.2f}", f"{of_matmul_cpu:.2f}", f"{gbs:.2f}", f"{gbs / bandwidth:.3f}",
        speedup])

  def summary(self) -> list[str]:
    """Per case: ours f32 against the matmul limit, the naive jnp versions and PyTorch."""
    lines = []
    for (op, case, size), measured in self.cases.items():
      if "ours f32" not in measured:
        continue
      wall, cpu, of_matmul, of_matmul_cpu = measured["ours f32"]
      parts = [f"{op}, {case}, {size}: ours f32 {wall:.0f} ms = {of_matmul:.2f}x the matmul "
               f"rate ({of_matmul_cpu:.2f}x per CPU-second)"]
      for label, prefix in (("naive jnp", "naive jnp"), ("PyTorch", "PyTorch")):
        others = {name: v for name, v in measured.items() if name.startswith(prefix)}
        if others:
          name, (other_wall, other_cpu, _, _) = min(others.items(), key=lambda kv: kv[1][0])
          parts.append(f"fastest {label} ({name}) takes {other_wall / wall:.1f}x as long "
                       f"(CPU time {other_cpu / cpu:.1f}x)")
      lines.append("; ".join(parts))
    return lines

  def skip(self, op: str, case: str, size: str, impl: str, reason: str) -> None:
    self.rows.append([op, case, size, impl, "skipped: " + reason] + [""] * 7)

  def markdown(self) -> str:
    header = ["op", "reference / window", "size", "implementation", "wall ms", "CPU ms",
              "GFLOP/s", "x matmul", "x matmul (CPU)", "GB/s", "x bandwidth", "time / ours"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in self.rows]
    return "\n".join(lines)


def _record_errors(errors: dict[str, float], op: str, results: dict[str, np.ndarray]) -> None:
  """Largest |map - ours f32| per implementation, over all cases of the run."""
  if "ours f32" not in results:
    return
  for name, value in results.items():
    key = f"{op.split(',')[0]}: {name}"
    errors[key] = max(errors.get(key, 0.0), float(np.abs(value - results["ours f32"]).max()))


def _measure(table: _Table, errors: dict[str, float], impls, repeats: int,
             row: tuple[str, str, str], flops: float, nbytes: float) -> None:
  """Times every (name, fn) of `impls`; a failure (e.g. out of memory) is recorded, not fatal."""
  results = {}
  for name, fn in impls:
    try:
      wall, cpu = _timed(fn, repeats)
      results[name] = np.asarray(fn())
    except Exception as error:  # pylint: disable=broad-except
      table.skip(*row, name, f"failed: {type(error).__name__}: {str(error)[:80]}")
      continue
    table.add(*row, name, wall, cpu, flops, nbytes)
    print(" | ".join(table.rows[-1]), file=sys.stderr, flush=True)
  _record_errors(errors, row[0], results)


def _global_cases(args, table: _Table, sizes: list[tuple[int, int]],
                  errors: dict[str, float]) -> None:
  for num_objects in args.objects:
    for height, width in sizes:
      full_size = (height, width) == (args.height, args.width)
      size = f"{height}x{width}"
      query, reference, labels = _inputs(height, width, args.channels, num_objects)
      key = jax.random.key(1)
      for case, cap in (("all ref px", None), (f"<= {args.max_reference_pixels}/object",
                                               args.max_reference_pixels)):
        if cap is not None and not full_size:
          continue
        case_labels = labels  # The other versions get the pixels that ours selects.
        if cap is not None:
          case_labels = np.asarray(matching.select_reference_pixels(labels, num_objects, cap,
                                                                    key))
        count = int(np.sum(case_labels < num_objects))
        flops = 2.0 * query.shape[0] * query.shape[1] * count * args.channels
        nbytes = 4.0 * (query.size + reference.size + labels.size
                        + height * width * num_objects)
        op = f"global, {num_objects} obj"
        on_device = [jnp.asarray(x) for x in (query, reference, labels, case_labels)]
        q_dev, r_dev, labels_dev, case_dev = on_device
        impls = [("ours f32", lambda: matching.global_matching(
                     q_dev, r_dev, labels_dev, num_objects, max_reference_pixels=cap,
                     rng=key, chunk_size=args.chunk_size)),
                 ("ours bf16", lambda: matching.global_matching(
                     q_dev, r_dev, labels_dev, num_objects, max_reference_pixels=cap,
                     rng=key, chunk_size=args.chunk_size, dtype=jnp.bfloat16)),
                 ("jnp masked min/object (chunked)", lambda: jnp_masked_min(
                     q_dev, r_dev, case_dev, num_objects, args.chunk_size))]
        q_r_bytes = 4.0 * height * width * reference.shape[0] * reference.shape[1]
        if q_r_bytes <= args.naive_max_bytes:
          impls.append(("naive jnp [Q,R]", lambda: jnp_naive_global(
              q_dev, r_dev, case_dev, num_objects)))
        else:
          table.skip(op, case, size, "naive jnp [Q,R]", f"{q_r_bytes / 1e9:.1f} GB matrix")
        if q_r_bytes * args.channels <= args.naive_max_bytes:
          impls.append(("naive jnp [Q,R,C]", lambda: jnp_broadcast_global(
              q_dev, r_dev, case_dev, num_objects)))
          impls.append(("naive NumPy [Q,R,C]", lambda: numpy_broadcast_global(
              query, reference, case_labels, num_objects)))
        else:
          table.skip(op, case, size, "naive jnp/NumPy [Q,R,C]",
                     f"{q_r_bytes * args.channels / 1e9:.0f} GB broadcast (see smaller size)")
        if torch is not None:
          tensors = [torch.tensor(np.asarray(x)) for x in (query, reference, case_labels)]
          impls += [(f"PyTorch per-object gather, {n} thr", _torch_threads(n, lambda: torch_global(
              *tensors, num_objects, args.chunk_size))) for n in _torch_thread_counts()]
        else:
          table.skip(op, case, size, "PyTorch", "import torch failed")
        _measure(table, errors, impls, args.repeats, (op, case, size), flops, nbytes)


def _local_cases(args, table: _Table, sizes: list[tuple[int, int]],
                 errors: dict[str, float]) -> None:
  window = args.window
  for num_objects in args.objects:
    for height, width in sizes:
      size = f"{height}x{width}"
      query, previous, labels = _inputs(height, width, args.channels, num_objects, seed=1)
      op, case = f"local, {num_objects} obj", f"k={window}"
      flops = 2.0 * height * width * (2 * window + 1) ** 2 * args.channels
      nbytes = 4.0 * (query.size + previous.size + labels.size + height * width * num_objects)
      q_dev, p_dev, labels_dev = [jnp.asarray(x) for x in (query, previous, labels)]
      impls = [("ours f32", lambda: matching.local_matching(
                   q_dev, p_dev, labels_dev, num_objects, window=window)),
               ("ours bf16", lambda: matching.local_matching(
                   q_dev, p_dev, labels_dev, num_objects, window=window, dtype=jnp.bfloat16)),
               ("jnp shifted-window running min", lambda: jnp_shifted_windows(
                   q_dev, p_dev, labels_dev, num_objects, window)),
               ("naive jnp offset volume", lambda: jnp_naive_local(
                   q_dev, p_dev, labels_dev, num_objects, window))]
      if height * width <= args.naive_numpy_local_pixels:
        impls.append(("naive NumPy offset volume", lambda: numpy_naive_local(
            query, previous, labels, num_objects, window)))
      else:
        table.skip(op, case, size, "naive NumPy offset volume",
                   f"{height * width} pixels > --naive_numpy_local_pixels (see smaller size)")
      if torch is not None:
        tensors = [torch.tensor(x) for x in (query, previous, labels)]
        impls += [(f"PyTorch offset loop, {n} thr", _torch_threads(n, lambda: torch_local(
            *tensors, num_objects, window))) for n in _torch_thread_counts()]
      else:
        table.skip(op, case, size, "PyTorch", "import torch failed")
      _measure(table, errors, impls, args.repeats, (op, case, size), flops, nbytes)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--height", type=int, default=120, help="Stride-4 height (480p: 120).")
  parser.add_argument("--width", type=int, default=214, help="Stride-4 width (854 px: 214).")
  parser.add_argument("--channels", type=int, default=100, help="Embedding dimension.")
  parser.add_argument("--objects", type=lambda s: [int(v) for v in s.split(",")],
                      default=[1, 3, 10], help="Comma-separated object slot counts.")
  parser.add_argument("--max_reference_pixels", type=int, default=1024,
                      help="Reference pixels per object of the subsampled case.")
  parser.add_argument("--chunk_size", type=int, default=4096, help="Query chunk size.")
  parser.add_argument("--window", type=int, default=15, help="Local matching radius k.")
  parser.add_argument("--small_height", type=int, default=24,
                      help="Height of the reduced size for the naive versions.")
  parser.add_argument("--small_width", type=int, default=43,
                      help="Width of the reduced size for the naive versions.")
  parser.add_argument("--naive_max_bytes", type=float, default=4e9,
                      help="Largest distance matrix/broadcast a naive version may build.")
  parser.add_argument("--naive_numpy_local_pixels", type=int, default=4000,
                      help="Largest frame (pixels) for the NumPy local version.")
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls per measurement.")
  parser.add_argument("--matmul_size", type=int, default=4096, help="Peak-matmul side.")
  parser.add_argument("--bandwidth_mb", type=int, default=512, help="Bandwidth array size.")
  parser.add_argument("--quick", action="store_true",
                      help="Smoke run: defaults become 30x54 frames, 1 and 3 objects, window "
                           "4, 1 repeat; does not write BENCHMARKS.md unless --write.")
  parser.add_argument("--write", action="store_true", help="Append to BENCHMARKS.md (default "
                      "unless --quick).")
  parser.add_argument("--no_write", action="store_true", help="Print only.")
  if parser.parse_known_args(argv)[0].quick:  # Smaller defaults; explicit flags still win.
    parser.set_defaults(height=30, width=54, objects=[1, 3], window=4, small_height=12,
                        small_width=20, repeats=1, matmul_size=1024, bandwidth_mb=64,
                        max_reference_pixels=256)
  args = parser.parse_args(argv)
  write = (args.write or not args.quick) and not args.no_write

  peaks = _machine_peaks(args.matmul_size, args.bandwidth_mb, args.repeats)
  table = _Table(peaks)
  sizes = [(args.height, args.width), (args.small_height, args.small_width)]
  errors: dict[str, float] = {}
  _global_cases(args, table, sizes, errors)
  _local_cases(args, table, sizes, errors)
  notes = table.summary() + [f"max |{name} - ours f32| over all cases: {err:.1e}"
                             for name, err in errors.items() if not name.endswith("ours f32")]
  peaks_after = _machine_peaks(args.matmul_size, args.bandwidth_mb, args.repeats)
  cpu = f"{machine.cpu_model()}, {os.cpu_count()} CPUs"
  header = (
      f"## Matching (global/local), {datetime.date.today().isoformat()}\n\n"
      f"- Machine: {cpu} (shared with other jobs: timings are noisy; CPU ms = process "
      f"CPU time, less sensitive to other load), Python {platform.python_version()}\n"
      f"- Versions: JAX {jax.__version__}"
      + (f", PyTorch {torch.__version__} (default {torch.get_num_threads()} threads)" if torch else
         ", PyTorch not installed") + "\n"
      f"- Command: `{' '.join([_COMMAND] + (argv if argv is not None else sys.argv[1:]))}`\n"
      f"- Inputs: query/reference {args.height}x{args.width}x{args.channels} (480p at stride 4 "
      f"is 120x214),"
      f" objects = ellipses on background, query = reference moved (2, 3) px + noise; global "
      f"chunk_size {args.chunk_size}; reduced size {args.small_height}x{args.small_width} for "
      f"naive versions (ours rerun there).\n"
      f"- Machine peaks (start / end of run): f32 matmul {args.matmul_size}^3 "
      f"{peaks['gflops']:.0f} / {peaks_after['gflops']:.0f} GFLOP/s "
      f"({peaks['gflops_per_cpu_s']:.0f} / {peaks_after['gflops_per_cpu_s']:.0f} GFLOP per "
      f"CPU-second); copy {peaks['copy_gbs']:.1f} / {peaks_after['copy_gbs']:.1f} GB/s, "
      f"reduction {peaks['read_gbs']:.1f} / {peaks_after['read_gbs']:.1f} GB/s. Ratios below use "
      f"the start values.\n"
      f"- FLOPs = 2 Q R C (global, R = reference pixels used) or 2 Q (2k+1)^2 C (local); "
      f"bytes = inputs + output once (the least any version must move). `x matmul (CPU)` "
      f"compares FLOP per CPU-second with the matmul's. `time / ours` is against ours f32 at "
      f"the same size.\n")
  text = header + "\n" + table.markdown() + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
  print(text)
  if write:
    with open(_BENCHMARKS_FILE, "a") as out:
      out.write("\n" + text)


if __name__ == "__main__":
  main()
