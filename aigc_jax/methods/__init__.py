"""Generative methods: each is an objective, a per-device train/eval step and a sampler.

A method is written for one device; it reduces across devices only through
`jax.lax.pmean(x, axis_name)`. `aigc_jax.train.parallel` maps it over all devices.
A method class is built as `cls(config, axis_name, data_info)`, where `data_info` is the
data pipeline's `info` (the LM's tokenizer; nothing for images), and offers a static
`check_config(config)` that the loop calls before any data load or compile.
"""

from typing import Any, Protocol

import jax
import ml_collections

from aigc_jax.errors import UserError
from aigc_jax.methods import classifier
from aigc_jax.methods import ddpm
from aigc_jax.methods import gan
from aigc_jax.methods import lm
from aigc_jax.methods import vae
from aigc_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]

_REGISTRY = {'classifier': classifier.Classifier, 'ddpm': ddpm.DDPM, 'gan': gan.GAN, 'lm': lm.LM, 'vae': vae.VAE}
_DATA_KIND = {'lm': 'text'}  # the data.kind each method trains on; 'images' if not listed


class Method(Protocol):
  """What the training loop needs of a method, and nothing more."""

  sample_examples: int
  """Held-out examples `sample_from_examples` wants (0: none, so sampling loads no data)."""

  def init(self, rng: jax.Array) -> TrainState:
    """A fresh train state; shapes come from the config and data_info, so no data are needed."""

  def train_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    """One optimizer step on one device's share of the global batch."""

  def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> Metrics:
    """Held-out metrics of one device's batch, averaged over devices."""

  def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
    """Host side: the final eval metrics from the eval_step metrics averaged over batches."""

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` samples on one device, as arrays (it runs under pmap)."""

  def sample_from_examples(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """What the model makes of the first `sample_examples` held-out examples (e.g. reconstructions).

    Called only when `sample_examples` > 0, with the whole batch on every device.
    """

  def decode_samples(self, samples: dict[str, Any]) -> dict[str, Any]:
    """Host side: the gathered arrays of `sample` (and `sample_from_examples`) as what `writers.write_samples` writes.

    {'images': uint8 [N, H, W, C]} for image methods, with optionally more uint8 image arrays
    under other names ([N, H, W, C], or laid out as [rows, cols, H, W, C]) and 'labels' (int [N],
    the classes a class-conditional sampler was asked for); {'text': [N strings]} for text.
    """


def _method_class(config: ml_collections.ConfigDict) -> type:
  if config.method not in _REGISTRY:
    raise UserError(f'method={config.method!r} is unknown: choose one of {sorted(_REGISTRY)}')
  return _REGISTRY[config.method]


class _Keys:
  """A read-only view of a config whose missing keys are UserErrors naming the key's full path.

  A method's `check_config` reads the keys it needs through it, so a config written for
  another method (whose model section holds other keys) fails with the key it lacks.
  """

  def __init__(self, node: ml_collections.ConfigDict, method: str, path: str = ''):
    self._node, self._method, self._path = node, method, path

  def __getattr__(self, key: str) -> Any:
    if key.startswith('__'):  # Python's own protocols (copy, pickle) are not config keys
      raise AttributeError(key)
    if key not in self._node:
      raise UserError(f'config key {self._path}{key} is missing, and method={self._method!r} needs it: use a '
                      f'config written for method {self._method!r} (or the method this config was written for)')
    value = self._node[key]
    return _Keys(value, self._method, f'{self._path}{key}.') if isinstance(value, ml_collections.ConfigDict) else value

  __getitem__ = __getattr__

  def __contains__(self, key: str) -> bool:
    return key in self._node

  def keys(self) -> Any:
    return self._node.keys()


def check_config(config: ml_collections.ConfigDict) -> None:
  """The method's own settings in `config`, checked before any data load or compile."""
  method = config.method
  cls = _method_class(config)
  kind = _DATA_KIND.get(method, 'images')
  if config.data.get('kind') != kind:
    raise UserError(f'method={method!r} trains on {kind} but data.kind={config.data.get("kind")!r}: use a config '
                    f'written for method {method!r} (or the method this config was written for)')
  cls.check_config(_Keys(config, method))


def get_method(config: ml_collections.ConfigDict, axis_name: str,
               data_info: dict[str, Any] | None = None) -> Method:
  """The method named by `config.method`, built from the config (validates it) and the data's info."""
  return _method_class(config)(config, axis_name, data_info)
