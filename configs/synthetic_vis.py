"""MaskTrack R-CNN on `synthetic_vis/small` with the tiny backbone: trains and scores on a CPU
with no download (`configs/ytvis.py` changed where a CPU demo needs it)."""
from configs import ytvis


def get_config():
  """The tiny model: 128x128 frames, Adam, 300 steps of 4 pairs."""
  config = ytvis.get_config()
  config.batch_size = 4
  config.num_train_steps = 300
  config.learning_rate = 2e-3
  config.log_every_steps = 25
  config.eval_every_steps = 0  # Only at the end (30 videos, a few CPU-minutes).
  config.checkpoint_every_steps = 100
  config.num_eval_videos = -1

  config.optimizer.name = "adam"
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "cosine"
  config.optimizer.decay_steps = ()
  config.optimizer.warmup_steps = 50

  config.model.backbone = "tiny"
  config.model.num_classes = 4  # disc, triangle, square, star.
  config.model.fpn_channels = 32
  config.model.fc_dim = 128
  config.model.mask_channels = 32

  config.targets.max_instances = 4

  config.dataset.name = "synthetic_vis/small"
  config.dataset.eval_split = "validation"
  config.dataset.max_size = (128, 128)
  return config
