"""What the three command-line tools (``train.main``, ``train.predict``, ``train.experiments``)
share: the exit status of a run, JAX's persistent compilation cache, and SIGINT / SIGTERM.

Signals never raise. A handler only records the request (:class:`StopRequest`) and writes one line;
the run stops at points it chooses — between two train steps (after a checkpoint), after loading
the data, after compiling, between folds — by raising :class:`~train.errors.Stopped` there. An
exception raised from a handler would land wherever the interpreter happens to be (a garbage
collection callback, a checkpoint thread, a context manager's exit) and could not be made safe. A
second signal ends the process at once with status 130, without saving. A signal that arrives
once the run has finished changes nothing (exit 0, and the run says so).

This module imports no JAX, so ``train.main`` installs the handlers before its heavy imports.
"""
import contextlib
import os
import signal
import sys
import threading
import warnings

from mbaf_jax.errors import UserError
from train.errors import Stopped

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = 130  # exit status of a stopped run (128 + SIGINT, as shells report Ctrl-C)


def say(line: str, fd: int = 2) -> None:
  """Writes ``line`` to a file descriptor without Python's stream buffers, whose locks a signal
  handler must not take (the interrupted code may hold them)."""
  data = (line + "\n").encode("utf-8", "replace")
  try:
    while data:
      data = data[os.write(fd, data):]
  except OSError:
    pass


class StopRequest:
  """A request to stop the run at the next point the code chooses.

  Set by a signal handler (:func:`handle_signals`), by a fusion kind that failed (the other kinds
  then checkpoint and stop), or by a test. Training loops mark themselves with :meth:`training`,
  so a handler can say whether the stop will save a checkpoint; :meth:`finish` marks the run as
  done, after which a request changes nothing.
  """

  def __init__(self):
    self._event = threading.Event()  # set: stop at the next chosen point
    self._lock = threading.Lock()
    self._loops = 0  # training loops running now (fusion kinds trained at once)
    self.reason = ""  # why (e.g. "SIGINT received")
    self.finished = False  # the run is complete; a request now is only acknowledged

  def set(self, reason: str = "stop requested") -> None:
    if not self._event.is_set():
      self.reason = reason
    self._event.set()

  def is_set(self) -> bool:
    return self._event.is_set()

  def wait(self, timeout: float | None = None) -> bool:
    return self._event.wait(timeout)

  def honoured(self) -> bool:
    """Whether a training loop is running (it checkpoints at its next step when this is set)."""
    with self._lock:
      return self._loops > 0

  def check(self, where: str) -> None:
    """Raises :class:`Stopped` when a stop was requested (``where``: the point reached, for the
    message, e.g. "after loading the data; no step was trained")."""
    if self.is_set():
      raise Stopped(f"{self.reason or 'stop requested'}; stopped {where}")

  def finish(self) -> None:
    self.finished = True

  @contextlib.contextmanager
  def training(self):
    """Marks a training loop as running for the duration of the ``with`` block."""
    with self._lock:
      self._loops += 1
    try:
      yield
    finally:
      with self._lock:
        self._loops -= 1


def _handler(stop: StopRequest):
  def handle(signum, frame):
    del frame
    name = signal.Signals(signum).name
    if stop.finished:
      say(f"\n{name} received after the run finished; its results are complete.")
      return
    if stop.is_set():
      say(f"\n{name} received again: stopping now, without saving. Rerun the same command to "
          "resume from the last checkpoint.")
      os._exit(INTERRUPTED)  # pylint: disable=protected-access
    stop.set(f"{name} received")
    then = ("saving a checkpoint after the current step, then stopping" if stop.honoured() else
            "stopping after the current phase")
    say(f"\n{name} received: {then} (send it again to stop at once, without saving).")
  return handle


