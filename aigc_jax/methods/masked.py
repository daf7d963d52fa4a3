"""Masked-token modelling (BERT, MaskGIT) for the LM's Transformer, and MaskGIT's iterative parallel decoding.

Training (`lm.objective='masked'`, attention bidirectional): in every window a share r of the T
positions is picked, exactly ceil(r * T) of them (at least one) uniformly at random, with
r = `lm.mask_rate` for the 'fixed' schedule (BERT's 15%) or r = cos(pi/2 * u), u ~ U[0, 1), for
MaskGIT's 'cosine' schedule (r in (0, 1]). Of the picked positions a share `lm.replace_random`
gets a uniformly random token, `lm.replace_keep` keeps its own and the rest get the [MASK] token,
id V after the tokenizer's V tokens (BERT's 80/10/10 is 0.1 and 0.1; MaskGIT's, 0 and 0). The loss
is the cross-entropy at the picked positions only, averaged per picked token over the global batch.
The model has V + 1 logits; the [MASK] one is never a prediction, so every loss, accuracy,
likelihood and draw here is over the first V (`predictions`).

Evaluation: loss and accuracy per masked token with `lm.eval_mask_rate` of every window set to
[MASK] (the same count in every window, so the mean of the windows' means is the mean per token),
and the pseudo-log-likelihood per token (Salazar et al. 2020), the mean of log p(x_t | every other
token of the window), one forward pass per position with that position alone masked, over
`lm.pll_positions` random positions of each window (data.block_size: all of them, the exact value).

Decoding (`sample.method='maskgit'`, Chang et al. 2022): the canvas is the prompt followed by
`sample.length` [MASK]s, or `sample.template` with its '_' marks masked. Each of `sample.steps`
steps predicts every masked position at once, draws a token for each (`sample.temperature`,
top-k, top-p), scores it by its log-probability plus `sample.confidence_noise` * (1 - t / steps)
Gumbel noise (MaskGIT's annealed "choice temperature"), and keeps the most confident draws, leaving
masked as many positions as the cosine schedule allows (`unmask_schedule`); given tokens never change.

Shapes: B windows or samples, T positions, L canvas positions, V tokens, K positions per window
for the pseudo-log-likelihood, U decoding steps.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aigc_jax.data.tokenizers import Tokenizer
from aigc_jax.errors import UserError
from aigc_jax.rules import Rule

OBJECTIVES = ('causal', 'masked')
SCHEDULES = ('fixed', 'cosine')
FILL_MARK = '_'  # sample.template: a position to fill


def objective(config: ml_collections.ConfigDict) -> str:
  """`lm.objective`; a config with no `lm` section trains the causal (next-token) model."""
  return config.lm.objective if 'lm' in config else 'causal'


def _masked(c: Any) -> bool:
  return 'lm' in c and c.lm.objective == 'masked'


# The LM's rules of the masked objective and of MaskGIT decoding (read only where they apply).
RULES = (
    Rule('lm.objective', lambda c: 'lm' not in c or c.lm.objective in OBJECTIVES,
         lambda c: f'lm.objective={c.lm.objective!r} is unknown: use one of {", ".join(map(repr, OBJECTIVES))}'),
    Rule('lm.mask_schedule', lambda c: not _masked(c) or c.lm.mask_schedule in SCHEDULES,
         lambda c: f'lm.mask_schedule={c.lm.mask_schedule!r} is unknown: use one of '
                   f'{", ".join(map(repr, SCHEDULES))}'),
    Rule('lm.mask_rate', lambda c: not _masked(c) or 0.0 < c.lm.mask_rate <= 1.0,
         'lm.mask_rate={lm.mask_rate} must be in (0, 1]'),
    Rule('lm.replace_random', lambda c: not _masked(c) or (
        c.lm.replace_random >= 0 and c.lm.replace_keep >= 0 and c.lm.replace_random + c.lm.replace_keep <= 1),
         'lm.replace_random={lm.replace_random} and lm.replace_keep={lm.replace_keep} must be >= 0 and sum to '
         'at most 1 (BERT: 0.1 and 0.1; the rest of the picked positions get [MASK])'),
    Rule('lm.eval_mask_rate', lambda c: not _masked(c) or 0.0 < c.lm.eval_mask_rate <= 1.0,
         'lm.eval_mask_rate={lm.eval_mask_rate} must be in (0, 1]'),
    Rule('lm.pll_positions', lambda c: not _masked(c) or 0 <= c.lm.pll_positions <= c.data.block_size,
         'lm.pll_positions={lm.pll_positions} must be in [0, data.block_size={data.block_size}] '
         '(0: no pseudo-log-likelihood; data.block_size: every position)'),
    Rule('sample.method', lambda c: _masked(c) == (c.sample.method == 'maskgit'),
         lambda c: ("a masked-token model (lm.objective='masked') decodes with sample.method='maskgit', not "
                    f'{c.sample.method!r}') if _masked(c) else
                   "sample.method='maskgit' decodes a masked-token model: set lm.objective='masked', or use "
                   "'sample' or 'beam'"),
    Rule('sample.steps', lambda c: c.sample.method != 'maskgit' or c.sample.steps >= 1,
         'sample.steps={sample.steps} must be >= 1'),
    Rule('sample.confidence_noise', lambda c: c.sample.method != 'maskgit' or c.sample.confidence_noise >= 0,
         'sample.confidence_noise={sample.confidence_noise} must be >= 0 (0: keep the most likely draws)'),
)


def predictions(logits_BTV1: jax.Array, mask_id: int) -> jax.Array:
  """The logits [..., V] of the real tokens: all but the [MASK] token's (id V, the last)."""
  return logits_BTV1[..., :mask_id]


