"""SIGINT / SIGTERM: while a fold trains, the first signal makes the run checkpoint at the next
step boundary and exit 130; the rerun resumes from that step. Before training (loading,
compiling) a signal stops at once."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from train import workdir as workdir_lib
from train import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_training_requests_a_checkpointed_stop(signum, capsys):
  stop = cli.StopRequest()
  with cli.handle_signals(stop):
    with stop.training():
      os.kill(os.getpid(), signum)
      assert stop.wait(10)  # the handler ran: stop requested, nothing raised
      with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        os.kill(os.getpid(), signum)  # a second signal stops at once
        time.sleep(10)
  assert "saving a checkpoint after the current step" in capsys.readouterr().err
  assert signal.getsignal(signum) is not None and not stop.honoured()


def test_a_signal_before_training_stops_at_once():
  stop = cli.StopRequest()
  with cli.handle_signals(stop):
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received"):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(10)
  assert not stop.is_set()


def test_handlers_are_installed_only_on_the_main_thread():
  seen = []

  def body():
    with cli.handle_signals(cli.StopRequest()):
      seen.append(signal.getsignal(signal.SIGTERM))

  before = signal.getsignal(signal.SIGTERM)
  t = threading.Thread(target=body)
  t.start()
  t.join()
  assert seen == [before]


@pytest.mark.slow
def test_sigint_during_a_real_run_checkpoints_and_the_rerun_resumes(tmp_path):
  """python -m train.main, SIGINT once steps are running → exit 130, "checkpointed", a latest
  checkpoint at that step (not necessarily one of the every-3-steps ones); the same command again →
  "resumed at step N", finishes, exit 0."""
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "train.main", "--config=configs/iemocap.py:smoke",
         f"--workdir={workdir}", "--config.fusions=naive", "--config.data.max_folds=1",
         "--config.train.max_steps=25", "--config.train.progress=False",
         "--config.train.checkpoint_every_steps=3",
         f"--compilation_cache_dir={tmp_path / 'xla'}"]  # the rerun reads the first's programs
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  latest = workdir_lib.slot_dir(workdir, "naive", "loso_s1", "latest")
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(latest, "3")):  # steps are running
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, (out, err)
  assert "SIGINT received: saving a checkpoint" in err, err
  step = int(re.search(r"stopped: checkpointed after step (\d+) of fold (\S+) \(naive "
                       r"fusion\); rerun the same command to resume",
                       err).group(1))
  assert 3 <= step < 25 and "Traceback" not in err
  assert sorted(int(d) for d in os.listdir(latest) if d.isdigit())[-1] == step

  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert f"[naive/loso_s1] resumed at step {step}" in done.stdout
  assert "[naive/loso_s1] test WA" in done.stdout
