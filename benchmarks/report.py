"""Writes BENCHMARKS.md from the benchmark records: the latest record of each case, as tables.

    python -m benchmarks.report            # regenerate BENCHMARKS.md
    python -m benchmarks.report --check    # exit 1 if BENCHMARKS.md differs from the records

Reads every `benchmarks/results/*.jsonl` (`benchmarks.records`), keeps the latest record of
each (benchmark, case) (latest date; among equal dates, the later line), and writes: the
targets (`TARGETS`: met / missed / unmeasured, judged on those latest records), then one
section for speed and memory and one for accuracy (model variants, baselines, training runs,
numerical agreement), each with a table per benchmark and record kind: the case, its setting,
its figures and a reference to the run (date, commit, machine, load, versions, command).
Older records stay in the JSON lines and in git; the output depends on the records alone
(sorted), so regenerating without new records gives the same file.
"""
import argparse
import dataclasses
import json
import pathlib
import re
import sys
from typing import Any, Iterable, Mapping, Sequence

from benchmarks import records

OUTPUT = records.ROOT / "BENCHMARKS.md"

TITLES: dict[str, str] = {
    "input_pipeline": "Input pipeline",
    "train_step": "Train step",
    "matching": "Global and local matching",
    "cfbi_matching": "CFBI matching: atrous global, multi-local",
    "inference": "Video inference",
    "segment": "Segmenting a video file (python -m feelvos_jax.segment)",
    "peers": "Side by side with the peers: Cutie, DeAOT, STCN",
    "interactive": "Interactive segmentation",
    "interactive_davis": "Interactive segmentation: the DAVIS interactive protocol",
    "layers": "Depthwise and 1x1 convolutions",
    "notebooks": "Notebook tests",
    "variants": "Model variants: FEELVOS, PML, CFBI options, STM, RDE-VOS",
    "memory_length": "Memory against video length: FEELVOS, STM and RDE-VOS",
    "copy_first_mask": "Copy-the-first-mask baseline",
    "precision": "bfloat16 against float32: J&F of one checkpoint",
    "synthetic_training": "Training runs on the synthetic set",
    "vis": "Video instance segmentation: MaskTrack R-CNN on synthetic VIS",
}
"""Section titles by benchmark, in the order the sections appear (others follow by name)."""

