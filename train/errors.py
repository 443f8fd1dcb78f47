"""Errors a user can cause (bad config, data or workdir): ``train.main`` prints their message as
one paragraph and exits non-zero instead of showing a traceback."""


class UserError(ValueError):
  """A problem the user must fix; the message says what was expected and what to do."""


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/inf; the message names the step and fold."""
