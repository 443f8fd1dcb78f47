"""Errors of the training pipeline. :class:`UserError` (``mbaf_jax.errors``) is the base of every
error a user can fix; the command-line tools print its message as one paragraph and exit with
status 2 instead of showing a traceback (``train.cli.exit_status``)."""
from mbaf_jax.errors import UserError

__all__ = ["UserError", "NonFiniteLossError", "Stopped"]


class NonFiniteLossError(UserError, FloatingPointError):
  """The training loss became NaN/inf; the message names the step and fold and what to change."""


class Stopped(KeyboardInterrupt):
  """The run stopped at a point it chose because a stop was requested (a signal, a failed fusion
  kind); the message says where (e.g. "checkpointed after step 12 of fold loso_s1"). A
  KeyboardInterrupt, so that no ``except Exception`` swallows it."""
