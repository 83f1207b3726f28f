"""Our model beside the peers users would pick instead: seconds per frame, each in its own process.

    python -m benchmarks.peers [--models=ours,cutie,deaot,stcn] [--dtypes=float32,bfloat16] \
        [--height=480] [--width=854] [--objects=3] [--warmup=2] [--frames=6] [--no_stages] \
        [--no_write] [--results_dir=DIR]
    python -m benchmarks.peers --list        # which peers this environment has, how to add them

Ours is the paper network (Xception-65, configs/davis.py) in each of `--dtypes`, propagated by
`benchmarks.inference.setup_propagator`'s `VideoPropagator` (the code path of
`benchmarks.inference`); the peers are Cutie-base (PyPI `rf-cutie`), DeAOT R50-L (`deaotpy`)
and STCN (`stcnbuf`), each built from its package with random weights (speed does not depend
on them) and run through its own inference loop and memory: Cutie's `InferenceCore.step`,
DeAOT's engine as its evaluator drives it (`add_reference_frame`, then per frame
`match_propogate_one_frame`, `decode_current_logits`, argmax, `update_memory`), STCN's
`STCNInference.predict_batch` (TorchScript, one frame per batch, as its `segment_video`).
Every model segments the same synthetic video (`benchmarks.inference.synthetic_video`:
`--objects` boxes given in frame 0) from the frame-0 mask, labels back on the host each frame.

Each model runs in a fresh Python process (`--child`), so that no import, thread pool or
allocator of one touches another; the child times every frame (wall: `time.perf_counter`, CPU:
`time.process_time`, all its threads) and the first `--warmup` frames (the annotated frame,
compilation) are left out. On a machine shared with other jobs the CPU seconds per frame are
the fairer figure: wall time grows with the others' load, CPU time much less. Ours' row also
gets its speed-up over the fastest peer that ran on the same kind of device (CPU seconds per
frame on a CPU, wall seconds on a GPU). With stages on (the default), ours' child then times
the frame's pieces, each jitted alone (`benchmarks.inference.piece_times`: embed = backbone,
ASPP, decoder and embedding head; matching = global and local; head = the dynamic
segmentation head over the object slots) against its end-to-end frame; the rest is host work
(padding, transfers, labels) and what the pieces share inside the fused step.

This script installs nothing: a peer whose modules are not importable is listed with the
commands that install it (`PEERS`, `TORCH_NOTE`) and not run. Records (`benchmarks.records`)
go to `benchmarks/results/peers.jsonl`: kind "speed", table "side by side" (one per model and
dtype) and "our frame by stage".
"""
import argparse
import dataclasses
import importlib.metadata
import importlib.util
import itertools
import json
import pathlib
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from benchmarks import inference
from benchmarks import records

BENCHMARK = "peers"
RESULT_PREFIX = "PEERS_RESULT "
"""The child's last stdout line: this prefix, then its result as JSON."""
SIDE_BY_SIDE = "side by side"
STAGES = "our frame by stage"
OURS_BACKBONE = "xception65"
OURS_VARIANT = "FEELVOS Xception-65 (paper config)"


@dataclasses.dataclass(frozen=True)
class Peer:
  """A model to compare with: its key, what it is, the modules it needs and how to add them."""
  name: str
  variant: str
  modules: tuple[str, ...]
  distributions: tuple[str, ...]
  install: tuple[str, ...]


PEERS: tuple[Peer, ...] = (
    Peer("cutie", "Cutie-base (ResNet-50), DAVIS 2017 evaluation settings",
         modules=("torch", "cutie", "omegaconf", "einops"),
         distributions=("torch", "rf-cutie"),
         install=("pip install --no-deps rf-cutie", "pip install omegaconf einops")),
    Peer("deaot", "DeAOT R50-L (R50_DeAOTL), DAVIS evaluation settings",
         modules=("torch", "torchvision", "aot", "cv2", "PIL"),
         distributions=("torch", "torchvision", "deaotpy"),
         install=("pip install --no-deps deaotpy",
                  "pip install opencv-python-headless pillow")),
    Peer("stcn", "STCN (stcnbuf: memory of 128 frames, top-k 20)",
         modules=("torch", "torchvision", "stcnbuf"),
         distributions=("torch", "torchvision", "stcnbuf"),
         install=("pip install --no-deps stcnbuf",)),
)
"""The peers, in the order they run."""

