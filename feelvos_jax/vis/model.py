"""MaskTrack R-CNN (Yang, Fan, Xu, ICCV 2019) as one Flax Linen module with one method per stage.

    model = MaskTrackRCNN(num_classes=40)
    variables = model.init(rng, images)                      # images [B, H, W, 3] in [-1, 1]
    pyramid = model.apply(variables, images, method=model.pyramid)   # P2..P6
    rpn = model.apply(variables, pyramid, method=model.rpn)
    rois = model.apply(variables, pyramid_of_one_image, boxes, method=model.box_rois)
    ...

The stages are separate methods so that training and inference compose them with the pure
functions of `detect` (proposals, NMS) and `losses` (targets) in between; the parameters are
the same tree whichever path runs. Shapes: H and W multiples of `fpn.SIZE_DIVISOR`; RoI methods
take ONE image's pyramid (vmap them over the batch).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feelvos_jax.vis import anchors
from feelvos_jax.vis import fpn
from feelvos_jax.vis import heads
from feelvos_jax.vis import roi_align

ROI_STRIDES = fpn.PYRAMID_STRIDES[:4]
"""The levels RoIAlign reads (P2..P5, mmdetection's featmap_strides)."""


class MaskTrackRCNN(nn.Module):
  """ResNet-50 + FPN, RPN, box, mask and tracking heads.

  Attributes:
    num_classes: K categories (YouTube-VIS: 40); class 0 is the background.
    backbone: "resnet50", "resnet101" or "tiny" (`fpn.TinyPyramid`, for tests and the demo).
    fpn_channels: FPN width (paper: 256).
    fc_dim: box head and tracking head width (paper: 1024).
    mask_channels: mask head conv width (paper: 256).
    box_roi_size / mask_roi_size: RoIAlign output sides (paper: 7 and 14; masks are 2x).
    dtype: compute dtype.
  """
  num_classes: int = 40
  backbone: str = "resnet50"
  fpn_channels: int = 256
  fc_dim: int = 1024
  mask_channels: int = 256
  box_roi_size: int = 7
  mask_roi_size: int = 14
  dtype: Any = jnp.float32

  def setup(self):
    if self.backbone == "tiny":
      self.encoder = fpn.TinyPyramid(dtype=self.dtype)
    elif self.backbone in ("resnet50", "resnet101"):
      self.encoder = fpn.PyramidResNet(depth=int(self.backbone[6:]), dtype=self.dtype)
    else:
      raise ValueError(f"config.model.backbone={self.backbone!r}: MaskTrack R-CNN takes "
                       "'resnet50', 'resnet101' or 'tiny'")
    self.neck = fpn.FPN(self.fpn_channels, dtype=self.dtype)
    self.rpn_head = heads.RPNHead(len(anchors.RATIOS) * len(anchors.SCALES),
                                  self.fpn_channels, dtype=self.dtype)
    self.box_head = heads.BoxHead(self.num_classes, self.fc_dim, dtype=self.dtype)
    self.mask_head = heads.MaskHead(self.num_classes, self.mask_channels, dtype=self.dtype)
    self.track_head = heads.TrackHead(self.fc_dim, dtype=self.dtype)

  def pyramid(self, images: jax.Array) -> list[jax.Array]:
    """[B, H, W, 3] in [-1, 1] -> P2..P6, [B, H / s, W / s, fpn_channels] each."""
    return self.neck(self.encoder(images.astype(self.dtype)))

  def rpn(self, pyramid: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    """Per level (objectness [B, H_l, W_l, A], deltas [B, H_l, W_l, A, 4])."""
    return self.rpn_head(pyramid)

  def _rois(self, pyramid: list[jax.Array], boxes: jax.Array, size: int) -> jax.Array:
    return roi_align.multilevel_roi_align(list(pyramid[:len(ROI_STRIDES)]), boxes, ROI_STRIDES,
                                          (size, size), sampling_ratio=2)

  def box_rois(self, pyramid: list[jax.Array], boxes: jax.Array) -> jax.Array:
    """One image's P2..P6 (each [H_l, W_l, C]) and boxes [R, 4] -> RoI features [R, 7, 7, C]."""
    return self._rois(pyramid, boxes, self.box_roi_size)

  def mask_rois(self, pyramid: list[jax.Array], boxes: jax.Array) -> jax.Array:
    """As `box_rois`, [R, 14, 14, C] for the mask head."""
    return self._rois(pyramid, boxes, self.mask_roi_size)

  def classify(self, rois: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[R, 7, 7, C] -> (class logits [R, K + 1], deltas [R, K + 1, 4])."""
    return self.box_head(rois)

  def segment(self, rois: jax.Array) -> jax.Array:
    """[R, 14, 14, C] -> mask logits [R, 28, 28, K + 1]."""
    return self.mask_head(rois)

  def embed(self, rois: jax.Array) -> jax.Array:
    """[R, 7, 7, C] -> tracking embeddings [R, fc_dim]."""
    return self.track_head(rois)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Runs every head once (for `init`): images [B, H, W, 3] -> a dict of their outputs."""
    pyramid = self.pyramid(images)
    rpn = self.rpn(pyramid)
    first = [level[0] for level in pyramid]
    boxes = jnp.asarray([[0.0, 0.0, 32.0, 32.0]], jnp.float32)
    box_rois = self.box_rois(first, boxes)
    logits, deltas = self.classify(box_rois)
    return {"rpn": rpn, "logits": logits, "deltas": deltas,
            "masks": self.segment(self.mask_rois(first, boxes)),
            "embeddings": self.embed(box_rois)}
