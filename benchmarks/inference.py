"""Video propagation speed and memory: frames/s, embed / matching / head split, memory vs length.

    python -m benchmarks.inference [--backbones=tiny,xception65] [--objects=1,3,10] \
        [--frames=20] [--dtypes=float32] [--profile=DIR] [--no_write] [--results_dir=DIR]
    python -m benchmarks.inference --video_batch=1,4,16 [--backbones=...] [--objects=...]

Random weights (speed does not depend on them) and a synthetic streamed video (a textured
pattern moving over the frames, one box per object given in frame 0). For each backbone and
object count it reports:
- frames/s of `video_propagation.VideoPropagator.propagate` over `--frames` frames after a warm-up
  video (compilation excluded), end to end: host padding, the jitted step, labels to the host;
- ms per frame of three separately jitted pieces: `embed` (backbone, ASPP, decoder, embedding
  head), matching (global against the reference frame and local against the previous frame,
  all 1 + slots maps) and the dynamic segmentation head over the slots;
- the peak process RSS and, where the device reports it, the most device memory in use.
Then the memory of two runs of `--memory_frames` lengths (one backbone/object setting): flat
in the video's length when inference keeps no per-frame state. tiny uses configs/synthetic.py,
xception65 configs/davis.py (the paper's model). Prints the tables and appends one record per
row to `benchmarks/results/inference.jsonl` (`benchmarks.records`; kind "speed", and "memory"
for the length runs). With `--profile=DIR`, each row then propagates `--profile_frames` more
frames inside `jax.profiler.trace` (after its timed run: compiled and warm), one trace folder
per row under DIR (TensorBoard's profile plugin, or the Perfetto trace in it at
ui.perfetto.dev).

With `--video_batch=1,4,16` the run measures instead, for each backbone, dtype, object count
and batch B, the frames/s per device of `VideoPropagator.propagate_batch` over B streamed
synthetic videos of one bucket stepped together (B x `--frames` frames after a warm-up batch;
one device runs them) and the process's peak device memory so far; records of kind "speed",
table "video batch". This mode imports no TensorFlow.
"""
import argparse
import functools
import itertools
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import psutil

from benchmarks import machine
from benchmarks import records
from configs import davis
from configs import synthetic
from feelvos_jax import matching
from feelvos_jax import models
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import video_propagation

_CONFIGS = {"tiny": synthetic.get_config, "xception65": davis.get_config}