TORCH_NOTE = (
    "All peers need PyTorch, and DeAOT and STCN torchvision; install them first, into a "
    "separate virtual environment that also has this project's requirements.txt. Use a CPU "
    "build of torch on a machine without a GPU (`pip install torch==2.13.0` where that "
    "resolves to a CPU wheel: the default Linux wheel is a multi-GB CUDA build), and keep "
    "`--no-deps` on the peers, whose requirements would drag in another torch. torchvision: "
    "the release paired with that torch (`pip install --no-deps torchvision==0.28.0` for "
    "torch 2.13); where its compiled ops do not load beside a CPU torch (a CUDA build), the "
    "ResNet models and transforms the peers use still work once torchvision's "
    "`_meta_registrations.py` and `_autograd_registrations.py` are emptied in that "
    "environment. DeAOT's optional spatial-correlation-sampler builds only with CUDA; "
    "without it DeAOT uses its own PyTorch local attention.")


def missing_modules(peer: Peer, find_spec: Callable[[str], Any] = importlib.util.find_spec
                    ) -> list[str]:
  """The modules of `peer` that `find_spec` does not find (none: the peer can run)."""
  return [module for module in peer.modules if find_spec(module) is None]


def discover(find_spec: Callable[[str], Any] = importlib.util.find_spec
             ) -> tuple[list[Peer], list[tuple[Peer, list[str]]]]:
  """(the peers whose modules are all importable, [(peer, its missing modules)] for the
  others), each in `PEERS` order; nothing is imported."""
  found, missing = [], []
  for peer in PEERS:
    absent = missing_modules(peer, find_spec)
    if absent:
      missing.append((peer, absent))
    else:
      found.append(peer)
  return found, missing


def install_text(missing: Sequence[tuple[Peer, list[str]]]) -> str:
  """What to run to add the missing peers (empty when none is missing)."""
  if not missing:
    return ""
  lines = ["Not installed here, so not run (this script installs nothing):"]
  for peer, absent in missing:
    lines.append(f"- {peer.name} ({peer.variant}): missing {', '.join(absent)}; install with: "
                 + " && ".join(f"`{command}`" for command in peer.install))
  lines.append(TORCH_NOTE)
  return "\n".join(lines)


# ------------------------------------------------------------------ in the child process
def _stamp() -> tuple[float, float]:
  return time.perf_counter(), time.process_time()


def _timed(labels: Iterator[Any]) -> tuple[list[float], list[float]]:
  """Per-frame (wall seconds, CPU seconds) of consuming `labels`: from one frame's labels on
  the host to the next (the first from the call)."""
  stamps = [_stamp()]
  for _ in labels:
    stamps.append(_stamp())
  wall = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
  cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]
  return wall, cpu


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return records.UNRECORDED


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
  """The child of ours: the paper network in `args.dtype` over the synthetic video, then (unless
  `args.no_stages`) the frame's pieces jitted alone."""
  import jax  # pylint: disable=g-import-not-at-top (only ours' child needs a JAX backend)
  config, model, variables, propagator = inference.setup_propagator(OURS_BACKBONE, args.dtype)
  total = args.warmup + args.frames
  frames, labels = inference.synthetic_video(total, args.height, args.width, args.objects)
  wall, cpu = _timed(propagator.propagate(frames, {0: labels}, [0] * args.objects))
  result = {"variant": OURS_VARIANT, "dtype": config.model.dtype,
            "device": jax.default_backend(), "wall": wall, "cpu": cpu,
            "version": f"jax {jax.__version__}"}
  if not args.no_stages:
    plan = propagator.plan(args.height, args.width, args.objects)
    result["stages"] = inference.piece_times(
        model, variables, plan.height, plan.width,
        1 + plan.objects_per_chunk * plan.num_chunks, args.repeats)
  return result


