r"""Segments your own videos with a trained model, frame by frame, as a stream.

  python -m feelvos_jax.segment --video=clip.mp4 --masks=clip_frame0.png \
      --workdir=/tmp/feelvos_synthetic --output=/tmp/clip_segmented
  python -m feelvos_jax.segment --videos=VIDEO_FOLDER --masks=MASK_FOLDER \
      --export=/tmp/feelvos_synthetic/export --output=DIR [--overwrite | --resume]
  python -m feelvos_jax.segment --video=clip.mp4 --masks=clip_frame0.png \
      --onnx=/tmp/feelvos_synthetic/export_onnx --output=/tmp/clip_segmented

--video: a video file (mp4, mov, webm, avi, mkv, ...; decoded by PyAV's FFmpeg) or a folder of
  frame images. --videos: a folder of such videos (files and frame folders), segmented in one
  process with one model, so videos of one frame size compile once; --masks then holds each
  video's masks as `<video>.png` or `<video>/`.
--masks: one PNG of the first frame's objects, a folder of `<frame>.png` for objects appearing
  later, or one folder of binary PNGs per object (`feelvos_jax/tools/given_masks.py`).
--workdir: a training workdir: its latest checkpoint, with the config saved beside it (any
  model a config names: FEELVOS, PML, CFBI options); --export: an inference bundle
  (`main.py --mode=export`; a video runs in its smallest bucket that holds it); --onnx: the
  ONNX models of `main.py --mode=export --config.export.format=onnx`, run by onnxruntime
  (`inference/onnx_export.py`; buckets as --export).
--output: masks, overlay mp4 and GIF, per-object CSV and a manifest per video
  (`feelvos_jax/tools/segment_outputs.py`); an output holding masks of the video is refused
  unless --overwrite or --resume.

Frames are decoded in a background thread, segmented by `inference.host_loop.run_video`
(memory flat in the video's length) and written by a separate process (masks, CSV, overlays:
`segment_outputs.OutputsProcess`), so decoding and writing overlap the device work. A
progress bar (frames/s, ETA) is drawn when stderr is a terminal; one summary line per video
and one for the run are printed. More objects than `model.max_objects` run in chunks. Bad
input ends the run with one line `error: ...` naming the file and frame at fault
(`--verbosity=1`: the traceback). Design notes: docs/own_videos.md.
"""
import collections
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import app
from absl import flags
import ml_collections

from feelvos_jax import console
from feelvos_jax import models
from feelvos_jax.inference import export
from feelvos_jax.inference import onnx_export
from feelvos_jax.inference import video_propagation
from feelvos_jax.tools import given_masks
from feelvos_jax.tools import segment_outputs
from feelvos_jax.tools import video_io
from feelvos_jax.training import checkpointing

DECODE_AHEAD = 8
"""Frames decoded ahead of the device (the decoding thread's queue)."""

WRITE_BEHIND = 16
"""Write calls (a frame's mask, its overlay) that may wait for the writing process."""

USER_ERRORS = (ValueError, OSError)
"""Bad input (video_io.VideoError, given_masks.MaskError, integrity.IntegrityError and bad
values are ValueErrors; missing files and segment_outputs.OutputExistsError OSErrors): the
command prints the message, which names the file, video or frame at fault, without a
traceback, unless --verbosity >= 1."""

FLAGS = flags.FlagValues()
"""This command's flags, apart from absl's global FLAGS (as `tools/data_check.py` does), so
that the flags of modules imported into the process (visualize's --video) never clash."""


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("video", None, "A video file or a folder of frame images.",
                      flag_values=flag_values)
  flags.DEFINE_string("videos", None, "A folder of videos (files and frame folders); --masks "
                      "holds <video>.png or <video>/ for each.", flag_values=flag_values)
  flags.DEFINE_string("masks", None, "Masks where objects first appear: a PNG (frame 0), a "
                      "folder of <frame>.png, or of <object>/<frame>.png.",
                      flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint and config.",
                      flag_values=flag_values)
  flags.DEFINE_string("export", None, "Inference bundle folder (main.py --mode=export).",
                      flag_values=flag_values)
  flags.DEFINE_string("onnx", None, "ONNX models folder (main.py --mode=export "
                      "--config.export.format=onnx), run with onnxruntime.",
                      flag_values=flag_values)
  flags.DEFINE_string("output", None, "Output folder.", flag_values=flag_values)
  flags.DEFINE_bool("overwrite", False, "Replace the masks an earlier run wrote.",
                    flag_values=flag_values)
  flags.DEFINE_bool("resume", False, "Finish an interrupted run of the same video, masks and "
                    "model: write only the masks not yet written.", flag_values=flag_values)
  flags.DEFINE_bool("overlay_video", True, "Write <video>_overlay.mp4 (every frame).",
                    flag_values=flag_values)
  flags.DEFINE_float("gif_seconds", 5.0, "Seconds of video in <video>_overlay.gif (0: none).",
                     flag_values=flag_values)
  flags.DEFINE_float("fps", 24.0, "Frame rate of frame folders (overlays, CSV times).",
                     flag_values=flag_values)


