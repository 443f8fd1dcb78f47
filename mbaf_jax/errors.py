"""The one family of errors a user can cause and fix (bad path, bad config, corrupt file, a
workdir that belongs to another run).

Every user-facing error of the library and of ``train/`` derives from :class:`UserError`, so a
command-line tool catches this one class, prints its message as one paragraph and exits with
status 2; anything else is an internal error and keeps its traceback.
"""


class UserError(ValueError):
  """A problem the user must fix; the message says what is wrong and what to do."""