def _torch_device() -> Any:
  """(torch, the device the peers run on: CUDA where torch has it, else the CPU)."""
  import torch  # pylint: disable=g-import-not-at-top (the peers' children only)
  torch.set_grad_enabled(False)
  return torch, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _labels_tensor(torch: Any, labels: np.ndarray, device: Any) -> Any:
  return torch.as_tensor(labels.astype(np.int64), device=device)


def run_cutie(args: argparse.Namespace) -> dict[str, Any]:
  """Cutie-base, random weights, its DAVIS 2017 evaluation config (`eval_config.yaml` with
  `model/base.yaml`, dataset d17-val: memory every 5 frames, no long-term memory), through
  `InferenceCore.step` frame by frame; labels = argmax of its probabilities."""
  torch, device = _torch_device()
  from omegaconf import OmegaConf  # pylint: disable=g-import-not-at-top
  from cutie.inference import inference_core  # pylint: disable=g-import-not-at-top
  from cutie.inference.utils import args_utils  # pylint: disable=g-import-not-at-top
  from cutie.model import cutie as cutie_model  # pylint: disable=g-import-not-at-top
  from cutie.model.utils import resnet  # pylint: disable=g-import-not-at-top
  # The encoders load ImageNet weights from the network when built: random ones instead.
  for name in ("resnet18", "resnet50"):
    build = getattr(resnet, name)
    setattr(resnet, name, lambda pretrained=True, _build=build, **kw: _build(False, **kw))
  config_dir = pathlib.Path(cutie_model.__file__).resolve().parents[1] / "config"
  cfg = OmegaConf.load(config_dir / "eval_config.yaml")
  cfg.model = OmegaConf.load(config_dir / "model" / "base.yaml")
  args_utils.get_dataset_cfg(cfg)
  network = cutie_model.CUTIE(cfg).to(device).eval()
  processor = inference_core.InferenceCore(network, cfg=cfg)
  frames, labels = inference.synthetic_video(args.warmup + args.frames, args.height,
                                             args.width, args.objects)
  objects = list(range(1, args.objects + 1))

  def segment():
    with torch.inference_mode():
      for index, frame in enumerate(frames):
        image = torch.as_tensor(frame, device=device).permute(2, 0, 1).float() / 255
        if index == 0:
          prob = processor.step(image, _labels_tensor(torch, labels, device), objects)
        else:
          prob = processor.step(image)
        yield torch.argmax(prob, dim=0).cpu().numpy().astype(np.uint8)

  wall, cpu = _timed(segment())
  return {"variant": PEERS[0].variant, "dtype": "float32", "device": device.type,
          "threads": torch.get_num_threads(), "wall": wall, "cpu": cpu,
          "version": f"rf-cutie {_version('rf-cutie')}, torch {torch.__version__}"}