_define_flags(FLAGS)


@dataclasses.dataclass(frozen=True)
class Model:
  """A model ready to segment videos.

  Attributes:
    propagate: (frames, annotations, first_frame, object_ids, *, name) -> iterator of [H, W]
      labels (`VideoPropagator.propagate` / `ExportedModel.propagate`).
    config: the run's config.
    identity: what the manifest records: kind ("workdir", "export" or "onnx"), path,
      checkpoint step.
    description: one line for the summary.
  """
  propagate: Callable[..., Iterator[Any]]
  config: ml_collections.ConfigDict
  identity: dict[str, Any]
  description: str


def _describe(config: ml_collections.ConfigDict) -> str:
  model = config.model
  head = "PML" if model.head == "nearest_neighbor" else "FEELVOS"
  return f"{head}, {model.backbone} backbone"


def load_model(workdir: Optional[str] = None, export_dir: Optional[str] = None,
               onnx_dir: Optional[str] = None) -> Model:
  """The model of a training workdir (latest checkpoint, saved config), of a bundle or of
  ONNX models.

  Raises:
    ValueError: not exactly one given.
    FileNotFoundError: no checkpoint in the workdir, no bundle or models in the folder.
    integrity.IntegrityError: a checkpoint, bundle or model file does not match its checksum.
  """
  if sum(path is not None for path in (workdir, export_dir, onnx_dir)) != 1:
    raise ValueError("pass exactly one of --workdir (a training workdir), --export (an "
                     "inference bundle) and --onnx (ONNX models)")
  for kind, path, loader in (("export", export_dir, export.load),
                             ("onnx", onnx_dir, onnx_export.load)):
    if path is not None:
      bundle = loader(path)
      what = "bundle" if kind == "export" else "ONNX models"
      return Model(bundle.propagate, bundle.config,
                   {"kind": kind, "path": os.path.abspath(path),
                    "checkpoint_step": int(bundle.checkpoint_step)},
                   f"{what} {path} (step {bundle.checkpoint_step}; "
                   f"{_describe(bundle.config)})")
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"--workdir={workdir}: no checkpoints folder {directory} (train "
                            f"first: main.py --workdir={workdir})")
  checkpointer = checkpointing.Checkpointer(workdir, keep=1)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"--workdir={workdir}: no checkpoint in {directory}")
    config = ml_collections.ConfigDict(checkpointer.saved_config(step))
  finally:
    checkpointer.close()
  model = models.build_model(config.model)
  variables, step = checkpointing.restore_variables(config, workdir, model, step)
  propagator = video_propagation.propagator_from_config(model, variables, config)
  return Model(propagator.propagate, config,
               {"kind": "workdir", "path": os.path.abspath(workdir), "checkpoint_step": step},
               f"checkpoint step {step} of {workdir} ({_describe(config)})")


@dataclasses.dataclass(frozen=True)
class Job:
  """One video to segment: its source, the path of its masks and the masks read."""
  source: video_io.VideoSource
  masks_path: str
  masks: given_masks.GivenMasks


