"""What a loader read and what it could not use, so nothing is dropped silently."""
import collections
import dataclasses

from mbaf_jax.errors import UserError

# Examples per skip reason that format() prints (details=True prints all that were kept).
FORMAT_EXAMPLES = 2


class DataError(UserError):
  """A data-set problem the user must fix (bad path, corrupt file, strict-mode skip)."""


@dataclasses.dataclass
class LoadSummary:
  """A loader's report: counts read, their breakdowns, skips by reason (with examples), warnings.

  In strict mode every skip raises :class:`DataError` instead of being counted.
  :meth:`format` is short enough to print on every run; ``info`` holds the
  details (printed by ``format(details=True)``).
  """
  name: str = "data"  # the data set, first word of every report line
  strict: bool = False  # every skip raises DataError instead of being counted
  max_examples: int = 5  # examples kept per skip reason
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # reason -> items skipped
  examples: dict = dataclasses.field(default_factory=dict)  # reason -> up to max_examples examples
  info: dict = dataclasses.field(default_factory=dict)  # details (counts, checks) for logs and tests
  read: dict = dataclasses.field(default_factory=dict)  # what was read: unit -> count, e.g. {"utterances": 80}
  breakdown: dict = dataclasses.field(default_factory=dict)  # title -> {key: count}, e.g. "per class"
  warnings: list = dataclasses.field(default_factory=list)  # one sentence each, printed as "warning: ..."

  def skip(self, reason, item, n: int = 1):
    """Records that ``item`` (a path or id) was skipped for ``reason``.

    Args:
      reason: why, a short phrase shared by every item skipped for it.
      item: the path or id (with detail) shown as an example.
      n: how many items it stands for (e.g. the windows a record lost).

    Raises:
      DataError: in strict mode.
    """
    if self.strict:
      raise DataError(f"{self.name}: {reason}: {item} (strict mode: every skip is an error; "
                      "fix the file or run with strict=False to skip and count it)")
    self.counts[reason] += n
    self.examples.setdefault(reason, [])
    if len(self.examples[reason]) < self.max_examples:
      self.examples[reason].append(str(item))

  def warn(self, message: str):
    """Adds a warning sentence to the report (printed by :meth:`format`)."""
    if message not in self.warnings:
      self.warnings.append(message)

  @property
  def total_skipped(self):
    return sum(self.counts.values())

  def format(self, details: bool = False) -> str:
    """The report, a few aligned lines: counts read, breakdowns, skips by reason, warnings.

    Args:
      details: also print every ``info`` entry and every kept example (else
        FORMAT_EXAMPLES per reason). A summary without ``read`` counts always
        prints its ``info`` (its counts live there).

    Returns:
      A multi-line string without a trailing newline.
    """
    lines = []
    if self.read:
      lines.append(f"{self.name}: read " + ", ".join(f"{n} {unit}" for unit, n in self.read.items()))
    width = max([len(t) for t in self.breakdown] + [0])
    for title, table in self.breakdown.items():
      cells = "  ".join(f"{k} {v}" for k, v in table.items())
      lines.append(f"  {title:<{width}}  {cells}")
    skipped = f"skipped {self.total_skipped} item(s)"
    lines.append(f"  {skipped}" if self.read else f"{self.name}: {skipped}")
    for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
      ex = ", ".join(self.examples.get(reason, [])[:None if details else FORMAT_EXAMPLES])
      lines.append(f"  {n:6d}  {reason}" + (f"  (e.g. {ex})" if ex else ""))
    for message in self.warnings:
      lines.append(f"  warning: {message}")
    if details or not self.read:
      for key, value in self.info.items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)

  def to_dict(self):
    return {"name": self.name, "read": self.read, "breakdown": self.breakdown,
            "skipped": dict(self.counts), "examples": self.examples, "warnings": self.warnings,
            "info": self.info}
