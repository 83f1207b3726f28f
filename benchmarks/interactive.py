"""Interactive segmentation: the first pass (embed every frame + propagate) against a
re-propagation after a new scribble, which reuses the stored embeddings.

    python -m benchmarks.interactive [--videos=tiny=20x240x432,xception65=6x240x432]
        [--repeats=3] [--no_write] [--results_dir=DIR]

Random weights (speed does not depend on them) and the synthetic video of
`benchmarks.inference` (a textured pattern moving over the frames). For each backbone
(`--videos`, T x H x W per backbone) one `interactive.InteractiveSession`:
- cold first pass: a first session on the same shapes, run through the same interactions
  first (embed, start and step compile): what the very first pass of a process costs;
- first pass: a new session (embed all frames, kept on the device) plus, after a scribble
  through each object on frame 0 and a background scribble, `propagate(0, 'forward')`;
- re-propagation: after a click on each object and one on the background at a middle frame,
  `propagate(frame, 'both')` (all T frames again: global matching against the new clicks,
  the label-dependent part of local matching and the slot-dependent part of the head);
- `--repeats` rounds, each a first pass on a new session and `--repeats` re-propagations on
  it (new clicks on another frame each): the first pass of median total and the median
  re-propagation;
- the ratio first pass / re-propagation (the target is >= 5), ms per frame of the step, and
  the memory the session keeps (features + embeddings, `embedding_bytes`).
tiny uses configs/synthetic.py, xception65 configs/davis.py (the paper's model, output stride
16). Prints a table and appends one record per backbone to
`benchmarks/results/interactive.jsonl` (`benchmarks.records`, with the machine's load).
"""
import argparse
import statistics
import time
from typing import Any

import jax
import numpy as np
import psutil

from benchmarks import inference as inference_benchmark
from benchmarks import machine
from benchmarks import records
from feelvos_jax.inference import interactive

# The model set-up (configs, random weights) of the inference benchmark.
_setup = inference_benchmark._setup  # pylint: disable=protected-access


def _video(num_frames: int, height: int, width: int,
           num_objects: int) -> tuple[np.ndarray, np.ndarray]:
  """(frames [T, H, W, 3] uint8, frame-0 labels [H, W] with boxes 1..N)."""
  frames, labels = inference_benchmark.synthetic_video(num_frames, height, width, num_objects)
  return np.stack(list(frames)), labels


