"""JAX's persistent compilation cache, on by default, so a restarted run skips compiling.

A resumed or preempted run compiles exactly the programs it compiled before;
with the cache they are read back from disk instead of rebuilt. The directory
is the config's top-level `compile_cache_dir` (default DEFAULT_DIR, a local
path or gs://; '' turns the cache off). JAX's own JAX_COMPILATION_CACHE_DIR,
when set, takes precedence. Call `enable` once per process, before the first
compilation.
"""

import os

from gpt_jax.errors import UserError

DEFAULT_DIR = '~/.cache/gpt_jax/jax_cache'


def enable(config=None) -> str | None:
  """Points JAX's persistent compilation cache at config.compile_cache_dir; returns the directory.

  `config` None (a mode without a config, e.g. sampling) or a stored config
  from before the field existed uses DEFAULT_DIR. Returns None when it is off.
  """
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  cache_dir = DEFAULT_DIR if config is None else config.get('compile_cache_dir', DEFAULT_DIR)
  cache_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR', cache_dir)
  if cache_dir and '://' not in cache_dir:
    cache_dir = os.path.expanduser(cache_dir)
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as error:
      raise UserError(
        f'compile_cache_dir {cache_dir} cannot be created ({error.strerror}); '
        'pass another --config.compile_cache_dir, or "" to turn the cache off'
      ) from None
  jax.config.update('jax_compilation_cache_dir', cache_dir or None)
  # JAX decides once, at the first compilation, whether and where to cache; forget
  # that decision so this setting holds even after something has compiled.
  compilation_cache.reset_cache()
  return cache_dir or None