def pick(keys_B: jax.Array, rate_B: jax.Array, T: int) -> jax.Array:
  """bool [B, T]: ceil(rate * T) positions of each window (at least one), uniformly at random."""
  count_B = jnp.clip(jnp.ceil(rate_B * T), 1, T).astype(jnp.int32)
  scores_BT = jax.vmap(lambda k: jax.random.uniform(k, (T,)))(keys_B)
  rank_BT = jnp.argsort(jnp.argsort(scores_BT, axis=-1), axis=-1)
  return rank_BT < count_B[:, None]


def mask_rates(keys_B: jax.Array, schedule: str, rate: float) -> jax.Array:
  """float32 [B]: the share of each window to mask: `rate` ('fixed'), or cos(pi/2 * u), u ~ U[0, 1) ('cosine')."""
  if schedule == 'fixed':
    return jnp.full(keys_B.shape[:1], rate, jnp.float32)
  u_B = jax.vmap(lambda k: jax.random.uniform(k))(keys_B)
  return jnp.cos(0.5 * math.pi * u_B)


def corrupt(keys_B: jax.Array, tok_BT: jax.Array, picked_BT: jax.Array, mask_id: int, replace_random: float,
            replace_keep: float) -> jax.Array:
  """The model's input: picked positions get a random token (share `replace_random`), their own token
  (`replace_keep`) or [MASK] (the rest); the others stay."""
  T = tok_BT.shape[1]
  u_BT = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (T,)))(keys_B)
  random_BT = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (T,), 0, mask_id))(keys_B)
  new_BT = jnp.where(u_BT < replace_random, random_BT,
                     jnp.where(u_BT < replace_random + replace_keep, tok_BT, mask_id))
  return jnp.where(picked_BT, new_BT, tok_BT).astype(jnp.int32)


def masked_cross_entropy(logits_BTV: jax.Array, tok_BT: jax.Array,
                         picked_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy [B, T], correct [B, T]) at the picked positions, 0 elsewhere (so no gradient reaches
  the other positions' logits)."""
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tok_BT)
  correct_BT = jnp.argmax(logits_BTV, axis=-1) == tok_BT
  return jnp.where(picked_BT, ce_BT, 0.0), (correct_BT & picked_BT).astype(jnp.float32)


