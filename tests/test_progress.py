"""What a run prints: a line per phase with its time, progress as plain lines when the output is not
a terminal, a header naming what the run trains, compilation before any progress bar (so the ETA
excludes it), and the best checkpoint written with the latest one."""
import io
import threading

import jax
import numpy as np
import pytest

from configs import iemocap
from mbaf_jax.models import factory
from train import workdir as workdir_lib
from train import loop
from train import reporting
from train import cli
from train import progress as progress_lib


class _Clock:
  """A fake monotonic clock."""

  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_line_progress_writes_plain_lines_at_the_interval_and_at_close():
  out, clock = io.StringIO(), _Clock()
  bar = progress_lib.LineProgress(total=100, initial=0, desc="dmf/loso_s1", stream=out,
                                  interval=30.0, clock=clock)
  for _ in range(10):  # 10 steps in 20 s: no line yet
    clock.t += 2.0
    bar.update(1)
  assert out.getvalue() == ""
  clock.t += 10.0  # 30 s since the start
  bar.set_postfix(loss="1.234", acc="0.50")
  bar.update(1)
  first = out.getvalue()
  # 11 steps in 30 s -> 0.37 step/s; 89 steps left -> ETA 243 s = 4:03
  assert first == ("dmf/loso_s1: 11/100 steps (11 %), 0.4 step/s, elapsed 0:30, ETA 4:03, "
                   "loss=1.234, acc=0.50\n")
  clock.t += 1.0
  bar.update(1)
  assert out.getvalue() == first  # less than the interval since the last line
  clock.t += 5.0
  bar.close()
  bar.close()  # once
  lines = out.getvalue().splitlines()
  assert len(lines) == 2 and lines[1].startswith("dmf/loso_s1: 12/100 steps (12 %)")
  assert "\r" not in out.getvalue()


def test_line_progress_rate_counts_only_steps_since_it_started():
  out, clock = io.StringIO(), _Clock()
  bar = progress_lib.LineProgress(total=20, initial=10, desc="f", stream=out, clock=clock)
  clock.t += 5.0
  bar.update(5)  # a resumed fold: 5 steps in 5 s, not 15
  assert "1.0 step/s" in bar.line() and "ETA 0:05" in bar.line()


def test_progress_is_a_tqdm_bar_on_a_terminal_and_lines_otherwise():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  assert progress_lib.progress(False, 10, 0, "x") is None
  assert isinstance(progress_lib.progress(True, 10, 0, "x", stream=io.StringIO()),
                    progress_lib.LineProgress)
  bar = progress_lib.progress(True, 10, 0, "x", stream=Tty())
  assert type(bar).__name__ == "tqdm"
  bar.close()


def test_phase_prints_start_and_done_with_time():
  out = io.StringIO()
  with progress_lib.phase("Loading 320 utterances", enabled=True, stream=out):
    pass
  lines = out.getvalue().splitlines()
  assert lines[0] == "Loading 320 utterances ..."
  assert lines[1].startswith("Loading 320 utterances: done in ") and lines[1].endswith(" s")
  out = io.StringIO()
  with pytest.raises(RuntimeError):
    with progress_lib.phase("Compiling", enabled=True, stream=out):
      raise RuntimeError("boom")
  assert out.getvalue() == "Compiling ...\n"  # no "done" after a failure
  out = io.StringIO()
  with progress_lib.phase("quiet", enabled=False, stream=out):
    pass
  assert out.getvalue() == ""


def test_format_seconds():
  assert progress_lib.format_seconds(0) == "0:00"
  assert progress_lib.format_seconds(75.2) == "1:15"
  assert progress_lib.format_seconds(3725) == "1:02:05"


def test_header_names_what_the_run_trains():
  c = iemocap.get_config("demo")
  c.fusions = "naive"
  family = factory.family(c.model.name)
  header = reporting.run_header(["naive"], c.data, family, 1, "jit", 1)
  assert "dmf" not in header.lower(), header
  assert header.startswith("Training naive fusion (Wav2Vec2 + BERT encoders) on a synthetic "
                           "IEMOCAP-format corpus, loso folds; 1 device (jit, 1 process)")
  c = iemocap.get_config()
  c.data.data_dir = "/data/IEMOCAP_full_release"
  header = reporting.run_header(["dmf", "naive"], c.data, family, 8, "pmap", 2)
  assert header == ("Training dmf and naive fusion (Wav2Vec2 + BERT encoders) on IEMOCAP "
                    "(/data/IEMOCAP_full_release), loso folds; 8 devices (pmap, 2 processes)")


def _smoke_config(data_dir):
  c = iemocap.get_config("smoke")
  c.data.data_dir = data_dir
  c.data.max_folds = 1
  c.train.num_devices = 1
  c.train.max_steps = 0
  c.train.epochs = 3  # 3 validations (random20)
  c.train.progress = True
  return c


