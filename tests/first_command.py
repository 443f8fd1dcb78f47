"""The README's first command, run once per test run and shared by the tests that check it.

``python -m train.main --config=configs/iemocap.py:demo`` as a user runs it (XLA's defaults, a
fresh compilation cache, one CPU device): 5 folds of both fusions, about 200 s of CPU. The README
table test (tests/test_readme.py) and the demo-learns test (tests/test_demo.py) read the same run
instead of training the demo twice. Under pytest-xdist the workers share it through a directory
named by the run's ``PYTEST_XDIST_TESTRUNUID`` and a file lock: the first worker to ask runs the
command, a second one waits for it and reads its outputs. The process that ran it removes the
directory at exit (the lock file stays, as tests/conftest.py's do).
"""
import atexit
import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

_local = {}  # without xdist: the run of this process


def readme_args():
  """The first command's ``train.main`` arguments from the README's set-up block, less
  ``--workdir``."""
  readme = (ROOT / "README.md").read_text()
  setup = readme.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
  command = setup.splitlines()[0].split("&&", 1)[1].split()
  assert command[:3] == ["python", "-m", "train.main"], command
  return [a for a in command[3:] if not a.startswith("--workdir")]


def _run(base: pathlib.Path) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  workdir = base / "demo"
  r = subprocess.run([sys.executable, "-m", "train.main", *readme_args(),
                      f"--workdir={workdir}", f"--compilation_cache_dir={base / 'cache'}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  shutil.rmtree(base / "cache", ignore_errors=True)
  return {"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
          "workdir": str(workdir)}


@contextlib.contextmanager
def _locked(path):
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def result() -> dict:
  """``{"returncode", "stdout", "stderr", "workdir"}`` of the README's first command
  (``workdir`` holds its ``metrics.json``)."""
  uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if not uid:
    if "run" not in _local:
      base = pathlib.Path(tempfile.mkdtemp(prefix="mbaf_jax_first_command_"))
      atexit.register(shutil.rmtree, base, ignore_errors=True)
      _local["run"] = _run(base)
    return _local["run"]
  base = pathlib.Path(tempfile.gettempdir()) / f"mbaf_jax_first_command_{uid}"
  with _locked(str(base) + ".lock"):
    base.mkdir(exist_ok=True)
    done = base / "result.json"
    if done.exists():
      return json.loads(done.read_text())
    out = _run(base)
    done.write_text(json.dumps(out))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    return out
