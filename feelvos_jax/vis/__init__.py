"""Video instance segmentation (MaskTrack R-CNN on YouTube-VIS), the second task beside VOS.

Detection ops, pure JAX functions tested against NumPy loops: `boxes` (IoU, the box coder),
`anchors` (FPN anchors), `nms` (fixed-size, jit-friendly NMS), `roi_align` (bilinear RoIAlign,
FPN level assignment). The network: `fpn` (ResNet / tiny pyramids, FPN), `heads` (RPN, box,
mask and tracking heads), `model` (`MaskTrackRCNN`). Training: `losses` (targets, sampling,
losses), `train_step`, `input_pipeline` (frame pairs), `train` (the loop `main.py` runs for
`config.task == "vis"`, and `--mode=evaluate`). Inference: `detect` (proposals, detections,
mask pasting), `inference` (per-frame detection and the tracker over whole videos), `draw`.
Files and scores: `annotations` (YouTube-VIS instances.json), `metrics` (spatio-temporal IoU,
AP on COCOeval), `results` (the challenge's results JSON and zip). Design notes: docs/vis.md.
"""
