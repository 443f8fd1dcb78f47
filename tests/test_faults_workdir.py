"""A workdir never disagrees with its checkpoints (issue: reliability of the command-line tools):
a rerun resumes the same run or refuses naming what differs, the data fingerprint, checkpoint
fallback, a disk that is full or read-only. Every refusal is one paragraph with exit status 2,
no traceback, and leaves config.json and the checkpoints as they were.

The fast cases call ``train.checkpoints`` directly; the end-to-end ones (``slow``) share ONE
finished ``configs/iemocap.py:smoke`` run (naive fusion, a checkpoint every step, two kept) and
rerun ``train.main.run`` in a copy of its workdir per case.
"""
import errno
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import iemocap
from mbaf_jax.errors import UserError
from train import run_identity
from train import workdir as workdir_lib
from train import checkpoints
from train import main as main_lib
from train import metrics as metrics_lib
from train import steps

from overrides import set_fields  # tests/overrides.py

import plans  # tests/plans.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  """configs/iemocap.py:smoke, naive fusion, a checkpoint every step (two kept)."""
  c = iemocap.get_config("smoke")
  c.fusions = "naive"
  c.train.checkpoint_every_steps = 1
  return set_fields(c, overrides)


def _snapshot(workdir: str) -> dict:
  """Every file under the workdir's config.json and ckpt/ → its bytes (what a refusal must keep)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      rel = os.path.relpath(path, workdir)
      if rel == workdir_lib.CONFIG_FILE or rel.startswith(workdir_lib.CHECKPOINT_DIR):
        with open(path, "rb") as fh:
          out[rel] = fh.read()
  return out


# --------------------------------------------------------------------------- rerun identity (fast)
REFUSED = {  # field → a new value that makes a different run
    "seed": 1, "train.max_steps": 20, "train.epochs": 7, "train.batch_size": 8,
    "train.eval_every_epochs": 2, "data.dataset": "manifest", "data.data_dir": "/data/other",
    "data.protocol": "8:1:1", "data.validation": "speaker", "data.max_folds": 3,
    "data.max_examples": 40, "data.synthetic_size": "demo", "data.mode_pair": "F-V",
    "model.head_dropout": 0.5, "model.head_features": (32, 16),
    "optim.learning_rate": 0.5, "optim.name": "sgd",
}
FREE = {  # field → a new value that resumes the same run
    "train.progress": True, "train.log_every_steps": 5, "train.checkpoint_every_steps": 7,
    "train.keep_checkpoints": 5, "train.num_devices": 1, "train.parallelism": "pmap",
    "train.concurrent_kinds": False, "train.eval_batch_size": 8, "model.dtype": "bfloat16",
    "name": "renamed", "data.cache_dir": "/tmp/elsewhere", "data.strict": True,
    "model.fusion.dmf.slots": 3,  # a fusion kind this run does not train
}


def _field(config, key):
  node = config
  for p in key.split("."):
    node = node[p]
  return node


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_a_different_run_is_refused_naming_the_field(tmp_path, key):
  w = str(tmp_path / "run")
  old = _config()
  plans.prepare_workdir(w, old)
  before = _snapshot(w)
  new = _config(**{key: REFUSED[key]})
  with pytest.raises(UserError) as e:
    plans.prepare_workdir(w, new)
  msg = str(e.value)
  old_value, new_value = _field(old, key), _field(new, key)
  if isinstance(old_value, tuple):
    old_value, new_value = list(old_value), list(new_value)
  assert f"{key}: {old_value!r} then, {new_value!r} now" in msg
  assert "--workdir=<a new folder>" in msg and "--config.train.restart=True" in msg
  assert "\n" not in msg
  assert _snapshot(w) == before  # config.json not rewritten


@pytest.mark.parametrize("key", sorted(FREE))
def test_fields_that_change_no_result_resume(tmp_path, key):
  w = str(tmp_path / "run")
  plans.prepare_workdir(w, _config())
  plans.prepare_workdir(w, _config(**{key: FREE[key]}))  # no refusal
  config, _ = run_identity.read_workdir_config(w)
  assert json.loads(json.dumps(_field(config, key))) == json.loads(json.dumps(FREE[key]))


def test_restart_removes_the_previous_run_only(tmp_path):
  w = tmp_path / "run"
  plans.prepare_workdir(str(w), _config())
  for d in ("ckpt/naive/loso_s1/latest/3", "tb/naive", "cache", "data/IEMOCAP_full_release",
            "tokenizer"):
    (w / d).mkdir(parents=True)
  for f in ("metrics.json", "confusion_naive_loso_s1.png", "cache/x.npy", "tokenizer/vocab.txt"):
    (w / f).write_text("x")
  lines = []
  plans.prepare_workdir(str(w), _config(seed=1, **{"train.restart": True}),
                              report=lines.append)
  assert len(lines) == 1 and "removed the previous run" in lines[0] and "ckpt" in lines[0]
  assert sorted(os.listdir(w)) == ["cache", "config.json", "data", "tokenizer"]
  config, _ = run_identity.read_workdir_config(str(w))
  assert config.seed == 1
  plans.prepare_workdir(str(w), _config(seed=1))  # the restarted run resumes
  # A changed synthetic corpus size also removes the generated corpus (never the audio cache).
  plans.prepare_workdir(str(w), _config(seed=1, **{"train.restart": True,
                                                         "data.synthetic_size": "demo"}),
                              report=lines.append)
  assert sorted(os.listdir(w)) == ["cache", "config.json", "tokenizer"]


# --------------------------------------------------------------------------- data fingerprint
class _Fold:
  def __init__(self, name, train, val, test):
    self.name, self.train, self.val, self.test = name, train, val, test


def _data(n=6):
  labels = np.arange(n, dtype=np.int32) % 3
  folds = [_Fold("f1", np.arange(0, 4), np.arange(4, 5), np.arange(5, 6))]
  inputs = {"input_values": np.linspace(0, 1, n * 5, dtype=np.float32).reshape(n, 5),
            "ids": (np.arange(n * 2).reshape(n, 2), np.ones((n, 2), bool))}
  return labels, folds, inputs


def test_dataset_fingerprint_sees_labels_folds_and_inputs():
  base = run_identity.dataset_fingerprint(*_data())
  assert base == run_identity.dataset_fingerprint(*_data()) and base.startswith("6 examples, 1 ")
  labels, folds, inputs = _data()
  labels[0] = 2
  assert run_identity.dataset_fingerprint(labels, folds, inputs) != base
  labels, folds, inputs = _data()
  folds[0].train = np.arange(1, 5)
  assert run_identity.dataset_fingerprint(labels, folds, inputs) != base
  labels, folds, inputs = _data()
  inputs["ids"][0][3, 1] += 1
  assert run_identity.dataset_fingerprint(labels, folds, inputs) != base


def test_changed_data_is_refused_with_the_counts(tmp_path):
  w = str(tmp_path / "run")
  plans.prepare_workdir(w, _config())
  fp = run_identity.dataset_fingerprint(*_data())
  run_identity.check_dataset(w, fp, write=False)  # nothing stored yet: checks only
  assert run_identity.DATA_FINGERPRINT not in json.load(open(workdir_lib.config_path(w)))
  run_identity.check_dataset(w, fp)  # the first run stores it
  run_identity.check_dataset(w, fp)  # the same data: resumes
  plans.prepare_workdir(w, _config())  # a rerun keeps it
  before = _snapshot(w)
  with pytest.raises(UserError, match=r"the data under .*data changed since this workdir was "
                     r"written: 5 examples, 1 folds now vs 6 examples, 1 folds then"):
    run_identity.check_dataset(w, run_identity.dataset_fingerprint(*_data(5)))
  assert _snapshot(w) == before


# --------------------------------------------------------------------------- disk faults (fast)
def _read_only(monkeypatch, path):
  """Makes ``path`` read-only: chmod 0o500, or (root ignores permissions) a patched os.access."""
  os.makedirs(path, exist_ok=True)
  if os.geteuid() == 0:
    real = os.access
    monkeypatch.setattr(checkpoints.os, "access",
                        lambda p, mode: False if os.path.abspath(p) == os.path.abspath(path)
                        else real(p, mode))
  else:
    os.chmod(path, 0o500)


@pytest.mark.parametrize("where", ["workdir", "parent"])
def test_read_only_workdir_is_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys,
                                                              where):
  parent = str(tmp_path / "ro")
  workdir = os.path.join(parent, "run") if where == "parent" else parent
  _read_only(monkeypatch, workdir if where == "workdir" else parent)
  from train import datasets

  def no_data(*args, **kwargs):
    raise AssertionError("the data set was loaded")
  monkeypatch.setattr(datasets, "load_dataset", no_data)
  try:
    assert main_lib.run(_config(), workdir) == 2
  finally:
    os.chmod(parent, 0o700)
  err = capsys.readouterr().err
  assert "cannot be written" in err and "read-only" in err and "Traceback" not in err


def test_config_json_write_failure_is_one_paragraph(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(workdir_lib, "write_json", full)
  with pytest.raises(UserError, match=r"cannot write .*config.json \(No space left on device\); "
                     r"nothing already saved is lost.*rerun the same command to resume"):
    plans.prepare_workdir(str(tmp_path / "run"), _config())


def _state(seed, width=3):
  params = {"w": jnp.full((width, 2), float(seed)), "b": jnp.full((2,), -float(seed))}
  return steps.TrainState(step=jnp.asarray(seed, jnp.int32), params=params,
                          opt_state=optax.adam(1e-3).init(params), batch_stats={},
                          constants={}, memory={}, first_nonfinite=jnp.asarray(-1, jnp.int32))


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fault):
  ck = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=2, fingerprint="abc")
  ck.save_latest(1, _state(1).saveable(), {"step": 1})

  def fail(*args, **kwargs):
    raise OSError(fault, os.strerror(fault))
  monkeypatch.setattr(ocp.CheckpointManager, "save", fail)
  with pytest.raises(checkpoints.CheckpointWriteError) as e:
    ck.save_latest(2, _state(2).saveable(), {"step": 2})
  assert os.strerror(fault) in str(e.value) and "Nothing is lost" in str(e.value)
  assert "step 2" in str(e.value) and "\n" not in str(e.value)
  monkeypatch.undo()
  tree, meta = ck.restore_latest(_state(0).saveable())
  assert meta["step"] == 1 and int(tree["step"]) == 1
  ck.close()


# --------------------------------------------------------------------------- checkpoint fallback
def _damage(path: str, how: str) -> None:
  """Damages one checkpoint folder: truncated array files, deleted arrays, or a broken meta."""
  if how == "truncated":
    for root, _, files in os.walk(os.path.join(path, "state")):
      for f in files:
        if os.path.basename(root) == "d":
          with open(os.path.join(root, f), "r+b") as fh:
            fh.truncate(10)
  elif how == "deleted":
    shutil.rmtree(os.path.join(path, "state"))
  else:
    with open(os.path.join(path, "meta", "metadata"), "w") as fh:
      fh.write("{broken")


@pytest.mark.parametrize("how", ["truncated", "deleted", "meta"])
def test_damaged_latest_falls_back_to_the_newest_readable(tmp_path, how):
  ck = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=2, fingerprint="abc")
  for s in (1, 2, 3):
    ck.save_latest(s, _state(s).saveable(), {"step": s})
  _damage(ck.path("latest", 3), how)
  lines = []
  tree, meta = ck.restore_latest(_state(0).saveable(), report=lines.append)
  assert meta["step"] == 2 and float(tree["params"]["w"][0, 0]) == 2.0
  assert len(lines) == 1 and "step 3" in lines[0] and "resuming from step 2" in lines[0]
  assert ck.latest.all_steps() == [2]  # the damaged one is gone, so step 3 can be saved again
  ck.save_latest(3, _state(3).saveable(), {"step": 3})
  _damage(ck.path("latest", 3), how)
  _damage(ck.path("latest", 2), how)
  lines.clear()
  assert ck.restore_latest(_state(0).saveable(), report=lines.append) is None
  assert len(lines) == 1 and "step 3, 2" in lines[0] and "from step 0" in lines[0]
  ck.close()


def test_a_checkpoint_of_another_config_is_refused_not_skipped(tmp_path):
  ck = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=2, fingerprint="abc")
  for s in (1, 2):
    ck.save_latest(s, _state(s).saveable(), {"step": s})
  ck.close()
  for fingerprint, target, match in (("xyz", _state(0), "different model"),
                                     ("abc", _state(0, width=5), "does not match")):
    other = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=2, fingerprint=fingerprint)
    with pytest.raises(checkpoints.CheckpointMismatchError, match=match):
      other.restore_latest(target.saveable(), report=lambda line: pytest.fail(line))
    assert other.latest.all_steps() == [1, 2]  # nothing removed
    other.close()


# --------------------------------------------------------------------------- end to end (slow)
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One finished smoke run: (its workdir, its metrics.json)."""
  w = str(tmp_path_factory.mktemp("faults_workdir") / "run")
  assert main_lib.run(_config(), w) == 0
  with open(os.path.join(w, "metrics.json")) as f:
    return w, json.load(f)


