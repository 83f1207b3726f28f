"""`python -m feelvos_jax.segment`: your own videos (files and frame folders) from given masks.

The model is `testing.small_config`'s with random weights, saved as a training checkpoint (and
exported once for the bundle test); videos are 32x32 and written by the tests with PyAV.
"""
import csv
import fractions
import json
import os
import subprocess
import sys
import threading

import av
import numpy as np
from PIL import Image
import pytest

from datasets import palette
from feelvos_jax.inference import export
from feelvos_jax.tools import given_masks
from feelvos_jax.tools import segment
from feelvos_jax.tools import segment_outputs
from feelvos_jax.tools import video_io
from tests import testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir holding one checkpoint (step 5) of the small model."""
  config, model, variables, _, _ = testing.shared_setup()
  path = tmp_path_factory.mktemp("workdir")
  testing.save_checkpoint(config, model, variables, path, 5)
  return str(path)


def write_mp4(path, frames, fps=10, faststart=False):
  """Writes [T, H, W, 3] uint8 frames as an H.264 mp4 with PyAV (moov atom first if
  `faststart`, so that a truncated copy still opens)."""
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  options = {"movflags": "faststart"} if faststart else {}
  with av.open(str(path), "w", format="mp4", options=options) as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return str(path)


def write_png(path, labels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  palette.palette_image(np.asarray(labels, np.uint8)).save(path)
  return str(path)


def read_masks(folder):
  names = sorted(os.listdir(folder))
  masks = []
  for name in names:
    with Image.open(os.path.join(folder, name)) as image:
      assert image.mode == "P"
      masks.append(np.asarray(image))
  return [name[:-4] for name in names], np.stack(masks)


def _video(num_frames=8, num_objects=2, seed=0, appear=None):
  frames, labels, first = testing.make_video(num_frames, num_objects, seed=seed, appear=appear)
  return frames, labels.astype(np.uint8), first


def test_video_file_gives_masks_overlays_csv_and_manifest(workdir, tmp_path, capsys):
  frames, labels, _ = _video()
  video = write_mp4(tmp_path / "clip.mp4", frames)
  given = np.select([labels[0] == 1, labels[0] == 2], [3, 9], 0)  # Any ids 1..254.
  masks = write_png(tmp_path / "clip.png", given)
  output = tmp_path / "out"
  summaries = segment.run(video, None, masks, str(output), workdir=workdir)
  assert [(s.name, s.frames, s.written, s.objects) for s in summaries] == [("clip", 8, 8, 2)]
  names, predicted = read_masks(output / "masks" / "clip")
  assert names == [f"{t:05d}" for t in range(8)]
  np.testing.assert_array_equal(predicted[0], given)
  assert set(np.unique(predicted)) <= {0, 3, 9}
  with av.open(str(output / "clip_overlay.mp4")) as container:
    assert sum(1 for _ in container.decode(video=0)) == 8
  with Image.open(output / "clip_overlay.gif") as gif:
    assert gif.n_frames == 8 and gif.size == (32, 32)
  with open(output / "clip_objects.csv") as file:
    rows = list(csv.DictReader(file))
  assert len(rows) == 16 and rows[0]["frame_name"] == "00000" and rows[1]["time_s"] == "0.000"
  first_box = np.argwhere(given == int(rows[0]["object_id"]))
  assert int(rows[0]["area"]) == len(first_box)
  assert (int(rows[0]["y_min"]), int(rows[0]["x_min"])) == tuple(first_box.min(axis=0))
  manifest = json.loads((output / "clip_manifest.json").read_text())
  assert manifest["complete"] and manifest["frames"] == 8
  assert manifest["model"] == {"kind": "workdir", "path": workdir, "checkpoint_step": 5}
  assert sorted(p.name for p in output.iterdir()) == [
      "clip_manifest.json", "clip_objects.csv", "clip_overlay.gif", "clip_overlay.mp4",
      "masks"]  # No temporary file left.
  printed = capsys.readouterr().out
  assert "clip: 8 frames, 2 objects" in printed
  assert "Segmented 1 video, 8 frames" in printed and "checkpoint step 5" in printed


def _frame_folder_with_late_masks(tmp_path):
  """A folder img_1.png .. img_7.png (natural order) and masks by name (frame img_1) and by
  index (3: frame img_4, where object 2 appears); returns (folder, masks, labels)."""
  frames, labels, _ = _video(num_frames=7, num_objects=2, seed=1, appear=[0, 3])
  folder = tmp_path / "walk"
  folder.mkdir()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"img_{t + 1}.png")
  write_png(tmp_path / "masks" / "img_1.png", labels[0])
  write_png(tmp_path / "masks" / "3.png", labels[3])
  return str(folder), str(tmp_path / "masks"), labels


def test_frame_folder_with_masks_on_later_frames(workdir, tmp_path):
  folder, masks, labels = _frame_folder_with_late_masks(tmp_path)
  segment.run(folder, None, masks, str(tmp_path / "out"), workdir=workdir)
  names, predicted = read_masks(tmp_path / "out" / "masks" / "walk")
  assert sorted(names) == sorted(f"img_{t + 1}" for t in range(7))
  predicted = predicted[[names.index(f"img_{t + 1}") for t in range(7)]]
  assert not (predicted[:3] == 2).any()
  np.testing.assert_array_equal(predicted[3] == 2, labels[3] == 2)
  with open(tmp_path / "out" / "walk_objects.csv") as file:
    rows = [(row["frame_name"], row["object_id"]) for row in csv.DictReader(file)]
  assert rows[:4] == [("img_1", "1"), ("img_2", "1"), ("img_3", "1"), ("img_4", "1")]
  assert rows[4] == ("img_4", "2") and len(rows) == 3 + 2 * 4


@pytest.mark.slow
def test_a_bundle_gives_the_masks_of_the_workdir(workdir, tmp_path):
  folder, masks, _ = _frame_folder_with_late_masks(tmp_path)
  config = testing.small_config()
  config.export.buckets, config.export.platforms = ((32, 32, 5),), ("cpu",)
  config.export.max_reference_frames = 2
  bundle = export.export(config, workdir, str(tmp_path / "bundle"))
  segment.run(folder, None, masks, str(tmp_path / "in_process"), workdir=workdir)
  [summary] = segment.run(folder, None, masks, str(tmp_path / "from_bundle"),
                          export_dir=str(bundle))
  assert summary.frames == 7
  np.testing.assert_array_equal(read_masks(tmp_path / "from_bundle" / "masks" / "walk")[1],
                                read_masks(tmp_path / "in_process" / "masks" / "walk")[1])
  manifest = json.loads((tmp_path / "from_bundle" / "walk_manifest.json").read_text())
  assert manifest["model"] == {"kind": "export", "path": str(bundle), "checkpoint_step": 5}


def test_per_object_binary_masks_name_the_objects(workdir, tmp_path):
  """One binary PNG per object, saved as 0/255 'L' images; "cat" appears at frame 2."""
  frames, labels, first = _video(num_frames=5, num_objects=3, seed=2, appear=[0, 0, 2])
  video = write_mp4(tmp_path / "zoo.mp4", frames)
  names = ["bee", "ant", "cat"]  # Object n + 1 is names[n]; ids follow the sorted names.
  for number, (name, appear) in enumerate(zip(names, first), start=1):
    mask = labels[appear] == number
    assert mask.any()
    os.makedirs(tmp_path / "masks" / name)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(
        tmp_path / "masks" / name / f"{appear}.png")
  [summary] = segment.run(video, None, str(tmp_path / "masks"), str(tmp_path / "out"),
                          workdir=workdir, overlay_video=False, gif_seconds=0)
  assert summary.objects == 3
  _, predicted = read_masks(tmp_path / "out" / "masks" / "zoo")
  np.testing.assert_array_equal(predicted[0], np.select([labels[0] == 2, labels[0] == 1],
                                                        [1, 2], 0))  # ant: 1, bee: 2.
  assert 3 not in predicted[:2]
  with open(tmp_path / "out" / "zoo_objects.csv") as file:
    objects = {(row["object_id"], row["object_name"]) for row in csv.DictReader(file)}
  assert objects == {("1", "ant"), ("2", "bee"), ("3", "cat")}
  assert not (tmp_path / "out" / "zoo_overlay.mp4").exists()


@pytest.mark.slow
def test_more_objects_than_max_objects_run_in_chunks(workdir, tmp_path):
  """Six objects with ids up to 250 where the model has 5 slots: two chunks, not refused."""
  frames, labels, first = _video(num_frames=4, num_objects=6, seed=9, appear=[0] * 6)
  ids = np.array([0, 10, 20, 30, 40, 100, 250], np.uint8)
  video = write_mp4(tmp_path / "many.mp4", frames)
  masks = write_png(tmp_path / "many.png", ids[labels[0]])
  [summary] = segment.run(video, None, masks, str(tmp_path / "out"), workdir=workdir)
  assert summary.objects == 6
  _, predicted = read_masks(tmp_path / "out" / "masks" / "many")
  np.testing.assert_array_equal(predicted[0], ids[labels[0]])
  assert set(np.unique(predicted)) <= set(ids.tolist())


def test_a_mask_of_another_size_is_resized_with_a_warning(workdir, tmp_path, caplog):
  frames, labels, _ = _video(num_frames=3, num_objects=1, seed=3)
  video = write_mp4(tmp_path / "small.mp4", frames)
  large = np.kron(labels[0], np.ones((2, 2), np.uint8))  # 64x64 for 32x32 frames.
  masks = write_png(tmp_path / "large.png", large)
  segment.run(video, None, masks, str(tmp_path / "out"), workdir=workdir)
  assert f"{masks}: mask is 64x64, the frames of video 'small' are 32x32" in caplog.text
  _, predicted = read_masks(tmp_path / "out" / "masks" / "small")
  np.testing.assert_array_equal(predicted[0], labels[0])


def test_a_videos_folder_segments_each_video_compiling_once(workdir, tmp_path):
  videos, masks = tmp_path / "videos", tmp_path / "masks"
  videos.mkdir()
  for seed, name in enumerate(["b_clip", "a_frames"]):
    frames, labels, _ = _video(num_frames=4, num_objects=2, seed=10 + seed)
    if name == "b_clip":
      write_mp4(videos / "b_clip.mp4", frames)
      write_png(masks / "b_clip.png", labels[0])
    else:
      (videos / name).mkdir()
      for t, frame in enumerate(frames):
        Image.fromarray(frame).save(videos / name / f"{t:03d}.jpg", quality=95)
      write_png(masks / name / "000.png", labels[0])
  (videos / "notes.txt").write_text("not a video")
  with testing.count_traces() as traces:
    summaries = segment.run(None, str(videos), str(masks), str(tmp_path / "out"),
                            workdir=workdir)
  assert [s.name for s in summaries] == ["a_frames", "b_clip"]
  assert traces["propagation_step"] <= 1  # Both 32x32 with 2 objects: one compilation.
  (videos / "c_clip.mp4").write_bytes((videos / "b_clip.mp4").read_bytes())
  with pytest.raises(FileNotFoundError, match="video 'c_clip'.*has no masks.*c_clip.png"):
    segment.run(None, str(videos), str(masks), str(tmp_path / "other"), workdir=workdir)
  assert not (tmp_path / "other").exists()


def test_bad_videos_and_masks_are_refused_naming_the_file(workdir, tmp_path):
  frames, labels, _ = _video(num_frames=4, num_objects=1, seed=4)
  masks = write_png(tmp_path / "m.png", labels[0])
  not_a_video = tmp_path / "notes.mp4"
  not_a_video.write_text("hello")
  with pytest.raises(video_io.VideoError, match=f"{not_a_video}: not a video file"):
    segment.run(str(not_a_video), None, masks, str(tmp_path / "out"), workdir=workdir)
  video = write_mp4(tmp_path / "clip.mp4", frames)
  late = write_png(tmp_path / "late" / "20.png", labels[0])
  with pytest.raises(given_masks.MaskError, match=f"{late}: names frame 20, but video 'clip'"):
    segment.run(video, None, str(tmp_path / "late"), str(tmp_path / "out"), workdir=workdir)
  rgb = tmp_path / "rgb.png"
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb)
  with pytest.raises(given_masks.MaskError, match=f"{rgb}: mask PNG in mode 'RGB'"):
    segment.run(video, None, str(rgb), str(tmp_path / "out"), workdir=workdir)
  with pytest.raises(FileNotFoundError, match="no checkpoints folder"):
    segment.run(video, None, masks, str(tmp_path / "out"), workdir=str(tmp_path / "none"))
  assert not (tmp_path / "out").exists()


def test_a_truncated_video_keeps_the_masks_written_complete(workdir, tmp_path):
  frames, labels, _ = _video(num_frames=24, num_objects=1, seed=5)
  full = write_mp4(tmp_path / "full.mp4", frames, faststart=True)
  data = open(full, "rb").read()
  truncated = tmp_path / "cut.mp4"
  truncated.write_bytes(data[:len(data) // 2])
  masks = write_png(tmp_path / "m.png", labels[0])
  with pytest.raises(video_io.VideoError, match=rf"{truncated}: (frame \d+ cannot be decoded"
                                                 rf"|the stream ends at frame \d+)"):
    segment.run(str(truncated), None, masks, str(tmp_path / "out"), workdir=workdir)
  names, predicted = read_masks(tmp_path / "out" / "masks" / "cut")  # Every PNG opens.
  assert 0 < len(names) < 24 and names == [f"{t:05d}" for t in range(len(names))]
  manifest = json.loads((tmp_path / "out" / "cut_manifest.json").read_text())
  assert not manifest["complete"] and manifest["masks_written"] == len(names)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cut_manifest.json", "masks"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(workdir, tmp_path,
                                                                monkeypatch):
  frames, labels, first = _video(num_frames=10, num_objects=2, seed=6, appear=[0, 4])
  video = write_mp4(tmp_path / "clip.mp4", frames)
  for t in sorted(set(first)):
    write_png(tmp_path / "masks" / f"{t}.png", labels[t])
  masks = str(tmp_path / "masks")
  segment.run(video, None, masks, str(tmp_path / "reference"), workdir=workdir)
  original_write = segment_outputs.OutputsProcess.write_mask

  def interrupted(self, index, labels):  # Ctrl-C in the main process at frame 6.
    if index == 6:
      raise KeyboardInterrupt
    original_write(self, index, labels)

  monkeypatch.setattr(segment_outputs.OutputsProcess, "write_mask", interrupted)
  output = str(tmp_path / "out")
  with pytest.raises(KeyboardInterrupt):
    segment.run(video, None, masks, output, workdir=workdir)
  monkeypatch.setattr(segment_outputs.OutputsProcess, "write_mask", original_write)
  assert len(os.listdir(os.path.join(output, "masks", "clip"))) == 6
  assert sorted(os.listdir(output)) == ["clip_manifest.json", "masks"]  # No temporary left.
  with pytest.raises(segment_outputs.OutputExistsError, match="pass --resume"):
    segment.run(video, None, masks, output, workdir=workdir)
  [summary] = segment.run(video, None, masks, output, workdir=workdir, resume=True)
  assert (summary.written, summary.skipped) == (4, 6)
  np.testing.assert_array_equal(read_masks(os.path.join(output, "masks", "clip"))[1],
                                read_masks(tmp_path / "reference" / "masks" / "clip")[1])
  assert (tmp_path / "out" / "clip_objects.csv").read_text() == (
      tmp_path / "reference" / "clip_objects.csv").read_text()
  write_png(tmp_path / "other" / "0.png", labels[0])
  with pytest.raises(segment_outputs.OutputExistsError, match="made by another run.*masks"):
    segment.run(video, None, str(tmp_path / "other"), output, workdir=workdir, resume=True)


def test_overwrite_replaces_the_masks_and_drops_those_of_missing_frames(workdir, tmp_path):
  frames, labels, _ = _video(num_frames=6, num_objects=1, seed=7)
  masks = write_png(tmp_path / "m.png", labels[0])
  write_mp4(tmp_path / "long" / "clip.mp4", frames)
  write_mp4(tmp_path / "short" / "clip.mp4", frames[:3])
  output = str(tmp_path / "out")
  segment.run(str(tmp_path / "long" / "clip.mp4"), None, masks, output, workdir=workdir)
  with pytest.raises(ValueError, match="at most one of --overwrite and --resume"):
    segment.run(str(tmp_path / "short" / "clip.mp4"), None, masks, output, workdir=workdir,
                overwrite=True, resume=True)
  segment.run(str(tmp_path / "short" / "clip.mp4"), None, masks, output, workdir=workdir,
              overwrite=True)
  assert sorted(os.listdir(os.path.join(output, "masks", "clip"))) == [
      "00000.png", "00001.png", "00002.png"]


def test_in_background_keeps_order_reraises_and_stops_when_closed():
  def numbers():
    yield from range(5)
    raise video_io.VideoError("frame 5 is broken")

  received = []
  with pytest.raises(video_io.VideoError, match="frame 5"):
    for item in video_io.in_background(numbers(), size=2):
      received.append(item)
  assert received == [0, 1, 2, 3, 4]
  endless = video_io.in_background(iter(int, 1), size=2)  # iter(int, 1): zeros forever.
  assert next(endless) == 0
  endless.close()
  assert not [t for t in threading.enumerate() if t.name == "in_background"]
  assert sorted(["f10", "f2", "f1"], key=video_io.natural_key) == ["f1", "f2", "f10"]


@pytest.mark.slow
def test_the_command_prints_a_summary_and_a_one_line_error(workdir, tmp_path):
  frames, labels, _ = _video(num_frames=4, num_objects=1, seed=8)
  video = write_mp4(tmp_path / "clip.mp4", frames)
  masks = write_png(tmp_path / "m.png", labels[0])
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([REPOSITORY] + [p for p in [env.get("PYTHONPATH")] if p])

  def command(*args):
    return subprocess.run([sys.executable, "-m", "feelvos_jax.segment", f"--video={video}",
                           f"--masks={masks}", f"--workdir={workdir}", *args], cwd=REPOSITORY,
                          env=env, capture_output=True, text=True, timeout=600)

  result = command(f"--output={tmp_path / 'out'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1].startswith("Segmented 1 video, 4 frames in ")
  assert "orbax" not in result.stderr.lower() and "I1" not in result.stderr  # No library INFO.
  again = command(f"--output={tmp_path / 'out'}")
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'out' / 'masks' / 'clip'} already holds 4 masks of video 'clip': "
      f"pass --resume to finish that run or --overwrite to replace it (nothing was written)")
