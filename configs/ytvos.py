"""The paper's YouTube-VOS setting: Xception-65 DeepLabv3+, 465x465 crops, 200k steps."""
from configs import common


def get_config():
  """The base config for YouTube-VOS 2019: annotated every 5th frame, at most 6 objects."""
  config = common.get_base_config()
  config.dataset.name = "youtube_vos/2019"
  config.dataset.max_frame_gap = 5  # YouTube-VOS is annotated every 5th frame.
  config.eval_every_steps = 0  # Validation has first-frame masks only: score it on the official server.
  config.model.max_objects = 6
  return config
