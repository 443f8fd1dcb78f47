"""Test-session setup shared by every test.

* 8 fake CPU devices (``--xla_force_host_platform_device_count=8``) so multi-device
  behaviour is tested on any laptop; single-device code still runs on device 0.
* ``slow`` tests run when ``CI`` is true or ``--runslow`` is given; the default
  local run keeps to the fast set.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402


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
