"""Config rules as data: each method, sampler and the loop declare theirs in one table, checked before any compile.

A rule names the key it is about, a check of the config and the one-line message a user
sees when the check fails. Messages are `str.format_map` templates over the config
(`'{model.num_heads}'`, `'{sample.method!r}'`), or functions of it where a message needs a
derived value. Checks read the config through a `View`, so a config written for another
method, which lacks a key, fails with the key it lacks rather than an AttributeError.
"""

import dataclasses
from typing import Any, Callable, Iterable, Sequence, Union

import ml_collections

from aigc_jax.errors import UserError


class View:
  """A read-only view of a config whose missing keys are UserErrors naming the key's full path and `owner`."""

  def __init__(self, node: ml_collections.ConfigDict, owner: str, path: str = ''):
    self._node, self._owner, self._path = node, owner, path

  def __getattr__(self, key: str) -> Any:
    if key.startswith('__'):  # Python's own protocols (copy, pickle) are not config keys
      raise AttributeError(key)
    if key not in self._node:
      raise UserError(f'config key {self._path}{key} is missing, and {self._owner} needs it: use a config written '
                      f'for {self._owner} (or the method this config was written for)')
    value = self._node[key]
    return View(value, self._owner, f'{self._path}{key}.') if isinstance(value, ml_collections.ConfigDict) else value

  __getitem__ = __getattr__

  def __contains__(self, key: str) -> bool:
    return key in self._node

  def keys(self) -> Any:
    return self._node.keys()

  def get(self, key: str, default: Any = None) -> Any:
    return self[key] if key in self._node else default


@dataclasses.dataclass(frozen=True)
class Rule:
  """`ok(config)` must hold, else `message` (a template over the config, or a function of it) is the error."""
  key: str
  ok: Callable[[Any], bool]
  message: str | Callable[[Any], str]

  def explain(self, config: Any) -> str:
    return self.message(config) if callable(self.message) else self.message.format_map(config)


# A table: rules, and functions of no arguments that stand for the rules they return at check time
# (a registry's, such as the samplers', which may grow after the table is written).
Table = Sequence[Union[Rule, Callable[[], Iterable[Rule]]]]


def expand(table: Table) -> list[Rule]:
  """The rules of `table`, registry entries expanded."""
  out = []
  for entry in table:
    out.extend([entry] if isinstance(entry, Rule) else entry())
  return out


def check(config: ml_collections.ConfigDict | View, table: Table, owner: str) -> None:
  """Raises the UserError of the first rule of `table` that `config` breaks; `owner` is named for missing keys."""
  view = config if isinstance(config, View) else View(config, owner)
  for rule in expand(table):
    if not rule.ok(view):
      raise UserError(rule.explain(view))


def one_of(key: str, choices: Iterable[str]) -> Rule:
  """The rule that config value `key` is one of `choices` (a dict's keys, a registry, read at check time)."""
  def value(c: Any) -> Any:
    node = c
    for part in key.split('.'):
      node = node[part]
    return node
  return Rule(key, lambda c: value(c) in choices,
              lambda c: f'{key}={value(c)!r} is unknown: use one of {", ".join(map(repr, choices))}')
