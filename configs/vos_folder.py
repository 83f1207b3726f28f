"""Your own videos (the `vos_folder` builder) with the tiny model of configs/synthetic.py.

  python main.py --config=configs/vos_folder.py --config.dataset.manual_dir=FOLDER --workdir=DIR

FOLDER holds JPEGImages/<video>/*.jpg and Annotations/<video>/*.png (datasets/vos_folder/). The
tiny backbone trains on a CPU in minutes to hours; for the paper's model on a GPU or TPU, add
--config.model.backbone=xception65 and the paper's sizes from configs/common.py.
"""
from configs import synthetic


def get_config():
  """configs/synthetic.py's tiny model and schedule on `vos_folder`, with larger crops."""
  config = synthetic.get_config()
  config.dataset.name = "vos_folder"
  config.dataset.crop_size = (192, 192)  # Real frames (e.g. 480p) need more context than 96x96.
  config.dataset.min_scale = 0.5  # Down to half size: large objects still fit a crop.
  config.dataset.max_scale = 1.0
  config.dataset.max_frame_gap = 1
  config.num_eval_videos = -1  # Every validation video (a folder has few).
  config.model.max_objects = 5  # More objects in a video run in chunks at inference.
  return config
