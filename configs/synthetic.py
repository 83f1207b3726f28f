"""The README default: the tiny backbone on the built-in synthetic set, minutes on a CPU."""
from configs import common


def get_config():
  """The tiny backbone on `synthetic_vos/small`: small crops and batches, 600 steps."""
  config = common.get_base_config()
  config.batch_size = 8
  config.num_train_steps = 600  # Validation J&F 0.85 at 600 steps, ~17 CPU-minutes (BENCHMARKS.md).
  config.learning_rate = 3e-3
  config.log_every_steps = 50
  config.eval_every_steps = 300
  config.checkpoint_every_steps = 300
  config.num_eval_videos = 16

  config.optimizer.name = "adam"
  config.optimizer.weight_decay = 0.0
  config.optimizer.warmup_steps = 50
  config.optimizer.schedule = "cosine"
  config.optimizer.grad_clip_mode = "global"  # What the README's synthetic figures trained with.
  config.loss.hard_mining_ramp_steps = 300
  config.loss.triplet_margin = 3.0  # PML mode: J&F 0.828 at margin 0.3, 0.884 at 3 (BENCHMARKS.md).

  config.model.backbone = "tiny"
  config.model.decoder_channels = 64
  config.model.embedding_dim = 32
  config.model.max_objects = 5
  config.model.window = 7
  config.model.max_reference_pixels = 1024
  config.model.head_channels = 64
  config.model.head_kernel_size = 5
  config.model.freeze_backbone_batch_norm = False
  config.model.rde_affinity = "softmax"  # From scratch at 3e-3 the authors' "dot" diverged (docs/models.md).
  config.model.rde_norm = "inputs"  # Unscaled, the RDE grew ~3x per frame at inference (docs/models.md).

  config.dataset.name = "synthetic_vos/small"
  config.dataset.crop_size = (96, 96)
  config.dataset.min_scale = 0.9
  config.dataset.max_scale = 1.1
  config.dataset.max_frame_gap = 2
  config.dataset.shuffle_buffer = 64
  return config
