"""What a method is: its losses (one `Phase` per network it trains), eval metrics and sampler, and nothing else.

The shared step (`train/step.py`) takes the gradient of each phase's loss, reduces it over the
devices, updates the network with the optimizer of the phase's config section, keeps the
EMA, and reports the loss, gradient norm and learning rate; the loop (`train/loop.py`) calls
the rest. A method is written for one device and knows the device axis only by name (for
BatchNorm statistics and class cycling); its randomness comes as an `Rng` (`randomness.py`).

Shape letters, everywhere in aigc_jax: B batch (examples on one device), H W C image height,
width and channels, Z latent dimensions, F feature dimensions, K classes, M candidates per
example (beams, importance samples), T token positions, S key/value positions (the context),
P prompt positions, L P + new tokens, V vocabulary, D model width, N attention heads, E head
width, U steps along a path (a sampler's timesteps, an interpolation's points), J pairs of examples,
G n-grams, I O a kernel's input and output channels. A suffix names an array's axes: x_BHWC, t_B, logits_BTV.
"""

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Sequence

import jax
import ml_collections

from aigc_jax import rules
from aigc_jax.errors import UserError
from aigc_jax.randomness import Rng
from aigc_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
# loss(params, batch, rng, model_state) -> (loss, (metrics, new model_state)); see Phase.
LossFn = Callable[[Any, Batch, Rng, Any], tuple[jax.Array, tuple[Metrics, Any]]]


@dataclasses.dataclass(frozen=True)
class Phase:
  """One network's update within the shared train step; a method lists its phases in the order they run.

  `loss(params, batch, rng, model_state)` returns the scalar loss of this device's batch, its
  metrics (means over the batch, averaged over devices by the step) and the new model state
  (BatchNorm statistics; returned as given where nothing changes). `params` are all the
  params of the state, those of `network` being differentiated; a later phase sees the
  networks earlier phases updated (a GAN's G step sees the new D).

  Attributes:
    loss: the phase's loss function.
    network: the key of `state.params` this phase trains; None: all of them (a one-network method).
    name: the prefix of the step's own metrics of this phase ('d' -> d_loss, d_grad_norm, d_lr);
      '' for a one-phase method (loss, grad_norm, lr).
    optim: the config section of this phase's optimizer (train/optim.py).
    ema: whether `state.ema_params` is the moving average of this network's params (at most one phase).
  """
  loss: LossFn
  network: str | None = None
  name: str = ''
  optim: str = 'optim'
  ema: bool = True


@dataclasses.dataclass(frozen=True)
class PartSpec:
  """A model this method takes from another run (`config.parts.<name>`, train/parts.py).

  Attributes:
    methods: the methods whose runs may serve as this part.
    fits: rules over {'run': this run's config, 'part': the part's run config}, checked before any compile.
  """
  methods: tuple[str, ...]
  fits: rules.Table = ()


class Method:
  """The base of every method: defaults for what a method need not have.

  A subclass sets `RULES` (its config rules: rules.py), `DATA_KIND` ('images' or 'text') and,
  if it builds on other runs, `PARTS`; it defines `init`, `loss` (or `phases` for several
  networks), `eval_step` and `sample`.
  """

  RULES: ClassVar[rules.Table] = ()
  DATA_KIND: ClassVar[str] = 'images'
  PARTS: ClassVar[Mapping[str, PartSpec]] = {}

  sample_examples: int = 0
  """Held-out examples `sample_from_examples` wants (0: none, so sampling loads no data)."""

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str,
               data_info: dict[str, Any] | None = None, parts: Mapping[str, Any] | None = None):
    """`data_info` is what the data pipeline says of itself (the LM's tokenizer); `parts` the resolved parts."""
    del data_info
    self.axis_name = axis_name
    self.parts = dict(parts or {})

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(params, model_state) of a fresh model: shapes from the config and data info, so no data are needed."""
    raise NotImplementedError

  def warm_start(self, state: TrainState) -> TrainState:
    """A fresh `state` with weights from outside the run (the LM's `init_from`); as it is by default."""
    return state

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The loss of a one-network method (see Phase)."""
    raise NotImplementedError

  @property
  def phases(self) -> Sequence[Phase]:
    """The updates of one train step, in order: by default one, of `loss`, over all the params."""
    return (Phase(self.loss),)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """Held-out metrics of one device's batch, one value per example ([B] each): the loop averages them."""
    raise NotImplementedError

  def summarize(self, means: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics derived from the means (perplexity from the mean loss): of the train step's metrics on the device,
    and of the eval metrics averaged over the split on the host."""
    return dict(means)

  def sample_count(self, requested: int) -> int:
    """How many samples one draw makes, given `sample.num`: that many, unless the method's prompts fix the count."""
    return requested

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` samples on one device, as arrays (it runs under pmap)."""
    raise UserError(f'{type(self).__name__} does not sample: use --mode=train or --mode=eval')

  def sample_from_examples(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """What the model makes of the first `sample_examples` held-out examples (e.g. reconstructions).

    Called only when `sample_examples` > 0, with the whole batch on every device.
    """
    raise NotImplementedError

  def part_variables(self, state: TrainState) -> Any:
    """What a run of this method gives a method that takes it as a part (train/parts.py): its EMA params.

    A method whose part needs more of its state (an autoencoder's latent scale) returns that too.
    """
    return state.ema_params

  def decode_samples(self, samples: dict[str, Any]) -> dict[str, Any]:
    """Host side: the gathered arrays of `sample` (and `sample_from_examples`) as `writers.write_samples` writes them.

    {'images': uint8 [N, H, W, C]} for image methods, with optionally more uint8 image arrays
    under other names ([N, H, W, C], or laid out as [rows, cols, H, W, C]) and 'labels' (int [N],
    the classes a class-conditional sampler was asked for); {'text': [N strings]} for text.
    """
    return samples
