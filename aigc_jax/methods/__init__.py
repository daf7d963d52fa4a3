"""Generative methods, by name (`config.method`): each one's losses, eval metrics and sampler (methods/base.py).

A method class is built as `cls(config, axis_name, data_info, parts)`, where `data_info` is
the data pipeline's `info` (the LM's tokenizer; nothing for images) and `parts` the models it
takes from other runs (train/parts.py). Its config rules (`cls.RULES`) are checked before
any data load or compile.
"""

from typing import Any, Mapping

import ml_collections

from aigc_jax import rules
from aigc_jax.errors import UserError
from aigc_jax.methods import autoencoder
from aigc_jax.methods import classifier
from aigc_jax.methods import ddpm
from aigc_jax.methods import gan
from aigc_jax.methods import ldm
from aigc_jax.methods import lm
from aigc_jax.methods import vae
from aigc_jax.methods.base import Method

REGISTRY: dict[str, type[Method]] = {'autoencoder': autoencoder.Autoencoder, 'classifier': classifier.Classifier,
                                     'ddpm': ddpm.DDPM, 'gan': gan.GAN, 'ldm': ldm.LDM, 'lm': lm.LM, 'vae': vae.VAE}


def method_class(name: str) -> type[Method]:
  if name not in REGISTRY:
    raise UserError(f'method={name!r} is unknown: choose one of {sorted(REGISTRY)}')
  return REGISTRY[name]


def check_config(config: ml_collections.ConfigDict) -> None:
  """The method's own settings in `config`, checked before any data load or compile."""
  name = config.method
  cls = method_class(name)
  if config.data.get('kind') != cls.DATA_KIND:
    raise UserError(f'method={name!r} trains on {cls.DATA_KIND} but data.kind={config.data.get("kind")!r}: use a '
                    f'config written for method {name!r} (or the method this config was written for)')
  rules.check(config, cls.RULES, f'method {name!r}')


def get_method(config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: Mapping[str, Any] | None = None) -> Method:
  """The method named by `config.method`, built from the config (checked first), the data's info and its parts."""
  check_config(config)
  return method_class(config.method)(config, axis_name, data_info, parts)