@pytest.mark.slow
def test_run_output_compiles_before_progress_and_writes_best_with_latest(tmp_path, monkeypatch,
                                                                        capsys):
  """One in-process smoke run (naive only, from the DMF config): the header says naive; the
  phases are printed with their times in order; every fold's progress starts after both steps
  are compiled (so its ETA excludes compilation) and is written as plain lines to a
  non-terminal stderr; the best state is written once, with the latest checkpoint, and is the
  one tested (the best of 3 validations). An interrupted + resumed run ends with the same test
  metrics and best step."""
  from mbaf_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from train import checkpoints  # pylint: disable=g-import-not-at-top
  data = synthetic.write_iemocap(str(tmp_path / "data"), size="tiny", seed=0)
  runners, seen, best_saves = [], [], []
  init, make_progress = loop.CompiledModel.__init__, progress_lib.progress

  def recording_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    runners.append(self)

  def recording_progress(enabled, total, initial, desc, stream=None, position=0):
    seen.append([(r.train_fn.traces, r.eval_fn.traces) for r in runners])
    return make_progress(enabled, total, initial, desc, stream, position)

  save_best = checkpoints.FoldCheckpointer.save_best

  def recording_save_best(self, step, *args):
    best_saves.append((step, sorted(self.latest.all_steps())))
    return save_best(self, step, *args)

  real_evaluate = loop.evaluate

  def evaluate_ua_is_step(eval_fn, state, *args):
    """UA := the state's step, so every validation improves on the last (each one would have
    written a best checkpoint) and the best state is the last one."""
    return dict(real_evaluate(eval_fn, state, *args),
                ua=float(np.ravel(jax.device_get(state.step))[0]))

  monkeypatch.setattr(loop, "evaluate", evaluate_ua_is_step)
  monkeypatch.setattr(loop.CompiledModel, "__init__", recording_init)
  monkeypatch.setattr(reporting.progress_lib, "progress", recording_progress)
  monkeypatch.setattr(checkpoints.FoldCheckpointer, "save_best", recording_save_best)
  c = _smoke_config(data)
  c.fusions = "naive"
  straight = loop.train_and_evaluate(c, str(tmp_path / "straight"))
  out, err = capsys.readouterr()
  lines = out.splitlines()
  assert lines[0].startswith("Training naive fusion") and "dmf" not in lines[0]
  order = [next(i for i, l in enumerate(lines) if l.startswith(p)) for p in
           ("Training", "Loading 80 utterances", "Compiling the naive model",
            "[naive/loso_s1] test")]
  assert order == sorted(order)
  for what in ("Loading 80 utterances", "Compiling the naive model"):
    assert any(l.startswith(what) and ": done in " in l for l in lines), out
  assert seen == [[(1, 1)]]  # the fold's progress began with both steps compiled
  fold = straight["fusions"]["naive"]["folds"]["loso_s1"]
  n = fold["steps"]
  assert "\r" not in err and f"naive/loso_s1: {n}/{n} steps (100 %)" in err, err
  # 3 improvements, one best checkpoint written (the last), just before the final latest one.
  assert fold["best_step"] == fold["best_val_ua"] == n
  assert best_saves == [(n, [])]
  ck = checkpoints.FoldCheckpointer(
      workdir_lib.fold_dir(str(tmp_path / "straight"), "naive", "loso_s1"))
  assert ck.best_step() == fold["best_step"] and ck.latest_step() == n
  ck.close()

  c = _smoke_config(data)
  c.fusions = "naive"
  stop = cli.StopRequest()
  with pytest.raises(KeyboardInterrupt,
                     match=f"checkpointed after step {n // 2} of fold loso_s1"):
    loop.train_and_evaluate(c, str(tmp_path / "resumed"), stop=stop,
                               on_step=lambda kind, fold, step: step == n // 2 and stop.set())
  resumed = loop.train_and_evaluate(c, str(tmp_path / "resumed"))
  again = resumed["fusions"]["naive"]["folds"]["loso_s1"]
  for k in ("wa", "ua", "f1", "best_step", "best_val_ua", "confusion"):
    assert again[k] == fold[k], k


def test_run_kinds_runs_at_once_and_stops_every_kind_when_one_fails():
  stop = cli.StopRequest()
  started = threading.Barrier(2, timeout=30)

  def run_kind(kind):
    started.wait()  # both kinds run at the same time
    if kind == "dmf":
      raise ValueError("boom")
    assert stop.wait(30)  # asked to stop because dmf failed

  with pytest.raises(ValueError, match="boom"):
    loop.run_kinds(run_kind, ["dmf", "naive"], stop)
  assert stop.is_set()
  order = []
  loop.run_kinds(order.append, ["dmf", "naive"], cli.StopRequest(), at_once=False)
  assert order == ["dmf", "naive"]


def test_is_time():
  assert [s for s in range(1, 13) if loop.is_time(s, 4)] == [4, 8, 12]
  assert not any(loop.is_time(s, 0) for s in range(1, 5))  # 0: never


@pytest.mark.slow
def test_kinds_trained_at_once_give_the_results_of_one_after_the_other(tmp_path):
  from mbaf_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  data = synthetic.write_iemocap(str(tmp_path / "data"), size="tiny", seed=0)
  out = {}
  for at_once in (True, False):
    c = _smoke_config(data)
    c.train.progress = False
    c.train.concurrent_kinds = at_once
    out[at_once] = loop.train_and_evaluate(c, str(tmp_path / str(at_once)))
  assert out[True]["table"] == out[False]["table"]
  for kind in ("dmf", "naive"):
    assert out[True]["fusions"][kind]["folds"] == out[False]["fusions"][kind]["folds"]