@contextlib.contextmanager
def handle_signals(stop: StopRequest, restore: bool = True):
  """SIGINT / SIGTERM inside the block set ``stop`` (a second one exits at once, status 130).

  Only the main thread can install handlers; elsewhere this does nothing. A signal recorded by
  :func:`catch_signals_early` before the block is carried into ``stop``.

  Args:
    stop: the run's stop request.
    restore: put the previous handlers back when the block ends. A command-line tool passes
      False: a signal during its exit must not meet Python's default handler.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  if _EARLY:
    stop.set(f"{_EARLY[0]} received")
  previous = {s: signal.signal(s, _handler(stop)) for s in STOP_SIGNALS}
  try:
    yield
  finally:
    if restore:
      for s, h in previous.items():
        signal.signal(s, h)


_EARLY = []  # the name of a signal caught by catch_signals_early


def catch_signals_early() -> None:
  """Records SIGINT / SIGTERM from now on (a command-line tool's first statement, before its slow
  imports); :func:`handle_signals` then acts on a recorded one."""

  def record(signum, frame):
    del frame
    if not _EARLY:
      _EARLY.append(signal.Signals(signum).name)

  for s in STOP_SIGNALS:
    signal.signal(s, record)


def exit_status(fn, stop: StopRequest | None = None) -> int:
  """Calls ``fn()`` and returns the process exit status.

  0: done (also when a stop was requested after the run had finished: it says so); 2: a user
  error, printed as one paragraph; 130: stopped (the message says how to resume).
  """
  try:
    fn()
  except (UserError, FileNotFoundError, NotADirectoryError) as e:
    print(f"\nerror: {e}", file=sys.stderr, flush=True)
    return 2
  except (Stopped, KeyboardInterrupt) as e:
    print(f"\nstopped: {e or 'interrupted'}; rerun the same command to resume.", file=sys.stderr,
          flush=True)
    return INTERRUPTED
  finally:
    if stop is not None:
      stop.finish()
  if stop is not None and stop.is_set():
    print(f"finished: {stop.reason}, but the run had already completed; its results are "
          "complete.", file=sys.stderr, flush=True)
  return 0


def run_command(fn, stop: StopRequest, restore: bool = True) -> int:
  """``fn()`` under :func:`exit_status` with signals handled (:func:`handle_signals`; a
  command-line tool passes ``restore=False``)."""
  with handle_signals(stop, restore=restore):
    return exit_status(fn, stop)


def exit_now(status: int) -> None:
  """Ends the process with ``status`` once the output is flushed, skipping the interpreter's
  shutdown: during it Python restores the default signal handlers, and a late Ctrl-C would kill
  the process with a traceback or status -2. Everything the run writes is closed before this."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(status)  # pylint: disable=protected-access


def _one_line(message, category, filename, lineno, line=None) -> str:
  del category, filename, lineno, line
  return f"warning: {message}\n"


def plain_warnings() -> None:
  """Prints every Python warning (e.g. a loader's "fewer than five sessions") as one line,
  ``warning: <message>``, without the source file and line that mean nothing to a user."""
  warnings.formatwarning = _one_line


def default_cache_dir() -> str:
  """``$XDG_CACHE_HOME/mbaf_jax/xla`` (``~/.cache`` when XDG_CACHE_HOME is unset)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mbaf_jax", "xla")


def enable_compilation_cache(path: str = "", min_compile_seconds: float | None = None
                             ) -> str | None:
  """Turns on JAX's persistent compilation cache before anything is compiled.

  Args:
    path: cache directory; "" : ``JAX_COMPILATION_CACHE_DIR`` if set, else
      :func:`default_cache_dir`; "none": leave the cache off.
    min_compile_seconds: keep only programs that took at least this long to compile (None: JAX's
      default).

  Returns:
    The directory used, or None when off (or when it cannot be created: the run then just
    compiles, with a warning).
  """
  import jax  # pylint: disable=g-import-not-at-top  (this module stays free of JAX at import)
  if path.strip().lower() == "none":
    return None
  path = path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"warning: compilation cache directory {path!r} cannot be created ({e}); compiling "
          "without a persistent cache (pass --compilation_cache_dir=DIR or none).",
          file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if min_compile_seconds is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  return path