DESCRIPTIONS: dict[tuple[str, str, str], str] = {
    ("input_pipeline", "speed", ""):
        "Training batches of configs/synthetic.py (`synthetic_vos/small` train split, batch 8, "
        "crop 96x96) from `input_pipeline.create_train_dataset` on one host: steady-state "
        "batches/s after untimed warm-up batches, and the seconds to the first batch from step "
        "0 and when resuming at a late step. `decoded videos`: TFDS decodes whole videos; "
        "`encoded frames`: `decoders=input_pipeline.LAZY_FRAME_DECODERS`, only the 3 frames of "
        "a sample are decoded.",
    ("train_step", "speed", ""):
        "The compiled FEELVOS train step on random inputs: the paper's config "
        "(configs/common.py) with each backbone at a square crop, and configs/synthetic.py as "
        "it trains. Median wall time of the timed steps after one untimed step; batch = "
        "samples of 3 frames per device. Depthwise `platform` = as shipped "
        "(`layers.depthwise_conv_same`: shifted slices on CPU, XLA's grouped convolution "
        "elsewhere); `native` = XLA's grouped convolution forced. Peak RSS: the process's so "
        "far; peak device memory: the first device's (not reported on CPU); input pipeline: "
        "batches/s of the synthetic config's pipeline beside its step.",
    ("matching", "speed", ""):
        "`matching.global_matching` / `local_matching` (ours, float32 and bfloat16 matmul "
        "inputs) beside other formulations of the same maps: a jnp masked minimum per object "
        "over a chunked [chunk, R] distance matrix, a jnp running minimum over shifted "
        "windows, naive jnp and NumPy versions (the whole [Q, R] matrix, broadcast [Q, R, C] "
        "differences, stacked local cost volumes) and the same math written the way public "
        "PyTorch VOS code does it. Query and reference 120x214x100 (480p at stride 4) and a "
        "reduced size for the versions too large at full size; the implementations of a case "
        "are timed interleaved, each after one untimed call. GFLOP/s and GB/s from the "
        "fastest call; `x matmul` against the float32 matmul rate measured in the same run "
        "(`(CPU)`: per CPU-second); `time / ours` against ours f32 in the same case.",
    ("matching", "speed", "against the baselines"):
        "Per case: ours f32 against the fastest naive jnp version and the fastest PyTorch "
        "version (ratios of their times to ours: fastest calls, medians, CPU time), and ours "
        "f32's share of the float32 matmul rate.",
    ("matching", "accuracy", "agreement with ours f32"):
        "The largest absolute difference of each implementation's maps from ours f32 over "
        "the cases of a run.",
    ("cfbi_matching", "speed", ""):
        "CFBI's matching at one size (query and reference/previous frame 120x214 at stride 4, "
        "C = 100, 3 objects and background, float32, smooth random embeddings, all reference "
        "pixels): global matching with `global_atrous_rate` 1 and 2, one `local_matching` "
        "window, `cfbi.multi_local_matching` over several radii in one pass and one "
        "`local_matching` call per radius. Median of jitted calls after a warm-up call.",
    ("inference", "speed", ""):
        "Random weights; tiny = configs/synthetic.py's model, xception65 = configs/davis.py's "
        "(the paper's model, output stride 16); one streamed synthetic video per row. "
        "Throughput: frames/s of `VideoPropagator.propagate` end to end (host padding, the "
        "jitted step, labels back to the host) after a warm-up video; embed / matching / head: "
        "ms per frame of each piece jitted alone (median); slots: object slots of the compiled "
        "step; peak RSS of the process during the run (rows run in order); device memory: the "
        "most in use (not reported on CPU).",
    ("inference", "speed", "video batch"):
        "`--video_batch`: B synthetic videos of one bucket (frame size, object slots) stepped "
        "together by `VideoPropagator.propagate_batch` (the per-frame step vmapped over the "
        "videos) on one device; frames/s per device = B x frames per video / seconds after a "
        "warm-up batch (compilation excluded); vs batch 1: against the batch-1 row of the "
        "same run; peak device memory: the process's so far (0: not reported on CPU).",
    ("inference", "memory", ""):
        "Memory against video length: two videos of different lengths through one propagator "
        "(run first in the process); flat when inference keeps no per-frame state.",
    ("segment", "memory", ""):
        "`benchmarks/segment.py`: a synthetic H.264 video of each length written with PyAV and "
        "segmented by `tools.segment.segment_video` with everything the command writes (PNG "
        "masks, CSV, overlay mp4 and GIF); random weights; the lengths run one after the "
        "other in one process after a warm-up video. Peak RSS sampled every 10 ms during each "
        "run; flat when nothing grows with the video's length.",
    ("segment", "speed", ""):
        "The same runs: frames/s of the whole command (decoding, propagation and writing: in "
        "threads until the writing moved to a process of its own, in the records from "
        "2026-12-04 on) beside `VideoPropagator.propagate` alone on the same frames held in "
        "memory (what `benchmarks.inference` measures); with `--onnx`, the same video "
        "segmented again with the ONNX models of the same weights under onnxruntime "
        "(`segment --onnx`), and the fraction of mask pixels that differ from the JAX run "
        "(random weights: the random head's slots nearly tie).",
    ("peers", "speed", "side by side"):
        "`python -m benchmarks.peers`: ours (Xception-65, configs/davis.py, through "
        "`VideoPropagator`) and each peer installed in the environment (Cutie-base from "
        "`rf-cutie`, DeAOT R50-L from `deaotpy`, STCN from `stcnbuf`), random weights, each in "
        "a fresh process, over the same synthetic video from its frame-0 mask with the peer's "
        "own inference loop and memory; seconds per frame after the warm-up frames (the "
        "annotated one, compilation). CPU time = the process's CPU seconds per frame (all its "
        "threads): on a shared machine the fairer figure; cores busy = CPU / wall. Speed-up = "
        "the fastest peer's CPU seconds per frame (wall on a GPU) / ours. How to install the "
        "peers: `python -m benchmarks.peers --list`.",
    ("peers", "speed", "our frame by stage"):
        "Where ours' frame goes: embed (backbone, ASPP, decoder, embedding head), matching "
        "(global and local) and head (dynamic segmentation head over the object slots), each "
        "jitted alone (`benchmarks.inference.piece_times`, median wall ms), against the "
        "median end-to-end frame of the side-by-side run; rest = frame - pieces: host work "
        "(padding, transfers, labels), upsampling and argmax, and what the pieces gain or "
        "lose inside the fused step (negative when timed alone they cost more).",
    ("interactive", "speed", ""):
        "Random weights, the synthetic video of the inference benchmark. First pass = a new "
        "session (embed all frames) + strokes on frame 0 + `propagate(0, 'forward')`; "
        "re-propagation = clicks on a middle frame + `propagate(frame, 'both')` over all "
        "frames; each round is a first pass and re-propagations on its session (the first "
        "pass of median total, the median re-propagation); ratio = first pass / "
        "re-propagation; step = re-propagation per frame; cold first pass = the process's "
        "first (compilation included). Memory the session keeps: kept = features + "
        "embeddings; distances = stored local-matching distances; head = stored feature parts "
        "of the head's first layer; minima = stored per-frame global-matching minima; RSS = "
        "process RSS after the row.",
    ("layers", "speed", "depthwise"):
        "Depthwise convolutions: native = `lax.conv_general_dilated` with feature_group_count "
        "= C; shifted = `layers.depthwise_conv_shifted` (k x k shifted slices summed, custom "
        "VJP: what `layers.depthwise_conv_same` runs on CPU). Median ms of jitted calls; "
        "forward + backward = gradient of sum(out^2) in input and kernel.",
    ("layers", "speed", "1x1"):
        "1x1 convolutions: conv = `nn.Conv` with a 1x1 kernel (XLA's convolution); einsum = "
        "`layers.PointwiseConv` with the same parameters. Median ms of jitted calls, with "
        "bias; forward + backward = gradient of sum(out^2) in parameters and input.",
    ("notebooks", "speed", ""):
        "`tests/test_notebooks.py`: each notebook run with `SMOKE = True` on one CPU device.",
    ("variants", "accuracy", ""):
        "configs/synthetic.py (tiny backbone, `synthetic_vos/small`) with one config.model "
        "change per variant, trained from scratch with the same seed; validation J&F with the "
        "official semi-supervised protocol; throughput: a second timed pass over the same "
        "videos (compilation excluded); train: the whole `train_and_evaluate` call (input "
        "pipeline and compilation included). One seed: differences under about 0.05 J&F are "
        "within what another seed could change.",
    ("variants", "accuracy", "synthetic_vos/long"):
        "As above on `synthetic_vos/long` (`--dataset=synthetic_vos/long`): trained on its 24 "
        "train videos, scored on its validation videos of 300 frames, where objects leave the "
        "frame and come back many times and their colours drift: first-frame matching, growing "
        "memory and recurrent memory part here.",
    ("memory_length", "memory", ""):
        "`benchmarks/memory_length.py`: the tiny model of configs/synthetic.py (random weights) "
        "with `model.head` stm or rde, one video of random 64x64 frames with two objects per "
        "fresh process: its peak RSS, the propagation state's bytes after the last frame and "
        "frames/s after 6 warm-up frames; ratio: peak RSS over the same head's shortest "
        "video's. STM's state is a fixed buffer of `model.memory_frames` entries, RDE's the "
        "annotated frames and one recurrent slot.",
    ("precision", "accuracy", ""):
        "`benchmarks/precision.py`: the latest checkpoint of a configs/synthetic.py run (or "
        "one trained for `--train_steps` in the run, float32) evaluated on the "
        "`synthetic_vos/small` validation videos twice, `config.model.dtype` float32 and "
        "bfloat16 (parameters float32 in both), with `main.py --mode=evaluate`'s protocol and "
        "object buckets; seconds: the whole evaluation (compilation included).",
    ("copy_first_mask", "accuracy", ""):
        "Every object's mask from the frame it first appears in, copied unchanged to all "
        "later frames, scored with the official semi-supervised protocol "
        "(`evaluation.evaluate_arrays`): the floor a model must clear by following motion.",
    ("synthetic_training", "accuracy", "training runs"):
        "`main.py` with configs/synthetic.py (tiny backbone, batch 8, 96x96 crops, "
        "`synthetic_vos/small`), evaluated with `main.py --mode=evaluate` on the validation "
        "videos.",
    ("synthetic_training", "accuracy", "PML against FEELVOS"):
        "PML (`--config.model.head=nearest_neighbor`) trained 600 steps per triplet margin, "
        "scored beside the 600-step FEELVOS run on all 30 validation videos (128x128, 720 "
        "frames); throughput: the second (compiled) pass, propagation and scoring (the same "
        "architecture measured 33-43 frames/s across these runs on a loaded machine: "
        "differences under about 25% are load). The k=1 and reference-frame-only rows are the "
        "same trained model with `nearest_neighbors=1` / `previous_frame_references=False`.",
    ("vis", "accuracy", "accuracy"):
        "`python -m benchmarks.vis --workdir=DIR`: the latest checkpoint of a "
        "configs/synthetic_vis.py run (tiny backbone, `synthetic_vis/small`) on all validation "
        "videos, YouTube-VIS AP (spatio-temporal mask IoU). masktrack: the paper's assignment; "
        "no_tracking_head: the same detections matched by box IoU and category only; "
        "no_association: every detection its own instance.",
    ("vis", "speed", "speed"):
        "Whole-video inference (`vis.inference.VideoSegmenter`: detection, tracking, masks "
        "pasted at full resolution) on random 360x640 frames at the paper's test scale, "
        "compilation excluded.",
}
"""Text before each table, by (benchmark, kind, table)."""

