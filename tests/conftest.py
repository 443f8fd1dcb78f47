"""Test-session setup shared by every test.

* 8 fake CPU devices (``--xla_force_host_platform_device_count=8``) so multi-device
  behaviour is tested on any laptop; single-device code still runs on device 0.
* ``slow`` tests run when ``CI`` is true or ``--runslow`` is given; the default
  local run keeps to the fast set.
* One persistent XLA compilation cache per test session, in a fresh temporary directory
  (removed at exit): tests that train the same small model several times (resume, predict,
  layouts) compile it once. Nothing is reused across sessions, so a clean clone still compiles
  everything. It is set in this process only (``jax.config``), not through the environment:
  subprocesses (the multi-process tests) compile on their own, since JAX writes cache entries
  non-atomically and concurrent processes could read a half-written one.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _cache = tempfile.mkdtemp(prefix="mbaf_jax_test_xla_")
  jax.config.update("jax_compilation_cache_dir", _cache)
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)


def _truthy(value):
  return str(value).lower() in ("1", "true", "yes", "on")


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
