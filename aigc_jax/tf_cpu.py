"""TensorFlow (used only by tf.data and TFDS) confined to the CPU."""

from typing import Any


def tensorflow() -> Any:
  """The tensorflow module with every GPU hidden from it, so it never takes accelerator memory."""
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  return tf
