"""The cell classifier of MNIST pairs: the MNIST t10k digits as the scenes draw them (16x16, gray), which
reads the digits of generated scenes back (caption accuracy) and gives their FID features.

    python -m aigc_jax.data.scenes --images=... --labels=... --out=workdirs/mnist_pairs
    python -m aigc_jax.evaluation.feature_net --dataset=mnist_cells \
        --config.data.npz_path=workdirs/mnist_pairs/cells.npz

trains on the first 8,000 digits (those of the training scenes) and reports its accuracy on the
last 2,000 (those of the test scenes) in feature_net.json: 88.65% after these 600 steps (27 minutes on a
2-core CPU shared with ~8 other runs). That bounds caption accuracy (two cells) near 0.79: train it longer
(e.g. configs/classifier_mnist.py's widths and 1,000+ steps, 99.2% on 28x28 MNIST) before judging samples.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'classifier'
  config.data = default.image_data(name='mnist_cells', image_size=16, channels=1, random_flip=False,
                                   npz_path='workdirs/mnist_pairs/cells.npz', npz_holdout=2000)

  config.model = model = ml_collections.ConfigDict()
  model.num_classes = 10
  model.patch = 1
  model.widths = (32, 64)
  model.depth = 1
  model.features = 64      # the width of the penultimate layer: the FID features (per cell)
  model.num_groups = 8
  model.dropout = 0.3

  config.optim.optimizer = 'adamw'
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 50
  config.optim.schedule = 'cosine'
  config.optim.grad_clip = 1.0
  config.optim.weight_decay = 0.05

  config.training.batch_size = 128
  config.training.num_train_steps = 600
  config.training.log_every = 100
  config.training.checkpoint_every = 600
  config.training.ema_rate = 0.99

  config.eval.batch_size = 500
  return config
