"""GPT-2 (Radford et al. 2019): the 124M model or a larger preset, or the shape of a Hugging Face checkpoint.

    python run.py --config=configs/gpt2.py:medium --workdir=W ...   # presets: 124M (default), medium, large, xl

With `--config.init_from=DIR` (a Hugging Face GPT-2 folder: config.json, model.safetensors or
pytorch_model.bin, and GPT-2's tokenizer files) the model's shape comes from DIR/config.json and
its weights start the run; the tokenizer is read from DIR unless `data.bpe_dir` names another
folder. Sampling needs no data, e.g. the AIGC text example:

    python run.py --config=configs/gpt2.py --workdir=W --mode=sample --config.init_from=DIR \
      --config.sample.prompt="Once upon a time" --config.sample.method=beam --config.sample.num_beams=5 \
      --config.sample.no_repeat_ngram_size=2 --config.sample.max_length=100

Training fine-tunes from init_from as nanoGPT's finetune_shakespeare does (constant lr 3e-5, no
dropout); from scratch, the 124M preset trains with nanoGPT's train_gpt2 optimizer settings after
setting optim.lr=6e-4, optim.schedule='cosine', optim.warmup_steps=2000.
"""

import ml_collections

from configs import default

# (num_layers, num_heads, width) of Hugging Face's gpt2, gpt2-medium, gpt2-large and gpt2-xl.
PRESETS = {'124M': (12, 12, 768), 'medium': (24, 16, 1024), 'large': (36, 20, 1280), 'xl': (48, 25, 1600)}


def get_config(preset: str = '124M') -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f'configs/gpt2.py:{preset}: use one of {", ".join(PRESETS)}')
  config = default.get_config()
  config.method = 'lm'
  config.data = default.text_data(name='tiny_shakespeare', block_size=1024, tokenizer='bpe')
  config.data.bpe_dir = ''        # '' with init_from: the tokenizer files of init_from

  config.model = model = ml_collections.ConfigDict()
  model.num_layers, model.num_heads, model.width = PRESETS[preset]  # init_from: its config.json's instead
  model.dropout = 0.0
  model.use_bias = True
  model.activation = 'gelu_tanh'  # GPT-2's gelu_new
  model.dtype = 'auto'            # bfloat16 compute on GPUs/TPUs, float32 on CPUs (methods/precision.py)

  config.optim.optimizer = 'adamw'
  config.optim.lr = 3e-5
  config.optim.schedule = 'constant'
  config.optim.b2 = 0.95
  config.optim.weight_decay = 0.1
  config.optim.grad_clip = 1.0

  config.training.batch_size = 8
  config.training.num_train_steps = 100
  config.training.log_every = 10
  config.training.checkpoint_every = 100
  config.training.ema_rate = 0.0  # no averaging: ema_params are the trained params

  config.sample.num = 1
  config.sample.prompt = 'Once upon a time'
  config.sample.length = 100      # new tokens (unless max_length is set)
  config.sample.max_length = 0    # prompt + new tokens, as transformers' max_length (0: sample.length new)
  config.sample.method = 'sample'  # or 'greedy', or 'beam' (deterministic; the keys below)
  config.sample.temperature = 1.0  # 0: always the most likely token
  config.sample.top_k = 50        # 0: off (transformers' default is 50)
  config.sample.top_p = 1.0       # 1: off
  config.sample.kv_cache = True   # False: every token recomputes its whole context (slow reference)
  config.sample.num_beams = 5
  config.sample.length_penalty = 1.0  # beam: a hypothesis scores sum log p / (new tokens) ** this
  config.sample.no_repeat_ngram_size = 0  # no n-gram of this size twice (0: off)
  config.sample.early_stopping = True  # beam: stop at num_beams finished hypotheses (False: once none can win)
  config.sample.end_token = '<|endoftext|>'  # GPT-2's eos_token_id ('' = none)

  config.eval.batch_size = 8
  return config
