"""The FID Inception v3 network (the 2015-12-05 TensorFlow graph) in Flax, and its weights.

The network is the one TF-GAN and pytorch-fid compute FID with: torchvision's Inception v3
without the auxiliary head, with the patches pytorch-fid's FIDInceptionA/C/E blocks make to
match the TensorFlow graph (average pools that do not count the padding; a max pool in the
last block's pool branch), BatchNorm with eps 1e-3 on its running statistics, and a 1008-way
classifier. Module and variable names follow pytorch-fid's state dict, so its released weights
(`WEIGHTS_URL`) map onto the Flax tree one tensor each.
"""

import functools
import hashlib
import os
import urllib.request

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax import cache
from aigc_jax.data.images import network_up
from aigc_jax.errors import UserError
from aigc_jax.evaluation import torch_checkpoint

INPUT_SIZE = 299
NUM_CLASSES = 1008
WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = f'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}'
WEIGHTS_SHA256_PREFIX = '6726825d'  # torch.hub's convention: the name carries the hash's start

Pair = int | tuple[int, int]


def _pair(v: Pair) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else v


def preprocess(images_BHWC: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """uint8 images in 0..255 (or floats in [0, 1]) -> float32 [B, size, size, 3] in [-1, 1].

  Grayscale [B, H, W, 1] is repeated to 3 channels. The resize is pytorch-fid's: its
  F.interpolate(mode='bilinear', align_corners=False) samples at half-pixel centres, clamped
  at the borders, without antialiasing, which is what jax.image.resize(..., 'bilinear',
  antialias=False) computes, up or down. (JAX's default antialias=True would blur when
  downsampling; TF-GAN's original resize differs from both by its pixel alignment.)
  """
  x = images_BHWC.astype(jnp.float32)
  if images_BHWC.dtype == jnp.uint8:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.ndim != 4 or x.shape[-1] != 3:
    raise UserError(f'Inception takes images [B, H, W, 3] or [B, H, W, 1], not {images_BHWC.shape}')
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), 'bilinear', antialias=False)
  return 2.0 * x - 1.0


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: convolution without bias, BatchNorm (eps 1e-3, running statistics), ReLU."""
  features: int
  kernel: Pair
  stride: int = 1
  padding: Pair = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=self.stride,
                padding=((ph, ph), (pw, pw)), use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """TensorFlow's 3x3 average pool: the zero padding is not counted in the mean."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """Mixed_5b..5d: 1x1, 5x5, double 3x3 and pooled branches (pytorch-fid's FIDInceptionA)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = ConvBN(64, 1, name='branch1x1')(x)
    b5 = ConvBN(48, 1, name='branch5x5_1')(x)
    b5 = ConvBN(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = ConvBN(64, 1, name='branch3x3dbl_1')(x)
    b3 = ConvBN(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = ConvBN(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = ConvBN(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: the 35x35 -> 17x17 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = ConvBN(384, 3, stride=2, name='branch3x3')(x)
    bd = ConvBN(64, 1, name='branch3x3dbl_1')(x)
    bd = ConvBN(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = ConvBN(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches (pytorch-fid's FIDInceptionC)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = ConvBN(192, 1, name='branch1x1')(x)
    b7 = ConvBN(c7, 1, name='branch7x7_1')(x)
    b7 = ConvBN(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = ConvBN(c7, 1, name='branch7x7dbl_1')(x)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = ConvBN(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = ConvBN(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = ConvBN(192, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: the 17x17 -> 8x8 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = ConvBN(192, 1, name='branch3x3_1')(x)
    b3 = ConvBN(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = ConvBN(192, 1, name='branch7x7x3_1')(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = ConvBN(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: split 1x3/3x1 branches; the pool branch averages (FIDInceptionE_1) or, in
  Mixed_7c, takes the max (FIDInceptionE_2), as the TensorFlow graph does."""
  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = ConvBN(320, 1, name='branch1x1')(x)
    b3 = ConvBN(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          ConvBN(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = ConvBN(448, 1, name='branch3x3dbl_1')(x)
    bd = ConvBN(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          ConvBN(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    pooled = (nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1))) if self.max_pool
              else _avg_pool_3x3(x))
    bp = ConvBN(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """images [B, H, W, 3 or 1] -> (pool3 features [B, 2048], logits [B, 1008]).

  `logits_bias=False` gives pool3 @ W without the classifier's bias, the logits the original
  Inception Score code (and torch-fidelity) take from `softmax/logits/MatMul`; True gives the
  full fc output, as pytorch-fid's network returns it.
  """
  logits_bias: bool = False

  @nn.compact
  def __call__(self, images_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = preprocess(images_BHWC)
    x = ConvBN(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = ConvBN(32, 3, name='Conv2d_2a_3x3')(x)
    x = ConvBN(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = ConvBN(80, 1, name='Conv2d_3b_1x1')(x)
    x = ConvBN(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    pool_BD = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, name='fc')
    logits_BK = fc(pool_BD)
    if not self.logits_bias:
      logits_BK = pool_BD @ fc.variables['params']['kernel']
    return pool_BD, logits_BK


# pytorch-fid's state dict: Flax leaf name -> torch name; kernels go OIHW -> HWIO, (out, in) -> (in, out).
_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
               'var': 'running_var'}


def torch_key(path: tuple[str, ...]) -> str:
  """pytorch-fid's state-dict key of a Flax variable path, e.g.
  ('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'."""
  return '.'.join(path[1:-1] + (_TORCH_LEAF[path[-1]],))


def _kernel_axes(ndim: int) -> tuple[int, ...]:
  """The transpose from torch's layout to Flax's: OIHW -> HWIO, (out, in) -> (in, out)."""
  return (2, 3, 1, 0) if ndim == 4 else (1, 0)


@functools.cache
def variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Every variable of InceptionV3 (params and batch_stats), flattened: path -> shape."""
  tree = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(tree).items()}


def params_from_torch_state_dict(sd: dict[str, np.ndarray]) -> dict:
  """Flax variables {'params', 'batch_stats'} of InceptionV3 from pytorch-fid's state dict.

  Every variable must be there with its shape, and every key of `sd` used (BatchNorm's
  `num_batches_tracked` counters aside); else a UserError names the keys.
  """
  flat, missing = {}, []
  for path, shape in variable_shapes().items():
    key = torch_key(path)
    if key not in sd:
      missing.append(key)
      continue
    a = np.asarray(sd[key], np.float32)
    if path[-1] == 'kernel':
      want = tuple(shape[i] for i in np.argsort(_kernel_axes(len(shape))))
      if a.shape != want:
        raise UserError(f'Inception weights: {key} has shape {a.shape}, the network needs {want}')
      a = np.transpose(a, _kernel_axes(a.ndim))
    elif a.shape != shape:
      raise UserError(f'Inception weights: {key} has shape {a.shape}, the network needs {shape}')
    flat[path] = a
  if missing:
    raise UserError(f'Inception weights lack {len(missing)} of the network\'s tensors, e.g. '
                    f'{", ".join(missing[:3])}: is this pytorch-fid\'s {WEIGHTS_FILE}?')
  unused = sorted(set(sd) - {torch_key(p) for p in flat} - {k for k in sd if k.endswith('.num_batches_tracked')})
  if unused:
    raise UserError(f'Inception weights hold {len(unused)} tensors the network has no place for, '
                    f'e.g. {", ".join(unused[:3])}: is this pytorch-fid\'s {WEIGHTS_FILE}?')
  return flax.traverse_util.unflatten_dict(flat)


def _save_npz(variables: dict, path: str) -> None:
  with cache.replacing(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **flax.traverse_util.flatten_dict(variables, sep='/'))


def _load_npz(path: str) -> dict:
  with np.load(path) as z:
    flat = {tuple(k.split('/')): z[k] for k in z.files}
  if {p: a.shape for p, a in flat.items()} != variable_shapes():
    raise UserError(f'{path} does not hold the FID Inception variables: delete it (a cache is '
                    'made again) or point eval.inception_weights at the .pth file')
  return flax.traverse_util.unflatten_dict(flat)


def _download(url: str, dest: str) -> None:
  """`url` to `dest` through a temporary file, checked against the hash its name carries."""
  sha = hashlib.sha256()
  with cache.replacing(dest) as tmp:
    try:
      with urllib.request.urlopen(url, timeout=60) as r, open(tmp, 'wb') as f:
        while chunk := r.read(1 << 20):
          sha.update(chunk)
          f.write(chunk)
    except OSError as e:
      raise UserError(f'could not download {url} ({e}): download it elsewhere and pass '
                      f'--config.eval.inception_weights=PATH, or put it at {dest}') from None
    if not sha.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
      raise UserError(f'{url} came back with SHA-256 {sha.hexdigest()}, not {WEIGHTS_SHA256_PREFIX}...: '
                      f'download it again, or put a good copy at {dest}')


def _convert(path: str) -> dict:
  try:
    return params_from_torch_state_dict(torch_checkpoint.load_state_dict(path))
  except UserError as e:
    raise UserError(f'{path}: {e}') from None


def load_inception(weights_path: str = '', cache_dir: str = cache.DEFAULT_DIR) -> dict:
  """The FID Inception variables {'params', 'batch_stats'} for InceptionV3().apply.

  From `weights_path` (eval.inception_weights) when set: pytorch-fid's .pth, or the .npz this
  function caches. Otherwise from `cache_dir`: the converted .npz if there, else the .pth
  (put there by hand, or downloaded from WEIGHTS_URL when the network is up), converted once
  and cached as .npz beside it. With neither file nor network, a UserError says where to get
  the weights and where to put them.
  """
  if weights_path:
    path = os.path.expanduser(weights_path)
    if not os.path.isfile(path):
      raise UserError(f'eval.inception_weights={weights_path!r} is not a file: give the path of '
                      f'{WEIGHTS_FILE} (from {WEIGHTS_URL})')
    return _load_npz(path) if path.endswith('.npz') else _convert(path)
  folder = os.path.expanduser(cache_dir)
  pth = os.path.join(folder, WEIGHTS_FILE)
  npz = pth[:-len('.pth')] + '.npz'
  if os.path.isfile(npz):
    return _load_npz(npz)
  if not os.path.isfile(pth):
    if not network_up('github.com'):
      raise UserError(f'the FID Inception weights {WEIGHTS_FILE} are not in {folder} and there is no '
                      f'network to download them: fetch {WEIGHTS_URL} elsewhere, then pass '
                      f'--config.eval.inception_weights=PATH or put it at {pth}')
    os.makedirs(folder, exist_ok=True)
    _download(WEIGHTS_URL, pth)
  variables = _convert(pth)
  _save_npz(variables, npz)
  return variables