KIND_TITLES = {"speed": "speed", "memory": "memory", "accuracy": "accuracy"}


@dataclasses.dataclass(frozen=True)
class Target:
  """A threshold on one figure of the latest records of a benchmark that match `where`."""
  benchmark: str
  figure: str
  text: str
  at_least: float | None = None
  at_most: float | None = None
  kind: str = "speed"
  table: str = ""
  where: tuple[tuple[str, Any], ...] = ()
  device: str = ""  # The hardware the target names ("" for any).
  detail: str = ""  # A param shown beside the figure (e.g. which baseline).

  def matches(self, record: Mapping[str, Any]) -> bool:
    params = record.get("params", {})
    return (record["benchmark"] == self.benchmark and record["kind"] == self.kind
            and record.get("table", "") == self.table
            and all(params.get(key) == value for key, value in self.where))

  def status(self, record: Mapping[str, Any]) -> str:
    value = record["figures"][self.figure]["value"]
    met = ((self.at_least is None or value >= self.at_least)
           and (self.at_most is None or value <= self.at_most))
    status = "met" if met else "missed"
    device = str(record.get("machine", {}).get("device", ""))
    if self.device and self.device not in device:
      status += f" on {device}, not an {self.device}"
    return status


TARGETS: tuple[Target, ...] = (
    Target("matching", "ours f32 of matmul rate",
           "global matching at 480p with all reference pixels within 2x of the float32 "
           "matmul rate (>= 0.5x)", at_least=0.5, table="against the baselines",
           where=(("op", "global"), ("reference", "all ref px"), ("size", "120x214"))),
    Target("matching", "speed-up over fastest naive jnp, min",
           ">= 3x faster than the fastest naive jnp version", at_least=3.0,
           table="against the baselines", detail="fastest naive jnp"),
    Target("matching", "speed-up over fastest PyTorch, min",
           "at least as fast as the fastest PyTorch version (>= 1x)", at_least=1.0,
           table="against the baselines", detail="fastest PyTorch"),
    Target("matching", "max abs difference",
           "bfloat16 maps within 1e-2 of float32", at_most=1e-2, kind="accuracy",
           table="agreement with ours f32", where=(("implementation", "ours bf16"),)),
    Target("inference", "throughput",
           ">= 30 frames/s for Xception-65 at 480x854 with 3 objects on one H100",
           at_least=30.0, device="H100",
           where=(("backbone", "xception65"), ("frame", "480x854"), ("objects", 3))),
    Target("segment", "peak RSS / shortest video's", "segment: peak memory on a 1000-frame "
           "480p video within 10 % of a 50-frame one", at_most=1.1, kind="memory",
           where=(("frames", 1000), ("frame", "480x854"))),
    Target("segment", "segment / propagation alone", "segment: frames/s on a 1000-frame 480p "
           "video within 10 % of propagation alone (>= 0.9x)", at_least=0.9,
           where=(("frames", 1000), ("frame", "480x854"))),
    Target("peers", "speed-up over fastest peer", "the paper network >= 1.5x faster than "
           "the fastest peer (Cutie, DeAOT, STCN) on CPU, CPU seconds per frame",
           at_least=1.5, table="side by side", where=(("model", "ours"), ("device", "cpu")),
           detail="fastest peer"),
    Target("peers", "speed-up over fastest peer", "the paper network >= 1.5x faster than "
           "the fastest peer (Cutie, DeAOT, STCN) on GPU", at_least=1.5, table="side by side",
           where=(("model", "ours"), ("device", "gpu")), detail="fastest peer"),
    Target("interactive", "ratio", "re-propagation after a correction >= 5x faster than the "
           "first pass", at_least=5.0),
    Target("memory_length", "peak RSS / shortest video's", "RDE: peak memory on a "
           "5000-frame video within 5 % of a 50-frame one", at_most=1.05, kind="memory",
           where=(("head", "rde"), ("frames", 5000))),
    Target("interactive_davis", "J&F after 1", "DAVIS interactive protocol on synthetic "
           "videos: J&F after the first interaction >= 0.80", at_least=0.80, kind="accuracy"),
    Target("interactive_davis", "J&F after 5", "DAVIS interactive protocol on synthetic "
           "videos: J&F after five interactions >= 0.90", at_least=0.90, kind="accuracy"),
    Target("interactive_davis", "largest drop", "DAVIS interactive protocol: no sequence's "
           "J&F drops by more than 0.02 from one interaction to the next", at_most=0.02,
           kind="accuracy"),
    Target("memory_length", "peak RSS / shortest video's", "FEELVOS: peak memory on a "
           "5000-frame video within 5 % of a 50-frame one", at_most=1.05, kind="memory",
           where=(("head", "feelvos"), ("frames", 5000))),
    Target("memory_length", "peak RSS / shortest video's", "STM: peak memory bounded by "
           "model.memory_frames (5000 frames within 5 % of 50)", at_most=1.05, kind="memory",
           where=(("head", "stm"), ("frames", 5000))),
    Target("precision", "|J&F difference|", "bfloat16 J&F within 0.005 of float32 for the "
           "same checkpoint", at_most=0.005, kind="accuracy"),
)
"""The targets the figures are judged against (the train step's figures have none)."""