def synthetic_video(num_frames: int, height: int, width: int, num_objects: int,
                    seed: int = 0) -> tuple[Iterator[np.ndarray], np.ndarray]:
  """(a generator of [H, W, 3] uint8 frames, the frame-0 label map [H, W] with 1..N boxes)."""
  rng = np.random.default_rng(seed)
  texture = rng.integers(0, 256, (height + num_frames, width + num_frames, 3), dtype=np.uint8)
  labels = np.zeros((height, width), np.int32)
  for index in range(num_objects):
    top, left = rng.integers(0, height * 3 // 4), rng.integers(0, width * 3 // 4)
    labels[top:top + height // 6, left:left + width // 8] = index + 1

  def frames():
    for t in range(num_frames):
      yield texture[t:t + height, t:t + width]

  return frames(), labels


def _run(propagator: video_propagation.VideoPropagator, num_frames: int, height: int, width: int,
         num_objects: int) -> tuple[float, int, int, int]:
  """(seconds, RSS bytes at the start, peak RSS bytes, most device bytes in use) of propagating
  one streamed video, memory sampled after every frame."""
  frames, labels = synthetic_video(num_frames, height, width, num_objects)
  process = psutil.Process()
  start_rss = process.memory_info().rss
  peak_rss, peak_device = start_rss, machine.device_bytes("bytes_in_use")
  start = time.perf_counter()
  for _ in propagator.propagate(frames, {0: labels}, [0] * num_objects):
    peak_rss = max(peak_rss, process.memory_info().rss)
    peak_device = max(peak_device, machine.device_bytes("bytes_in_use"))
  return time.perf_counter() - start, start_rss, peak_rss, peak_device


@functools.lru_cache(maxsize=8)
def _jitted_embed(model: Any) -> Callable[..., Any]:
  """`model.embed` jitted once per model, so the rows of one backbone and dtype share its
  compilation (the backbone's: the slowest piece to compile; on the H200 run of 2026-11-26
  the rows of Xception-65 ran out of their time limit compiling)."""
  return jax.jit(functools.partial(model.apply, method="embed"))


def profile(propagator: video_propagation.VideoPropagator, directory: str, num_frames: int,
            height: int, width: int, num_objects: int) -> str:
  """Propagates one streamed video of num_frames frames inside `jax.profiler.trace(directory)`
  (with a Perfetto trace); returns the folder the trace files went to."""
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    _run(propagator, num_frames, height, width, num_objects)
  runs = os.path.join(directory, "plugins", "profile")
  return max((os.path.join(runs, name) for name in os.listdir(runs)), key=os.path.getmtime)


def batch_seconds(propagator: video_propagation.VideoPropagator, batch: int, num_frames: int,
                  height: int, width: int, num_objects: int) -> float:
  """Seconds of `propagate_batch` over `batch` streamed synthetic videos (seeds 0..batch-1) of
  num_frames frames, one bucket, labels back on the host."""
  videos = []
  for seed in range(batch):
    frames, labels = synthetic_video(num_frames, height, width, num_objects, seed=seed)
    videos.append(host_loop.Video(frames, {0: labels}, [0] * num_objects,
                                    name=f"synthetic{seed}"))
  start = time.perf_counter()
  list(propagator.propagate_batch(videos))
  return time.perf_counter() - start


def video_batch_rows(run: records.Run, args: argparse.Namespace,
                     sizes: dict[str, tuple[int, int]]) -> None:
  """The `--video_batch` mode of the module docstring: prints its table, appends its records."""
  batches = [int(n) for n in args.video_batch.split(",")]
  rows = []
  for (backbone, (height, width)), dtype in itertools.product(sizes.items(),
                                                              args.dtypes.split(",")):
    config, model, variables = _setup(backbone, dtype=dtype)
    propagator = video_propagation.VideoPropagator(
        model, variables, object_buckets=config.inference.object_buckets)
    for num_objects in (int(n) for n in args.objects.split(",")):
      plan = propagator.plan(height, width, num_objects)
      single = None
      for batch in batches:
        batch_seconds(propagator, batch, 3, height, width, num_objects)  # Compiles.
        seconds = batch_seconds(propagator, batch, args.frames, height, width, num_objects)
        fps = batch * args.frames / seconds
        single = fps if batch == 1 else single
        device = machine.device_bytes("peak_bytes_in_use") / 2**20
        frame, slots = f"{height}x{width}", plan.objects_per_chunk * plan.num_chunks
        rows.append((backbone, config.model.dtype, num_objects, frame, slots, batch,
                     args.frames, fps, fps / single if single else float("nan"), device))
        print(rows[-1], flush=True)
        figures = {"throughput": records.figure(fps, "frames/s per device"),
                   "peak device memory": records.figure(device, "MiB")}
        if single:
          figures["vs batch 1"] = records.figure(fps / single, "x")
        run.append([backbone, config.model.dtype, frame, f"{num_objects} obj",
                    f"batch {batch}"], figures, kind="speed", table="video batch",
                   params={"backbone": backbone, "dtype": config.model.dtype,
                           "objects": num_objects, "frame": frame, "slots": slots,
                           "batch": batch, "frames": args.frames})
  lines = [
      "- Random weights; B synthetic videos of one bucket stepped together "
      "(`VideoPropagator.propagate_batch`, one device); frames/s = B x frames / seconds "
      "after a warm-up batch (compilation excluded); device = the process's peak device "
      "memory so far (0: not reported on CPU).",
      "",
      "| backbone | dtype | objects | frame | slots | batch | frames per video | frames/s "
      "| vs batch 1 | peak device MiB |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {:.2f} | {:.2f} | {:.0f} |".format(*row))
  print("\n".join(lines))
  print(run.summary())


def piece_times(model: Any, variables: Any, height: int, width: int, num_slots: int,
                repeats: int) -> dict[str, float]:
  """ms per frame of embed, matching and head, each jitted alone at the padded frame size."""
  frame = jnp.asarray(synthetic_video(1, height, width, 0)[0].__next__())[None]
  embed = _jitted_embed(model)
  features, embeddings = embed(variables, frame)
  h, w = features.shape[1:3]
  labels = jnp.asarray(np.random.default_rng(0).integers(0, num_slots, (h, w)), jnp.int32)

  @jax.jit
  def match(query, reference, labels):
    global_maps = matching.global_matching(query, reference, labels, num_slots,
                                           chunk_size=model.matching_chunk_size,
                                           dtype=model.dtype)
    local_maps = matching.local_matching(query, reference, labels, num_slots,
                                         window=model.window, dilation=model.dilation,
                                         dtype=model.dtype)
    return global_maps, local_maps

  object_maps = jnp.zeros((1, h, w, num_slots, 3), model.dtype)
  head = jax.jit(functools.partial(
      model.apply, method=lambda module, f, maps: module.segmentation_head(f, maps)))
  return {
      "embed": machine.median_ms(embed, variables, frame, repeats=repeats),
      "matching": machine.median_ms(match, embeddings[0], embeddings[0], labels,
                                    repeats=repeats),
      "head": machine.median_ms(head, variables, features, object_maps, repeats=repeats),
  }


def _setup(backbone: str, seed: int = 0, dtype: str = "") -> tuple[Any, Any, Any]:
  """(config, model, random variables) of `backbone`'s config, its `model.dtype` set to `dtype`
  unless empty."""
  config = _CONFIGS[backbone]()
  if dtype:
    config.model.dtype = dtype
  model = models.build_model(config.model)
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(seed)},
                                  *models.example_inputs(model))
  return config, model, variables


