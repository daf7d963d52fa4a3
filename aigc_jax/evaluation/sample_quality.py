"""How good generated images are: FID, Inception Score and KID under every feature network at hand.

Two kinds of feature network: the FID Inception (pytorch-fid's weights; used when
`eval.inception_weights` or the cache holds them, or they can be downloaded) and the
project's own classifier of the data set (`python -m aigc_jax.evaluation.feature_net`),
which needs no download. Every metric is named after the network it used — `fid_inception`,
`fid_classifier_mnist` — because FIDs from different networks are not comparable. The real
side of each comparison (feature mean, covariance and up to `MAX_REFERENCE_FEATURES`
features for KID) is computed once per data source, split and network and cached under
<cache>/reference_stats/<network>/, in a file named after the data source, split and network
name. The key stored in it adds what those names do not pin down: the network's weights (a hash
of its variables, so a retrained classifier of the same name misses) and, for an npz source, the
file's size and modification time (so a rewritten file misses). A miss recomputes the statistics
and overwrites the stale file.
"""

import dataclasses
import hashlib
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from aigc_jax import cache
from aigc_jax.data import images as images_lib
from aigc_jax.data import scenes
from aigc_jax.errors import UserError
from aigc_jax.evaluation import captions as caption_eval
from aigc_jax.evaluation import feature_net
from aigc_jax.evaluation import features as features_lib
from aigc_jax.evaluation import inception
from aigc_jax.evaluation import metrics
from aigc_jax.train import parallel

MAX_REFERENCE_FEATURES = 10_000  # real features kept for KID
INCEPTION_BATCH = 64             # images per call of the 299x299 network, rounded up to the devices


@dataclasses.dataclass(frozen=True)
class Network:
  """A feature network: `outputs(uint8 images [N, H, W, C]) -> (features [N, F], logits [N, K])`.

  `weights_id` identifies the weights behind `outputs` (see `weights_id`): a retrained network keeps
  its name, so only this tells its cached reference statistics from those of its old weights.
  """
  name: str
  outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  is_classifier: bool
  weights_id: str


def weights_id(variables: Any) -> str:
  """A short SHA-1 of a network's variables (each one's path, dtype, shape and bytes): which weights these are."""
  sha = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
    a = np.asarray(leaf)
    sha.update(f'{jax.tree_util.keystr(path)} {a.dtype} {a.shape};'.encode())
    sha.update(a.tobytes())
  return sha.hexdigest()[:16]


def _classifier_dataset(config: ml_collections.ConfigDict) -> str:
  """The data set whose classifier judges this config's images: eval.feature_net, else data.name."""
  return config.eval.feature_net or config.data.name


