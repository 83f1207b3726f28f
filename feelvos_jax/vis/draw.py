"""Pictures of video instance segmentation: frames with each instance's mask, box and label.

    strip = draw.instance_strip(frames, instances, ["disc", "triangle", "square", "star"])
    PIL.Image.fromarray(strip).save("video.png")

`instances` is one video's entries of a results file (or ground truth in the same form, e.g.
`annotations.dataset_from_videos(...)["annotations"]` of one video): each with category_id,
segmentations (compressed RLE or None per frame) and optionally score. Instance k (its
identity) has one colour in every frame, so a switch of identities shows as a colour change.
"""
import colorsys

import numpy as np
from PIL import Image
from PIL import ImageDraw

from feelvos_jax.vis import annotations as annotation_io


def identity_colour(index: int) -> tuple[int, int, int]:
  """A saturated RGB colour for identity `index` (golden-ratio hues: neighbours differ)."""
  red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 1.0)
  return int(255 * red), int(255 * green), int(255 * blue)


def instance_strip(frames: np.ndarray, instances: list[dict], category_names: list[str],
                   frame_indices: list[int] | None = None, alpha: float = 0.5) -> np.ndarray:
  """[H, F * W, 3] uint8: the chosen frames (default all) of frames [T, H, W, 3] side by side,
  each instance's mask blended in its identity colour, its box drawn and labelled
  "<identity>: <category>[ <score>]"."""
  num_frames, height, width = frames.shape[:3]
  frame_indices = list(range(num_frames)) if frame_indices is None else frame_indices
  pictures = []
  for t in frame_indices:
    picture = frames[t].astype(np.float32)
    boxes = []
    for identity, instance in enumerate(instances):
      rle = instance["segmentations"][t]
      if rle is None:
        continue
      mask = annotation_io.decode(rle, height, width)
      if not mask.any():
        continue
      colour = np.asarray(identity_colour(identity), np.float32)
      picture[mask] = (1 - alpha) * picture[mask] + alpha * colour
      rows, cols = np.nonzero(mask)
      label = f"{identity}: {category_names[instance['category_id'] - 1]}"
      if "score" in instance:
        label += f" {instance['score']:.2f}"
      boxes.append((identity, (cols.min(), rows.min(), cols.max(), rows.max()), label))
    image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    canvas = ImageDraw.Draw(image)
    for identity, box, label in boxes:
      canvas.rectangle(box, outline=identity_colour(identity))
      canvas.text((box[0] + 1, box[1] + 1), label, fill=identity_colour(identity))
    pictures.append(np.asarray(image))
  return np.concatenate(pictures, axis=1)
