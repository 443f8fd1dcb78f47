"""conftest's reader-writer lock over xdist workers: an ``exclusive`` test runs alone."""
import fcntl
import os
import subprocess
import sys
import tempfile

import pytest

import conftest

_HOLD = """
import os, sys
sys.path.insert(0, {tests!r})
import conftest
with conftest._run_lock({exclusive}):
  print("held", flush=True)
  sys.stdin.read()  # until the parent closes our stdin
"""


def _holder(exclusive, env):
  code = _HOLD.format(tests=os.path.dirname(os.path.abspath(__file__)), exclusive=exclusive)
  p = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def _can_take(base, mode):
  with open(base + ".lock", "a") as f:
    try:
      fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    fcntl.flock(f, fcntl.LOCK_UN)
    return True


@pytest.mark.parametrize("exclusive", [True, False])
def test_exclusive_holder_blocks_everyone_shared_holder_blocks_only_exclusive(exclusive,
                                                                               tmp_path):
  uid = f"locktest{os.getpid()}_{exclusive}"
  env = dict(os.environ, PYTEST_XDIST_TESTRUNUID=uid, TMPDIR=str(tmp_path))
  base = os.path.join(str(tmp_path), f"mbaf_jax_tests_{uid}")
  p = _holder(exclusive, env)
  try:
    assert _can_take(base, fcntl.LOCK_SH) is (not exclusive)
    assert _can_take(base, fcntl.LOCK_EX) is False
  finally:
    p.stdin.close()
    assert p.wait(30) == 0
  assert _can_take(base, fcntl.LOCK_EX) and _can_take(base, fcntl.LOCK_SH)


def test_no_lock_outside_xdist(monkeypatch, tmp_path):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a lock file would go
  monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "x")
  with conftest._run_lock(False):
    pass
  assert os.listdir(tmp_path)  # the check below is not vacuous: with a run id, files appear
  for name in os.listdir(tmp_path):
    os.remove(tmp_path / name)
  monkeypatch.delenv("PYTEST_XDIST_TESTRUNUID")
  with conftest._run_lock(True):
    pass
  assert not os.listdir(tmp_path)