def setup_propagator(backbone: str, dtype: str = "", seed: int = 0
                     ) -> tuple[Any, Any, Any, video_propagation.VideoPropagator]:
  """(config, model, random variables, propagator) of `backbone` ("tiny", "xception65") with
  `model.dtype` set to `dtype` unless empty: the propagator of this benchmark's rows, with the
  config's object buckets (for `benchmarks.peers`)."""
  config, model, variables = _setup(backbone, seed=seed, dtype=dtype)
  propagator = video_propagation.VideoPropagator(
      model, variables, object_buckets=config.inference.object_buckets)
  return config, model, variables, propagator


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--height", type=int, default=480, help="Frame height.")
  parser.add_argument("--width", type=int, default=854, help="Frame width.")
  parser.add_argument("--backbones", default="tiny,xception65", help="Comma-separated.")
  parser.add_argument("--objects", default="1,3,10", help="Comma-separated object counts.")
  parser.add_argument("--frames", type=int, default=20, help="Timed frames per video.")
  parser.add_argument("--repeats", type=int, default=5, help="Timed calls per piece.")
  parser.add_argument("--sizes", default="",
                      help="Per-backbone frame size overrides, e.g. xception65=240x432.")
  parser.add_argument("--memory_backbone", default="tiny", help="Backbone of the length runs.")
  parser.add_argument("--memory_objects", type=int, default=3, help="Objects of the length runs.")
  parser.add_argument("--memory_frames", default="50,500", help="Two video lengths.")
  parser.add_argument("--memory_size", default="", help="HxW of the length runs (default: "
                      "--height x --width).")
  parser.add_argument("--dtypes", default="float32",
                      help="Comma-separated compute dtypes (float32, bfloat16): rows for each.")
  parser.add_argument("--profile", default="",
                      help="Folder for a jax.profiler trace of each row (none if empty).")
  parser.add_argument("--profile_frames", type=int, default=5,
                      help="Frames propagated inside each row's trace.")
  parser.add_argument("--video_batch", default="",
                      help="Comma-separated videos per step, e.g. 1,4,16: measure only "
                      "frames/s per device of batched propagation (module docstring).")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("inference", write=not args.no_write, directory=args.results_dir)
  sizes = {backbone: (args.height, args.width) for backbone in args.backbones.split(",")}
  for override in filter(None, args.sizes.split(",")):
    backbone, size = override.split("=")
    sizes[backbone] = tuple(int(n) for n in size.split("x"))
  if args.video_batch:
    video_batch_rows(run, args, sizes)
    return

  memory_height, memory_width = (tuple(int(n) for n in args.memory_size.split("x"))
                                 if args.memory_size else (args.height, args.width))
  dtypes = args.dtypes.split(",")
  config, model, variables = _setup(args.memory_backbone, dtype=dtypes[0])
  propagator = video_propagation.VideoPropagator(model, variables,
                                         object_buckets=config.inference.object_buckets)
  _run(propagator, 3, memory_height, memory_width, args.memory_objects)
  memory_rows = []
  for num_frames in (int(n) for n in args.memory_frames.split(",")):
    seconds, start_rss, rss, device = _run(propagator, num_frames, memory_height, memory_width,
                                           args.memory_objects)
    memory_rows.append((num_frames, num_frames / seconds, start_rss / 2**20, rss / 2**20,
                        device / 2**20))
    print(memory_rows[-1], flush=True)
    frame = f"{memory_height}x{memory_width}"
    run.append(
        ["video length", args.memory_backbone, config.model.dtype, frame,
         f"{args.memory_objects} obj", f"{num_frames} frames"],
        {"throughput": records.figure(num_frames / seconds, "frames/s"),
         "RSS at start": records.figure(start_rss / 2**20, "MiB"),
         "peak RSS": records.figure(rss / 2**20, "MiB"),
         "device memory": records.figure(device / 2**20, "MiB")},
        kind="memory", params={"backbone": args.memory_backbone, "dtype": config.model.dtype,
                               "objects": args.memory_objects, "frame": frame,
                               "frames": num_frames})

  rows = []
  for (backbone, (height, width)), dtype in itertools.product(sizes.items(), dtypes):
    config, model, variables = _setup(backbone, dtype=dtype)
    propagator = video_propagation.VideoPropagator(model, variables,
                                           object_buckets=config.inference.object_buckets)
    for num_objects in (int(n) for n in args.objects.split(",")):
      plan = propagator.plan(height, width, num_objects)
      _run(propagator, 3, height, width, num_objects)  # Compiles start and step.
      seconds, _, rss, device = _run(propagator, args.frames, height, width, num_objects)
      if args.profile:
        trace = profile(propagator, os.path.join(
            args.profile, f"{backbone}_{config.model.dtype}_{height}x{width}_{num_objects}obj"),
            args.profile_frames, height, width, num_objects)
        print(f"profile of {args.profile_frames} frames ({backbone}, {config.model.dtype}, "
              f"{num_objects} objects): {trace}", flush=True)
      pieces = piece_times(model, variables, plan.height, plan.width,
                           1 + plan.objects_per_chunk * plan.num_chunks, args.repeats)
      rows.append((backbone, config.model.dtype, num_objects, f"{height}x{width}",
                   plan.objects_per_chunk * plan.num_chunks,
                   args.frames, args.frames / seconds, pieces["embed"], pieces["matching"],
                   pieces["head"], rss / 2**20, device / 2**20))
      print(rows[-1], flush=True)
      _, dtype_name, _, frame, slots, _, fps, embed_ms, matching_ms, head_ms, _, _ = rows[-1]
      run.append(
          [backbone, dtype_name, frame, f"{num_objects} obj"],
          {"throughput": records.figure(fps, "frames/s"),
           "embed": records.figure(embed_ms, "ms/frame"),
           "matching": records.figure(matching_ms, "ms/frame"),
           "head": records.figure(head_ms, "ms/frame"),
           "peak RSS": records.figure(rss / 2**20, "MiB"),
           "device memory": records.figure(device / 2**20, "MiB")},
          kind="speed", params={"backbone": backbone, "dtype": dtype_name,
                                "objects": num_objects, "frame": frame, "slots": slots,
                                "frames": args.frames})

  lines = [
      "- Random weights; tiny = configs/synthetic.py model, xception65 = configs/davis.py "
      "(paper) model, output stride 16; one streamed synthetic video per row; frames/s end to "
      "end after a warm-up video (compilation excluded); embed / matching / head: ms per "
      "frame of each piece jitted alone (median); slots = object slots of the compiled step "
      "(config.inference.object_buckets); RSS = peak process RSS during the run (the process "
      "runs the rows in order); device = most device memory in use (0: not reported on CPU). "
      "Timings on a shared, loaded machine are noisy.",
      "",
      "| backbone | dtype | objects | frame | slots | frames | frames/s | embed ms "
      "| matching ms | head ms | peak RSS MiB | device MiB |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append("| {} | {} | {} | {} | {} | {} | {:.2f} | {:.3g} | {:.3g} | {:.3g} | {:.0f} | "
                 "{:.0f} |".format(*row))
  lines += [
      "",
      f"Memory against video length ({args.memory_backbone}, {dtypes[0]}, "
      f"{args.memory_objects} objects, "
      f"{memory_height}x{memory_width}; run first, in a fresh process, one after the other):",
      "",
      "| frames | frames/s | RSS at start MiB | peak RSS MiB | device MiB |",
      "|---|---|---|---|---|",
  ]
  for row in memory_rows:
    lines.append("| {} | {:.2f} | {:.0f} | {:.0f} | {:.0f} |".format(*row))
  print("\n".join(lines))
  print(run.summary())


if __name__ == "__main__":
  main()
