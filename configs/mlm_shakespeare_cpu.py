"""gpt_shakespeare_cpu's model and training as a masked-token model (MaskGIT's objective), decoded by MaskGIT.

4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps, with bidirectional attention and
a [MASK] token: every window has a share cos(pi/2 * u), u ~ U[0, 1), of its positions masked
(all by [MASK], as MaskGIT) and the loss is the cross-entropy there. Evaluation masks 15% of every
validation window (BERT's rate) and estimates the pseudo-log-likelihood from 8 positions per window.
Sampling fills 64 positions in 16 steps; `sample.template` (with '_' to fill) infills instead.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'lm'
  config.data = default.text_data(name='tiny_shakespeare', block_size=64)

  config.model = model = ml_collections.ConfigDict()
  model.num_layers = 4
  model.num_heads = 4
  model.width = 128
  model.dropout = 0.0
  model.use_bias = False
  model.activation = 'gelu_tanh'  # GPT-2's tanh GELU; 'gelu': the exact erf form
  model.dtype = 'auto'        # bfloat16 compute on GPUs/TPUs, float32 on CPUs (methods/precision.py)

  config.lm = lm = ml_collections.ConfigDict()
  lm.objective = 'masked'     # 'causal': next-token (gpt_shakespeare_cpu); 'masked': methods/masked.py
  lm.mask_schedule = 'cosine'  # share masked per window: cos(pi/2 * u), u ~ U[0, 1); 'fixed': lm.mask_rate
  lm.mask_rate = 0.15         # 'fixed' schedule: BERT's 15%
  lm.replace_random = 0.0     # share of the masked positions given a random token instead of [MASK] (BERT: 0.1)
  lm.replace_keep = 0.0       # share of the masked positions left as they are (BERT: 0.1)
  lm.eval_mask_rate = 0.15    # eval: loss and accuracy per masked token with this share of each window masked
  lm.pll_positions = 8        # eval: positions per window for the pseudo-log-likelihood (64: all; 0: none)

  config.optim.optimizer = 'adamw'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.optim.min_lr = 1e-4
  config.optim.warmup_steps = 100
  config.optim.b2 = 0.99
  config.optim.weight_decay = 0.1
  config.optim.grad_clip = 1.0

  config.training.batch_size = 12
  config.training.num_train_steps = 2000
  config.training.checkpoint_every = 500
  config.training.sample_every = 2000
  config.training.eval_every = 250
  config.training.ema_rate = 0.0

  config.sample.num = 4
  config.sample.method = 'maskgit'  # iterative parallel decoding (the only decoding of a masked model)
  config.sample.prompt = ''       # given first tokens ('' : none)
  config.sample.length = 64       # positions to fill after the prompt (prompt + length <= data.block_size)
  config.sample.template = ''     # if set: the text to infill, '_' marking each position to fill (prompt, length unused)
  config.sample.steps = 16        # decoding steps (<= positions to fill; = them: one position a step)
  config.sample.temperature = 1.0  # of the token draws; 0: the most likely token
  config.sample.top_k = 0         # 0: off
  config.sample.top_p = 1.0       # 1: off
  config.sample.confidence_noise = 0.0  # Gumbel noise on the confidences, annealed to 0 (MaskGIT: 4.5); 0: none

  config.eval.batch_size = 48
  return config
