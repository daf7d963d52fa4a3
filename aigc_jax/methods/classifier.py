"""Image classification with cross-entropy: the offline feature networks of the classifier FID.

Not a generative method, but trained by the same loop: its train state, checkpoints and
evaluation are the ones every method has. It reads labelled images ({'image', 'label'});
evaluation reports the loss and accuracy of the EMA parameters, which the feature network
uses too. It draws no samples.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from aigc_jax.errors import UserError
from aigc_jax.models.classifier import CNN
from aigc_jax.train import optim
from aigc_jax.train import state as state_lib


def _labels(batch: dict[str, Any]) -> jax.Array:
  if 'label' not in batch:
    raise UserError('the classifier needs labelled images, but this data source has none: '
                    'use one with labels (an .npz needs a `labels` array)')
  return batch['label']


class Classifier:
  """A CNN classifier: `config.model` sizes it (patch, widths, depth, features, num_groups, num_classes)."""

  sample_examples = 0  # a classifier does not sample

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str,
               data_info: dict[str, Any] | None = None):
    """`data_info` is unused: the config says all an image model needs of the data."""
    del data_info
    self.check_config(config)
    self.axis_name = axis_name
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    m = config.model
    self.model = CNN(num_classes=m.num_classes, patch=m.patch, widths=tuple(m.widths), depth=m.depth,
                     features=m.features, num_groups=m.num_groups, dropout=m.dropout)
    self.tx, self.lr_schedule = optim.create(config.optim, config.training.num_train_steps)
    self.ema_rate = config.training.ema_rate

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """The network's sizes, and no sampling, checked before any data load or compile."""
    m = config.model
    if m.num_classes < 2:
      raise UserError(f'model.num_classes={m.num_classes} must be at least 2')
    if not m.widths or min(m.widths) < 1 or m.patch < 1 or m.depth < 1 or m.features < 1:
      raise UserError(f'model.widths={tuple(m.widths)}, model.patch={m.patch}, model.depth={m.depth} and '
                      f'model.features={m.features} must be non-empty and positive')
    for width in m.widths:
      if m.num_groups and width % m.num_groups:
        raise UserError(f'model.num_groups={m.num_groups} must divide every width in model.widths='
                        f'{tuple(m.widths)} (0: no normalization)')
    if not 0.0 <= m.dropout < 1.0:
      raise UserError(f'model.dropout={m.dropout} must be in [0, 1)')
    if config.training.sample_every:
      raise UserError(f'training.sample_every={config.training.sample_every}: a classifier does not '
                      'sample; set it to 0')

  def init(self, rng: jax.Array) -> state_lib.TrainState:
    x = jnp.zeros((1,) + self.image_shape, jnp.float32)
    params = self.model.init({'params': rng}, x, train=False)['params']
    return state_lib.create(params, self.tx, jax.random.fold_in(rng, 1))

  def _loss_and_accuracy(self, params: Any, batch: dict[str, Any], train: bool,
                         rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    labels_B = _labels(batch)
    rngs = {'dropout': rng} if train else {}
    logits_BK, _ = self.model.apply({'params': params}, batch['image'], train=train, rngs=rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B).mean()
    return loss, jnp.mean(jnp.argmax(logits_BK, axis=-1) == labels_B)

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                 rng: jax.Array) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(self.axis_name))
    (loss, accuracy), grads = jax.value_and_grad(self._loss_and_accuracy, has_aux=True)(
        state.params, batch, True, rng)
    grads = jax.lax.pmean(grads, self.axis_name)
    new_state = state_lib.apply_gradients(state, grads, self.tx, self.ema_rate)
    metrics = {'loss': jax.lax.pmean(loss, self.axis_name),
               'accuracy': jax.lax.pmean(accuracy, self.axis_name),
               'grad_norm': optax.global_norm(grads), 'lr': self.lr_schedule(state.step)}
    return new_state, metrics

  def eval_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                rng: jax.Array) -> dict[str, jax.Array]:
    """Cross-entropy and accuracy of the EMA parameters on held-out images."""
    del rng  # evaluation is deterministic
    loss, accuracy = self._loss_and_accuracy(state.ema_params, batch, False)
    return {'loss': jax.lax.pmean(loss, self.axis_name), 'accuracy': jax.lax.pmean(accuracy, self.axis_name)}

  def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
    """Batches are equal in size, so the batch-averaged accuracy is the accuracy over all examples."""
    return means

  def sample(self, state: state_lib.TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    raise UserError('a classifier does not sample: use --mode=train or --mode=eval')

  def decode_samples(self, samples: dict[str, Any]) -> dict[str, Any]:
    raise UserError('a classifier does not sample: use --mode=train or --mode=eval')
