"""Global and local matching speed at 480p, stride 4 (query 120x214, C=100) on this machine.

    python -m benchmarks.matching [--quick] [--repeats=3] [--ops=global,local]
        [--objects=1,3,10] [--fused_tiles=128x128,64x128x4] [--no_write] [--results_dir=DIR]

Times `feelvos_jax.matching` (float32 and bfloat16 matmul inputs) beside other formulations of
the same math: a jnp per-object masked minimum over a chunked [chunk, R] distance matrix, a jnp
running minimum over shifted windows, naive jnp and NumPy versions (full [Q, R] or broadcast
[Q, R, C] distances, stacked [(2k+1)^2, H, W] local cost volumes) and, when `import torch`
works, the same math written the way public PyTorch VOS code does it (the official FEELVOS
recipe: per object, gather its reference pixels, chunked ||a||^2+||b||^2-2ab, minimum; local
matching as a loop over offsets). Where global matching's "auto" form runs the fused Pallas
kernel (CUDA GPUs), its XLA form is timed beside it ("ours f32, XLA", "ours bf16, XLA"), and
`--fused_tiles` adds the kernel alone on a precomputed reference layout per tile setting. With
all reference pixels, "bf16 matmul [Q,C]x[C,R]" times a plain bfloat16 matmul of the same query
and reference (the same FLOPs, [Q, R] written to memory in bfloat16): the rate global matching
is judged against ("ours bf16 of bf16 matmul rate"). Every version is jitted where it is jnp,
float32 unless named, warm (one untimed call first) and, except ours, gets the already
subsampled reference pixels. Versions too large for full size run at a reduced size, which the
table says, beside ours at that size.
The implementations of a case are timed interleaved (round-robin, so the load of other jobs
falls on all alike); reports ms per call (fastest and median wall, median process CPU time),
achieved GFLOP/s and GB/s and their ratio to the matmul GFLOP/s and memory bandwidth measured
in the same run, and a table of the targets (met / missed); prints the tables and appends
records to `benchmarks/results/matching.jsonl` (`benchmarks.records`): one per implementation
and case, one per case against the baselines (table "against the baselines") and the largest
difference of each implementation from ours f32 (kind "accuracy").
"""
import argparse
import functools
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from benchmarks import records
from feelvos_jax import matching
from feelvos_jax.matching import distances
from feelvos_jax.matching import fused
from feelvos_jax.matching import global_maps

try:
  import torch
except ImportError:
  torch = None


# ------------------------------------------------------------------ measurement
class Timing(NamedTuple):
  wall_min: float
  wall_median: float
  cpu_median: float


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                 ) -> tuple[dict[str, Timing], dict[str, np.ndarray], dict[str, str]]:
  """Times every fn after one untimed call each (compilation, warm-up), in `repeats` rounds
  that call each fn once, in an order rotated every round, so that the load of other jobs
  falls on all of them alike. Returns ms timings (wall min / median, process-CPU median), the
  results and the failures (e.g. out of memory) by name; a failure is recorded, not fatal."""
  results, failures = {}, {}
  for name, fn in fns.items():
    try:
      results[name] = np.asarray(jax.block_until_ready(fn()))
    except Exception as error:  # pylint: disable=broad-except
      failures[name] = f"failed: {type(error).__name__}: {str(error)[:80]}"
  names = [name for name in fns if name in results]
  wall: dict[str, list[float]] = {name: [] for name in names}
  cpu: dict[str, list[float]] = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % max(len(names), 1)
    for name in names[shift:] + names[:shift]:
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fns[name]())
      wall[name].append(1e3 * (time.perf_counter() - start_wall))
      cpu[name].append(1e3 * (time.process_time() - start_cpu))
  timings = {name: Timing(min(wall[name]), statistics.median(wall[name]),
                          statistics.median(cpu[name])) for name in names}
  return timings, results, failures


