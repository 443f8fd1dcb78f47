"""Test-session setup shared by every test.

* 8 fake CPU devices (``--xla_force_host_platform_device_count=8``) so multi-device
  behaviour is tested on any laptop; single-device code still runs on device 0.
* XLA compiles with LLVM's cheap pipeline (``tests/xla_env.py``: the suite is mostly
  compilation of tiny programs); ``MBAF_TEST_XLA_DEFAULT=1`` keeps XLA's defaults.
* ``slow`` tests run when ``CI`` is true or ``--runslow`` is given; the default
  local run keeps to the fast set.
* Tests run in parallel (``pytest-xdist``, ``-n auto`` in pytest.ini; measured on 2 cores:
  the whole ``CI=true`` suite 18 % faster than one process). A test marked ``exclusive`` (the multi-process runs, whose
  gloo rendezvous and shutdown barriers have deadlines) runs alone: every test holds a shared
  lock for its whole protocol, an exclusive test the exclusive lock (``_run_lock``).
* One persistent XLA compilation cache per test session, in a fresh temporary directory
  (removed at exit): tests that train the same small model several times (resume, predict,
  layouts) compile it once. Nothing is reused across sessions, so a clean clone still compiles
  everything. It is set in this process only (``jax.config``), not through the environment:
  subprocesses (the multi-process tests) compile on their own, since JAX writes cache entries
  non-atomically and concurrent processes could read a half-written one.
* Hypothesis profiles of the property tests (``tests/test_fuzz_loaders.py``): "ci" (60 examples
  per test, derandomized so a failure reproduces, no example database) under ``CI=true``, "dev"
  (15 per test) otherwise, "thorough" (1,000 per test) with ``HYPOTHESIS_PROFILE=thorough``;
  ``MBAF_FUZZ_EXAMPLES=N`` sets the number of examples per test of any of them.
"""
import atexit
import contextlib
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xla_env  # noqa: E402

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if xla_env.enabled() and "xla_backend_optimization_level" not in _flags:
  _flags += " " + xla_env.COMPILE_FAST_FLAGS
os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _cache = tempfile.mkdtemp(prefix="mbaf_jax_test_xla_")
  jax.config.update("jax_compilation_cache_dir", _cache)
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)


def _truthy(value):
  return str(value).lower() in ("1", "true", "yes", "on")


# A shared 2-core machine makes example times vary: no deadline in any profile.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
_profile = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _truthy(os.environ.get("CI", "")) else "dev")
if os.environ.get("MBAF_FUZZ_EXAMPLES"):
  settings.register_profile(_profile + "+examples", settings.get_profile(_profile),
                            max_examples=int(os.environ["MBAF_FUZZ_EXAMPLES"]))
  _profile += "+examples"
settings.load_profile(_profile)


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run tests marked slow (on by default when CI=true)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or _truthy(os.environ.get("CI", "")):
    return
  skip_slow = pytest.mark.skip(reason="slow: run with --runslow or CI=true")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip_slow)


@contextlib.contextmanager
def _run_lock(exclusive: bool):
  """Reader-writer lock over the workers of one xdist run (``flock``; a no-op elsewhere).

  The "gate" lock makes it fair: a worker waiting for the exclusive lock holds the gate, so the
  other workers cannot keep taking shared locks past it.
  """
  uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # not POSIX: no parallel-run lock
    fcntl = None
  if not uid or fcntl is None:
    yield
    return
  base = os.path.join(tempfile.gettempdir(), f"mbaf_jax_tests_{uid}")
  with open(base + ".gate", "a") as gate, open(base + ".lock", "a") as lock:
    fcntl.flock(gate, fcntl.LOCK_EX)
    try:
      fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    finally:
      fcntl.flock(gate, fcntl.LOCK_UN)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  with _run_lock(item.get_closest_marker("exclusive") is not None):
    yield
