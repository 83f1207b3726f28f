"""`python -m feelvos_jax.segment` on a short and a long video: peak memory and frames/s.

    python -m benchmarks.segment [--frames=50,1000] [--size=480x854] [--objects=3] \
        [--backbone=tiny] [--onnx] [--no_write] [--results_dir=DIR]

Writes a synthetic video per length with PyAV (the textured pattern of `benchmarks.inference`,
H.264 mp4) and its first-frame mask, then segments each with `tools.segment.segment_video`
(decoding, propagation, PNG masks, CSV, overlay mp4 and GIF: everything the command does),
random weights of the backbone's config (tiny: configs/synthetic.py). For each length it
reports the peak RSS during the run (this process and the writing process it starts, sampled
every 10 ms by a thread) and the frames/s, beside the frames/s of `VideoPropagator.propagate`
alone on the same frames generated in memory before encoding (what `benchmarks.inference`
measures). The runs follow a warm-up video
(compilation excluded), shortest first, in one process. Targets: the longest video's peak RSS
within 10 % of the shortest's; segment's frames/s within 10 % of propagation alone. Appends
records to `benchmarks/results/segment.jsonl` (kind "memory" and "speed").

--onnx also exports the same weights as ONNX models (`inference/onnx_export.py`, one bucket of
the padded frame size) and segments each video again with onnxruntime (`segment --onnx`),
recording both paths' frames/s in the same run (case "... onnx"), and the fraction of mask
pixels that differ between them (random weights: the slots of the random head nearly tie, so
rounding flips labels, which propagate); it needs jax2onnx.
"""
import argparse
import os
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np
from PIL import Image
import psutil

from benchmarks import inference as inference_benchmark
from benchmarks import records
from configs import davis
from configs import synthetic
from datasets import palette
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import models
from feelvos_jax.inference import export
from feelvos_jax.inference import host_loop
from feelvos_jax.inference import onnx_export
from feelvos_jax.inference import video_propagation
from feelvos_jax.tools import given_masks
from feelvos_jax.tools import segment
from feelvos_jax.tools import video_io


_CONFIGS = {"tiny": synthetic.get_config, "xception65": davis.get_config}


class PeakRss:
  """The highest RSS of this process and its children (the writing process) while the
  context is open, sampled by a thread."""

  def __init__(self, interval: float = 0.01):
    self.interval = interval
    self.peak = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self) -> None:
    process = psutil.Process()
    while not self._stop.is_set():
      total = process.memory_info().rss
      for child in process.children(recursive=True):  # The segment command's writing process.
        try:
          total += child.memory_info().rss
        except psutil.NoSuchProcess:
          pass
      self.peak = max(self.peak, total)
      self._stop.wait(self.interval)

  def __enter__(self) -> "PeakRss":
    self._thread.start()
    return self

  def __exit__(self, *unused) -> None:
    self._stop.set()
    self._thread.join()


def write_video(folder: str, name: str, num_frames: int, height: int, width: int,
                num_objects: int) -> tuple[str, str]:
  """(mp4 path, first-frame mask PNG path) of a synthetic video written with PyAV."""
  frames, labels = inference_benchmark.synthetic_video(num_frames, height, width, num_objects)
  writer = video_io.VideoWriter(os.path.join(folder, f"{name}.mp4"), fps=25)
  for frame in frames:
    writer.write(frame)
  writer.close()
  mask = os.path.join(folder, f"{name}.png")
  palette.palette_image(labels.astype(np.uint8)).save(mask)
  return writer.path, mask


def measure(model: segment.Model, propagator: Any, folder: str, name: str, num_frames: int,
            height: int, width: int, num_objects: int) -> dict[str, float]:
  """Segments one written video into a fresh output; the figures of the run."""
  video, mask = write_video(folder, name, num_frames, height, width, num_objects)
  source = video_io.open_video(video)
  job = segment.Job(source, mask, given_masks.read_masks(mask, source))
  start_rss = psutil.Process().memory_info().rss
  with PeakRss() as peak:
    summary = segment.segment_video(model, job, os.path.join(folder, f"out_{name}"))
  frames, _ = inference_benchmark.synthetic_video(num_frames, height, width, num_objects)
  start = time.perf_counter()  # Propagation alone, on the frames before encoding.
  for _ in propagator.propagate(frames, job.masks.annotations, job.masks.first_frame,
                                job.masks.object_ids):
    pass
  alone = num_frames / (time.perf_counter() - start)
  return {"frames": summary.frames, "segment": summary.frames / summary.seconds,
          "propagate": alone, "start_rss": start_rss / 2**20, "peak_rss": peak.peak / 2**20}


def masks_differing(first: str, second: str) -> float:
  """Fraction of the pixels whose label differs between two folders of the same mask PNGs."""
  differing = total = 0
  for name in sorted(os.listdir(first)):
    with Image.open(os.path.join(first, name)) as image:
      a = np.asarray(image)
    with Image.open(os.path.join(second, name)) as image:
      b = np.asarray(image)
    differing += int(np.sum(a != b))
    total += a.size
  return differing / max(total, 1)


