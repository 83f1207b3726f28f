"""Shared defaults for every config: the paper's FEELVOS setting, one knob per line.

Each `configs/<name>.py` starts from `get_base_config()` and changes only what differs.
Change a run from the command line: `--config.model.window=7 --config.batch_size=8`.
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """The FEELVOS paper's setting (Voigtlaender et al., CVPR 2019, and its official code)."""
  config = ml_collections.ConfigDict()

  # --- Training loop (flax-examples names) ---
  config.seed = 0  # Seeds parameters, data order, augmentation and reference subsampling.
  config.batch_size = 48  # Global batch of (reference, previous, current) samples: 16 GPUs x 3 videos.
  config.num_train_steps = 200_000  # Paper: 200k steps.
  config.learning_rate = 7e-4  # Peak learning rate (paper: 7e-4).
  config.log_every_steps = 50  # Training metrics to TensorBoard/stdout every N steps.
  config.eval_every_steps = 10_000  # Validation J&F every N steps (0 disables).
  config.checkpoint_every_steps = 2_000  # Checkpoint every N steps (and always at the end).
  config.keep_checkpoints = 3  # Most recent checkpoints kept (plus the best by validation J&F).
  config.num_eval_videos = -1  # Validation videos used by the in-training evaluation (-1: all).
  config.profile = False  # Capture a jax.profiler trace of a few steps early in training.

  # --- Optimizer ---
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # "sgd" (momentum SGD, paper) or "adam" / "adamw".
  config.optimizer.momentum = 0.9  # SGD momentum (paper: 0.9).
  config.optimizer.weight_decay = 4e-5  # L2 weight decay (paper: 4e-5).
  config.optimizer.grad_clip_norm = 5.0  # Gradient-norm clip (paper: 5); 0 disables.
  config.optimizer.grad_clip_mode = "per_tensor"  # Each gradient by its own norm (official code) or "global".
  config.optimizer.schedule = "poly"  # "poly" (paper), "cosine" or "constant".
  config.optimizer.poly_power = 0.9  # Power of the polynomial decay (paper: 0.9).
  config.optimizer.warmup_steps = 0  # Linear warm-up steps before the decay.
  config.optimizer.end_learning_rate = 0.0  # Learning rate at the end of the decay.

  # --- Loss ---
  config.loss = ml_collections.ConfigDict()
  config.loss.top_k_percent = 0.15  # Bootstrapped CE keeps this fraction of hardest pixels (paper: 15%).
  config.loss.hard_mining_ramp_steps = 100_000  # Kept fraction ramps 100% -> top_k_percent over these steps.
  config.loss.upsample_logits = True  # Loss at label resolution (paper) instead of stride 4.
  config.loss.triplet_margin = 0.3  # PML (model.head="nearest_neighbor"): triplet hinge margin alpha.
  config.loss.triplet_anchors_per_object = 256  # PML: anchor pixels sampled per object and sample.
  config.loss.rde_guidance_weight = 10.0  # RDE: unbiased guidance loss (RDE read -> STM read) weight.
  config.loss.rde_correction_weight = 10.0  # RDE: self-correction loss (perturbed -> true reference values) weight.

  # --- Model ---
  config.model = ml_collections.ConfigDict()
  config.model.backbone = "xception65"  # "xception65" (paper), "resnet50", "resnet101" or "tiny".
  config.model.output_stride = 16  # Backbone output stride: 16 (ASPP rates 6/12/18) or 8 (12/24/36).
  config.model.decoder_channels = 256  # DeepLabv3+ ASPP and decoder width.
  config.model.embedding_dim = 100  # Pixel embedding dimension (paper: 100).
  config.model.max_objects = 10  # Object slots besides the background; padded slots get -inf logits.
  config.model.window = 15  # Local-matching window radius k: (2k+1)^2 offsets (paper: 15).
  config.model.dilation = 1  # Local-matching dilation (1: FEELVOS; >1: atrous, CFBI).
  config.model.max_reference_pixels = 1024  # Reference pixels per object in training global matching.
  config.model.matching_chunk_size = 4096  # Query pixels per chunk in global matching (bounds memory).
  config.model.head_channels = 256  # Dynamic segmentation head width (paper: 256).
  config.model.head_kernel_size = 7  # Depthwise kernel of the head (paper: 7).
  config.model.head_num_layers = 4  # Depthwise-separable layers in the head (paper: 4).
  config.model.freeze_backbone_batch_norm = True  # Backbone BN uses running stats in training (paper).
  config.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay float32).
  config.model.pretrained = ""  # Backbone weights file (feelvos_jax/training/weights.py); "" for none.
  config.model.pretrained_min_fraction = 1.0  # Fraction of the backbone's variables the file must fill.
  config.model.pretrained_allow_partial = False  # Load a file below that fraction anyway (with a warning).
  config.model.head = "feelvos"  # "feelvos", "nearest_neighbor" (PML), "stm" or "rde" (memory models).
  config.model.nearest_neighbors = 5  # PML: reference pixels voting for each pixel's label (k of k-NN).
  # Memory models (model.head "stm" / "rde"; docs/models.md).
  config.model.memory_frames = 20  # STM inference memory cap (annotated + every N-th frame, besides the previous one).
  config.model.memory_every = 5  # STM: every N-th frame joins the inference memory (paper: 5).
  config.model.memory_key_dim = 0  # Memory key channels (0: encoder channels / 8, STM's 128; RDE-VOS: 64).
  config.model.rde_affinity = "dot"  # RDE non-local affinity: "dot" (authors' theta.phi / N) or "softmax" (bounded; docs/models.md).
  config.model.rde_norm = "none"  # RDE scale per aggregation: "none" (authors') or "inputs" (bounded on any video length; docs/models.md).
  # CFBI options (Yang et al., ECCV 2020) for the FEELVOS head; each off by default.
  config.model.background_matching = False  # Also match each object against the pixels NOT of it.
  config.model.matching_bias = False  # Learnable fg/bg biases b: d = 1 - 2 / (1 + exp(||e_p - e_q||^2 + b)).
  config.model.local_windows = ()  # Multi-local matching radii, e.g. (2, 4, 6, 8, 10, 12); () uses `window`.
  config.model.global_atrous_rate = 1  # Reference pixels of global matching on a grid of this stride.
  config.model.instance_attention = False  # Per-object channel gates from pooled fg/bg embeddings.

  # --- Data ---
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "davis2017/480p"  # TFDS name/config (datasets/ registers the builders).
  config.dataset.data_dir = ""  # TFDS data dir ("": TFDS default ~/tensorflow_datasets).
  config.dataset.manual_dir = ""  # Raw dataset folder in its official layout (DAVIS, YouTube-VOS).
  config.dataset.train_split = "train"  # Split used for training.
  config.dataset.eval_split = "validation"  # Split used for evaluation.
  config.dataset.eval_protocol = ""  # "davis2017" or "youtube_vos" (docs/evaluation.md); "": davis2017 for DAVIS, else youtube_vos.
  config.dataset.remap_ids = False  # DAVIS builder: accept object ids that are not 1..N per video (else an error).
  config.dataset.crop_size = (465, 465)  # Training crop (height, width) (paper: 465x465).
  config.dataset.min_scale = 1.0  # Random rescale range before cropping (paper: 1.0-1.3).
  config.dataset.max_scale = 1.3
  config.dataset.random_flip = True  # Random horizontal flip (one decision per sample).
  config.dataset.reference_frame = "random"  # "random" annotated frame (paper) or "first".
  config.dataset.max_frame_gap = 1  # Previous/current frames at most this far apart (paper: 1).
  config.dataset.max_skip = 0  # Curriculum: the gap limit grows from max_frame_gap to this (STM: 25); 0 disables.
  config.dataset.max_skip_ramp_steps = 0  # Steps over which the gap limit grows linearly to max_skip.
  config.dataset.clip_frames = 2  # STM/RDE training: annotated frames between reference and previous in the memory (RDE-VOS authors: 5-frame clips, 3 aggregations).
  config.dataset.static_frames = False  # STM pre-training: previous/current = affine warps of the reference frame.
  config.dataset.scribble_references = 0.0  # Probability that a sample's reference labels are simulated scribbles (interactive).
  config.dataset.min_object_pixels = 10  # Reject samples whose reference objects have fewer stride-4 pixels.
  config.dataset.shuffle_buffer = 256  # Videos in the tf.data shuffle buffer.
  config.dataset.prefetch = 2  # Batches prefetched to the devices.
  config.dataset.eval_pad_multiple = 4  # Evaluation frames padded to a multiple of this.

  # --- Parallelism ---
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Devices on the `data` axis (batch sharded); -1: all that remain.
  config.mesh.fsdp = 1  # Devices on the `fsdp` axis (parameters sharded); 1 disables.
  config.matching = ml_collections.ConfigDict()
  config.matching.shard_axis = ""  # "": unsharded; "query" or "reference": shard_map global matching.

  # --- Inference (feelvos_jax/inference/video_propagation.py) ---
  config.inference = ml_collections.ConfigDict()
  config.inference.object_buckets = (1, 3, 10)  # Object slots per compiled step: smallest that fits, else chunks of the largest; () = (model.max_objects,).
  config.inference.video_batch_size = 1  # Evaluation videos of one shape bucket stepped together (vmap); 1: one at a time.

  # --- Export (main.py --mode=export, feelvos_jax/inference/export.py) ---
  config.export = ml_collections.ConfigDict()
  config.export.buckets = ((480, 864, 3), (480, 864, 10))  # (height, width, objects) shapes exported; sizes multiples of model.output_stride.
  config.export.max_reference_frames = 1  # Steps exported for 1..this many frames where objects first appear (DAVIS: 1).
  config.export.platforms = ("cpu", "cuda", "tpu")  # jax.export lowering platforms of the bundle.
  config.export.format = "stablehlo"  # "stablehlo" (jax.export bundle, <workdir>/export) or "onnx" (<workdir>/export_onnx).
  return config