def _machine_peaks(matmul_size: int, bandwidth_mb: int, repeats: int) -> dict[str, float]:
  """Float32 matmul GFLOP/s (fastest call; and per CPU-second) and copy/reduction GB/s."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (matmul_size, matmul_size))
  b = jax.random.normal(jax.random.fold_in(key, 1), (matmul_size, matmul_size))
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=lax.Precision.HIGHEST))
  x = jnp.ones((bandwidth_mb * 2 ** 20 // 4,), jnp.float32)
  scale, total = jax.jit(lambda v: v * 2.0), jax.jit(jnp.sum)
  timings, _, _ = _interleaved({"matmul": lambda: matmul(a, b), "copy": lambda: scale(x),
                                "sum": lambda: total(x)}, repeats)
  flops = 2.0 * matmul_size ** 3
  return {"gflops": flops / timings["matmul"].wall_min / 1e6,
          "gflops_per_cpu_s": flops / timings["matmul"].cpu_median / 1e6,
          "copy_gbs": 2 * x.nbytes / timings["copy"].wall_min / 1e6,
          "read_gbs": x.nbytes / timings["sum"].wall_min / 1e6}


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
@functools.partial(jax.jit, static_argnames=("num_objects", "max_pixels", "chunk_size"))
def previous_global(query, reference, labels, rng, num_objects, max_pixels, chunk_size):
  """`matching.global_matching` (f32) as it was before one sort served both the subsampling and
  the block layout: a sort to subsample, then a second sort to lay the kept pixels out."""
  # pylint: disable=protected-access
  channels = query.shape[-1]
  kept = global_maps.reference_pixel_labels(labels, num_objects, max_pixels, rng)
  minima = global_maps.min_squared_distance(
      query.reshape(-1, channels), reference.reshape(-1, channels), kept, num_objects,
      max_pixels, chunk_size, jnp.float32)
  return matching.distance_from_squared(minima).reshape(query.shape[:2] + (num_objects,))


@jax.jit
def bf16_matmul(query, reference):
  """query [Q, C] x reference [R, C]^T in bfloat16 -> [Q, R] bfloat16 (float32 accumulation):
  the matmul rate global matching is judged against."""
  return jnp.einsum("qc,rc->qr", query, reference)


@functools.partial(jax.jit, static_argnames=("num_objects",))
def fused_inputs(query, reference, labels, num_objects):
  """`global_maps.blocked_inputs` in bfloat16 with all reference pixels, for the kernel alone."""
  # pylint: disable=protected-access
  channels = query.shape[-1]
  labels = distances.valid_labels(labels.reshape(-1), num_objects)
  return global_maps.blocked_inputs(query.reshape(-1, channels),
                                     reference.reshape(-1, channels), labels, num_objects,
                                     None, jnp.dtype(jnp.bfloat16))


@functools.partial(jax.jit, static_argnames=("shape", "num_objects", "tiles"))
def fused_kernel_maps(query, query_sq, exponent, reference, reference_sq, block_object, *,
                      shape, num_objects, tiles):
  """Maps [H, W, O] from `fused_inputs` by `fused.pallas_min_squared` with `tiles` = (query
  tile, reference tile, splits, warps), 0 for the default."""
  query_tile, reference_tile, splits, warps = tiles
  best = fused.pallas_min_squared(query, reference, reference_sq, block_object, num_objects,
                                  query_tile=query_tile or None,
                                  reference_tile=reference_tile or None, splits=splits or None,
                                  num_warps=warps or None)
  squared = distances.unscale(jnp.maximum(best + query_sq[:, None], 0.0), exponent)
  return distances.distance_from_squared(squared).reshape(shape + (num_objects,))


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
    out = torch.ones(q.shape[0], num_objects, device=q.device)
    for o in range(num_objects):
      ref = r[flat == o]
      if ref.shape[0] == 0:
        continue
      ref_sq = (ref * ref).sum(-1)[None]
      for start in range(0, q.shape[0], chunk_size):
        x = q[start:start + chunk_size]
        d2 = torch.addmm(q_sq[start:start + chunk_size] + ref_sq, x, ref.T, alpha=-2.0)
        out[start:start + chunk_size, o] = torch.tanh(0.5 * d2.clamp_(min=0).min(1).values)
    return out.reshape(query.shape[:2] + (num_objects,)).cpu().numpy()


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
    one = torch.ones((), device=q.device)
    best = [torch.where(lab == o, dist, one).min(0).values for o in range(num_objects)]
    return torch.stack(best, -1).cpu().numpy()


def _torch_device() -> str:
  """"cuda" where JAX runs on a GPU and PyTorch sees one (both sides on the same chip), else
  "cpu"."""
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_tensors(*arrays: np.ndarray) -> list[Any]:
  """The arrays as PyTorch tensors on `_torch_device()`."""
  return [torch.tensor(np.asarray(x)).to(_torch_device()) for x in arrays]


def _torch_thread_counts() -> list[int]:
  """PyTorch's default thread count and 1: on a shared machine a single thread can win. One
  entry on a GPU, where the host threads do not do the work."""
  if _torch_device() == "cuda":
    return [torch.get_num_threads()]
  return sorted({torch.get_num_threads(), 1}, reverse=True)


def _torch_label(count: int) -> str:
  return "cuda" if _torch_device() == "cuda" else f"{count} thr"


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
_NAIVE, _TORCH = "naive jnp", "PyTorch"
_BF16_MATMUL = "bf16 matmul [Q,C]x[C,R]"
_OF_BF16_MATMUL = 0.7
"""Target: ours bf16 with all reference pixels at >= this share of the bf16 matmul rate."""


class _Table:
  """Rows of measurements with their FLOP and byte counts, relative to the machine peaks."""

  def __init__(self, peaks: dict[str, float], full_size: str, run: records.Run | None = None):
    self.peaks = peaks
    self.full_size = full_size
    self.run = run
    self.rows: list[list[str]] = []
    # (op, case, size) -> implementation -> (timing, x matmul, x matmul (CPU)).
    self.cases: dict[tuple[str, str, str], dict[str, tuple[Timing, float, float]]] = {}

  def add(self, op: str, case: str, size: str, impl: str, timing: Timing, flops: float,
          nbytes: float) -> None:
    gflops, gbs = flops / timing.wall_min / 1e6, nbytes / timing.wall_min / 1e6
    bandwidth = max(self.peaks["copy_gbs"], self.peaks["read_gbs"])
    of_matmul = gflops / self.peaks["gflops"]
    of_matmul_cpu = flops / timing.cpu_median / 1e6 / self.peaks["gflops_per_cpu_s"]
    measured = self.cases.setdefault((op, case, size), {})
    measured[impl] = (timing, of_matmul, of_matmul_cpu)
    ours = measured.get("ours f32")
    relative = ([f"{timing.wall_min / ours[0].wall_min:.2f}",
                 f"{timing.wall_median / ours[0].wall_median:.2f}"] if ours else ["-", "-"])
    self.rows.append([
        op, case, size, impl, f"{timing.wall_min:.3g}", f"{timing.wall_median:.3g}",
        f"{timing.cpu_median:.3g}", f"{gflops:.1f}", f"{of_matmul:.2f}", f"{of_matmul_cpu:.2f}",
        f"{gbs:.2f}", f"{gbs / bandwidth:.3f}"] + relative)
    figures = {"wall, min": (timing.wall_min, "ms"), "wall, median": (timing.wall_median, "ms"),
               "CPU, median": (timing.cpu_median, "ms"), "compute": (gflops, "GFLOP/s"),
               "of matmul rate": (of_matmul, "x"),
               "of matmul rate per CPU-second": (of_matmul_cpu, "x"),
               "bandwidth": (gbs, "GB/s"), "of memory bandwidth": (gbs / bandwidth, "x")}
    if ours:
      figures["time / ours f32, min"] = (timing.wall_min / ours[0].wall_min, "x")
      figures["time / ours f32, median"] = (timing.wall_median / ours[0].wall_median, "x")
    self._record(op, case, size, impl, figures)

  def skip(self, op: str, case: str, size: str, impl: str, reason: str) -> None:
    self.rows.append([op, case, size, impl, "skipped: " + reason] + [""] * 9)
    self._record(op, case, size, impl, {}, note="skipped: " + reason)

  def params(self, op: str, case: str, size: str) -> dict[str, Any]:
    """A case's setting: op ("global", "local"), objects, reference / window and size."""
    kind, objects = op.split(", ")
    return {"op": kind, "objects": int(objects.split()[0]), "reference": case, "size": size}

  def _record(self, op: str, case: str, size: str, impl: str,
              figures: dict[str, tuple[float, str]], note: str = "") -> None:
    if self.run is not None:
      params = self.params(op, case, size)
      self.run.append([params["op"], f"{params['objects']} obj", case, size, impl],
                      {name: records.figure(*value) for name, value in figures.items()},
                      kind="speed", params=dict(params, implementation=impl), note=note)

  def comparison(self, op: str, case: str, size: str
                 ) -> tuple[dict[str, Any], dict[str, float]] | None:
    """(params, figures) of ours f32 against the fastest naive jnp and PyTorch versions of a
    case: time ratios (fastest calls, medians, CPU time) and ours f32's share of the matmul
    rate; None without an ours f32 timing."""
    measured = self.cases.get((op, case, size), {})
    if "ours f32" not in measured:
      return None
    ours, of_matmul, _ = measured["ours f32"]
    params = dict(self.params(op, case, size),
                  **{"size role": "full" if size == self.full_size else "reduced"})
    figures = {"ours f32 wall, min": ours.wall_min, "ours f32 of matmul rate": of_matmul}
    if "ours bf16" in measured and _BF16_MATMUL in measured:
      figures["ours bf16 of bf16 matmul rate"] = (measured[_BF16_MATMUL][0].wall_min
                                                  / measured["ours bf16"][0].wall_min)
    for label in (_NAIVE, _TORCH):
      others = {impl: v[0] for impl, v in measured.items() if impl.startswith(label)}
      if not others:
        continue
      impl, other = min(others.items(), key=lambda kv: kv[1].wall_min)
      params[f"fastest {label}"] = impl
      figures[f"speed-up over fastest {label}, min"] = other.wall_min / ours.wall_min
      figures[f"speed-up over fastest {label}, median"] = other.wall_median / ours.wall_median
      figures[f"speed-up over fastest {label}, CPU"] = other.cpu_median / ours.cpu_median
    return params, figures

  def record_comparison(self, op: str, case: str, size: str) -> None:
    found = self.comparison(op, case, size)
    if self.run is not None and found is not None:
      params, figures = found
      self.run.append(
          [params["op"], f"{params['objects']} obj", case, size, "against baselines"],
          {name: records.figure(value, "ms" if name.endswith("wall, min") else "x")
           for name, value in figures.items()},
          kind="speed", params=params, table="against the baselines")

  def markdown(self) -> str:
    header = ["op", "reference / window", "size", "implementation", "wall ms (min)",
              "wall ms (median)", "CPU ms (median)", "GFLOP/s", "x matmul", "x matmul (CPU)",
              "GB/s", "x bandwidth", "time / ours (min)", "time / ours (median)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in self.rows]
    return "\n".join(lines)

  def targets(self) -> list[list[str]]:
    """[case, target, figure, met] rows for the targets, per measured case (the report,
    `benchmarks.report.TARGETS`, judges the recorded figures the same way)."""
    rows = []
    for op, case, size in self.cases:
      found = self.comparison(op, case, size)
      if found is None:
        continue
      params, figures = found
      name = f"{op}, {case}, {size}" + ("" if size == self.full_size else " (reduced size)")
      if op.startswith("global") and case == "all ref px" and size == self.full_size:
        of_matmul = figures["ours f32 of matmul rate"]
        rows.append([name, "within 2x of the f32 matmul rate (>= 0.50x)",
                     f"{of_matmul:.2f}x ({figures['ours f32 wall, min']:.3g} ms)",
                     "met" if of_matmul >= 0.5 else "missed"])
        if "ours bf16 of bf16 matmul rate" in figures:
          of_bf16 = figures["ours bf16 of bf16 matmul rate"]
          rows.append([name, f"ours bf16 >= {_OF_BF16_MATMUL:g}x the bf16 matmul rate",
                       f"{of_bf16:.2f}x", "met" if of_bf16 >= _OF_BF16_MATMUL else "missed"])
      for label, needed in ((_NAIVE, 3.0), (_TORCH, 1.0)):
        key = f"speed-up over fastest {label}"
        if f"{key}, min" not in figures:
          continue
        ratio = figures[f"{key}, min"]
        rows.append([name, f">= {needed:g}x faster than the fastest {label}",
                     f"{ratio:.2f}x vs {params[f'fastest {label}']} (medians "
                     f"{figures[f'{key}, median']:.2f}x, CPU time {figures[f'{key}, CPU']:.2f}x)",
                     "met" if ratio >= needed else "missed"])
    return rows


def _record_errors(errors: dict[str, float], op: str, results: dict[str, np.ndarray]) -> None:
  """Largest |map - ours f32| per implementation, over all cases of the run."""
  if "ours f32" not in results:
    return
  for name, value in results.items():
    if name == _BF16_MATMUL:
      continue
    key = f"{op.split(',')[0]}: {name}"
    errors[key] = max(errors.get(key, 0.0), float(np.abs(value - results["ours f32"]).max()))


def _measure(table: _Table, errors: dict[str, float], impls, repeats: int,
             row: tuple[str, str, str], flops: float, nbytes: float) -> None:
  """Times the (name, fn) pairs of `impls` interleaved and adds a row for each."""
  timings, results, failures = _interleaved(dict(impls), repeats)
  for name, _ in impls:
    if name in failures:
      table.skip(*row, name, failures[name])
    else:
      table.add(*row, name, timings[name], flops, nbytes)
    print(" | ".join(table.rows[-1]), file=sys.stderr, flush=True)
  table.record_comparison(*row)
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
                     rng=key, chunk_size=args.chunk_size, dtype=jnp.bfloat16))]
        if _fused_by_default():
          impls += [(f"ours {name}, XLA", lambda dtype=dtype: matching.global_matching(
              q_dev, r_dev, labels_dev, num_objects, max_reference_pixels=cap, rng=key,
              chunk_size=args.chunk_size, dtype=dtype, kernel="xla"))
                    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16))]
        if cap is None:
          rows = [x.reshape(-1, args.channels).astype(jnp.bfloat16) for x in (q_dev, r_dev)]
          impls.append((_BF16_MATMUL, lambda: bf16_matmul(*rows)))
        if cap is None and args.fused_tiles and jax.default_backend() == "gpu":
          inputs = fused_inputs(q_dev, r_dev, labels_dev, num_objects)
          impls += [(f"fused kernel alone bf16, tiles {text}",
                     functools.partial(fused_kernel_maps, *inputs, shape=(height, width),
                                       num_objects=num_objects, tiles=tiles))
                    for text, tiles in args.fused_tiles]
        elif cap is None and args.fused_tiles:
          table.skip(op, case, size, "fused kernel alone", "needs a GPU")
        if cap is not None:
          impls.append(("ours f32, previous (2 sorts)", lambda: previous_global(
              q_dev, r_dev, labels_dev, key, num_objects, cap, args.chunk_size)))
        impls.append(("jnp masked min/object (chunked)", lambda: jnp_masked_min(
            q_dev, r_dev, case_dev, num_objects, args.chunk_size)))
        q_r_bytes = 4.0 * height * width * reference.shape[0] * reference.shape[1]
        if q_r_bytes <= args.naive_max_bytes:
          impls.append((f"{_NAIVE} [Q,R]", lambda: jnp_naive_global(
              q_dev, r_dev, case_dev, num_objects)))
        else:
          table.skip(op, case, size, f"{_NAIVE} [Q,R]", f"{q_r_bytes / 1e9:.1f} GB matrix")
        if q_r_bytes * args.channels <= args.naive_max_bytes:
          impls.append((f"{_NAIVE} [Q,R,C]", lambda: jnp_broadcast_global(
              q_dev, r_dev, case_dev, num_objects)))
          impls.append(("naive NumPy [Q,R,C]", lambda: numpy_broadcast_global(
              query, reference, case_labels, num_objects)))
        else:
          table.skip(op, case, size, "naive jnp/NumPy [Q,R,C]",
                     f"{q_r_bytes * args.channels / 1e9:.0f} GB broadcast (see smaller size)")
        if torch is not None:
          tensors = _torch_tensors(query, reference, case_labels)
          impls += [(f"{_TORCH} per-object gather, {_torch_label(n)}", _torch_threads(
              n, lambda: torch_global(*tensors, num_objects, args.chunk_size)))
                    for n in _torch_thread_counts()]
        else:
          table.skip(op, case, size, _TORCH, "import torch failed")
        _measure(table, errors, impls, args.repeats, (op, case, size), flops, nbytes)