def onnx_model(folder: str, config: Any, model: Any, variables: Any, height: int, width: int,
               num_objects: int) -> segment.Model:
  """`segment.Model` of the ONNX models of `variables` for one bucket: the padded frame size."""
  multiple = max(FEATURE_STRIDE, config.model.output_stride)
  config = config.copy_and_resolve_references()
  config.export.buckets = ((host_loop.round_up(height, multiple),
                            host_loop.round_up(width, multiple), num_objects),)
  config.export.max_reference_frames = 1
  path = os.path.join(folder, "onnx")
  onnx_export.write(path, config, model, variables, 0, export.export_buckets(config))
  loaded = onnx_export.load(path)
  return segment.Model(loaded.propagate, config,
                       {"kind": "benchmark", "path": "", "checkpoint_step": 0}, "ONNX models")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", default="50,1000", help="Video lengths, shortest first.")
  parser.add_argument("--size", default="480x854", help="HxW of the videos.")
  parser.add_argument("--objects", type=int, default=3, help="Objects given in frame 0.")
  parser.add_argument("--backbone", default="tiny", help="tiny or xception65 (random weights).")
  parser.add_argument("--onnx", action="store_true",
                      help="Also segment with the ONNX models of the same weights.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("segment", write=not args.no_write, directory=args.results_dir)
  height, width = (int(n) for n in args.size.split("x"))
  config = _CONFIGS[args.backbone]()
  model = models.build_model(config.model)
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0)},
                                  *models.example_inputs(model))
  propagator = video_propagation.propagator_from_config(model, variables, config)
  wrapped = segment.Model(propagator.propagate, config,
                          {"kind": "benchmark", "path": "", "checkpoint_step": 0},
                          f"random {args.backbone} weights")
  lengths = [int(n) for n in args.frames.split(",")]
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    if args.onnx:
      start = time.perf_counter()
      from_onnx = onnx_model(folder, config, model, variables, height, width, args.objects)
      export_seconds = time.perf_counter() - start
      measure(from_onnx, propagator, folder, "warmup_onnx", 3, height, width, args.objects)
    measure(wrapped, propagator, folder, "warmup", 3, height, width, args.objects)
    for num_frames in lengths:
      figures = measure(wrapped, propagator, folder, f"video_{num_frames}", num_frames,
                        height, width, args.objects)
      if args.onnx:
        onnx_figures = measure(from_onnx, propagator, folder, f"onnx_{num_frames}",
                               num_frames, height, width, args.objects)
        figures["onnx_segment"] = onnx_figures["segment"]
        figures["onnx_masks_differing"] = masks_differing(
            os.path.join(folder, f"out_video_{num_frames}", "masks", f"video_{num_frames}"),
            os.path.join(folder, f"out_onnx_{num_frames}", "masks", f"onnx_{num_frames}"))
      rows.append(figures)
      print(figures, flush=True)
  frame = f"{height}x{width}"
  for figures in rows:
    params = {"backbone": args.backbone, "frame": frame, "objects": args.objects,
              "frames": figures["frames"]}
    parts = [args.backbone, frame, f"{args.objects} obj", f"{figures['frames']} frames"]
    run.append(parts + ["memory"], {
        "RSS at start": records.figure(figures["start_rss"], "MiB"),
        "peak RSS": records.figure(figures["peak_rss"], "MiB"),
        "peak RSS / shortest video's": records.figure(figures["peak_rss"] / rows[0]["peak_rss"]),
    }, kind="memory", params=params)
    run.append(parts + ["speed"], {
        "segment": records.figure(figures["segment"], "frames/s"),
        "propagation alone": records.figure(figures["propagate"], "frames/s"),
        "segment / propagation alone": records.figure(figures["segment"] / figures["propagate"]),
    }, kind="speed", params=params)
    if args.onnx:
      run.append(parts + ["onnx"], {
          "segment, JAX": records.figure(figures["segment"], "frames/s"),
          "segment, onnxruntime": records.figure(figures["onnx_segment"], "frames/s"),
          "onnxruntime / JAX": records.figure(figures["onnx_segment"] / figures["segment"]),
          "mask pixels differing (random weights)": records.figure(
              figures["onnx_masks_differing"]),
          "export seconds": records.figure(export_seconds, "s"),
      }, kind="speed", params=params)
  print(f"{jax.default_backend()}, {args.backbone}, {frame}, {args.objects} objects")
  print("| frames | segment frames/s | propagation alone frames/s | ratio | RSS at start MiB "
        "| peak RSS MiB |")
  print("|---|---|---|---|---|---|")
  for figures in rows:
    print(f"| {figures['frames']} | {figures['segment']:.2f} | {figures['propagate']:.2f} | "
          f"{figures['segment'] / figures['propagate']:.2f} | {figures['start_rss']:.0f} | "
          f"{figures['peak_rss']:.0f} |")
  print(run.summary())


if __name__ == "__main__":
  main()
