"""Inference: the pure per-frame steps and the host loop shared by every runner
(`propagation`), in-process video propagation (`video_propagation`), `jax.export` bundles
(`export`) and the interactive session (`interactive`). No TensorFlow."""
