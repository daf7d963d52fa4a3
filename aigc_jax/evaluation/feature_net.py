"""Offline feature networks: a small classifier per data set, trained here on real data, whose
penultimate features give a "classifier FID" that needs no download.

    python -m aigc_jax.evaluation.feature_net --dataset=digits|mnist|cifar10 [--cache_dir=DIR] \
        [--config.KEY=VALUE ...]

trains configs/classifier_<dataset>.py (`--config.` overrides as in run.py, e.g.
`--config.data.npz_path=mnist_test.npz --config.data.npz_holdout=2000` or
`--config.data.image_folder=/data/cifar10`) with the one training loop into
<cache>/feature_nets/<dataset>/, then writes its held-out accuracy, and the classifier FID
between two random halves of the held-out split (the metric's floor at that size), to
feature_net.json there. A finished net is reported, not retrained; delete its folder to
train it again. The cache is --cache_dir, else $AIGC_JAX_CACHE, else ~/.cache/aigc_jax.

Such a FID is comparable only with FIDs from the same feature network, so every result
carries its name: `fid_classifier_<dataset>`, never plain `fid` (which is the Inception's).
"""

import dataclasses
import importlib
import json
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from aigc_jax import cache
from aigc_jax import cli
from aigc_jax import data
from aigc_jax.errors import UserError
from aigc_jax.evaluation import features as features_lib
from aigc_jax.evaluation import metrics
from aigc_jax.train import checkpoint
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import writers

# Data set -> the config file (in configs/) its feature network is trained with.
CONFIGS = {'digits': 'classifier_digits', 'mnist': 'classifier_mnist', 'cifar10': 'classifier_cifar',
           'mnist_cells': 'classifier_mnist_cells'}
INFO_FILE = 'feature_net.json'
BATCH_SIZE = 500  # images per device call when computing features, rounded up to the devices


def _say(msg: str) -> None:
  print(msg, flush=True)


def _check_dataset(dataset: str) -> None:
  if dataset not in CONFIGS:
    raise UserError(f'there is no feature network for {dataset!r}: choose one of {sorted(CONFIGS)}')


def net_name(dataset: str) -> str:
  """The feature network's name, which every FID computed with it carries: 'classifier_<dataset>'."""
  _check_dataset(dataset)
  return f'classifier_{dataset}'


def workdir(dataset: str, cache_dir: str | None = None) -> str:
  """The training workdir of `dataset`'s feature network: <cache>/feature_nets/<dataset>."""
  _check_dataset(dataset)
  return os.path.join(cache.root(cache_dir), 'feature_nets', dataset)


def train_command(dataset: str, cache_dir: str | None = None) -> str:
  flag = f' --cache_dir={cache_dir}' if cache_dir else ''
  return f'python -m aigc_jax.evaluation.feature_net --dataset={dataset}{flag}'


def default_config(dataset: str) -> ml_collections.ConfigDict:
  """configs/classifier_<dataset>.py's config (importable from the repository root)."""
  _check_dataset(dataset)
  try:
    module = importlib.import_module(f'configs.{CONFIGS[dataset]}')
  except ImportError:
    raise UserError(f'cannot import configs.{CONFIGS[dataset]}: run from the repository root') from None
  return module.get_config()


def _data_source(d: ml_collections.ConfigDict) -> str:
  """Where the images come from, in the order `data.images.load` picks the source."""
  if d.npz_path:
    source = f'npz {os.path.abspath(d.npz_path)} (the last {d.npz_holdout} held out)'
  elif d.image_folder:
    source = f'image folder {os.path.abspath(d.image_folder)}'
  elif d.name == 'digits':
    source = 'scikit-learn digits'
  else:
    source = f'TFDS {d.name}'
  return source + (f' padded by {d.pad}' if d.pad else '')


