"""Image classification with cross-entropy: the offline feature networks of the classifier FID.

Not a generative method, but trained by the same loop and step: its train state, checkpoints
and evaluation are the ones every method has. It reads labelled images ({'images',
'labels'}); evaluation reports the loss and accuracy of the EMA parameters, which the
feature network uses too. It draws no samples.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from aigc_jax.methods import labels
from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.models.classifier import CNN
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.train.state import TrainState


class Classifier(Method):
  """A CNN classifier: `config.model` sizes it (patch, widths, depth, features, num_groups, num_classes)."""

  RULES = (
      Rule('model.num_classes', lambda c: c.model.num_classes >= 2,
           'model.num_classes={model.num_classes} must be at least 2'),
      Rule('model.widths', lambda c: c.model.widths and min(c.model.widths) >= 1 and min(
          c.model.patch, c.model.depth, c.model.features) >= 1,
           lambda c: f'model.widths={tuple(c.model.widths)}, model.patch={c.model.patch}, model.depth='
                     f'{c.model.depth} and model.features={c.model.features} must be non-empty and positive'),
      Rule('model.num_groups', lambda c: not c.model.num_groups or all(w % c.model.num_groups == 0
                                                                        for w in c.model.widths),
           lambda c: f'model.num_groups={c.model.num_groups} must divide every width in model.widths='
                     f'{tuple(c.model.widths)} (0: no normalization)'),
      Rule('model.dropout', lambda c: 0.0 <= c.model.dropout < 1.0, 'model.dropout={model.dropout} must be in [0, 1)'),
      Rule('training.sample_every', lambda c: not c.training.sample_every,
           'training.sample_every={training.sample_every}: a classifier does not sample; set it to 0'),
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: dict[str, Any] | None = None):
    super().__init__(config, axis_name, data_info, parts)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    m = config.model
    self.model = CNN(num_classes=m.num_classes, patch=m.patch, widths=tuple(m.widths), depth=m.depth,
                     features=m.features, num_groups=m.num_groups, dropout=m.dropout)

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    x_BHWC = jnp.zeros((1,) + self.image_shape, jnp.float32)
    return self.model.init({'params': rng}, x_BHWC, train=False)['params'], {}

  def _losses_and_hits(self, params: Any, batch: Batch, train: bool,
                       rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Per image [B]: the cross-entropy, and whether the most likely class is its label."""
    labels_B = labels.of(batch, 'the classifier')
    rngs = {'dropout': rng} if train else {}
    logits_BK, _ = self.model.apply({'params': params}, batch['images'], train=train, rngs=rngs)
    losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B)
    return losses_B, (jnp.argmax(logits_BK, axis=-1) == labels_B).astype(jnp.float32)

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The mean cross-entropy, and the accuracy (dropout masks drawn per device)."""
    losses_B, hits_B = self._losses_and_hits(params, batch, True, rng.device())
    return losses_B.mean(), ({'accuracy': jnp.mean(hits_B)}, model_state)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """Cross-entropy and accuracy of the EMA parameters, per held-out image."""
    del rng  # evaluation is deterministic
    losses_B, hits_B = self._losses_and_hits(state.ema_params, batch, False)
    return {'loss': losses_B, 'accuracy': hits_B}