# ------------------------------------------------------------------ selection
def _natural(text: str) -> list[Any]:
  return [(0, int(part)) if part.isdigit() else (1, part)
          for part in re.split(r"(\d+)", text) if part]


def latest(all_records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The latest record of each (benchmark, case): the latest date, then the later line.
  Sorted by benchmark, then case (numbers in case ids compared as numbers)."""
  chosen: dict[tuple[str, str], tuple[str, int, Mapping[str, Any]]] = {}
  for index, record in enumerate(all_records):
    key = (record["benchmark"], record["case"])
    if key not in chosen or record["date"] >= chosen[key][0]:
      chosen[key] = (record["date"], index, record)
  return [dict(chosen[key][2]) for key in sorted(chosen, key=lambda k: (k[0], _natural(k[1])))]


# ------------------------------------------------------------------ formatting
def number(value: float | int) -> str:
  """The shortest text that reads back as `value` (3.0 as 3)."""
  if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
    return str(int(value))
  return repr(value)  # Floats of records keep 6 significant digits (`records.figure`).


def _cell(value: Any) -> str:
  text = number(value) if isinstance(value, (int, float)) and not isinstance(
      value, bool) else str(value)
  return text.replace("|", "\\|").replace("\n", " ")


def _header(name: str, unit: str) -> str:
  return f"{name} ({unit})" if unit else name


def machine_text(record: Mapping[str, Any]) -> str:
  m = record.get("machine", {})
  text = (f"{m.get('cpu', records.UNRECORDED)}, {m.get('cpu_count', records.UNRECORDED)} "
          f"CPUs, {m.get('backend', records.UNRECORDED)} backend "
          f"({m.get('device', records.UNRECORDED)}")
  count = m.get("device_count", records.UNRECORDED)
  text += f", {count} devices)" if count not in (1, records.UNRECORDED) else ")"
  return text


def run_text(record: Mapping[str, Any]) -> str:
  """Date, commit, machine, load, versions and command of the run that wrote `record`."""
  load = record.get("load", {})
  versions = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
  return (f"{record['date']}, commit {record['commit']}; {machine_text(record)}; load "
          f"average (1 / 5 / 15 min) at the start {load.get('start', records.UNRECORDED)}, "
          f"at the end {load.get('end', records.UNRECORDED)}; {versions or records.UNRECORDED}; "
          f"`{record['command']}`")


def _run_key(record: Mapping[str, Any]) -> str:
  return json.dumps([record.get(key) for key in ("date", "commit", "command", "machine",
                                                 "load", "versions")], sort_keys=True)


def table_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """A markdown table of records (case, params, figures, note, run) and its list of runs."""
  params: list[str] = []
  figures: list[tuple[str, str]] = []
  for row in sorted(rows, key=lambda row: -len(row["figures"])):  # The fullest sets the order.
    params += [name for name in row.get("params", {}) if name not in params]
    figures += [(name, value["unit"]) for name, value in row["figures"].items()
                if (name, value["unit"]) not in figures]
  with_note = any(row.get("note") for row in rows)
  runs: dict[str, int] = {}
  header = (["case"] + params + [_header(*key) for key in figures] + (["note"] if with_note
                                                                        else []) + ["run"])
  lines = ["| " + " | ".join(_cell(text) for text in header) + " |",
           "|" + "---|" * len(header)]
  for row in rows:
    run = runs.setdefault(_run_key(row), len(runs) + 1)
    values = {(name, value["unit"]): value["value"] for name, value in row["figures"].items()}
    cells = ([f"`{row['case']}`"] + [_cell(row.get("params", {}).get(name, ""))
                                     for name in params]
             + [_cell(values[key]) if key in values else "" for key in figures]
             + ([_cell(row.get("note", ""))] if with_note else []) + [f"[{run}]"])
    lines.append("| " + " | ".join(cells) + " |")
  first = {}
  for row in rows:
    first.setdefault(runs[_run_key(row)], row)
  lines += [""] + [f"- [{index}] {run_text(first[index])}" for index in sorted(first)]
  return lines


# ------------------------------------------------------------------ the document
def target_rows(current: Sequence[Mapping[str, Any]]) -> list[list[str]]:
  """[target, case, figure, status, date] per target and matching latest record; one
  'unmeasured' row for a target no record answers."""
  rows = []
  for target in TARGETS:
    found = [record for record in current
             if target.matches(record) and target.figure in record["figures"]]
    for record in found:
      value = record["figures"][target.figure]
      text = f"{number(value['value'])}{' ' + value['unit'] if value['unit'] else ''}"
      if target.detail and target.detail in record.get("params", {}):
        text += f" ({target.detail}: {record['params'][target.detail]})"
      rows.append([target.text, f"`{record['case']}`", text, target.status(record),
                   record["date"]])
    if not found:
      rows.append([target.text, f"no {target.benchmark} record", "not measured",
                   "unmeasured", "-"])
  return rows


def _order(benchmark: str) -> tuple[int, str]:
  names = list(TITLES)
  return (names.index(benchmark) if benchmark in names else len(names), benchmark)


def _section(current: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> list[str]:
  lines = []
  chosen = [record for record in current if record["kind"] in kinds]
  for benchmark in sorted({record["benchmark"] for record in chosen}, key=_order):
    mine = [record for record in chosen if record["benchmark"] == benchmark]
    lines += [f"### {TITLES.get(benchmark, benchmark)}", ""]
    groups = sorted({(record["kind"], record.get("table", "")) for record in mine},
                    key=lambda group: (kinds.index(group[0]), group[1]))
    for kind, table in groups:
      rows = [record for record in mine
              if record["kind"] == kind and record.get("table", "") == table]
      if len(groups) > 1:
        lines += [f"#### {table or KIND_TITLES[kind]}", ""]
      description = DESCRIPTIONS.get((benchmark, kind, table))
      if description:
        lines += [description, ""]
      lines += table_lines(rows) + [""]
  return lines


def render(all_records: Iterable[Mapping[str, Any]]) -> str:
  """BENCHMARKS.md for these records."""
  all_records = list(all_records)
  current = latest(all_records)
  targets = target_rows(current)
  statuses = [row[3] for row in targets]
  counts = {
      "met": statuses.count("met"), "missed": statuses.count("missed"),
      "unmeasured": statuses.count("unmeasured"),
      "other hardware": sum(" not an " in status for status in statuses)}
  lines = [
      "# Benchmarks",
      "",
      "Generated by `python -m benchmarks.report` from the JSON lines in `benchmarks/results/`: "
      "do not edit by hand. Each benchmark appends one record per case it measures "
      "(`benchmarks/records.py`: figures, machine, load, versions, commit, date, command); "
      "this file shows the latest record of each case. Older records stay in the JSON lines "
      "and in git. After running a benchmark, regenerate with `python -m benchmarks.report`; "
      "`python -m benchmarks.report --check` fails when this file and the records differ.",
      "",
      "Commands are run from the repository root. Figures from a shared machine are noisy: "
      "each run names its load average. Case ids start with the JAX backend the case ran on "
      f"(cpu, gpu). {len(all_records)} records, {len(current)} cases.",
      "",
      "## Targets",
      "",
      f"Judged on the latest record of each case: {counts['met']} met, {counts['missed']} "
      f"missed, {counts['unmeasured']} unmeasured, {counts['other hardware']} measured on "
      "other hardware than the target names. The train step has no threshold: its figures "
      "are in its table.",
      "",
      "| target | case | figure | status | date |",
      "|---|---|---|---|---|",
  ] + ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in targets]
  lines += ["", "## Speed and memory", ""] + _section(current, ("speed", "memory"))
  lines += ["## Accuracy", "", "Segmentation quality (J&F) of model variants, baselines and "
            "training runs, and the numerical agreement of the matching kernels.", ""]
  lines += _section(current, ("accuracy",))
  return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results_dir", default=None,
                      help="Records to read (default: $FEELVOS_BENCHMARK_RESULTS, else "
                           "benchmarks/results/).")
  parser.add_argument("--output", type=pathlib.Path, default=OUTPUT,
                      help="The file to write (default: BENCHMARKS.md).")
  parser.add_argument("--check", action="store_true",
                      help="Write nothing; exit 1 if --output differs from the records.")
  args = parser.parse_args(argv)
  all_records = records.read(args.results_dir)
  bad = [f"{record.get('benchmark')} {record.get('case')}: {problem}"
         for record in all_records for problem in records.problems(record)]
  if bad:
    print("\n".join(bad), file=sys.stderr)
    return 1
  text = render(all_records)
  if args.check:
    current = args.output.read_text() if args.output.is_file() else ""
    if current != text:
      print(f"{args.output} differs from the records: run python -m benchmarks.report",
            file=sys.stderr)
      return 1
    return 0
  args.output.write_text(text)
  print(f"wrote {args.output} from {len(all_records)} records")
  return 0


if __name__ == "__main__":
  sys.exit(main())