def summary(info: dict[str, Any]) -> str:
  """One line naming a feature network and what it was trained and checked on, from its feature_net.json."""
  return (f'feature network {info["feature_net"]}: {info["feature_dim"]} features, held-out accuracy '
          f'{100 * info["accuracy"]:.2f}% on {info["eval_examples"]} images of {info["data_source"]} '
          f'after {info["step"]} steps')


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNet:
  """A trained feature network: its `info` (feature_net.json), EMA parameters and model, on `devs`."""
  name: str
  info: dict[str, Any]
  image_shape: tuple[int, int, int]
  model: Any
  params: Any
  devs: parallel.Devices

  def describe(self) -> str:
    return summary(self.info)

  def _apply(self, params: Any, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.model.apply({'params': params}, x_BHWC.astype(jnp.float32) / 127.5 - 1.0, train=False)

  def outputs(self, images_NHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, K], features [N, F]) of uint8 images [N, H, W, C] in 0..255, over all local devices."""
    images_NHWC = np.asarray(images_NHWC)
    if images_NHWC.dtype != np.uint8 or images_NHWC.shape[1:] != self.image_shape:
      raise UserError(f'{self.name} takes uint8 images [N, {", ".join(map(str, self.image_shape))}], '
                      f'not {images_NHWC.dtype} {list(images_NHWC.shape)}')
    n_dev = len(self.devs.local)
    return features_lib.extract(self._apply, self.params, images_NHWC, -(-BATCH_SIZE // n_dev) * n_dev,
                                self.devs)

  def features(self, images_NHWC: np.ndarray) -> np.ndarray:
    """The penultimate activations [N, F]: what the classifier FID compares."""
    return self.outputs(images_NHWC)[1]

  def logits(self, images_NHWC: np.ndarray) -> np.ndarray:
    """The class logits [N, K]."""
    return self.outputs(images_NHWC)[0]


def _read_info(dataset: str, cache_dir: str | None) -> dict[str, Any] | None:
  path = os.path.join(workdir(dataset, cache_dir), INFO_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _restore(wd: str, info: dict[str, Any], devices: Sequence[jax.Device] | None) -> FeatureNet:
  """The net of `info` from the checkpoint of its step in `wd`, built with the config it was trained with."""
  with open(os.path.join(wd, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  method, _, fresh = loop.build(config, {}, {})
  ckpts = checkpoint.Checkpoints(os.path.join(wd, 'checkpoints'), config.training.keep_checkpoints)
  try:
    state = ckpts.restore(fresh, step=info['step'])
  finally:
    ckpts.close()
  return FeatureNet(name=info['feature_net'], info=info, image_shape=method.image_shape, model=method.model,
                    params=state.ema_params, devs=parallel.devices(devices))


def load(dataset: str, cache_dir: str | None = None,
         devices: Sequence[jax.Device] | None = None) -> FeatureNet:
  """The trained feature network of `dataset` (its EMA parameters), on `devices` (default: all local).

  A net that is not trained yet (no feature_net.json) is a UserError naming the command that
  trains it.
  """
  info = _read_info(dataset, cache_dir)
  if info is None:
    raise UserError(f'the feature network {net_name(dataset)} is not trained in {workdir(dataset, cache_dir)}: '
                    f'train it with `{train_command(dataset, cache_dir)}`')
  return _restore(workdir(dataset, cache_dir), info, devices)


def classifier_fid(net: FeatureNet, images1_NHWC: np.ndarray, images2_NHWC: np.ndarray) -> dict[str, float]:
  """{'fid_<net.name>': the Fréchet distance between the two image sets in the net's feature space}."""
  mu1, sigma1 = metrics.feature_stats(net.features(images1_NHWC))
  mu2, sigma2 = metrics.feature_stats(net.features(images2_NHWC))
  return {f'fid_{net.name}': metrics.frechet_distance(mu1, sigma1, mu2, sigma2)}


def _heldout_halves_fid(net: FeatureNet, config: ml_collections.ConfigDict) -> tuple[float, int]:
  """The classifier FID between two random disjoint halves of the held-out split, and the half size."""
  images, _ = data.images.load(config.data, config.data.eval_split)
  order = np.random.default_rng(config.seed).permutation(len(images))
  half = len(images) // 2
  return classifier_fid(net, images[order[:half]], images[order[half:2 * half]])[f'fid_{net.name}'], half


def train(dataset: str, config: ml_collections.ConfigDict, cache_dir: str | None = None) -> dict[str, Any]:
  """Trains (or resumes) `dataset`'s feature network, evaluates it and writes feature_net.json; returns it.

  A net whose feature_net.json says it finished `config.training.num_train_steps` is reported as it is.
  """
  name, wd = net_name(dataset), workdir(dataset, cache_dir)
  info = _read_info(dataset, cache_dir)
  if info is not None and info['step'] == config.training.num_train_steps:
    _say(f'{summary(info)}; already trained in {wd} (delete it to train again)')
    return info
  if config.method != 'classifier':
    raise UserError(f"method={config.method!r}: a feature network is a classifier (method='classifier')")
  loop.train(config, wd)
  result = loop.evaluate(config, wd)
  info = {'dataset': dataset, 'feature_net': name, 'accuracy': result['eval/accuracy'],
          'loss': result['eval/loss'], 'eval_split': config.data.eval_split,
          'eval_examples': result['num_examples'], 'step': result['step'],
          'feature_dim': config.model.features, 'num_classes': config.model.num_classes,
          'data_source': _data_source(config.data)}
  net = _restore(wd, info, None)
  fid, half = _heldout_halves_fid(net, config)
  info.update({f'fid_{name}_heldout_halves': fid, 'heldout_half_size': half})
  writers.write_json(os.path.join(wd, INFO_FILE), info)
  _say(f'{summary(info)}; fid_{name} between two random held-out halves of {half} images: {fid:.4f}; '
       f'written to {os.path.join(wd, INFO_FILE)}')
  return info


def parse_flags(argv: list[str]) -> list[str]:
  """--dataset first, then its config as the --config flag with run.py's overrides; bad input is one line."""
  try:
    flags.FLAGS(argv, known_only=True)
    if flags.FLAGS.dataset is None:
      raise UserError(f'--dataset is required: one of {", ".join(sorted(CONFIGS))}')
    config = default_config(flags.FLAGS.dataset)
    bad = cli.unknown_key(config, argv)
    if bad:
      raise UserError(bad)
    config_flags.DEFINE_config_dict('config', config, 'The feature network config (--config.KEY=VALUE overrides).')
    return flags.FLAGS(argv)
  except (flags.Error, UserError) as e:
    sys.exit(f'error: {e}')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  cli.run(train, flags.FLAGS.dataset, cli.config(flags.FLAGS['config']), flags.FLAGS.cache_dir)


if __name__ == '__main__':
  flags.DEFINE_enum('dataset', None, sorted(CONFIGS), 'The data set whose feature network to train.')
  flags.DEFINE_string('cache_dir', None, f'Cache folder (default ${cache.ENV}, else {cache.DEFAULT_DIR}).')
  app.run(main, flags_parser=parse_flags)
