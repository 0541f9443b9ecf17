"""The one exception type for mistakes a user can fix (bad config, data, paths, checkpoints).

The CLI prints these as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
  """A problem in the user's input, with a message that says what to change."""