def _copy(finished, tmp_path) -> str:
  w = str(tmp_path / "run")
  shutil.copytree(finished[0], w)
  return w


def _test_metrics(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    m = json.load(f)
  return {k: (v["wa"], v["ua"], v["f1"], v["best_step"])
          for k, v in m["fusions"]["naive"]["folds"].items()}


REFUSED_RERUNS = {  # case → (overrides, text the message must name)
    "max_steps=20": ({"train.max_steps": 20}, "train.max_steps: 3 then, 20 now"),
    "seed=1": ({"seed": 1}, "seed: 0 then, 1 now"),
    "max_examples": ({"data.max_examples": 40}, "data.max_examples: 80 then, 40 now"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REFUSED_RERUNS))
def test_rerun_of_a_different_config_is_refused(finished, tmp_path, capsys, case):
  w = _copy(finished, tmp_path)
  before = _snapshot(w)
  overrides, cause = REFUSED_RERUNS[case]
  capsys.readouterr()
  assert main_lib.run(_config(**overrides), w) == 2
  out = capsys.readouterr()
  assert cause in out.err and "--config.train.restart=True" in out.err
  assert "Traceback" not in out.err + out.out
  assert _snapshot(w) == before


@pytest.mark.slow
def test_changed_data_is_refused(finished, tmp_path, capsys):
  w = _copy(finished, tmp_path)
  folder = os.path.join(w, "data", "IEMOCAP_full_release", "Session1", "dialog", "EmoEvaluation")
  path = os.path.join(folder, "Ses01F_impro01.txt")
  with open(path) as f:
    lines = f.read().split("\n")
  first = next(i for i, ln in enumerate(lines) if "\tSes01F_impro01_F000\thap\t" in ln)
  lines[first] = lines[first].replace("\thap\t", "\tsad\t")  # one label changed
  with open(path, "w") as f:
    f.write("\n".join(lines))
  before = _snapshot(w)
  capsys.readouterr()
  assert main_lib.run(_config(), w) == 2
  out = capsys.readouterr()
  assert "changed since this workdir was written: 80 examples, 2 folds now vs 80 examples, " \
      "2 folds then" in out.err
  assert "Traceback" not in out.err + out.out
  assert _snapshot(w) == before


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "meta", "both"])
def test_damaged_latest_checkpoint_of_a_real_run(finished, tmp_path, capsys, how):
  """A damaged latest checkpoint: the run resumes from the older kept one (or from step 0 when
  both are damaged), says so, and ends with the test metrics of the undamaged run."""
  w = _copy(finished, tmp_path)
  fold = workdir_lib.slot_dir(w, "naive", "loso_s1", "latest")
  assert sorted(os.listdir(fold)) == ["2", "3"]
  _damage(os.path.join(fold, "3"), "meta" if how == "meta" else "truncated")
  if how == "both":
    _damage(os.path.join(fold, "2"), "truncated")
  if how == "truncated":  # a real process: tensorstore's late callbacks print no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "train.main", "--config=configs/iemocap.py:smoke",
         "--config.fusions=naive", "--config.train.checkpoint_every_steps=1", f"--workdir={w}",
         "--compilation_cache_dir=none"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
  else:
    capsys.readouterr()
    assert main_lib.run(_config(), w) == 0
    out = capsys.readouterr().out
  if how == "both":
    assert "[naive/loso_s1] the checkpoint(s) of step 3, 2" in out and "from step 0" in out
  else:
    assert "[naive/loso_s1] the checkpoint(s) of step 3" in out
    assert "resuming from step 2" in out and "[naive/loso_s1] resumed at step 2" in out
  assert _test_metrics(w) == _test_metrics(finished[0])