def video_paths(folder: str) -> list[str]:
  """The videos of a `--videos` folder: video files and folders of frame images, naturally
  sorted; hidden entries skipped."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--videos={folder}: no such folder")
  found = []
  for name in sorted(os.listdir(folder), key=video_io.natural_key):
    path = os.path.join(folder, name)
    if name.startswith("."):
      continue
    if video_io.is_video_file(path) or (os.path.isdir(path) and any(
        os.path.splitext(entry)[1].lower() in video_io.IMAGE_SUFFIXES
        for entry in os.listdir(path))):
      found.append(path)
  if not found:
    raise FileNotFoundError(f"--videos={folder}: no video files "
                            f"({', '.join(video_io.VIDEO_SUFFIXES)}) or frame folders in it")
  return found


def prepare_jobs(video: Optional[str], videos: Optional[str], masks: str,
                 fps: float = 24.0) -> list[Job]:
  """Every video of the run with its masks, all read and checked before any is segmented.

  Raises:
    ValueError: neither or both of `video` and `videos`; a video without masks.
    FileNotFoundError, video_io.VideoError, given_masks.MaskError: as `open_video` and
      `read_masks`, naming the file.
  """
  if (video is None) == (videos is None):
    raise ValueError("pass exactly one of --video (one video) and --videos (a folder of them)")
  if video is not None:
    source = video_io.open_video(video, fps)
    return [Job(source, masks, given_masks.read_masks(masks, source))]
  jobs, names = [], set()
  for path in video_paths(videos):
    source = video_io.open_video(path, fps)
    if source.name in names:
      raise ValueError(f"{path}: two videos of {videos} are named {source.name!r}")
    names.add(source.name)
    found = given_masks.find_masks(masks, source.name)
    if found is None:
      raise FileNotFoundError(f"video {source.name!r} ({path}) has no masks: expected "
                              f"{os.path.join(masks, source.name + '.png')} or the folder "
                              f"{os.path.join(masks, source.name)}")
    jobs.append(Job(source, found, given_masks.read_masks(found, source)))
  return jobs


class _FrameStream:
  """A job's frames for `propagate`: decoded `DECODE_AHEAD` ahead in a thread, each kept
  (`pending`) until its labels come back, counted, and ended at a decoding error (kept in
  `error`) so that every frame decoded before it is still segmented and written."""

  def __init__(self, source: video_io.VideoSource):
    self.pending: collections.deque = collections.deque()
    self.count = 0
    self.error: Optional[video_io.VideoError] = None
    self._frames = video_io.in_background(source.frames(), DECODE_AHEAD)

  def __iter__(self) -> Iterator[Any]:
    try:
      for frame in self._frames:
        self.pending.append(frame)
        self.count += 1
        yield frame
    except video_io.VideoError as error:
      self.error = error

  def close(self) -> None:
    self._frames.close()


@dataclasses.dataclass(frozen=True)
class VideoSummary:
  """What one video's run did: frames segmented, masks written and kept (resumed), seconds."""
  name: str
  frames: int
  written: int
  skipped: int
  objects: int
  seconds: float


def segment_video(model: Model, job: Job, output: str, *, overwrite: bool = False,
                  resume: bool = False, overlay_video: bool = True,
                  gif_seconds: float = 5.0) -> VideoSummary:
  """Segments one video into `output` (see `segment_outputs`).

  Raises:
    segment_outputs.OutputExistsError: the output holds masks of the video (see --resume).
    video_io.VideoError: a frame cannot be decoded (the masks of the frames before it are
      written, complete); given_masks.MaskError: a mask names a frame past the video's end.
  """
  source, masks = job.source, job.masks
  identity = segment_outputs.run_identity(source, job.masks_path, masks, model.identity)
  os.makedirs(output, exist_ok=True)
  # The writing (masks, CSV, overlays) runs in a process of its own, WRITE_BEHIND frames behind.
  outputs = segment_outputs.OutputsProcess(WRITE_BEHIND, output, source, masks, identity,
                                           overwrite=overwrite, resume=resume,
                                           overlay_video=overlay_video, gif_seconds=gif_seconds)
  stream = _FrameStream(source)
  bar = console.progress(total=source.num_frames, desc=source.name, unit="frame")
  start = time.perf_counter()
  try:
    failure = None
    try:
      labels_of_frames = model.propagate(iter(stream), masks.annotations, masks.first_frame,
                                         masks.object_ids, name=source.name)
      for index, labels in enumerate(labels_of_frames):
        frame = stream.pending.popleft()
        outputs.write_mask(index, labels)
        if outputs.draws_overlays:
          outputs.write_overlay(index, frame, labels)
        bar.update(1)
    except ValueError as error:  # `run_video`'s checks at the stream's end, restated below.
      failure = error
    beyond = masks.frames_beyond(stream.count)
    if stream.error is not None:
      raise stream.error
    if beyond:
      frame_index, path = beyond[0]
      raise given_masks.MaskError(f"{path}: names frame {frame_index}, but video "
                                  f"{source.name!r} ({source.path}) has {stream.count} frames"
                                  ) from failure
    if failure is not None:
      raise failure
    outputs.finish(stream.count)
  except BaseException:
    outputs.abort()
    raise
  finally:
    stream.close()
    bar.close()
  return VideoSummary(source.name, stream.count, outputs.written, outputs.skipped,
                      len(masks.object_ids), time.perf_counter() - start)