def networks(config: ml_collections.ConfigDict, devs: parallel.Devices,
             cache_dir: str | None = None) -> tuple[list[Network], list[str]]:
  """The feature networks available for this config's images, and why each missing one is missing."""
  found, missing = [], []
  dataset = _classifier_dataset(config)
  if dataset in feature_net.CONFIGS:
    try:
      net = feature_net.load(dataset, cache_dir, devs.local)
      outputs = lambda x, net=net: net.outputs(x)[::-1]
      if dataset == 'mnist_cells' and (config.data.image_size, config.data.channels) == (scenes.SIZE, 3):
        found.append(Network(f'{net.name}_scenes', caption_eval.scene_outputs(outputs), False,
                             weights_id(net.params)))  # MNIST pairs, read cell by cell
      else:
        found.append(Network(net.name, outputs, True, weights_id(net.params)))
    except UserError as e:
      missing.append(str(e))
  else:
    missing.append(f'no classifier feature network for data.name={dataset!r} (there are '
                   f'{sorted(feature_net.CONFIGS)}; set eval.feature_net to one that draws the same images)')
  try:
    variables = inception.load_inception(config.eval.inception_weights,
                                         cache.root(cache_dir))
    model = inception.InceptionV3()
    batch = -(-INCEPTION_BATCH // len(devs.local)) * len(devs.local)
    found.append(Network('inception', lambda x: features_lib.extract(
        lambda v, b: model.apply(v, b), variables, x, batch, devs), False, weights_id(variables)))
  except UserError as e:
    missing.append(str(e))
  return found, missing


def unpadded(d: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data config without `data.pad`: the images as the data set (and its classifier) has them."""
  if not d.pad:
    return d
  d = ml_collections.ConfigDict(d.to_dict())
  d.image_size, d.pad = d.image_size - 2 * d.pad, 0
  return d


def _folder_fingerprint(folder: str) -> str:
  """The count, total size and newest modification time of the files under `folder`, in words.

  Cheap next to decoding the images (one stat per file), and changed by any file added, removed or rewritten.
  """
  count = size = newest = 0
  for parent, _, names in os.walk(folder):
    for name in names:
      stat = os.stat(os.path.join(parent, name))
      count, size, newest = count + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
  return f'folder {count} files, {size} bytes, newest mtime_ns {newest}'


def _reference_path(net: Network, d: ml_collections.ConfigDict, split: str,
                    cache_dir: str | None) -> tuple[str, str]:
  """Where the reference statistics of (data source, split, network) are cached, and their full key in words.

  The path depends on the source, split and network name only, so statistics gone stale (other
  weights, a rewritten npz file or image folder: the rest of the key) are overwritten rather than piling up.
  """
  npz = os.path.abspath(d.npz_path) if d.npz_path else ''
  source = (f'npz {npz} holdout {d.npz_holdout}' if npz else
            f'image folder {os.path.abspath(d.image_folder)}' if d.image_folder else f'{d.name}')
  if d.get('binarize', 0.0) > 0:
    source += f' binarized at {d.binarize}'
  where = f'{source} | split {split} | {net.name}'
  digest = hashlib.sha1(where.encode()).hexdigest()[:16]
  key = f'{where} | weights {net.weights_id}'
  if npz and os.path.isfile(npz):
    stat = os.stat(npz)
    key += f' | npz {stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}'
  elif not npz and d.image_folder:
    key += ' | ' + _folder_fingerprint(os.path.join(d.image_folder, split))
  return os.path.join(cache.root(cache_dir), 'reference_stats', net.name, digest + '.npz'), key


def reference(net: Network, d: ml_collections.ConfigDict, split: str,
              cache_dir: str | None = None) -> dict[str, np.ndarray]:
  """{'mu', 'sigma', 'features'} of the real images of `split` of data config `d` under `net`, cached.

  The key (the network's weights; an npz file's or image folder's sizes and times) is taken before the images
  are read: files rewritten in between leave statistics stored under their old sizes and times, which the
  next call misses.
  """
  path, key = _reference_path(net, d, split, cache_dir)
  if os.path.isfile(path):
    with np.load(path) as f:
      if str(f['key']) == key:
        return {k: f[k] for k in ('mu', 'sigma', 'features')}
  real, _ = images_lib.load(d, split)
  feats, _ = net.outputs(real)
  mu, sigma = metrics.feature_stats(feats)
  keep = np.random.default_rng(0).permutation(len(feats))[:MAX_REFERENCE_FEATURES]
  ref = {'mu': mu, 'sigma': sigma, 'features': feats[np.sort(keep)].astype(np.float32)}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with cache.replacing(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, key=key, num_images=len(real), **ref)
  return ref


def classifier_summary(logits_NK: np.ndarray) -> dict[str, float]:
  """Mean top-class probability, and the entropy (nats) of how often each class is the top one.

  Entropy log K means every class is drawn equally often; near 0, one class only (mode collapse).
  """
  p_NK = np.exp(logits_NK - logits_NK.max(1, keepdims=True))
  p_NK /= p_NK.sum(1, keepdims=True)
  share_K = np.bincount(p_NK.argmax(1), minlength=p_NK.shape[1]) / len(p_NK)
  nz = share_K[share_K > 0]
  return {'confidence': float(p_NK.max(1).mean()), 'class_entropy': abs(float((nz * np.log(nz)).sum()))}


def class_accuracy(logits_NK: np.ndarray, labels_N: np.ndarray) -> float:
  """The share of samples whose most likely class is the one they were asked to be."""
  return float(np.mean(np.argmax(logits_NK, axis=1) == np.asarray(labels_N)))


def image_metrics(config: ml_collections.ConfigDict, images_NHWC: np.ndarray, devs: parallel.Devices,
                  cache_dir: str | None = None, nets: list[Network] | None = None,
                  labels_N: np.ndarray | None = None,
                  prompts_N: np.ndarray | None = None) -> tuple[dict[str, float], list[str]]:
  """FID / IS / KID (and, for classifiers, confidence and class entropy) of uint8 samples.

  With `labels_N`, the classes a class-conditional model was asked for, each classifier also
  reports `class_accuracy_<net>`: the share of samples it assigns to their requested class. With
  `prompts_N` that are MNIST-pairs captions, the caption accuracy (evaluation/captions.py) by the
  cell classifier `mnist_cells`.

  Compared with the real images of `eval.reference_split`; with `data.pad` the samples lose
  that border first, as the data set's images never had it. Returns the metrics and the
  reasons any feature network was left out; with no network at all, a UserError saying how
  to get one.
  """
  missing = []
  if nets is None:
    nets, missing = networks(config, devs, cache_dir)
  result = {}
  if prompts_N is not None and any(scenes.parse(str(p)) for p in prompts_N):
    try:
      cell_net = feature_net.load('mnist_cells', cache_dir, devs.local)
      result.update(caption_eval.accuracy(images_NHWC, list(prompts_N),
                                          lambda x: np.argmax(cell_net.logits(x), axis=1)))
    except UserError as e:
      missing.append(f'caption accuracy: {e}')
  if not nets:
    if result:
      return result, missing
    raise UserError('no feature network to judge samples with: ' + '; '.join(missing))
  split = config.eval.reference_split or config.data.train_split
  d, pad = unpadded(config.data), config.data.pad
  images_NHWC = np.asarray(images_NHWC)[:, pad:images_NHWC.shape[1] - pad, pad:images_NHWC.shape[2] - pad]
  for net in nets:
    ref = reference(net, d, split, cache_dir)
    feats, logits = net.outputs(images_NHWC)
    mu, sigma = metrics.feature_stats(feats)
    result[f'fid_{net.name}'] = metrics.frechet_distance(mu, sigma, ref['mu'], ref['sigma'])
    result[f'is_{net.name}'], result[f'is_{net.name}_std'] = metrics.inception_score(
        logits, splits=min(10, len(logits)))
    result[f'kid_{net.name}'], result[f'kid_{net.name}_std'] = metrics.kernel_inception_distance(
        feats, ref['features'], subset_size=min(1000, len(feats), len(ref['features'])))
    if net.is_classifier:
      result.update({f'{k}_{net.name}': v for k, v in classifier_summary(logits).items()})
      if labels_N is not None:
        result[f'class_accuracy_{net.name}'] = class_accuracy(logits, labels_N)
  return result, missing


def describe(config: ml_collections.ConfigDict, nets: list[Network]) -> str:
  """One line: which networks judged the samples, against which real split."""
  split = config.eval.reference_split or config.data.train_split
  return f'sample quality by {", ".join(n.name for n in nets)} against the real {split!r} split'

