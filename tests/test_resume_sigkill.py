"""Crash-resume: ``python -m train.main`` killed with SIGKILL mid-epoch, then rerun with the same
``--workdir``, ends bit-identical to an uninterrupted run (params, optimiser state, batch stats,
memory, step).

The trainer checkpoints every step here (``checkpoint_every_steps=1``) with the data position
(``Batcher.state()``), so the kill lands after at least one checkpoint and before the end of the
first epoch (batch 4, ~13 steps per epoch, 10 steps in total).
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xla_env

from train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 10


def _command(workdir, data_dir, cache_dir):
  return [sys.executable, "-m", "train.main", "--config=configs/iemocap.py:smoke",
          f"--workdir={workdir}", f"--compilation_cache_dir={cache_dir}",
          "--config.fusions=dmf", "--config.data.max_folds=1",
          f"--config.data.data_dir={data_dir}", "--config.train.batch_size=4",
          f"--config.train.max_steps={TOTAL_STEPS}", "--config.train.checkpoint_every_steps=1",
          "--config.train.keep_checkpoints=3"]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
  env["XLA_FLAGS"] = xla_env.xla_flags(device_count=1)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program into the cache
  return env


def _latest_dir(workdir):
  return workdir_lib.slot_dir(str(workdir), "dmf", "loso_s1", "latest")


def _finished_steps(workdir):
  d = _latest_dir(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _run(cmd, log_path, timeout=300):
  with open(log_path, "w") as log:
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                       timeout=timeout, check=False)
  return p.returncode, open(log_path).read()


def _final_state(workdir):
  import orbax.checkpoint as ocp
  steps = _finished_steps(workdir)
  assert steps and steps[-1] == TOTAL_STEPS, f"{workdir}: checkpoints {steps}"
  mgr = ocp.CheckpointManager(_latest_dir(workdir), item_names=("state", "meta"))
  try:
    got = mgr.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
  finally:
    mgr.close()
  return got["state"], got["meta"]


def _leaves(tree):
  import jax
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _kill_then_resume(tmp_path, data_dir, cache_dir):
  """Runs into ``tmp_path/work``, SIGKILLs it once a mid-epoch checkpoint is on disk, reruns."""
  work = tmp_path / "work"
  log = open(tmp_path / "killed.log", "w")
  p = subprocess.Popen(_command(work, data_dir, cache_dir), cwd=ROOT, env=_env(), stdout=log,
                       stderr=subprocess.STDOUT)
  killed_after = None
  try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
      done = _finished_steps(work)
      if done:
        p.send_signal(signal.SIGKILL)
        killed_after = done[-1]
        break
      time.sleep(0.02)
  finally:
    if p.poll() is None and killed_after is None:
      p.kill()
    p.wait(30)
    log.close()
  assert killed_after is not None, (
      "the run ended before a checkpoint was seen:\n" + open(tmp_path / "killed.log").read()[-3000:])
  assert p.returncode == -signal.SIGKILL
  before = _finished_steps(work)
  assert before and before[-1] < TOTAL_STEPS, f"killed too late: checkpoints {before}"
  assert not os.path.exists(work / "metrics.json")
  return _run(_command(work, data_dir, cache_dir), tmp_path / "resumed.log")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
  data_dir = tmp_path / "data"
  from mbaf_jax.data import synthetic
  synthetic.write_iemocap(str(data_dir), size="demo", seed=0)

  # The uninterrupted reference run first: it compiles into a fresh persistent cache, which the
  # killed and the resumed runs then load instead of compiling again (one compilation, not three;
  # one process at a time writes or reads the cache, so no entry is read half-written).
  ref, cache = tmp_path / "ref", tmp_path / "xla_cache"
  ref_rc, ref_out = _run(_command(ref, data_dir, cache), tmp_path / "ref.log")
  assert ref_rc == 0, ref_out[-3000:]
  rc, out = _kill_then_resume(tmp_path, data_dir, cache)
  assert rc == 0, out[-3000:]
  assert "resumed at step" in out, out[-3000:]

  want_state, want_meta = _final_state(ref)
  got_state, got_meta = _final_state(tmp_path / "work")
  assert got_meta["step"] == want_meta["step"] == TOTAL_STEPS
  assert got_meta["batcher"] == want_meta["batcher"]
  want, got = _leaves(want_state), _leaves(got_state)
  assert set(got) == set(want)
  assert any("memory" in k for k in want) and any("params" in k for k in want)
  for name, value in want.items():
    assert got[name].dtype == value.dtype, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)  # bit-identical
