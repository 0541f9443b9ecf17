"""Loading configs and applying `--config.a.b=value` overrides.

The shipped configs (the repository's configs/ directory) are installed as the
package `gpt_jax.configs`, so `--config tiny` or `--config finetune/sst2` finds
them from a wheel too, and config files import each other by their full name
(`from gpt_jax.configs import gpt1`). A user's own config file is loaded from
its path and may import the shipped ones the same way.
"""

import ast
import dataclasses
import difflib
import importlib
import importlib.resources
import importlib.util
import pathlib
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import ml_collections

from gpt_jax.errors import UserError

if TYPE_CHECKING:
  from _typeshed import DataclassInstance

View = TypeVar('View', bound='DataclassInstance')  # a typed view of one config section

_PACKAGE = 'gpt_jax.configs'


def shipped_configs() -> list[str]:
  """Names of the shipped configs: 'tiny', 'gpt1', 'finetune/sst2', ..."""
  root = importlib.resources.files(_PACKAGE)
  names = []
  for entry in sorted(pathlib.Path(str(root)).rglob('*.py')):
    relative = entry.relative_to(str(root)).with_suffix('')
    if relative.name != '__init__':
      names.append(relative.as_posix())
  return names


def _shipped_module(name_or_path: str) -> str | None:
  """'gpt_jax.configs.finetune.sst2' for 'finetune/sst2', 'finetune/sst2.py' or the shipped
  file's own path; None for anything else."""
  path = pathlib.Path(name_or_path)
  root = pathlib.Path(str(importlib.resources.files(_PACKAGE))).resolve()
  if path.is_file():
    if root not in path.resolve().parents:
      return None  # the user's own file
    name = path.resolve().relative_to(root).with_suffix('').as_posix()
  else:
    name = name_or_path.removesuffix('.py')
  return f'{_PACKAGE}.{name.replace("/", ".")}' if name in shipped_configs() else None


def _load_module(name_or_path: str) -> types.ModuleType:
  module_name = _shipped_module(name_or_path)
  if module_name is not None:
    return importlib.import_module(module_name)
  path = pathlib.Path(name_or_path)
  if not path.is_file():
    raise UserError(
      f'config file {name_or_path} not found; pass a file path or a shipped name '
      f'({", ".join(shipped_configs())})'
    )
  # A private module name: the user's file never shadows, or is shadowed by, another module.
  spec = importlib.util.spec_from_file_location(f'_gpt_jax_user_config_{path.stem}', path)
  if spec is None or spec.loader is None:  # a suffix Python cannot import (not .py)
    raise UserError(f'config file {name_or_path} is not a Python file: give a .py file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Runs the config's `get_config()` and applies `path=value` overrides in order."""
  module = _load_module(name_or_path)
  if not hasattr(module, 'get_config'):
    raise UserError(f'config {name_or_path} has no get_config() function')
  config = module.get_config()
  for override in overrides:
    apply_override(config, override)
  return config


def section_view(view: type[View], section: Any, name: str) -> View:
  """The fields of dataclass `view` read from config section `name` (a ConfigDict or mapping).

  Functions take such a typed view of the sections they read instead of the whole config;
  the section may hold more fields, for other readers.
  """
  fields = [field.name for field in dataclasses.fields(view)]
  missing = [field for field in fields if field not in section]
  if missing:
    raise UserError(
      f'the config has no {", ".join(f"{name}.{field}" for field in missing)}: start from a '
      'shipped config (configs/) that defines every field'
    )
  return view(**{field: section[field] for field in fields})


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets one `a.b.c=value` field, converting the value to the field's current type."""
  if '=' not in override:
    raise UserError(f'config override {override!r} must look like model.n_layer=2')
  dotted, text = override.split('=', 1)
  *parents, leaf = dotted.split('.')
  node = config
  for depth, key in enumerate(parents):
    node = _child(node, key, '.'.join(parents[:depth]))
  current = _child(node, leaf, '.'.join(parents))
  with node.ignore_type():
    node[leaf] = _convert(text, current, dotted)


def _child(node, key, where):
  if not isinstance(node, ml_collections.ConfigDict) or key not in node:
    known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    hint = difflib.get_close_matches(key, known, n=1)
    field = f'{where}.{key}' if where else key
    raise UserError(
      f'unknown config field {field}'
      + (f'; did you mean {hint[0]}?' if hint else f'; known: {", ".join(known)}')
    )
  return node[key]


def _convert(text: str, current, dotted: str):
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise UserError(f'config field {dotted} is a boolean; got {text!r}')
  if isinstance(current, str) or current is None:
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(
      f'config field {dotted} expects a {type(current).__name__}; got {text!r}'
    ) from None
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
    return type(current)(value)
  if type(value) is not type(current):
    raise UserError(f'config field {dotted} expects a {type(current).__name__}; got {text!r}')
  return value