def run_deaot(args: argparse.Namespace) -> dict[str, Any]:
  """DeAOT R50-L, random weights, its default test settings (long-term memory every 5 frames,
  frames resized by its own transforms to the stride-16-plus-one size), driven as its
  `Evaluator` drives its engine for one video without flips or scales."""
  torch, device = _torch_device()
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from aot.configs import default  # pylint: disable=g-import-not-at-top
  from aot.dataloaders import video_transforms  # pylint: disable=g-import-not-at-top
  from aot.networks import engines  # pylint: disable=g-import-not-at-top
  from aot.networks import models  # pylint: disable=g-import-not-at-top
  cfg = default.DefaultEngineConfig(exp_name="peers", model="r50_deaotl")
  model = models.build_vos_model(cfg.MODEL_VOS, cfg).to(device).eval()
  engine = engines.build_engine(cfg.MODEL_ENGINE, phase="eval", aot_model=model,
                                gpu_id=device.index or 0,
                                long_term_mem_gap=cfg.TEST_LONG_TERM_MEM_GAP,
                                short_term_mem_skip=cfg.TEST_SHORT_TERM_MEM_SKIP)
  engine.eval()
  resize = video_transforms.MultiRestrictSize(cfg.TEST_MAX_SHORT_EDGE, cfg.TEST_MAX_LONG_EDGE,
                                              cfg.TEST_FLIP, cfg.TEST_MULTISCALE,
                                              cfg.MODEL_ALIGN_CORNERS)
  to_tensor = video_transforms.MultiToTensor()
  frames, labels = inference.synthetic_video(args.warmup + args.frames, args.height,
                                             args.width, args.objects)

  def segment():
    with torch.inference_mode():
      for index, frame in enumerate(frames):
        sample = {"current_img": frame.astype(np.float32),
                  "meta": {"height": args.height, "width": args.width}}
        if index == 0:
          sample["current_label"] = labels.astype(np.uint8)
        sample = to_tensor(resize(sample))[0]
        image = sample["current_img"].unsqueeze(0).float().to(device)
        if index == 0:
          label = sample["current_label"].unsqueeze(0).float().to(device)
          label = F.interpolate(label, size=image.size()[2:], mode="nearest")
          engine.add_reference_frame(image, label, frame_step=0, obj_nums=[args.objects])
          yield labels.astype(np.uint8)
          continue
        engine.match_propogate_one_frame(image)
        logits = engine.decode_current_logits((args.height, args.width))
        label = torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).float()
        engine.update_memory(F.interpolate(label, size=engine.input_size_2d, mode="nearest"))
        yield label[0, 0].cpu().numpy().astype(np.uint8)

  wall, cpu = _timed(segment())
  correlation = importlib.util.find_spec("spatial_correlation_sampler") is not None
  return {"variant": PEERS[1].variant, "dtype": "float32", "device": device.type,
          "threads": torch.get_num_threads(), "wall": wall, "cpu": cpu,
          "version": f"deaotpy {_version('deaotpy')}, torch {torch.__version__}",
          "note": "local attention: " + ("spatial-correlation-sampler" if correlation
                                         else "DeAOT's PyTorch fallback (no correlation "
                                              "sampler)")}


def run_stcn(args: argparse.Namespace) -> dict[str, Any]:
  """STCN (stcnbuf), random weights, the settings of its `segment_video` (memory of 128
  frames, 2 temporary, top-k 20, every frame added, one frame per batch, TorchScript) at the
  video's own size; labels = argmax of its probabilities."""
  torch, device = _torch_device()
  from stcnbuf.model import eval_network  # pylint: disable=g-import-not-at-top
  from stcnbuf.model import mod_resnet  # pylint: disable=g-import-not-at-top
  from stcnbuf.model import modules  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  # Both encoders load ImageNet weights from the network when built: random ones instead.
  build18 = mod_resnet.resnet18
  mod_resnet.resnet18 = lambda pretrained=True, **kw: build18(False, **kw)
  modules.models = types.SimpleNamespace(
      resnet50=lambda weights=None: torchvision.models.resnet50(weights=None))
  if device.type == "cpu":
    # `STCNInference.initialize` moves the first frame with `.cuda()`: a no-op without CUDA.
    torch.Tensor.cuda = lambda self, *a, **kw: self
  autocast = torch.amp.autocast(device.type, enabled=device.type == "cuda")
  stcn = eval_network.STCNInference(eval_network.STCN().to(device).eval(), 128, 2, 20,
                                    args.height).to(device).eval()
  frames, labels = inference.synthetic_video(args.warmup + args.frames, args.height,
                                             args.width, args.objects)

  def segment():
    with torch.inference_mode(), autocast:
      scripted = None
      for index, frame in enumerate(frames):
        if index == 0:
          masks = torch.stack([torch.as_tensor(labels == n, dtype=torch.float32)
                               for n in range(1, args.objects + 1)]).to(device)
          stcn.initialize(frame, masks)
          scripted = torch.jit.script(stcn)
          yield labels.astype(np.uint8)
          continue
        batch = torch.stack([stcn.im_transform(frame)]).to(device)
        probabilities = scripted.predict_batch(batch, add_last_to_memory=True, is_temp=False)
        yield torch.argmax(probabilities, dim=0)[0].cpu().numpy().astype(np.uint8)

  wall, cpu = _timed(segment())
  return {"variant": PEERS[2].variant, "dtype": "float32", "device": device.type,
          "threads": torch.get_num_threads(), "wall": wall, "cpu": cpu,
          "version": f"stcnbuf {_version('stcnbuf')}, torch {torch.__version__}"}


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "ours": run_ours, "cutie": run_cutie, "deaot": run_deaot, "stcn": run_stcn}