@pytest.mark.slow
def test_rerun_of_the_same_config_resumes_and_restart_starts_afresh(finished, tmp_path, capsys):
  w = _copy(finished, tmp_path)
  capsys.readouterr()
  assert main_lib.run(_config(**{"train.log_every_steps": 1}), w) == 0  # a free field
  assert "[naive/loso_s1] resumed at step 3" in capsys.readouterr().out
  assert main_lib.run(_config(**{"train.restart": True}), w) == 0
  out = capsys.readouterr().out
  assert "config.train.restart=True: removed the previous run" in out and "resumed" not in out
  assert _test_metrics(w) == _test_metrics(finished[0])


@pytest.mark.slow
def test_disk_full_while_checkpointing_a_real_run(finished, tmp_path, capsys, monkeypatch):
  w = _copy(finished, tmp_path)
  latest = workdir_lib.slot_dir(w, "naive", "loso_s1", "latest")
  shutil.rmtree(os.path.join(latest, "3"))  # the rerun trains step 3 and must save it

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  capsys.readouterr()
  assert main_lib.run(_config(), w) == 2
  out = capsys.readouterr()
  assert "No space left on device" in out.err and "Nothing is lost" in out.err
  assert "Traceback" not in out.err + out.out
  assert sorted(os.listdir(latest)) == ["2"]
  monkeypatch.undo()
  assert main_lib.run(_config(), w) == 0  # space freed: the rerun resumes
  assert _test_metrics(w) == _test_metrics(finished[0])