def video_line(summary: VideoSummary, output: str) -> str:
  """The summary line of one video."""
  rate = summary.frames / max(summary.seconds, 1e-9)
  kept = f", {summary.skipped} kept from the interrupted run" if summary.skipped else ""
  return (f"{summary.name}: {summary.frames} frames, {summary.objects} objects in "
          f"{console.format_duration(summary.seconds)} ({rate:.1f} frames/s); "
          f"{summary.written} masks written to {os.path.join(output, 'masks', summary.name)}"
          f"{kept}")


def run(video: Optional[str], videos: Optional[str], masks: str, output: str, *,
        workdir: Optional[str] = None, export_dir: Optional[str] = None,
        onnx_dir: Optional[str] = None, overwrite: bool = False, resume: bool = False,
        overlay_video: bool = True, gif_seconds: float = 5.0,
        fps: float = 24.0) -> list[VideoSummary]:
  """The command: reads every video's masks, loads the model, segments each video in turn and
  prints a line per video and a summary line. Arguments as the flags of the same names."""
  if overwrite and resume:
    raise ValueError("pass at most one of --overwrite and --resume")
  jobs = prepare_jobs(video, videos, masks, fps)
  model = load_model(workdir, export_dir, onnx_dir)
  summaries = []
  start = time.perf_counter()
  for job in jobs:
    summaries.append(segment_video(model, job, output, overwrite=overwrite, resume=resume,
                                   overlay_video=overlay_video, gif_seconds=gif_seconds))
    print(video_line(summaries[-1], output), flush=True)
  seconds = time.perf_counter() - start
  frames = sum(summary.frames for summary in summaries)
  print(f"Segmented {len(summaries)} video{'s' if len(summaries) != 1 else ''}, {frames} "
        f"frames in {console.format_duration(seconds)} ({frames / max(seconds, 1e-9):.1f} "
        f"frames/s) with {model.description}; outputs in {output}", flush=True)
  return summaries


def parse_flags(argv: list[str]) -> list[str]:
  """This command's `FLAGS` first, then absl's global flags (--verbosity, ...) from the rest;
  --help prints this module's docstring and flags."""
  if any(arg in ("-h", "--help", "--helpshort") for arg in argv[1:]):
    print(f"{__doc__}\nFlags:\n{FLAGS.get_help()}")
    sys.exit(0)
  try:
    return flags.FLAGS(FLAGS(argv, known_only=True), known_only=True)
  except flags.Error as error:
    sys.stderr.write(f"{error}\n\n{__doc__}\nFlags:\n{FLAGS.get_help()}\n")
    sys.exit(1)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  console.configure_logging(flags.FLAGS.verbosity)
  for name in ("masks", "output"):
    if FLAGS[name].value is None:
      raise app.UsageError(f"--{name} is required")
  if (FLAGS.video is None) == (FLAGS.videos is None):
    raise app.UsageError("pass exactly one of --video and --videos")
  if sum(FLAGS[name].value is not None for name in ("workdir", "export", "onnx")) != 1:
    raise app.UsageError("pass exactly one of --workdir, --export and --onnx")
  if FLAGS.overwrite and FLAGS.resume:
    raise app.UsageError("pass at most one of --overwrite and --resume")
  try:
    run(FLAGS.video, FLAGS.videos, FLAGS.masks, FLAGS.output, workdir=FLAGS.workdir,
        export_dir=FLAGS.export, onnx_dir=FLAGS.onnx, overwrite=FLAGS.overwrite,
        resume=FLAGS.resume,
        overlay_video=FLAGS.overlay_video, gif_seconds=FLAGS.gif_seconds, fps=FLAGS.fps)
  except USER_ERRORS as error:
    if flags.FLAGS.verbosity >= 1:
      raise
    sys.exit(f"error: {error}")


def cli() -> None:
  """The `feelvos-segment` console command (pyproject.toml): this module as a program."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
