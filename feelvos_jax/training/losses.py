"""Training losses: bootstrapped cross-entropy (FEELVOS) and the triplet loss (PML).

The loss of the official code (DeepLab's `top_k_percent_pixels` with `hard_example_mining_step`):
per image, the pixel cross-entropies are sorted and only the hardest fraction is averaged; the kept
fraction ramps linearly from 100% at step 0 to `top_k_percent` at `hard_mining_ramp_steps`.
Pixels labelled `IGNORE_LABEL` never count, neither in the loss nor in the number of pixels the
fraction is taken of. Logits hold -inf in padded object slots, so the per-pixel loss is computed
as `log_softmax` + `take_along_axis` (a one-hot product would give 0 * -inf = nan).

PML's modified triplet loss (`triplet_loss`, for `config.model.head = "nearest_neighbor"`) is
described in its docstring.
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import ml_collections

from feelvos_jax import config_checks
from feelvos_jax import FEATURE_STRIDE
from feelvos_jax import IGNORE_LABEL
from feelvos_jax import matching
from feelvos_jax.models.upsampling import upsample_logits


def hard_mining_fraction(step: jax.Array, *, top_k_percent: float,
                         ramp_steps: int) -> jax.Array:
  """Fraction of a frame's valid pixels that the loss keeps at `step`.

  Linear ramp from 1.0 at step 0 to `top_k_percent` at `ramp_steps`, then constant (official code:
  `ratio * top_k + (1 - ratio)` with `ratio = min(step / ramp_steps, 1)`). `ramp_steps <= 0` keeps
  `top_k_percent` from the start.
  """
  top_k_percent = config_checks.check_float(top_k_percent, "config.loss.top_k_percent", 0.0, 1.0,
                                            low_open=True)
  if ramp_steps <= 0:
    return jnp.asarray(top_k_percent, jnp.float32)
  ratio = jnp.minimum(jnp.asarray(step, jnp.float32) / ramp_steps, 1.0)
  return ratio * top_k_percent + (1.0 - ratio)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        ignore_label: int = IGNORE_LABEL) -> Tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy of each pixel and whether it counts.

  Args:
    logits: [B, H, W, K] float, -inf in padded slots.
    labels: [B, H, W] int, 0..K-1 or `ignore_label`.
    ignore_label: label value excluded from the loss.

  Returns:
    (losses [B, H, W] float32, 0 where ignored; valid [B, H, W] bool).
  """
  if logits.shape[:3] != labels.shape:
    raise ValueError(f"logits {logits.shape} and labels {labels.shape} must agree on [B, H, W].")
  valid = labels != ignore_label
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  return jnp.where(valid, -picked, 0.0), valid


