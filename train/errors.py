"""Errors of the training pipeline. :class:`UserError` (``mbaf_jax.errors``) is the base of every
error a user can fix; ``train.main`` prints its message as one paragraph and exits with status 2
instead of showing a traceback."""
from mbaf_jax.errors import UserError

__all__ = ["UserError", "NonFiniteLossError"]


class NonFiniteLossError(UserError, FloatingPointError):
  """The training loss became NaN/inf; the message names the step and fold and what to change."""
