"""The VIS dataset builders: `ytvis` on a fake YouTube-VIS folder (RLE and polygon annotations,
bad files refused naming video and frame, nothing left half-written), `synthetic_vis`, and the
training pair sampler."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from datasets.synthetic_vis import generator as vis_generator
from datasets.synthetic_vos import generator as vos_generator
from datasets.youtube_vis import youtube_vis_dataset_builder as ytvis_builder
from feelvos_jax.vis import annotations as annotation_io
from feelvos_jax.vis import input_pipeline
from tests import testing

H, W, T = 24, 32, 3


def _write_fake_folder(root, year="2019"):
  """Two train videos (one RLE instance, one polygon instance; one video with an absent frame)
  and one valid video without annotations. Returns the expected label maps per video."""
  base = os.path.join(root, f"youtube_vis_{year}")
  rng = np.random.default_rng(0)
  videos, annotations, expected = [], [], {}
  for video_id, name in ((1, "aaa"), (2, "bbb")):
    names = [f"{name}/{t:05d}.jpg" for t in range(T)]
    for file_name in names:
      os.makedirs(os.path.join(base, "train", "JPEGImages", name), exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
          os.path.join(base, "train", "JPEGImages", file_name))
    videos.append({"id": video_id, "height": H, "width": W, "length": T, "file_names": names})
    labels = np.zeros((T, H, W), np.uint8)
    rle_masks = []
    for t in range(T):
      mask = np.zeros((H, W), bool)
      mask[2 + t:10 + t, 3:12] = True
      rle_masks.append(None if (video_id == 2 and t == 1) else mask)
      if rle_masks[-1] is not None:
        labels[t][mask] = 1
    annotations.append({"id": 10 * video_id, "video_id": video_id, "category_id": 3,
                        "iscrowd": 0, "segmentations": [
                            None if m is None else annotation_io.encode(m) for m in rle_masks]})
    polygon = [[20.0, 12.0, 30.0, 12.0, 30.0, 20.0, 20.0, 20.0]]
    annotations.append({"id": 10 * video_id + 1, "video_id": video_id, "category_id": 1,
                        "iscrowd": 0, "segmentations": [polygon] * T})
    labels[:, 12:20, 20:30] = 2
    expected[name] = labels
  categories = [{"id": k, "name": f"category{k}"} for k in (1, 2, 3)]
  with open(os.path.join(base, "train", "instances.json"), "w") as file:
    json.dump({"videos": videos, "annotations": annotations, "categories": categories}, file)
  os.makedirs(os.path.join(base, "valid", "JPEGImages", "ccc"))
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
      os.path.join(base, "valid", "JPEGImages", "ccc", "00000.jpg"))
  with open(os.path.join(base, "valid", "valid.json"), "w") as file:
    json.dump({"videos": [{"id": 7, "height": H, "width": W, "length": 1,
                           "file_names": ["ccc/00000.jpg"]}], "categories": categories}, file)
  return base, expected


def test_youtube_vis_builder_reads_rle_and_polygons(tmp_path):
  _, expected = _write_fake_folder(tmp_path / "manual")
  builder = testing.build(ytvis_builder.Ytvis, tmp_path / "manual", tmp_path / "tfds", "2019")
  train = testing.examples(builder, "train")
  assert sorted(train) == ["aaa", "bbb"]
  for name, example in train.items():
    np.testing.assert_array_equal(example["video"]["segmentations"][..., 0], expected[name])
    assert example["instances"]["categories"].tolist() == [3, 1]
  assert train["bbb"]["video"]["id"] == 2
  validation = testing.examples(builder, "validation")
  assert validation["ccc"]["video"]["id"] == 7 and validation["ccc"]["instances"]["ids"].size == 0
  assert builder.info.metadata["categories"] == ["category1", "category2", "category3"]


@pytest.mark.parametrize("edit, message", [
    ("size", r"video 2 \(bbb\), frame 1: .* is 24x32, the annotation file says 24x40"),
    ("video", "unknown video id 9"),
    ("category", r"category 8 is not in the file's categories"),
])
def test_youtube_vis_builder_refuses_mismatched_files(tmp_path, edit, message):
  base, _ = _write_fake_folder(tmp_path / "manual")
  path = os.path.join(base, "train", "instances.json")
  with open(path) as file:
    data = json.load(file)
  if edit == "size":  # The file says 40 wide; frame 1 of bbb is 32 wide.
    Image.fromarray(np.zeros((H, 40, 3), np.uint8)).save(
        os.path.join(base, "train", "JPEGImages", "bbb", "00000.jpg"))
    data["videos"][1]["width"] = 40
    for annotation in data["annotations"]:
      if annotation["video_id"] == 2:
        annotation["segmentations"] = [None] * T
  elif edit == "video":
    data["annotations"][0]["video_id"] = 9
  else:
    data["annotations"][1]["category_id"] = 8
  with open(path, "w") as file:
    json.dump(data, file)
  with pytest.raises(annotation_io.AnnotationError, match=message):
    testing.build(ytvis_builder.Ytvis, tmp_path / "manual", tmp_path / "tfds", "2019")
  left = list((tmp_path / "tfds").rglob("*.tfrecord*")) if (tmp_path / "tfds").exists() else []
  assert not left, f"half-written records left: {left}"


def test_synthetic_vis_videos_and_training_pairs():
  params = vos_generator.VideoParams(height=64, width=64, num_frames=6, max_objects=3,
                                     use_photos=False)
  first = vis_generator.generate_video(params, (0, 0, 3), True, True)
  again = vis_generator.generate_video(params, (0, 0, 3), True, True)
  np.testing.assert_array_equal(first.frames, again.frames)
  assert set(first.categories) <= set(range(1, len(vis_generator.CATEGORIES) + 1))
  present = [(first.segmentation == j + 1).any(axis=(1, 2)) for j in range(len(first.categories))]
  assert any(not p[0] for p in present)  # The late instance is absent from frame 0.
  video = {"video": {"frames": first.frames, "segmentations": first.segmentation[..., None]},
           "instances": {"categories": first.categories}}
  pair = input_pipeline.sample_pair(video, np.random.default_rng(1), (64, 64), 4,
                                    flip_probability=0.0)
  assert pair["image"].shape == (64, 64, 3) and pair["masks"].shape == (64, 64, 4)
  for g in np.flatnonzero(pair["labels"]):
    rows, cols = np.nonzero(pair["masks"][..., g])
    np.testing.assert_array_equal(pair["boxes"][g], [cols.min(), rows.min(), cols.max() + 1,
                                                     rows.max() + 1])
    reference = pair["reference_index"][g]
    if reference:  # The same instance: same category in the reference slot.
      assert pair["reference_labels"][reference - 1] == pair["labels"][g]


def test_instance_strip_colours_each_identity():
  from feelvos_jax.vis import draw  # pylint: disable=g-import-not-at-top
  frames = np.zeros((2, 20, 30, 3), np.uint8)
  masks = [np.zeros((20, 30), bool) for _ in range(2)]
  masks[0][2:8, 2:8] = True
  masks[1][10:18, 15:25] = True
  instances = [{"category_id": 1, "score": 0.9,
                "segmentations": [annotation_io.encode(masks[0]), None]},
               {"category_id": 2, "segmentations": [annotation_io.encode(masks[1])] * 2}]
  strip = draw.instance_strip(frames, instances, ["disc", "triangle"])
  assert strip.shape == (20, 60, 3)
  assert tuple(strip[5, 5]) != tuple(strip[14, 20]) and strip[14, 20].any()
  assert not strip[5, 35].any() and strip[14, 50].any()  # Instance 0 absent from frame 1.
