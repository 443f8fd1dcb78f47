"""Counting what a loader skips, so nothing is dropped silently."""
import collections
import dataclasses

from mbaf_jax.errors import UserError


class DataError(UserError):
  """A data-set problem the user must fix (bad path, corrupt file, strict-mode skip)."""


@dataclasses.dataclass
class LoadSummary:
  """Counts of skipped items by reason, with a few examples of each.

  In strict mode every skip raises :class:`DataError` instead of being counted.
  """
  name: str = "data"
  strict: bool = False
  max_examples: int = 5
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)

  def skip(self, reason, item):
    """Records that ``item`` (a path or id) was skipped for ``reason``."""
    if self.strict:
      raise DataError(f"{self.name}: {reason}: {item} (strict mode: every skip is an error; "
                      "fix the file or run with strict=False to skip and count it)")
    self.counts[reason] += 1
    self.examples.setdefault(reason, [])
    if len(self.examples[reason]) < self.max_examples:
      self.examples[reason].append(str(item))

  @property
  def total_skipped(self):
    return sum(self.counts.values())

  def format(self):
    """A human-readable multi-line summary for the run's log."""
    lines = [f"{self.name}: skipped {self.total_skipped} item(s)"]
    for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
      ex = ", ".join(self.examples.get(reason, []))
      lines.append(f"  {n:6d}  {reason}" + (f"  (e.g. {ex})" if ex else ""))
    for key, value in self.info.items():
      lines.append(f"  {key}: {value}")
    return "\n".join(lines)

  def to_dict(self):
    return {"name": self.name, "skipped": dict(self.counts), "examples": self.examples,
            "info": self.info}
