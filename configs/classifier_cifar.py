"""The CIFAR-10 feature network: a small CNN for the classifier FID (aigc_jax.evaluation.feature_net).

    python -m aigc_jax.evaluation.feature_net --dataset=cifar10 [--config.data.image_folder=DIR]

Offline: --config.data.image_folder=<folder with train/<class>/*.jpg and test/<class>/*.jpg>.
On a shared 2-core CPU, 2,000 steps (5 epochs) take about 12 minutes and reach 69.0% on the test
split; --config.training.num_train_steps=4000 takes about 21 minutes and reaches 74.8%.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'classifier'
  config.data = default.image_data(name='cifar10', image_size=32, channels=3, random_flip=True)

  config.model = model = ml_collections.ConfigDict()
  model.num_classes = 10
  model.patch = 2          # a space-to-depth stem: 32x32x3 -> 16x16x12
  model.widths = (64, 128, 256)
  model.depth = 1
  model.features = 256     # the width of the penultimate layer: the FID features
  model.num_groups = 8     # GroupNorm groups (0: none)
  model.dropout = 0.0

  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = 'cosine'
  config.optim.grad_clip = 1.0

  config.training.batch_size = 128
  config.training.num_train_steps = 2000
  config.training.checkpoint_every = 500
  config.training.ema_rate = 0.99

  config.eval.batch_size = 500
  return config
