"""Test helper: set dotted config fields, as ``--config.<a.b.c>=value`` does on the command line."""


def set_fields(config, overrides: dict):
  """Sets every ``{"a.b.c": value}`` of ``overrides`` in ``config`` (unlocked, so a test may add a
  field the config lacks, e.g. a misspelt fusion option) and returns ``config``."""
  with config.unlocked():
    for dotted, value in overrides.items():
      *parents, leaf = dotted.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config