# ------------------------------------------------------------------ in the parent process
def child_command(model: str, dtype: str, args: argparse.Namespace) -> list[str]:
  """The command of one model's child process (run from the repository root)."""
  command = [sys.executable, "-m", "benchmarks.peers", f"--child={model}", f"--dtype={dtype}",
             f"--height={args.height}", f"--width={args.width}", f"--objects={args.objects}",
             f"--warmup={args.warmup}", f"--frames={args.frames}", f"--repeats={args.repeats}"]
  return command + (["--no_stages"] if args.no_stages else [])


def parse_result(stdout: str) -> dict[str, Any] | None:
  """The child's result from its stdout (its last `RESULT_PREFIX` line), None without one."""
  for line in reversed(stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  return None


def summarize(result: dict[str, Any], warmup: int) -> dict[str, float]:
  """Seconds per frame of a child's result, its first `warmup` frames left out: CPU (mean),
  wall (median and mean) and the cores its process kept busy."""
  wall, cpu = result["wall"][warmup:], result["cpu"][warmup:]
  if not wall:
    raise ValueError(f"no timed frame: {len(result['wall'])} frames, warm-up {warmup}")
  return {"cpu": sum(cpu) / len(cpu), "wall median": statistics.median(wall),
          "wall mean": sum(wall) / len(wall), "cores": sum(cpu) / sum(wall)}


def comparison(summary: dict[str, float], device: str) -> float:
  """The figure compared across models: CPU seconds per frame on a CPU, else wall seconds."""
  return summary["cpu"] if device == "cpu" else summary["wall median"]


def side_by_side(model: str, result: dict[str, Any], summary: dict[str, float],
                 args: argparse.Namespace, fastest: tuple[str, float] | None = None
                 ) -> tuple[list[Any], dict[str, dict[str, Any]], dict[str, Any]]:
  """(case parts, figures, params) of one model's "side by side" record; `fastest` = (the
  fastest peer's variant, its compared figure) adds ours' speed-up over it."""
  frame = f"{args.height}x{args.width}"
  figures = {"CPU time": records.figure(summary["cpu"], "s/frame"),
             "wall, median": records.figure(summary["wall median"], "s/frame"),
             "throughput": records.figure(1 / summary["wall mean"], "frames/s"),
             "cores busy": records.figure(summary["cores"], "")}
  params = {"model": model, "variant": result["variant"], "dtype": result["dtype"],
            "device": result["device"], "frame": frame, "objects": args.objects,
            "frames": args.frames, "warm-up": args.warmup, "version": result["version"]}
  if "threads" in result:
    params["threads"] = result["threads"]
  if fastest:
    params["fastest peer"] = fastest[0]
    figures["speed-up over fastest peer"] = records.figure(
        fastest[1] / comparison(summary, result["device"]), "x")
  return [model, result["dtype"], frame, f"{args.objects} obj"], figures, params


def stage_figures(result: dict[str, Any], summary: dict[str, float]
                  ) -> dict[str, dict[str, Any]]:
  """Figures of "our frame by stage": each piece's ms, the end-to-end frame (median wall) and
  the rest, and each one's share of the frame."""
  frame_ms = 1000 * summary["wall median"]
  pieces = {name: result["stages"][name] for name in ("embed", "matching", "head")}
  pieces["rest (host, fusion)"] = frame_ms - sum(pieces.values())
  figures = {"frame": records.figure(frame_ms, "ms")}
  for name, value in pieces.items():
    figures[name] = records.figure(value, "ms")
  for name, value in pieces.items():
    figures[f"{name} share"] = records.figure(100 * value / frame_ms, "%")
  return figures


def run_child(command: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
  """(the child's result or None, the tail of its output when it failed)."""
  try:
    done = subprocess.run(command, cwd=records.ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, f"timed out after {timeout:.0f} s"
  result = parse_result(done.stdout) if done.returncode == 0 else None
  if result is None:
    return None, f"exit {done.returncode}: " + (done.stdout + done.stderr)[-3000:]
  return result, ""


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="ours," + ",".join(peer.name for peer in PEERS),
                      help="Comma-separated: ours and peers among " +
                      ", ".join(peer.name for peer in PEERS) + ".")
  parser.add_argument("--dtypes", default="float32,bfloat16",
                      help="Comma-separated compute dtypes of ours (the peers run float32).")
  parser.add_argument("--height", type=int, default=480, help="Frame height.")
  parser.add_argument("--width", type=int, default=854, help="Frame width.")
  parser.add_argument("--objects", type=int, default=3, help="Objects in frame 0.")
  parser.add_argument("--warmup", type=int, default=2,
                      help="Frames left out at the start (the annotated one, compilation).")
  parser.add_argument("--frames", type=int, default=6, help="Timed frames after the warm-up.")
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls per piece of ours.")
  parser.add_argument("--no_stages", action="store_true", help="Skip ours' pieces.")
  parser.add_argument("--timeout", type=float, default=1800,
                      help="Seconds each child may run.")
  parser.add_argument("--list", action="store_true",
                      help="Only list the peers found and how to install the others.")
  parser.add_argument("--child", default="", choices=[""] + list(RUNNERS),
                      help=argparse.SUPPRESS)
  parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
  records.add_arguments(parser)
  args = parser.parse_args(argv)
  if args.child:
    result = RUNNERS[args.child](args)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0

  found, missing = discover()
  print("Peers found: " + (", ".join(peer.name for peer in found) or "none"))
  if missing:
    print(install_text(missing))
  if args.list:
    return 0
  run = records.Run(BENCHMARK, argv, write=not args.no_write, directory=args.results_dir)
  wanted = args.models.split(",")
  jobs = [("ours", dtype) for dtype in args.dtypes.split(",") if "ours" in wanted]
  jobs += [(peer.name, "float32") for peer in found if peer.name in wanted]
  done, failed = [], []
  for model, dtype in jobs:
    print(f"{model} {dtype}: running in a fresh process ...", flush=True)
    result, error = run_child(child_command(model, dtype, args), args.timeout)
    if result is None:
      print(f"{model} {dtype} failed: {error}", flush=True)
      failed.append(f"{model} {dtype}")
      continue
    summary = summarize(result, args.warmup)
    print(f"{model} {dtype}: {summary['cpu']:.3f} CPU s/frame, {summary['wall median']:.3f} "
          f"wall s/frame (median), {summary['cores']:.2f} cores busy", flush=True)
    if "stages" in result:
      print(f"{model} {dtype} pieces jitted alone (ms): " + ", ".join(
          f"{name} {value:.0f}" for name, value in result["stages"].items()), flush=True)
    done.append((model, result, summary))

  peer_rows = [(result["variant"], comparison(summary, result["device"]), result["device"])
               for model, result, summary in done if model != "ours"]
  note = ("Shared machine: CPU seconds per frame is the fairer figure (wall time grows with "
          "the other jobs' load). Peers' memories grow over a video (Cutie: every 5th frame "
          "up to 5; DeAOT: long-term every 5th frame; STCN: every frame up to 128), so their "
          f"per-frame cost after {args.warmup + args.frames} frames is a lower bound.")
  for model, result, summary in done:
    fastest = None
    if model == "ours":
      same = [(variant, value) for variant, value, device in peer_rows
              if (device == "cpu") == (result["device"] == "cpu")]
      fastest = min(same, key=lambda row: row[1]) if same else None
    parts, figures, params = side_by_side(model, result, summary, args, fastest)
    extra = result.get("note", "")
    run.append(parts, figures, kind="speed", table=SIDE_BY_SIDE, params=params,
               note=f"{extra}. {note}" if extra else note)
    if "stages" in result:
      run.append(["stages", result["dtype"], params["frame"], f"{args.objects} obj"],
                 stage_figures(result, summary), kind="speed", table=STAGES,
                 params={"dtype": result["dtype"], "frame": params["frame"],
                         "objects": args.objects, "repeats": args.repeats})
  if failed:
    print("Failed: " + ", ".join(failed))
  print(run.summary())
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
