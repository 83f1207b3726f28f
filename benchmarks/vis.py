"""MaskTrack R-CNN on the synthetic VIS validation set: AP with and without the tracking head,
and frames/s of whole-video inference at 360x640.

    python -m benchmarks.vis --workdir=/tmp/vis_synthetic [--config=configs/synthetic_vis.py]
        [--speed_frames=8] [--no_write] [--results_dir=DIR]

`--workdir` holds a training run of the config (`main.py --config=configs/synthetic_vis.py`).
Accuracy cases, all from the same checkpoint and detections: "masktrack" (the paper's
assignment, log p + log s + 2 IoU + 10 [same category]), "no_tracking_head" (the same without
log p: boxes and categories only) and "no_association" (every detection its own instance).
Speed case: `VideoSegmenter` on random 360x640 frames resized into `config.dataset.max_size`
= (640, 360) (the paper's test scale), compilation excluded (one warm-up video first).
Appends records to `benchmarks/results/vis.jsonl` (`benchmarks.records`).
"""
import dataclasses
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from benchmarks import records
from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import inference
from feelvos_jax.vis import metrics
from feelvos_jax.vis import train as vis_train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic_vis.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir of the config.")
_SPEED_FRAMES = flags.DEFINE_integer("speed_frames", 8, "Frames of the timed 360x640 video.")
_NO_WRITE = flags.DEFINE_bool("no_write", False, "Print only: append no record.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Where to append records.")

_VARIANTS = {"masktrack": {},
             "no_tracking_head": {"embedding_weight": 0.0},
             "no_association": {"embedding_weight": 0.0, "iou_weight": 0.0}}


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")
  run = records.Run("vis", sys.argv[1:], write=not _NO_WRITE.value, directory=_RESULTS_DIR.value)
  config = _CONFIG.value
  model = vis_train.build_model(config)
  variables, step = vis_train.restore_variables(config, _WORKDIR.value, model)
  builder = vis_train.load_builder(config)
  videos = list(vis_train.decoded_videos(builder, config.dataset.eval_split))
  truth = annotation_io.dataset_from_videos(videos, builder.info.metadata["categories"])
  base = vis_train.inference_config(config)
  params = {"dataset": config.dataset.name, "videos": len(videos), "step": step,
            "backbone": config.model.backbone}
  for name, changes in _VARIANTS.items():
    segmenter = inference.VideoSegmenter.from_model(
        model, variables, tuple(config.dataset.max_size), dataclasses.replace(base, **changes))
    results, _ = inference.segment_videos(segmenter, videos)
    scores = metrics.evaluate(truth, results)
    print(f"{name}:\n{metrics.format_table(scores)}")
    run.append([config.dataset.name, name], {k: records.figure(v) for k, v in scores.items()},
               kind="accuracy", table="accuracy", params=dict(params, variant=name))
  segmenter = inference.VideoSegmenter.from_model(model, variables, (640, 360), base)
  frames = np.random.default_rng(0).integers(0, 256, (_SPEED_FRAMES.value, 360, 640, 3),
                                             dtype=np.uint8)
  segmenter.segment(frames[:2], 0)  # Compiles.
  start = time.perf_counter()
  segmenter.segment(frames, 0)
  fps = len(frames) / (time.perf_counter() - start)
  print(f"{fps:.2f} frames/s at 360x640 ({config.model.backbone})")
  run.append([config.model.backbone, "360x640"], {"throughput": records.figure(fps, "frames/s")},
             kind="speed", table="speed",
             params={"backbone": config.model.backbone, "frames": len(frames),
                     "size": "360x640"})
  print(run.summary())


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
