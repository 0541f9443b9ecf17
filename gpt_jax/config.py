"""Loading `configs/*.py` files and applying `--config.a.b=value` overrides."""

import ast
import difflib
import importlib.util
import sys
from pathlib import Path

import ml_collections

from gpt_jax.errors import UserError

# Where `--config tiny` finds the shipped configs (a source checkout / editable install).
CONFIGS_DIR = Path(__file__).resolve().parent.parent / 'configs'


def resolve_config_path(name_or_path: str) -> Path:
  """A config file path, or the name of a shipped config (`tiny`, `finetune/sst2`)."""
  path = Path(name_or_path)
  if path.is_file():
    return path
  shipped = CONFIGS_DIR / (name_or_path if name_or_path.endswith('.py') else name_or_path + '.py')
  if shipped.is_file():
    return shipped
  raise UserError(f'config file {name_or_path} not found; pass a path such as configs/tiny.py '
                  f'or a shipped name ({", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.py")))})')


def load_config(name_or_path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Runs the file's `get_config()` and applies `path=value` overrides in order."""
  path = resolve_config_path(name_or_path)
  # Config files import their siblings (`import gpt1`) and the shipped base configs.
  search = [str(path.resolve().parent), str(CONFIGS_DIR)]
  sys.path[:0] = search
  try:
    spec = importlib.util.spec_from_file_location(f'_gpt_jax_config_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    del sys.path[:len(search)]
  if not hasattr(module, 'get_config'):
    raise UserError(f'config file {path} has no get_config() function')
  config = module.get_config()
  for override in overrides:
    apply_override(config, override)
  return config


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
    raise UserError(f'unknown config field {field}' +
                    (f'; did you mean {hint[0]}?' if hint else f'; known: {", ".join(known)}'))
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
    raise UserError(f'config field {dotted} expects a {type(current).__name__}; got {text!r}') from None
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
    return type(current)(value)
  if type(value) is not type(current):
    raise UserError(f'config field {dotted} expects a {type(current).__name__}; got {text!r}')
  return value
