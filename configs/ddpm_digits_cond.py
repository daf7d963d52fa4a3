"""The embedded default made class-conditional: DDPM with classifier-free guidance on the 8x8 digits (offline).

configs/ddpm_digits.py with the digit's label added to the time embedding, 10% of training
labels replaced by the null class, and guided sampling; 100 samples, one digit per row.
"""

import ml_collections

from configs import ddpm_digits


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_digits.get_config()
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.sample.guidance_scale = 1.0
  return config