class MaskedObjective:
  """The masked objective's loss and eval metrics for a bidirectional Transformer `model` (vocabulary V + 1)."""

  def __init__(self, config: ml_collections.ConfigDict, model: Any, mask_id: int, axis_name: str):
    self.cfg = config.lm
    self.model = model
    self.mask_id = mask_id
    self.axis_name = axis_name

  def _logits(self, params: Any, tok_BT: jax.Array, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    rngs = {'dropout': rng} if train else {}
    return predictions(self.model.apply({'params': params}, tok_BT, train=train, rngs=rngs), self.mask_id)

  def loss(self, params: Any, tok_BT1: jax.Array, rng: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The cross-entropy per picked token of the global batch, and its accuracy and mask ratio.

    A window is its first T = block_size tokens. This device's sums are divided by the global
    count of picked positions over the device count, so the step's mean over devices is the mean
    per picked token of the whole batch, however the batch is split.
    """
    tok_BT = tok_BT1[:, :-1]
    B, T = tok_BT.shape
    keys_B = rng.examples(B)
    key = lambda i: jax.vmap(jax.random.fold_in, (0, None))(keys_B, i)
    picked_BT = pick(key(1), mask_rates(key(0), self.cfg.mask_schedule, self.cfg.mask_rate), T)
    input_BT = corrupt(key(2), tok_BT, picked_BT, self.mask_id, self.cfg.replace_random, self.cfg.replace_keep)
    ce_BT, correct_BT = masked_cross_entropy(self._logits(params, input_BT, True, rng.device()), tok_BT, picked_BT)
    per_device = jax.lax.psum(jnp.sum(picked_BT), self.axis_name) / jax.lax.psum(1, self.axis_name)
    return jnp.sum(ce_BT) / per_device, {'masked_accuracy': jnp.sum(correct_BT) / per_device,
                                         'mask_ratio': jnp.mean(picked_BT)}

  def eval_metrics(self, params: Any, tok_BT1: jax.Array, rng: Any) -> dict[str, jax.Array]:
    """Per window [B]: loss and accuracy per masked token at `lm.eval_mask_rate`, and the pseudo-log-likelihood."""
    tok_BT = tok_BT1[:, :-1]
    B, T = tok_BT.shape
    keys_B = rng.examples(B)
    picked_BT = pick(keys_B, jnp.full((B,), self.cfg.eval_mask_rate), T)
    ce_BT, correct_BT = masked_cross_entropy(
        self._logits(params, jnp.where(picked_BT, self.mask_id, tok_BT)), tok_BT, picked_BT)
    count_B = jnp.sum(picked_BT, axis=1)
    metrics = {'loss': jnp.sum(ce_BT, axis=1) / count_B, 'masked_accuracy': jnp.sum(correct_BT, axis=1) / count_B}
    if self.cfg.pll_positions:
      metrics['pll'] = self.pseudo_log_likelihood(params, tok_BT, keys_B)
    return metrics

  def pseudo_log_likelihood(self, params: Any, tok_BT: jax.Array, keys_B: jax.Array) -> jax.Array:
    """float32 [B]: mean of log p(x_t | the window without x_t) over `lm.pll_positions` random positions t."""
    B, T = tok_BT.shape
    K = self.cfg.pll_positions
    order_BT = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, 1), T))(keys_B)

    def one(t_B):
      """log p of each window's token at its position t, that position alone masked (one forward pass)."""
      at_BT = jnp.arange(T)[None] == t_B[:, None]
      logp_BTV = jax.nn.log_softmax(self._logits(params, jnp.where(at_BT, self.mask_id, tok_BT)))
      logp_BT = jnp.take_along_axis(logp_BTV, tok_BT[..., None], axis=-1)[..., 0]
      return jnp.sum(jnp.where(at_BT, logp_BT, 0.0), axis=1)

    return jnp.mean(jax.lax.map(one, order_BT[:, :K].T), axis=0)


def summarize(means: dict[str, Any]) -> dict[str, Any]:
  """The pseudo-perplexity exp(-pll) beside the means (at eval, where the pseudo-log-likelihood is measured)."""
  return {**means, 'pseudo_perplexity': jnp.exp(-means['pll'])} if 'pll' in means else dict(means)


def unmask_schedule(num_masked: int, steps: int) -> np.ndarray:
  """int [steps + 1]: positions still masked before the first step (num_masked) and after each step.

  MaskGIT's cosine schedule, floor(num_masked * cos(pi/2 * t / steps)) after step t, held to at
  least one fewer than the step before; with steps <= num_masked every step fills at least one
  position, the last fills the rest, and steps = num_masked fills exactly one per step (the
  cosine lies above the line from 1 to 0, so the floor never drops by more than 1 a step).
  """
  if not 1 <= steps <= num_masked:
    raise ValueError(f'{steps} steps cannot fill {num_masked} positions')
  left = [num_masked]
  for t in range(1, steps + 1):
    left.append(min(left[-1] - 1, math.floor(num_masked * math.cos(0.5 * math.pi * t / steps))))
  left[-1] = 0
  return np.asarray(left)


def maskgit(logits_fn: Callable[[jax.Array], jax.Array], canvas_L: np.ndarray, num: int, rng: jax.Array,
            steps: int, draw: Callable[[jax.Array, jax.Array], jax.Array], confidence_noise: float,
            mask_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`num` decodings of the [MASK] positions of `canvas_L` (`canvas`) by MaskGIT, in one lax.scan.

  `logits_fn(tok_BL)` gives the logits [B, L, V] of the real tokens; `draw(logits_NV, key)` draws
  one token per row of logits (temperature, top-k, top-p). Returns (tokens int32 [B, L], the
  log-probability of each filled token when it was chosen float32 [B, L] (0 where given), the step
  0..steps-1 that filled each position int32 [B, L] (-1 where given)). Step t uses the keys
  fold_in(rng, t).
  """
  B, L = num, len(canvas_L)
  left_U = jnp.asarray(unmask_schedule(int(np.sum(canvas_L == mask_id)), steps)[1:])

  def step(carry, t):
    tok_BL, logp_BL, filled_at_BL = carry
    masked_BL = tok_BL == mask_id
    logits_BLV = logits_fn(tok_BL)
    key = jax.random.fold_in(rng, t)
    draw_BL = draw(logits_BLV.reshape(B * L, -1), jax.random.fold_in(key, 0)).reshape(B, L)
    draw_logp_BL = jnp.take_along_axis(jax.nn.log_softmax(logits_BLV), draw_BL[..., None], axis=-1)[..., 0]
    noise_BL = confidence_noise * (1.0 - (t + 1) / steps) * jax.random.gumbel(jax.random.fold_in(key, 1), (B, L))
    confidence_BL = jnp.where(masked_BL, draw_logp_BL + noise_BL, jnp.inf)
    rank_BL = jnp.argsort(jnp.argsort(confidence_BL, axis=-1), axis=-1)  # 0: the least confident
    fill_BL = masked_BL & (rank_BL >= left_U[t])
    return (jnp.where(fill_BL, draw_BL, tok_BL), jnp.where(fill_BL, draw_logp_BL, logp_BL),
            jnp.where(fill_BL, t, filled_at_BL)), None

  init = (jnp.tile(jnp.asarray(canvas_L, jnp.int32), (B, 1)), jnp.zeros((B, L), jnp.float32),
          jnp.full((B, L), -1, jnp.int32))
  return jax.lax.scan(step, init, jnp.arange(steps))[0]


def canvas(tokenizer: Tokenizer, settings: ml_collections.ConfigDict, prompt_P: np.ndarray, mask_id: int,
           block_size: int) -> np.ndarray:
  """int32 [L]: what MaskGIT starts from, `sample.template` with its marks masked, else the prompt and
  `sample.length` [MASK]s; checked to fit the context and to have at least `sample.steps` positions to fill."""
  if settings.template:
    pieces = [tokenizer.encode(piece, what=f'sample.template={settings.template!r}')
              for piece in settings.template.split(FILL_MARK)]
    canvas_L = np.concatenate([np.append(piece, mask_id) for piece in pieces])[:-1]
    where = 'sample.template'
  else:
    canvas_L = np.concatenate([prompt_P, np.full(settings.length, mask_id)])
    where = 'sample.prompt and sample.length'
  num_masked = int(np.sum(canvas_L == mask_id))
  if len(canvas_L) > block_size:
    raise UserError(f'{where} make {len(canvas_L)} tokens, more than data.block_size={block_size}: a masked '
                    'model decodes within its context, so shorten it')
  if num_masked < settings.steps:
    raise UserError(f'{where} leave {num_masked} positions to fill, fewer than sample.steps={settings.steps}: '
                    f"lower sample.steps (or mark more positions with '{FILL_MARK}')")
  return canvas_L.astype(np.int32)
