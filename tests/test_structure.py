"""The package's shape: imports point one way, functions stay short, no block is written twice.

Checks anyone can repeat on the source alone (`pytest tests/test_structure.py`); they parse
gpt_jax/ with `ast` and import nothing.
"""

import ast
import collections
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'gpt_jax'
MAX_FUNCTION_LINES = 40  # logical lines of code (statements), however they are wrapped
DUPLICATE_WINDOW = 6

# Modules that must not depend on the layers above them: the network knows nothing of
# data or tasks, and the data and task layers nothing of training.
FORBIDDEN = {
  'gpt_jax.model': (
    'gpt_jax.tasks',
    'gpt_jax.data',
    'gpt_jax.train',
    'gpt_jax.pretrain',
    'gpt_jax.finetune',
    'gpt_jax.loop',
    'gpt_jax.checkpoint',
    'gpt_jax.cli',
    'gpt_jax.weights',
    'gpt_jax.hf',
    'gpt_jax.sharding',
  ),
  'gpt_jax.sharding': ('gpt_jax.tasks', 'gpt_jax.data', 'gpt_jax.train', 'gpt_jax.model'),
  'gpt_jax.data': (
    'gpt_jax.tasks',
    'gpt_jax.train',
    'gpt_jax.pretrain',
    'gpt_jax.finetune',
    'gpt_jax.loop',
    'gpt_jax.cli',
    'gpt_jax.weights',
    'gpt_jax.model',
  ),
  'gpt_jax.tasks': (
    'gpt_jax.train',
    'gpt_jax.pretrain',
    'gpt_jax.finetune',
    'gpt_jax.loop',
    'gpt_jax.cli',
    'gpt_jax.weights',
    'gpt_jax.checkpoint',
    'gpt_jax.model',
  ),
}


def _modules() -> dict[str, Path]:
  modules = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    modules[name] = path
  return modules


def import_graph() -> dict[str, set[str]]:
  """module -> the gpt_jax modules it imports anywhere (top level or inside functions)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
          submodule = f'{node.module}.{alias.name}'
          targets.add(submodule if submodule in modules else node.module)
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state = {}  # module -> 'open' while on the DFS stack, 'done' after

  def visit(module, stack):
    state[module] = 'open'
    for target in sorted(graph[module]):
      if state.get(target) == 'open':
        return stack[stack.index(target) :] + [target]
      if target not in state:
        cycle = visit(target, stack + [target])
        if cycle:
          return cycle
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_one_and_only_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_the_package_imports_form_no_cycle():
  graph = import_graph()
  assert 'gpt_jax.tasks.load' in graph and graph['gpt_jax.finetune']  # the parse sees imports
  assert find_cycle(graph) is None, f'import cycle: {" -> ".join(find_cycle(graph))}'


def test_no_module_imports_a_layer_above_it():
  wrong = [
    f'{module} imports {target}'
    for module, targets in import_graph().items()
    for layer, forbidden in FORBIDDEN.items()
    if module == layer or module.startswith(layer + '.')
    for target in targets
    if target.startswith(forbidden)
  ]
  assert not wrong, wrong


def _docstring_lines(tree: ast.AST) -> set[int]:
  lines = set()
  for node in ast.walk(tree):
    body = getattr(node, 'body', None)
    if (
      isinstance(body, list)
      and body
      and isinstance(body[0], ast.Expr)
      and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)
    ):
      lines.update(range(body[0].lineno, body[0].end_lineno + 1))
  return lines


def _code_lines(path: Path) -> list[tuple[int, str]]:
  """(first line number, text) of each logical line of code: a statement however the formatter
  wraps it, its tokens joined by single spaces; no comments, docstrings or imports.

  Logical lines, not physical ones, so that the limits below measure the code and not its
  layout (a call with one argument per line is as long as the same call on one line).
  """
  source = path.read_text()
  docstrings = _docstring_lines(ast.parse(source))
  skipped = (
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
  )
  lines, tokens = [], []
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type in skipped:
      continue
    if token.type != tokenize.NEWLINE:
      tokens.append(token)
      continue
    text = ' '.join(t.string for t in tokens)
    first = tokens[0].start[0] if tokens else 0
    if tokens and first not in docstrings and not text.startswith(('import ', 'from ')):
      lines.append((first, text))
    tokens = []
  return lines


def test_no_function_is_longer_than_the_limit():
  long = []
  for name, path in _modules().items():
    starts = [number for number, _ in _code_lines(path)]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = sum(node.lineno <= number <= node.end_lineno for number in starts)
        if lines > MAX_FUNCTION_LINES:
          long.append(f'{name}.{node.name}: {lines} lines of code')
  assert not long, long


def test_no_block_of_code_is_written_twice():
  seen = collections.defaultdict(list)
  for name, path in _modules().items():
    lines = _code_lines(path)
    for start in range(len(lines) - DUPLICATE_WINDOW + 1):
      window = tuple(text for _, text in lines[start : start + DUPLICATE_WINDOW])
      seen[window].append(f'{name}:{lines[start][0]}')
  repeated = [places for places in seen.values() if len(places) > 1]
  assert not repeated, repeated[:5]
