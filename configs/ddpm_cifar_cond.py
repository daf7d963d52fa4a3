"""Class-conditional DDPM on CIFAR-10 with classifier-free guidance (Ho & Salimans 2022).

The paper's CIFAR-10 UNet and schedule (configs/ddpm_cifar.py) with the CIFAR-10 label added
to the time embedding; 10% of training labels are replaced by the null class, and sampling
mixes the conditional and unconditional predictions with `sample.guidance_scale`. 100
samples, one class per row of the grid.

Offline: --config.data.image_folder=<folder with train/<class>/*.jpg>.
"""

import ml_collections

from configs import ddpm_cifar


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_cifar.get_config()
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.sample.guidance_scale = 1.0
  config.sample.num = 100
  return config