def bootstrapped_cross_entropy(logits: jax.Array, labels: jax.Array, kept_fraction: jax.Array,
                               ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """Mean cross-entropy of each frame's hardest pixels, averaged over the frames.

  Args:
    logits: [B, H, W, K] float at the labels' resolution, -inf in padded slots.
    labels: [B, H, W] int, 0..K-1 or `ignore_label`.
    kept_fraction: scalar in (0, 1]: each frame keeps floor(kept_fraction * its valid pixels)
      hardest pixels (at least one).
    ignore_label: label value excluded from the loss and from the pixel count.

  Returns:
    Scalar float32: the mean over frames with a valid pixel of the mean loss of their kept pixels
    (0 if no frame has a valid pixel).
  """
  losses, valid = pixel_cross_entropy(logits, labels, ignore_label)
  batch = losses.shape[0]
  losses = losses.reshape(batch, -1)
  valid = valid.reshape(batch, -1)
  num_valid = jnp.sum(valid, axis=1)
  num_kept = jnp.floor(jnp.asarray(kept_fraction, jnp.float32) * num_valid.astype(jnp.float32))
  num_kept = jnp.maximum(num_kept.astype(jnp.int32), 1)
  hardest_first = -jnp.sort(-jnp.where(valid, losses, -jnp.inf), axis=1)
  rank = jnp.arange(losses.shape[1])[None, :]
  kept_sum = jnp.sum(jnp.where(rank < num_kept[:, None], hardest_first, 0.0), axis=1)
  has_valid = num_valid > 0
  frame_loss = jnp.where(has_valid, kept_sum / num_kept, 0.0)
  return jnp.sum(frame_loss) / jnp.maximum(jnp.sum(has_valid), 1)


def segmentation_loss(logits: jax.Array, labels: jax.Array, step: jax.Array,
                      loss_config: ml_collections.ConfigDict) -> Tuple[jax.Array, jax.Array]:
  """The training loss of stride-4 logits [B, h, w, K] against full-resolution labels [B, H, W].

  With `loss_config.upsample_logits` the logits are upsampled to the labels (paper); otherwise
  the labels are subsampled to the logits by `labels[:, ::4, ::4]`.

  Returns:
    (loss scalar, kept_fraction scalar).
  """
  expected = tuple(-(-n // FEATURE_STRIDE) for n in labels.shape[1:3])
  if logits.shape[1:3] != expected:
    raise ValueError(f"logits {logits.shape} are not at stride {FEATURE_STRIDE} of labels "
                     f"{labels.shape}: expected spatial size {expected}.")
  kept_fraction = hard_mining_fraction(step, top_k_percent=loss_config.top_k_percent,
                                       ramp_steps=loss_config.hard_mining_ramp_steps)
  if loss_config.upsample_logits:
    logits = upsample_logits(logits, labels.shape[1:3])
  else:
    labels = labels[:, ::FEATURE_STRIDE, ::FEATURE_STRIDE]
  return bootstrapped_cross_entropy(logits, labels, kept_fraction), kept_fraction


def sample_anchors(labels: jax.Array, rng: jax.Array, *, num_slots: int,
                   anchors_per_object: int) -> Tuple[jax.Array, jax.Array]:
  """Random anchor pixels of one frame: at most `anchors_per_object` of each slot.

  Args:
    labels: [h, w] int labels; slots 0..num_slots-1 (background included) provide anchors,
      IGNORE_LABEL and any other value never does.
    rng: PRNG key (jit-able: the number of anchors is static).
    num_slots: K (static).
    anchors_per_object: A (static).

  Returns:
    (indices [n] int32 into the flattened [h * w] pixels, valid [n] bool), n = min(h * w, K * A):
    the valid entries are distinct pixels, each slot's uniformly drawn without replacement.
  """
  kept = matching.select_reference_pixels(labels, num_slots, anchors_per_object, rng).reshape(-1)
  count = min(kept.shape[0], num_slots * anchors_per_object)
  indices = jnp.argsort(kept == IGNORE_LABEL, stable=True)[:count].astype(jnp.int32)
  return indices, kept[indices] != IGNORE_LABEL


def triplet_loss(anchor_embeddings: jax.Array, anchor_labels: jax.Array,
                 reference_embeddings: jax.Array, reference_labels: jax.Array, rng: jax.Array,
                 *, num_slots: int, margin: float,
                 anchors_per_object: int) -> Tuple[jax.Array, jax.Array]:
  """PML's modified triplet loss (Chen et al., CVPR 2018).

  Per sample, anchors are drawn from the current frame (`sample_anchors`: at most
  `anchors_per_object` pixels of each slot, background included). For an anchor a of slot l,
  the positive is the nearest reference pixel of slot l and the negative the nearest reference
  pixel of any other slot (the hardest of each, not a sampled pair):

    loss(a) = max(0, min_{r: slot l} d(a, r) - min_{r: slot != l} d(a, r) + margin),

  with d the squared Euclidean distance ||e_a - e_r||^2, as PML, so that the margin is in the
  units the nearest-neighbour vote (`models.nearest_neighbor`) ranks by; FEELVOS's bounded
  distance 1 - 2 / (1 + exp(d)) would saturate at 1 for far pixels and give no gradient. The
  embeddings are not normalised, so the margin is in the units of their (learnt) squared scale:
  on the synthetic set margins 1-10 gave clearly better J&F than 0.3 (BENCHMARKS.md, PML). The
  minima are the per-slot squared global matching (`matching.global_matching(squared=True)`)
  of the anchors against the reference pixels. The loss is the mean over valid anchors of the
  batch: an anchor is valid if its slot and some other slot both have reference pixels
  (pixels labelled IGNORE_LABEL or >= num_slots are neither anchors nor references).

  Args:
    anchor_embeddings: [B, h, w, E] embeddings of the current frames.
    anchor_labels: [B, h, w] int labels of the current frames (at the embeddings' stride).
    reference_embeddings: [B, h', w', E] embeddings of the reference frames.
    reference_labels: [B, h', w'] int labels of the reference frames.
    rng: PRNG key for the anchor sampling.
    num_slots: K (static).
    margin: alpha (`config.loss.triplet_margin`).
    anchors_per_object: A (`config.loss.triplet_anchors_per_object`, static).

  Returns:
    (loss scalar float32, 0 without a valid anchor; active fraction: valid anchors whose hinge
    is positive over valid anchors).
  """
  if anchor_embeddings.shape[:3] != anchor_labels.shape:
    raise ValueError(f"anchor_embeddings {anchor_embeddings.shape} and anchor_labels "
                     f"{anchor_labels.shape} must agree on [B, h, w].")
  if reference_embeddings.shape[:3] != reference_labels.shape:
    raise ValueError(f"reference_embeddings {reference_embeddings.shape} and reference_labels "
                     f"{reference_labels.shape} must agree on [B, h', w'].")
  batch, _, _, dim = anchor_embeddings.shape
  rngs = jax.random.split(rng, batch)

  def sample_triplets(embeddings, labels, references, ref_labels, key):
    indices, valid = sample_anchors(labels, key, num_slots=num_slots,
                                    anchors_per_object=anchors_per_object)
    anchors = embeddings.reshape(-1, dim)[indices].astype(jnp.float32)
    slots = jnp.where(valid, labels.reshape(-1)[indices], 0).astype(jnp.int32)
    minima = matching.global_matching(anchors[None], references.astype(jnp.float32),
                                      ref_labels, num_slots, squared=True)[0]
    own = jax.nn.one_hot(slots, num_slots, dtype=bool)
    positive = jnp.min(jnp.where(own, minima, jnp.inf), axis=-1)
    negative = jnp.min(jnp.where(own, jnp.inf, minima), axis=-1)
    valid = valid & jnp.isfinite(positive) & jnp.isfinite(negative)
    hinge = jnp.maximum(jnp.where(valid, positive - negative, 0.0) + margin, 0.0)
    return jnp.where(valid, hinge, 0.0), valid

  hinge, valid = jax.vmap(sample_triplets)(anchor_embeddings, anchor_labels,
                                           reference_embeddings, reference_labels, rngs)
  count = jnp.maximum(jnp.sum(valid), 1)
  return jnp.sum(hinge) / count, jnp.sum(valid & (hinge > 0)) / count


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       loss_config: ml_collections.ConfigDict) -> jax.Array:
  """Plain cross-entropy (every valid pixel) of stride-4 logits [B, h, w, K] against labels
  [B, H, W], at the labels' resolution with `loss_config.upsample_logits` (the memory models'
  loss, STM's)."""
  if loss_config.upsample_logits:
    logits = upsample_logits(logits, labels.shape[1:3])
  else:
    labels = labels[:, ::FEATURE_STRIDE, ::FEATURE_STRIDE]
  return bootstrapped_cross_entropy(logits, labels, jnp.float32(1.0))


def channel_kl_divergence(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """KL(softmax(teacher) || softmax(student)) over the last axis, averaged over every element:
  [..., C] each -> scalar float32, the per-position KL / C (the authors' `KLDivLoss` at
  temperature 1: PyTorch's `nn.KLDivLoss()`, reduction "mean")."""
  log_student = jax.nn.log_softmax(student.astype(jnp.float32), axis=-1)
  log_teacher = jax.nn.log_softmax(teacher.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.exp(log_teacher) * (log_teacher - log_student))


def perturb_masks(probs: jax.Array, rng: jax.Array, *, radius: int = 2) -> jax.Array:
  """RDE's self-correction input: each sample's object masks [B, H, W, K] (slot 0 the
  background) dilated or eroded (one random choice per sample) by a (2 radius + 1)^2 max
  pool; the background becomes 1 - the clipped sum of the objects."""
  objects = probs[..., 1:].astype(jnp.float32)
  window = (1, 2 * radius + 1, 2 * radius + 1, 1)

  def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, (1, 1, 1, 1), "SAME")

  dilate = jax.random.bernoulli(rng, 0.5, (probs.shape[0], 1, 1, 1))
  objects = jnp.where(dilate, pool(objects), -pool(-objects))
  background = 1.0 - jnp.clip(jnp.sum(objects, -1, keepdims=True), 0.0, 1.0)
  return jnp.concatenate([background, objects], -1)
