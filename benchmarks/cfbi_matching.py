"""Matching time of CFBI's atrous global matching and multi-local matching.

    python -m benchmarks.cfbi_matching [--repeats=3] [--no_write] [--results_dir=DIR]

At one size (default 480p at stride 4: 120 x 214 query and reference/previous frames, C = 100,
3 objects + background, random smooth embeddings and blob labels), the median time of:
- global matching against all reference pixels with `global_atrous_rate` 1 and 2 (the
  reference taken on the stride-2 grid, `cfbi.atrous_reference`), jitted including the
  selection;
- local matching: one `matching.local_matching` window (the paper's k = 15 and the largest
  multi-local radius), `cfbi.multi_local_matching` over all radii in one pass, and one
  `local_matching` call per radius.
Prints the table and appends one record per row to `benchmarks/results/cfbi_matching.jsonl`
(`benchmarks.records`; `--no_write` to skip).
"""
import argparse
import functools

import jax
import numpy as np

from benchmarks import machine
from benchmarks import records
from feelvos_jax import matching
from feelvos_jax.matching import cfbi


def _inputs(height: int, width: int, channels: int, num_objects: int, seed: int = 0):
  """Smooth random embeddings (two frames) and blob labels 0..num_objects."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(2, height // 8 + 2, width // 8 + 2, channels)).astype(np.float32)
  frames = jax.image.resize(coarse, (2, height, width, channels), "linear")
  centres = rng.uniform((0, 0), (height, width), (num_objects, 2))
  rows, cols = np.mgrid[:height, :width]
  labels = np.zeros((height, width), np.int32)
  for index, (y, x) in enumerate(centres, start=1):
    labels[(rows - y) ** 2 + (cols - x) ** 2 < (min(height, width) / 5) ** 2] = index
  return frames[0], frames[1], labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--height", type=int, default=120, help="Stride-4 height.")
  parser.add_argument("--width", type=int, default=214, help="Stride-4 width.")
  parser.add_argument("--channels", type=int, default=100, help="Embedding dimension.")
  parser.add_argument("--objects", type=int, default=3, help="Objects besides background.")
  parser.add_argument("--windows", default="2,4,6,8,10,12", help="Multi-local radii.")
  parser.add_argument("--single_window", type=int, default=15, help="The paper's radius.")
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls per row.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("cfbi_matching", write=not args.no_write, directory=args.results_dir)
  windows = tuple(int(r) for r in args.windows.split(","))
  slots = 1 + args.objects
  query, other, labels = _inputs(args.height, args.width, args.channels, args.objects)

  def global_atrous(rate, q, reference, reference_labels):
    reference, reference_labels = cfbi.atrous_reference(reference, reference_labels, rate)
    return matching.global_matching(q, reference, reference_labels, slots, chunk_size=4096)

  def separate(q, previous, previous_labels):
    return [matching.local_matching(q, previous, previous_labels, slots, window=r)
            for r in windows]

  def timed_ms(function, *args_):
    return machine.median_ms(jax.jit(function), *args_, repeats=args.repeats)

  rows = []
  for rate in (1, 2):
    rows.append((f"global matching, global_atrous_rate={rate}",
                 timed_ms(functools.partial(global_atrous, rate), query, other, labels)))
  for radius in (args.single_window, max(windows)):
    rows.append((f"local_matching, one window k={radius}",
                 timed_ms(functools.partial(matching.local_matching, num_objects=slots,
                                        window=radius), query, other, labels)))
  rows.append((f"multi_local_matching, windows {windows} (one pass)",
               timed_ms(functools.partial(cfbi.multi_local_matching, num_objects=slots,
                                      windows=windows), query, other, labels)))
  rows.append((f"local_matching once per window {windows}",
               timed_ms(separate, query, other, labels)))

  lines = [
      f"Query and reference/previous {args.height}x{args.width} at stride 4, C={args.channels}, "
      f"{args.objects} objects + background, float32, smooth random embeddings, all reference "
      f"pixels; median of {args.repeats} jitted calls after a warm-up call.",
      "",
      "| matching | ms |",
      "|---|---|",
  ] + [f"| {name} | {ms:.1f} |" for name, ms in rows]
  for name, ms in rows:
    run.append([name], {"time": records.figure(ms, "ms")}, kind="speed",
               params={"matching": name, "size": f"{args.height}x{args.width}",
                       "channels": args.channels, "objects": args.objects,
                       "repeats": args.repeats})
  print("\n".join(lines))
  print(run.summary())


if __name__ == "__main__":
  main()
