"""What a user is told: the one exception type for mistakes they can fix, and warnings.

The CLI prints a UserError as a single line and exits non-zero; anything else is
a bug and keeps its traceback. `warn` is the one channel for warnings.
"""

import sys


class UserError(ValueError):
  """A problem in the user's input, with a message that says what to change."""


def warn(message: str) -> None:
  """One `gpt-jax: warning:` line on stderr, from the first process only."""
  import jax  # here, so that importing this module stays free of JAX

  if jax.process_index() == 0:
    print(f'gpt-jax: warning: {message}', file=sys.stderr, flush=True)
