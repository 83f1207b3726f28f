"""The paper's DAVIS 2017 setting: Xception-65 DeepLabv3+, 465x465 crops, 200k steps."""
from configs import common


def get_config():
  """The base config with `dataset.name = "davis2017/480p"`."""
  config = common.get_base_config()
  config.dataset.name = "davis2017/480p"
  return config
