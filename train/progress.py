"""What a run prints while it works: a line per phase with its time, and training progress.

* :func:`phase` — ``Loading 320 utterances ...`` when a phase starts and
  ``Loading 320 utterances: done in 4.1 s`` when it ends (process 0 only), so a user sees from the
  first second what the run is doing.
* :func:`progress` — per-fold training progress with steps/s and ETA: a redrawn tqdm bar on a
  terminal; otherwise (output redirected to a file or a pipe) a :class:`LineProgress` that writes
  a plain line at most every ``LINE_SECONDS`` and one when the fold ends.
"""
import contextlib
import sys
import time

import jax
from tqdm import tqdm

LINE_SECONDS = 30.0  # non-terminal progress: at most one line per 30 s (and one at the end)


def _is_primary() -> bool:
  return jax.process_index() == 0


@contextlib.contextmanager
def phase(what: str, enabled: bool | None = None, stream=None):
  """Prints ``what ...`` now and ``what: done in X s`` when the block ends.

  Args:
    what: the phase, e.g. "Generating the synthetic IEMOCAP-format corpus in runs/demo/data".
    enabled: print at all (default: on process 0 only).
    stream: where to print (default: ``sys.stdout``).

  Yields:
    Nothing; a block that raises prints no "done" line.
  """
  enabled = _is_primary() if enabled is None else enabled
  stream = stream or sys.stdout
  t0 = time.perf_counter()
  if enabled:
    print(f"{what} ...", file=stream, flush=True)
  yield
  if enabled:
    print(f"{what}: done in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)


def format_seconds(seconds: float) -> str:
  """``75.2`` → ``"1:15"``, ``3725`` → ``"1:02:05"`` (tqdm's style)."""
  s = int(round(max(seconds, 0.0)))
  h, rest = divmod(s, 3600)
  return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
  """tqdm's ``update`` / ``set_postfix`` / ``close`` as plain lines, for a non-terminal stream.

  A line (``dmf/loso_s1: 40/130 steps (31 %), 12.3 step/s, elapsed 0:03, ETA 0:07, loss=2.1``)
  is written at most every ``interval`` seconds and once by :meth:`close`. The rate and the ETA
  count the steps since the bar was created (so nothing done before, e.g. compiling, enters it).
  """

  def __init__(self, total: int, initial: int = 0, desc: str = "", stream=None,
               interval: float = LINE_SECONDS, clock=time.monotonic):
    """Args:
      total: steps of the fold.
      initial: steps already done (a resumed fold).
      desc: the prefix of every line (``"dmf/loso_s1"``).
      stream: where to write (default: ``sys.stderr``, like tqdm).
      interval: least seconds between two lines before the end.
      clock: time source (tests pass a fake one).
    """
    self.total, self.n, self.initial, self.desc = int(total), int(initial), int(initial), desc
    self.stream, self.interval, self.clock = stream or sys.stderr, float(interval), clock
    self.start = self.last = clock()
    self.postfix, self.closed = "", False

  def update(self, n: int = 1) -> None:
    """Counts ``n`` more steps; writes a line when ``interval`` has passed since the last."""
    self.n += n
    if self.clock() - self.last >= self.interval:
      self._write()

  def set_postfix(self, **values) -> None:
    """``loss=…, acc=…`` appended to the next line."""
    self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

  def line(self) -> str:
    """The current progress line."""
    elapsed = self.clock() - self.start
    done = self.n - self.initial
    rate = done / elapsed if elapsed > 0 and done else 0.0
    parts = [f"{self.desc}: {self.n}/{self.total} steps ({100 * self.n // max(self.total, 1)} %)"]
    if rate:
      parts.append(f"{rate:.1f} step/s")
    parts.append(f"elapsed {format_seconds(elapsed)}")
    if rate and self.n < self.total:
      parts.append(f"ETA {format_seconds((self.total - self.n) / rate)}")
    if self.postfix:
      parts.append(self.postfix)
    return ", ".join(parts)

  def _write(self) -> None:
    print(self.line(), file=self.stream, flush=True)
    self.last = self.clock()

  def close(self) -> None:
    """Writes the final line (once)."""
    if not self.closed:
      self.closed = True
      self._write()


def progress(enabled: bool, total: int, initial: int, desc: str, stream=None, position=0):
  """A fold's progress: None when disabled, a tqdm bar when ``stream`` (default ``sys.stderr``)
  is a terminal (on line ``position``: fusion kinds trained at the same time each have one), else
  a :class:`LineProgress`."""
  if not enabled:
    return None
  stream = stream or sys.stderr
  isatty = getattr(stream, "isatty", None)
  if isatty is not None and isatty():
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                file=stream, position=position, leave=position == 0)
  return LineProgress(total, initial, desc, stream=stream)
