"""Parts: trained models from other runs, frozen, that a method builds on (`config.parts.<name>`).

Latent diffusion takes an autoencoder from one run and a text encoder from another; a token
prior takes a VQ-VAE. A method declares the parts it takes (`Method.PARTS`: name -> the
methods whose runs may serve, and rules the part's config must fit); a config names each
part's run as `config.parts.<name> = '<workdir>'` (its newest checkpoint) or
`'<workdir>@<step>'`. Before anything compiles, each part is resolved: the run's
`config.json` rebuilds its method (its models and functions), and a missing workdir, a run of
another method or a part whose config does not fit is one clear line. The part's EMA params
are then read from that run's checkpoint (without touching it) and put into the train state
(`model_state[state.PARTS][name]`), where the shared step keeps them frozen.

They are saved with every checkpoint, and so is the part's record (workdir, step, config,
data info): a resumed, sampled or evaluated run rebuilds the part from its own checkpoint,
exactly as it trained with it, even after the other run trained on or was deleted. A
config that names another run for a recorded part is refused.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from aigc_jax import methods
from aigc_jax import rules
from aigc_jax.errors import UserError
from aigc_jax.methods.base import Method
from aigc_jax.train import checkpoint
from aigc_jax.train import state as state_lib
from aigc_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Part:
  """A resolved part: the run it comes from, and its method rebuilt from that run's config."""
  name: str
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  data_info: dict[str, Any]
  method: Method

  def record(self) -> dict[str, Any]:
    """What a checkpoint keeps of the part, to rebuild it without its run."""
    return {'workdir': self.workdir, 'step': self.step, 'config': self.config.to_dict(), 'data_info': self.data_info}


def parse(value: str) -> tuple[str, int | None]:
  """'<workdir>' or '<workdir>@<step>' -> (absolute workdir, step or None)."""
  workdir, at, step = value.rpartition('@') if '@' in value else (value, '', '')
  if at and not step.isdigit():
    raise UserError(f'a part is <workdir> or <workdir>@<step>, not {value!r}: the step must be a number')
  return os.path.abspath(os.path.expanduser(workdir)), int(step) if at else None


def _run_config(key: str, workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise UserError(f'{key}={workdir}: no run there ({path} is missing): give the workdir of a finished run')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _checkpoint(key: str, value: str, workdir: str, step: int | None) -> tuple[int, dict[str, Any]]:
  """(step, data info) of the checkpoint of the run `value` names: `step`, or its newest."""
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 1, read_only=True)
  try:
    steps = ckpts.steps() if os.path.isdir(ckpts.directory) else []
    if not steps:
      raise UserError(f'{key}={value}: that run has no checkpoint in {ckpts.directory}: train it first')
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise UserError(f'{key}={value}: that run has no checkpoint of step {step} (it has {steps})')
    return step, ckpts.data_info() or {}
  finally:
    ckpts.close()


def resolve(config: ml_collections.ConfigDict, axis_name: str,
            recorded: dict[str, Any] | None = None) -> dict[str, Part]:
  """The parts `config.method` takes, from `config.parts` or, once a run has checkpoints, from their `recorded` parts.

  Every problem is one UserError, before anything compiles.
  """
  cls = methods.method_class(config.method)
  given = {k: v for k, v in config.get('parts', ml_collections.ConfigDict()).items()}
  recorded = recorded or {}
  unknown = sorted(set(given) - set(cls.PARTS))
  if unknown:
    takes = ', '.join(cls.PARTS) or 'none'
    raise UserError(f'config.parts.{unknown[0]}: method {config.method!r} takes no part of that name (it takes: '
                    f'{takes})')
  parts = {}
  for name, spec in cls.PARTS.items():
    key, value = f'parts.{name}', given.get(name, '')
    if name in recorded:
      r = recorded[name]
      named_workdir, named_step = parse(value) if value else (r['workdir'], None)
      if named_workdir != r['workdir'] or named_step not in (None, r['step']):
        raise UserError(f'{key}={value}, but this run trained with {r["workdir"]}@{r["step"]} (saved with its '
                        f'checkpoints): set {key} back to it (or leave it empty), or use a new workdir')
      workdir, step, data_info = r['workdir'], r['step'], r['data_info']
      part_config = ml_collections.ConfigDict(r['config'])
    elif not value:
      raise UserError(f'{key} is not set: method {config.method!r} builds on a trained '
                      f'{" or ".join(spec.methods)} run: give its workdir, --config.{key}=DIR (or DIR@STEP)')
    else:
      workdir, step = parse(value)
      part_config = _run_config(key, workdir)
    if part_config.get('method') not in spec.methods:
      raise UserError(f'{key}={workdir} is a method={part_config.get("method")!r} run, but this part must be a '
                      f'{" or ".join(repr(m) for m in spec.methods)} run')
    if name not in recorded:
      step, data_info = _checkpoint(key, value, workdir, step)
    if methods.method_class(part_config.method).PARTS:
      raise UserError(f'{key}={workdir} builds on parts of its own, and a part cannot have parts yet: '
                      'give a run without parts')
    rules.check(ml_collections.ConfigDict({'run': config, 'part': part_config}), spec.fits, f'part {key}')
    parts[name] = Part(name, workdir, step, part_config, data_info,
                       methods.get_method(part_config, axis_name, data_info))
  return parts


def _state_shapes(part: Part) -> Any:
  """The shapes and dtypes of the train state of the part's run, from its config alone."""
  train = step_lib.build(part.method, part.config, part.method.axis_name)
  return jax.eval_shape(train.init, jax.random.PRNGKey(0))


def load(part: Part) -> Any:
  """What the part's method gives from its checkpoint (`Method.part_variables`: its EMA params), as host arrays,
  read without touching its run."""
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _state_shapes(part))
  ckpts = checkpoint.Checkpoints(os.path.join(part.workdir, 'checkpoints'), 1, read_only=True)
  try:
    state = ckpts.restore(target, step=part.step)
  except UserError as e:
    raise UserError(f'parts.{part.name}={part.workdir}@{part.step}: its checkpoint does not fit the model its '
                    f'config.json describes ({e})') from None
  finally:
    ckpts.close()
  return jax.device_get(part.method.part_variables(state))


def placeholders(part: Part) -> Any:
  """Zeros shaped like what `load` reads: what a checkpoint that holds the part restores into."""
  shapes = jax.eval_shape(part.method.part_variables, _state_shapes(part))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def attach(state: state_lib.TrainState, params: dict[str, Any]) -> state_lib.TrainState:
  """`state` with the parts' params (name -> params) in its model state; `state` itself without parts."""
  if not params:
    return state
  return state.replace(model_state={**state.model_state, state_lib.PARTS: params})


def records(parts: dict[str, Part]) -> dict[str, Any]:
  return {name: part.record() for name, part in parts.items()}
