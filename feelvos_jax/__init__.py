"""feelvos_jax: FEELVOS semi-supervised video object segmentation in JAX/Flax."""

IGNORE_LABEL = 255
"""Label value of unannotated or void pixels: never matched, never in the loss or in J."""

FEATURE_STRIDE = 4
"""Stride of the backbone features, the embeddings, the matching maps and the logits."""
