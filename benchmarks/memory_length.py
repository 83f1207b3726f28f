"""Memory and time per frame against video length: RDE and FEELVOS flat, STM bounded.

    python -m benchmarks.memory_length --lengths=50,500,5000 --heads=feelvos,stm,rde

For each head and length, a fresh subprocess builds the tiny model of configs/synthetic.py
(random weights: the figures do not depend on them) with `config.model.head` set, propagates
one video of that many random 64x64 frames with two objects through
`video_propagation.VideoPropagator` (labels consumed frame by frame, as evaluation does) and
reports the process's peak resident memory (`ru_maxrss`), the propagation state's bytes after
the last frame and the frames/s of the run (compilation excluded: the first 5 frames are
timed apart), and the peak RSS over the same head's shortest video's. Targets: RDE's and
FEELVOS's (first and previous frame only) peak memory within 5% from 50 to 5000 frames; STM's
bounded by `model.memory_frames` (its state is a buffer of that many frames from the start).
Appends one record per (head, length) to `benchmarks/results/memory_length.jsonl`.
"""
import argparse
import json
import os
import subprocess
import sys

from benchmarks import records

SIZE = 64
"""Frame height and width."""

_CHILD = """
import dataclasses, json, resource, sys, time
import jax, numpy as np
from configs import synthetic
from feelvos_jax import models
from feelvos_jax.inference import host_loop, video_propagation
head, length, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = synthetic.get_config()
config.model.head = head
model = models.build_model(config.model)
variables = jax.jit(model.init)(jax.random.key(0), *models.example_inputs(model))
propagator = video_propagation.VideoPropagator(model, variables, object_buckets=(2,))
rng = np.random.default_rng(0)
first = np.zeros((size, size), np.int64)
first[8:24, 8:24], first[32:56, 30:50] = 1, 2
states = []
plan = propagator.plan
def recording_plan(*args):
  result = plan(*args)
  def step(*step_args):
    state, labels = result.step(*step_args)
    states[:] = [state]
    return state, labels
  return dataclasses.replace(result, step=step)
frames = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(length))
start = time.perf_counter()
for index, _ in enumerate(host_loop.run_video(recording_plan, frames, {0: first}, [0, 0])):
  if index == 5:
    warm = time.perf_counter()
end = time.perf_counter()
state_bytes = sum(x.nbytes for x in jax.tree.leaves(states[0]))
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "state_bytes": state_bytes,
                  "frames_per_s": (length - 6) / (end - warm),
                  "memory_frames": config.model.memory_frames}))
"""


def measure(head: str, length: int) -> dict:
  """The child's figures for one head and video length (a fresh process each)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  result = subprocess.run([sys.executable, "-c", _CHILD, head, str(length), str(SIZE)],
                          cwd=root, env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"{head} x {length} frames failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="50,500,5000", help="Video lengths in frames.")
  parser.add_argument("--heads", default="feelvos,stm,rde",
                      help="Comma-separated config.model.head values: feelvos, stm, rde.")
  records.add_arguments(parser)
  args = parser.parse_args()
  run = records.Run("memory_length", write=not args.no_write, directory=args.results_dir)
  for head in args.heads.split(","):
    shortest = None
    for length in sorted(int(n) for n in args.lengths.split(",")):
      found = measure(head, length)
      print(head, length, found, flush=True)
      shortest = shortest or found["peak_rss_mib"]
      run.append(
          [head, f"{length} frames"],
          {"peak_rss": records.figure(round(found["peak_rss_mib"], 1), "MiB"),
           "peak RSS / shortest video's": records.figure(
               round(found["peak_rss_mib"] / shortest, 3)),
           "state": records.figure(found["state_bytes"], "bytes"),
           "throughput": records.figure(round(found["frames_per_s"], 2), "frames/s")},
          kind="memory", params={"head": head, "frames": length, "size": f"{SIZE}x{SIZE}",
                                 "memory_frames": found["memory_frames"]},
          note="tiny model of configs/synthetic.py, random weights, 2 objects, CPU; "
               "peak RSS of a fresh process per case")
  print(run.summary())


if __name__ == "__main__":
  main()
