"""Multi-host: two processes on 127.0.0.1 (CPU, gloo collectives) equal one process.

Each worker process (this file run as a script) calls ``train.multihost.initialize_multihost``
with ``coordinator_address=127.0.0.1:PORT``, drives 2 local CPU devices (4 global), feeds only
*its half* of every global batch (``host_local_to_global``), runs the jitted data-parallel
step of ``tests/test_distributed.py`` and saves its final state. The reference is the
single-process, single-device run over the whole batch.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xla_env  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flatten(tree, prefix=""):
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
  else:
    out[prefix.rstrip("/")] = np.asarray(tree)
  return out


def worker(port: int, process_id: int, out_path: str) -> None:
  """One process of the two-process run (called when this file is run as a script)."""
  sys.path.insert(0, HERE)
  sys.path.insert(0, ROOT)
  from train import multihost
  setup = multihost.initialize_multihost(coordinator_address=f"127.0.0.1:{port}",
                                    num_processes=NUM_PROCESSES, process_id=process_id,
                                    timeout_s=120)
  import jax
  import test_distributed as td
  assert setup.initialized and setup.process_count == NUM_PROCESSES, setup
  ps = td.parallel.make_parallel_train_step(td.build_step, "jit")
  state = ps.put_state(td.init_state(0))
  key = jax.random.key(7)
  half = td.GLOBAL_BATCH // NUM_PROCESSES
  rows = slice(process_id * half, (process_id + 1) * half)
  losses = []
  for i in range(td.STEPS):
    local = {k: v[rows] for k, v in td.make_batch(100 + i).items()}  # this host's rows only
    state, m = ps(state, ps.put_batch(local), key)
    losses.append(float(ps.to_host(m)["loss"]))
  state = ps.to_host(state)
  flat = _flatten({"params": state["params"], "memory": state["memory"],
                   "batch_stats": state["batch_stats"]})
  np.savez(out_path, losses=np.array(losses), global_devices=setup.global_devices,
           process_index=setup.process_index, **flat)
  jax.distributed.shutdown()


def _run_processes(tmp_path, name, timeout_s, command):
  """Starts NUM_PROCESSES processes ``command(i) -> (argv, env)`` (output in
  ``tmp_path/<name><i>.log``), waits up to ``timeout_s`` for all, and fails with the log tail of
  every process if any did not exit 0. A process still running at the deadline first gets
  SIGABRT, which makes Python's faulthandler (``PYTHONFAULTHANDLER``) print where each of its
  threads was (so a hang names its place in the log), then is killed."""
  procs, logs = [], []
  try:
    for i in range(NUM_PROCESSES):
      argv, env = command(i)
      log = open(tmp_path / f"{name}{i}.log", "w")
      logs.append(log)
      procs.append(subprocess.Popen(argv, cwd=ROOT, env=dict(env, PYTHONFAULTHANDLER="1"),
                                    stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for i, p in enumerate(procs):
      if p.poll() is None:
        logs[i].write(f"\n[test] still running after {timeout_s} s: SIGABRT for a stack dump\n")
        logs[i].flush()
        p.send_signal(signal.SIGABRT)
        try:
          p.wait(10)
        except subprocess.TimeoutExpired:
          p.kill()
          p.wait(10)
    for log in logs:
      log.close()
  codes = [p.returncode for p in procs]
  if any(c != 0 for c in codes):
    tails = "\n".join(f"----- {name} {i} (exit {c}), last 4000 characters:\n"
                      + (tmp_path / f"{name}{i}.log").read_text()[-4000:]
                      for i, c in enumerate(codes))
    pytest.fail(f"{name} exit codes {codes}:\n{tails}")


@pytest.mark.slow
@pytest.mark.exclusive
def test_two_processes_equal_one_process(tmp_path):
  sys.path.insert(0, HERE)
  import test_distributed as td

  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=xla_env.xla_flags(LOCAL_DEVICES))
  for name in ("MBAF_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"):
    env.pop(name, None)
  _run_processes(tmp_path, "worker", TIMEOUT_S, lambda i: (
      [sys.executable, os.path.abspath(__file__), str(port), str(i),
       str(tmp_path / f"out{i}.npz")], env))

  want_state, want_loss = td.run_reference()
  want = _flatten({"params": want_state["params"], "memory": want_state["memory"],
                   "batch_stats": want_state["batch_stats"]})
  for i in range(NUM_PROCESSES):
    got = np.load(tmp_path / f"out{i}.npz")
    assert int(got["global_devices"]) == NUM_PROCESSES * LOCAL_DEVICES
    assert int(got["process_index"]) == i
    np.testing.assert_allclose(got["losses"], want_loss, rtol=1e-5, atol=1e-5)
    assert set(want) <= set(got.files)
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
  # The run moved the memory (so equality is not vacuous).
  init = td.init_state(0)
  assert np.abs(want["memory/fusion/M_a"] - init["memory"]["fusion"]["M_a"]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.exclusive
def test_trainer_two_processes_equal_one_process(tmp_path):
  """``python -m train.main`` as two processes on 127.0.0.1 (2 CPU devices each, gloo
  collectives, ``MBAF_*`` environment read by ``multihost.initialize_multihost``), sharing one
  workdir, ends with the same final state and test metrics as the one-process, one-device run
  (dropout on: jit draws the global masks whatever the sharding); only process 0 reports."""
  import json
  sys.path.insert(0, HERE)
  import test_distributed as td
  from mbaf_jax.data import synthetic
  from train import loop
  data = synthetic.write_iemocap(str(tmp_path / "data"), size="tiny", seed=0)
  port = _free_port()
  workdir = tmp_path / "two"
  flags = ["--config=configs/iemocap.py:smoke", f"--workdir={workdir}", "--config.fusions=dmf",
           "--config.data.max_folds=1", f"--config.data.data_dir={data}",
           "--config.train.max_steps=3", "--config.train.batch_size=8",
           "--config.train.eval_batch_size=16", "--config.train.parallelism=jit",
           "--config.optim.name=sgd", "--config.optim.learning_rate=0.01",
           "--config.optim.memory_learning_rate=0.001"]  # = td.smoke_config (dropout on)
  # The reference first (one process, one device): running it beside the two workers put three
  # compiling processes on CI's two cores, and a worker then missed gloo's rendezvous deadline.
  want = loop.train_and_evaluate(td.smoke_config(data, "jit", 1, 1, dropout=True),
                                    str(tmp_path / "one"))
  _run_processes(tmp_path, "trainer", 2 * TIMEOUT_S, lambda i: (
      [sys.executable, "-m", "train.main"] + flags,
      dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
           XLA_FLAGS=xla_env.xla_flags(LOCAL_DEVICES),
           MBAF_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
           MBAF_NUM_PROCESSES=str(NUM_PROCESSES), MBAF_PROCESS_ID=str(i))))
  got = json.loads((workdir / "metrics.json").read_text())
  assert got["processes"] == NUM_PROCESSES and got["devices"] == NUM_PROCESSES * LOCAL_DEVICES
  assert got["fusions"]["dmf"]["train_traces"] == 1
  assert "test WA" in (tmp_path / "trainer0.log").read_text()
  assert "test WA" not in (tmp_path / "trainer1.log").read_text()  # only process 0 reports
  td.assert_same_run({"state": td.final_fold_state(workdir), "metrics": got["fusions"]["dmf"]},
                     {"state": td.final_fold_state(tmp_path / "one"),
                      "metrics": want["fusions"]["dmf"]})


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
