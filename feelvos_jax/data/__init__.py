"""Input pipeline (tf.data): training samples of (reference, previous, current) frames with their
labels (`input_pipeline`), stateless augmentation (`augmentation`), evaluation videos. Imports
TensorFlow; the TFDS builders themselves live in the top-level `datasets/` package."""