def _fused_by_default() -> bool:
  """Whether global matching's default form runs the fused kernel here (a CUDA GPU)."""
  return (global_maps.GLOBAL_MATCHING_KERNEL == "pallas" or (
      global_maps.GLOBAL_MATCHING_KERNEL == "auto" and jax.default_backend() == "gpu"))


def _tiles(text: str) -> list[tuple[str, tuple[int, ...]]]:
  """'128x128,64x128x4' -> [('128x128', (128, 128, 0, 0)), ('64x128x4', (64, 128, 4, 0))]."""
  settings = [item for item in text.split(",") if item]
  return [(item, tuple(int(n) for n in (item.split("x") + ["0", "0"])[:4]))
          for item in settings]


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
               (f"{_NAIVE} offset volume", lambda: jnp_naive_local(
                   q_dev, p_dev, labels_dev, num_objects, window))]
      if height * width <= args.naive_numpy_local_pixels:
        impls.append(("naive NumPy offset volume", lambda: numpy_naive_local(
            query, previous, labels, num_objects, window)))
      else:
        table.skip(op, case, size, "naive NumPy offset volume",
                   f"{height * width} pixels > --naive_numpy_local_pixels (see smaller size)")
      if torch is not None:
        tensors = _torch_tensors(query, previous, labels)
        impls += [(f"{_TORCH} offset loop, {_torch_label(n)}", _torch_threads(
            n, lambda: torch_local(*tensors, num_objects, window)))
                  for n in _torch_thread_counts()]
      else:
        table.skip(op, case, size, _TORCH, "import torch failed")
      _measure(table, errors, impls, args.repeats, (op, case, size), flops, nbytes)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--height", type=int, default=120, help="Stride-4 height (480p: 120).")
  parser.add_argument("--width", type=int, default=214, help="Stride-4 width (854 px: 214).")
  parser.add_argument("--channels", type=int, default=100, help="Embedding dimension.")
  parser.add_argument("--objects", type=lambda s: [int(v) for v in s.split(",")],
                      default=[1, 3, 10], help="Comma-separated object slot counts.")
  parser.add_argument("--ops", type=lambda s: s.split(","), default=["global", "local"],
                      help="Comma-separated operations to time: global, local.")
  parser.add_argument("--max_reference_pixels", type=int, default=1024,
                      help="Reference pixels per object of the subsampled case.")
  parser.add_argument("--chunk_size", type=int, default=4096, help="Query chunk size.")
  parser.add_argument("--window", type=int, default=15, help="Local matching radius k.")
  parser.add_argument("--fused_tiles", type=_tiles, default=[],
                      help="GPU only: rows of the fused kernel alone (bfloat16, all reference "
                           "pixels, layout precomputed) per setting QxR[xS[xW]]: query tile, "
                           "reference tile, splits, warps (0: default), comma-separated.")
  parser.add_argument("--small_height", type=int, default=24,
                      help="Height of the reduced size for the naive versions (0: none).")
  parser.add_argument("--small_width", type=int, default=43,
                      help="Width of the reduced size for the naive versions (0: none).")
  parser.add_argument("--naive_max_bytes", type=float, default=4e9,
                      help="Largest distance matrix/broadcast a naive version may build.")
  parser.add_argument("--naive_numpy_local_pixels", type=int, default=4000,
                      help="Largest frame (pixels) for the NumPy local version.")
  parser.add_argument("--repeats", type=int, default=3,
                      help="Timed rounds per case (each calls every implementation once).")
  parser.add_argument("--matmul_size", type=int, default=4096, help="Peak-matmul side.")
  parser.add_argument("--bandwidth_mb", type=int, default=512, help="Bandwidth array size.")
  parser.add_argument("--quick", action="store_true",
                      help="Smoke run: defaults become 30x54 frames, 1 and 3 objects, window "
                           "4, 1 repeat; appends no record unless --write.")
  parser.add_argument("--write", action="store_true", help="Append records (default unless "
                      "--quick).")
  records.add_arguments(parser)
  if parser.parse_known_args(argv)[0].quick:  # Smaller defaults; explicit flags still win.
    parser.set_defaults(height=30, width=54, objects=[1, 3], window=4, small_height=12,
                        small_width=20, repeats=1, matmul_size=1024, bandwidth_mb=64,
                        max_reference_pixels=256)
  args = parser.parse_args(argv)
  unknown = set(args.ops) - {"global", "local"}
  if unknown:
    parser.error(f"--ops takes global and/or local, got {sorted(unknown)}.")
  write = (args.write or not args.quick) and not args.no_write
  run = records.Run("matching", argv, write=write, directory=args.results_dir)

  load_start = run.load_start
  peaks = _machine_peaks(args.matmul_size, args.bandwidth_mb, args.repeats)
  table = _Table(peaks, f"{args.height}x{args.width}", run)
  sizes = [(args.height, args.width)]
  if args.small_height and args.small_width:
    sizes.append((args.small_height, args.small_width))
  errors: dict[str, float] = {}
  if "global" in args.ops:
    _global_cases(args, table, sizes, errors)
  if "local" in args.ops:
    _local_cases(args, table, sizes, errors)
  peaks_after = _machine_peaks(args.matmul_size, args.bandwidth_mb, args.repeats)
  targets = table.targets()
  met = sum(row[-1] == "met" for row in targets)
  body = [
      f"- Machine load: load average (1 / 5 / 15 min) {load_start} at the start, "
      f"{machine.load_average()} at the end; other jobs share the CPUs, so every case times "
      f"its implementations interleaved ({args.repeats} rounds, each calling every "
      f"implementation once in a rotated order, after one untimed call each) and ratios use "
      f"the fastest call (min), with medians beside them.",
      "- PyTorch: " + ("not installed" if torch is None else
                       f"{torch.__version__} on the GPU (cuda), beside JAX on the same chip; "
                       f"its output copied to the host inside the timing" if _torch_device() ==
                       "cuda" else f"{torch.__version__}, default {torch.get_num_threads()} "
                       f"threads, timed with 1 and with the default"),
      f"- Inputs: query/reference {args.height}x{args.width}x{args.channels} (480p at stride 4 "
      f"is 120x214), objects = ellipses on background, query = reference moved (2, 3) px + "
      f"noise; global chunk_size {args.chunk_size}; "
      + (f"reduced size {sizes[1][0]}x{sizes[1][1]} (not a target size: there for "
         f"the naive [Q,R,C] and NumPy versions, ours rerun there)." if len(sizes) > 1
         else "no reduced size."),
      f"- Machine peaks (start / end of run, fastest call): f32 matmul {args.matmul_size}^3 "
      f"{peaks['gflops']:.0f} / {peaks_after['gflops']:.0f} GFLOP/s "
      f"({peaks['gflops_per_cpu_s']:.0f} / {peaks_after['gflops_per_cpu_s']:.0f} GFLOP per "
      f"CPU-second); copy {peaks['copy_gbs']:.1f} / {peaks_after['copy_gbs']:.1f} GB/s, "
      f"reduction {peaks['read_gbs']:.1f} / {peaks_after['read_gbs']:.1f} GB/s. Ratios below use "
      f"the start values.",
      "- FLOPs = 2 Q R C (global, R = reference pixels used) or 2 Q (2k+1)^2 C (local); "
      "bytes = inputs + output once (the least any version must move); GFLOP/s and GB/s from "
      "the fastest call. `x matmul (CPU)` compares FLOP per CPU-second with the matmul's. "
      "`time / ours` is against ours f32 in the same case. `ours f32, previous (2 sorts)` is "
      "the f32 path before the subsampling and the block layout shared one sort.",
      "",
      table.markdown(),
      "",
      f"Targets, from the rows above: {met} of {len(targets)} met.",
      "",
      "| case | target | figure | met |",
      "|---|---|---|---|",
  ] + ["| " + " | ".join(row) + " |" for row in targets] + [""] + [
      f"- max |{name} - ours f32| over all cases: {err:.1e}"
      for name, err in errors.items() if not name.endswith("ours f32")]
  over = (f"{_and([str(n) for n in args.objects])} objects at "
          f"{_and([f'{h}x{w}' for h, w in sizes])}")
  for name, err in errors.items():
    op, impl = name.split(": ", 1)
    if impl != "ours f32":
      run.append([op, "max difference", impl], {"max abs difference": records.figure(err)},
                 kind="accuracy", table="agreement with ours f32",
                 params={"op": op, "implementation": impl, "over": over})
  print("\n".join(body))
  print(run.summary())


def _and(items: list[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


if __name__ == "__main__":
  main()