def _first_interaction(session: interactive.InteractiveSession, labels: np.ndarray) -> None:
  """A horizontal stroke through the middle of each object and a background stroke on the
  frame's top rows (outside the objects), on frame 0."""
  for object_id in session.object_ids:
    rows, cols = np.nonzero(labels == object_id)
    stroke = np.zeros(labels.shape, bool)
    stroke[(rows.min() + rows.max()) // 2, cols.min():cols.max() + 1] = True
    session.add_scribble(0, object_id, stroke)
  background = np.zeros(labels.shape, bool)
  background[2] = True
  session.add_background_scribble(0, background & (labels == 0))


def _correction(session: interactive.InteractiveSession, labels: np.ndarray,
                frame: int) -> None:
  """A click at each object's centre and one on the background, on `frame`."""
  for object_id in session.object_ids:
    rows, cols = np.nonzero(labels == object_id)
    session.add_scribble(frame, object_id, [(rows.mean(), cols.mean())])
  rows, cols = np.nonzero(labels == 0)
  session.add_background_scribble(frame, [(rows[-1], cols[-1])])


def _seconds(function: Any, *args: Any) -> tuple[float, Any]:
  start = time.perf_counter()
  result = jax.block_until_ready(function(*args))
  return time.perf_counter() - start, result


def run_backbone(backbone: str, num_frames: int, height: int, width: int, num_objects: int,
                 repeats: int) -> dict[str, float]:
  """The timings of one backbone (see the module docstring)."""
  config, model, variables = _setup(backbone)
  frames, labels = _video(num_frames, height, width, num_objects)
  object_ids = list(range(1, num_objects + 1))
  buckets = config.inference.object_buckets
  correction_frames = [(num_frames * (r + 1)) // (repeats + 1) for r in range(repeats)]

  def new_session():
    session = interactive.InteractiveSession(model, variables, frames, object_ids=object_ids,
                                             object_buckets=buckets)
    jax.block_until_ready((session.features, session.embeddings))
    return session

  def first_pass():
    embed_seconds, session = _seconds(new_session)
    _first_interaction(session, labels)
    propagate_seconds, _ = _seconds(session.propagate, 0, "forward")
    return session, embed_seconds, propagate_seconds

  def re_propagation(session, frame):
    _correction(session, labels, frame)
    return _seconds(session.propagate, frame, "both")[0]

  start = time.perf_counter()
  warm, _, _ = first_pass()
  cold_first_pass = time.perf_counter() - start
  for frame in correction_frames:
    re_propagation(warm, frame)
  del warm
  # Rounds: a first pass on a new session, then the re-propagations on it; medians of each.
  firsts, again = [], []
  for _ in range(repeats):
    session, embed_seconds, propagate_seconds = first_pass()
    firsts.append((embed_seconds + propagate_seconds, embed_seconds, propagate_seconds))
    again.extend(re_propagation(session, frame) for frame in correction_frames)
  first, embed_seconds, propagate_seconds = sorted(firsts)[len(firsts) // 2]
  repropagate = statistics.median(again)
  return {
      "cold": cold_first_pass, "embed": embed_seconds,
      "propagate": propagate_seconds, "first": first, "again": repropagate,
      "ratio": first / repropagate, "step_ms": 1000 * repropagate / num_frames,
      "kept_mib": session.embedding_bytes / 2**20,
      "distances_mib": session.distance_bytes / 2**20,
      "head_mib": session.feature_part_bytes / 2**20,
      "minima_mib": session.minima_bytes / 2**20,
      "rss_mib": psutil.Process().memory_info().rss / 2**20,
  }


_FIGURES = (("cold", "cold first pass", "s"), ("embed", "embed", "s"),
            ("propagate", "propagate", "s"), ("first", "first pass", "s"),
            ("again", "re-propagation", "s"), ("ratio", "ratio", "x"),
            ("step_ms", "step", "ms/frame"), ("kept_mib", "kept", "MiB"),
            ("distances_mib", "distances", "MiB"), ("head_mib", "head cache", "MiB"),
            ("minima_mib", "minima", "MiB"), ("rss_mib", "RSS", "MiB"))
"""(key of `run_backbone`'s result, figure name, unit) of each record."""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", default="tiny=20x240x432,xception65=6x240x432",
                      help="Comma-separated backbone=TxHxW (frames x height x width).")
  parser.add_argument("--objects", type=int, default=1, help="Objects in the video.")
  parser.add_argument("--repeats", type=int, default=3,
                      help="Re-propagations timed (median), each after new clicks.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("interactive", write=not args.no_write, directory=args.results_dir)

  load_before = run.load_start
  rows = []
  for entry in args.videos.split(","):
    backbone, video = entry.split("=")
    num_frames, height, width = (int(n) for n in video.split("x"))
    result = run_backbone(backbone, num_frames, height, width, args.objects, args.repeats)
    rows.append((backbone, f"{height}x{width}", num_frames, args.objects, result))
    print(rows[-1], flush=True)
    run.append([backbone, f"{num_frames}x{height}x{width}", f"{args.objects} obj"],
               {name: records.figure(result[key], unit) for key, name, unit in _FIGURES},
               kind="speed", params={"backbone": backbone, "frame": f"{height}x{width}",
                                     "frames": num_frames, "objects": args.objects})
  load_after = machine.load_average()

  lines = [
      f"- Load average (1 / 5 / 15 min), shared with other agents: {load_before} at the "
      f"start, {load_after} at the end.",
      "- Random weights; tiny = configs/synthetic.py model, xception65 = configs/davis.py "
      "(paper) model, output stride 16; synthetic video of benchmarks/inference.py. first "
      "pass = new session (embed all frames) + strokes on frame 0 + propagate(0, 'forward'); "
      "re-propagation = clicks on a middle frame + propagate(frame, 'both'), all frames; "
      f"{args.repeats} rounds of a first pass and {args.repeats} re-propagations on its "
      "session (each after clicks on another frame): first pass (with its embed and "
      "propagate parts) = the round of median total, re-propagation = the median of all; "
      "ratio = first pass / re-propagation (target >= 5); step = "
      "re-propagation per frame; cold first pass = the first pass of the process's first "
      "session on these shapes (compilation included; its re-propagations compile too, "
      "untimed); kept = features + embeddings of the session; distances = its stored "
      "local-matching distances (`matching.incremental.pair_distances`) and head = its "
      "stored feature parts of the head's first layer (`interactive.steps.head_feature_part`), "
      "both filled by the first pass and reused after; minima = its stored per-frame "
      "global-matching minima (incremental global matching); RSS = process RSS after the row "
      "(rows run in order). "
      "Timings on a shared, loaded machine are noisy.",
      "",
      "| backbone | frame | frames | objects | cold first pass s | embed s | propagate s "
      "| first pass s | re-propagation s | ratio | step ms/frame | kept MiB | distances MiB "
      "| head MiB | minima MiB | RSS MiB |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for backbone, frame, num_frames, num_objects, r in rows:
    lines.append(
        f"| {backbone} | {frame} | {num_frames} | {num_objects} | {r['cold']:.1f} | "
        f"{r['embed']:.2f} | {r['propagate']:.2f} | {r['first']:.2f} | {r['again']:.2f} | "
        f"{r['ratio']:.2f} | {r['step_ms']:.0f} | {r['kept_mib']:.0f} | "
        f"{r['distances_mib']:.0f} | {r['head_mib']:.0f} | {r['minima_mib']:.1f} | "
        f"{r['rss_mib']:.0f} |")
  print("\n".join(lines))
  print(run.summary())


if __name__ == "__main__":
  main()
