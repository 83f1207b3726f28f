"""MaskTrack R-CNN on YouTube-VIS 2019 (Yang, Fan, Xu, ICCV 2019; the authors' mmdetection
config `masktrack_rcnn_r50_fpn_1x_youtubevos.py`). `main.py` runs it with the VIS loop
(`feelvos_jax/vis/train.py`) because `config.task == "vis"`.

  python main.py --config=configs/ytvis.py --config.dataset.manual_dir=$HOME/data --workdir=DIR
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The paper's setting, one knob per line with its value in the comment."""
  config = ml_collections.ConfigDict()
  config.task = "vis"  # Video instance segmentation: main.py runs feelvos_jax/vis/train.py.

  # --- Training loop ---
  config.seed = 0  # Parameters, data order, pair sampling and RoI sampling.
  config.batch_size = 8  # Global batch of (query, reference) pairs (paper: imgs_per_gpu 8).
  config.num_train_steps = 31_000  # Paper: 12 epochs (about 31k steps of 8 pairs).
  config.learning_rate = 0.005  # Paper: SGD lr 0.005.
  config.log_every_steps = 50  # Paper: log interval 50.
  config.eval_every_steps = 0  # Evaluation every N steps (0: at the end only).
  config.checkpoint_every_steps = 2_600  # About one epoch (paper: a checkpoint per epoch).
  config.keep_checkpoints = 3  # Most recent checkpoints kept.
  config.num_eval_videos = -1  # Validation videos evaluated (-1: all).

  # --- Optimizer ---
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # Paper: SGD.
  config.optimizer.momentum = 0.9  # Paper: momentum 0.9.
  config.optimizer.weight_decay = 1e-4  # Paper: weight decay 1e-4.
  config.optimizer.grad_clip_norm = 35.0  # Paper: grad_clip max_norm 35 (L2, global).
  config.optimizer.grad_clip_mode = "global"  # Paper: one norm over all gradients.
  config.optimizer.schedule = "constant"  # Paper: step decay (decay_steps); or "cosine".
  config.optimizer.decay_steps = (20_700, 28_500)  # Paper: lr x0.1 at epochs 8 and 11 of 12.
  config.optimizer.warmup_steps = 500  # Paper: linear warm-up over 500 steps from lr / 3.

  # --- Model ---
  config.model = ml_collections.ConfigDict()
  config.model.backbone = "resnet50"  # Paper: ResNet-50 from COCO Mask R-CNN (model.pretrained: ImageNet).
  config.model.num_classes = 40  # YouTube-VIS categories (paper: 40, plus background).
  config.model.fpn_channels = 256  # Paper: FPN out_channels 256.
  config.model.fc_dim = 1024  # Paper: box head and tracking head fc_out_channels 1024.
  config.model.mask_channels = 256  # Paper: FCN mask head conv_out_channels 256.
  config.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16".
  config.model.pretrained = ""  # torchvision ResNet .npz into the backbone (paper: COCO Mask R-CNN).

  # --- Targets (train_cfg) ---
  config.targets = ml_collections.ConfigDict()
  config.targets.rpn_samples = 64  # Paper: RPN sampler num 64.
  config.targets.rpn_positive_fraction = 0.5  # Paper: RPN pos_fraction 0.5.
  config.targets.rcnn_samples = 128  # Paper: R-CNN sampler num 128.
  config.targets.rcnn_positive_fraction = 0.25  # Paper: R-CNN pos_fraction 0.25.
  config.targets.max_instances = 10  # Box slots per frame (instances beyond are dropped).

  # --- Inference (test_cfg, match_coeff) ---
  config.inference = ml_collections.ConfigDict()
  config.inference.proposals = 200  # Paper: rpn nms_pre = nms_post = max_num = 200.
  config.inference.score_threshold = 0.05  # Paper: rcnn score_thr 0.05.
  config.inference.nms_threshold = 0.5  # Paper: rcnn nms iou_thr 0.5.
  config.inference.max_detections = 10  # Paper: max_per_img 10.
  config.inference.embedding_weight = 1.0  # Paper: 1 on log p (0: boxes and categories only).
  config.inference.score_weight = 1.0  # Paper: alpha (match_coeff[0]) on log s.
  config.inference.iou_weight = 2.0  # Paper: beta (match_coeff[1]) on IoU with the last box.
  config.inference.category_weight = 10.0  # Paper: gamma (match_coeff[2]) on [same category].

  # --- Data ---
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "ytvis/2019"  # TFDS name/config (datasets/youtube_vis).
  config.dataset.data_dir = ""  # TFDS data dir ("": ~/tensorflow_datasets).
  config.dataset.manual_dir = ""  # Folder holding youtube_vis_2019/ (README).
  config.dataset.train_split = "train"  # Split used for training.
  config.dataset.eval_split = "validation"  # Split evaluated (YouTube-VIS: no public truth).
  config.dataset.max_size = (640, 360)  # Paper: img_scale (640, 360), keep ratio, padded to x32.
  config.dataset.flip_probability = 0.5  # Paper: flip_ratio 0.5 (both frames of a pair).
  config.dataset.shuffle_buffer = 64  # Videos in the tf.data shuffle buffer.

  # --- Export (main.py --mode=export, feelvos_jax/vis/export.py) ---
  config.export = ml_collections.ConfigDict()
  config.export.platforms = ("cpu", "cuda", "tpu")  # jax.export lowering platforms of the bundle.

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Devices on the `data` axis (batch sharded); -1: all remaining.
  config.mesh.fsdp = 1  # Devices on the `fsdp` axis (parameters sharded); 1 disables.
  return config
