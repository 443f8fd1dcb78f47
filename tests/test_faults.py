"""A user's mistakes end in one paragraph and exit status 2, never a traceback, and before
anything is read or written (issue: reliability of the command-line tools)."""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from configs import cebs
from configs import iemocap
from mbaf_jax.data import synthetic
from mbaf_jax.errors import UserError
from train import loop
from train import reporting
from train import main as main_lib
from train import validate

from overrides import set_fields  # tests/overrides.py

import plans  # tests/plans.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (overrides of configs/iemocap.py:smoke, text the message must contain)
BAD_CONFIGS = {
    "eval_every_epochs=0": ({"train.eval_every_epochs": 0},
                            "config.train.eval_every_epochs=0 must be >= 1"),
    "log_every_steps=0": ({"train.log_every_steps": 0},
                          "config.train.log_every_steps=0 must be >= 1"),
    "checkpoint_every_steps=0": ({"train.checkpoint_every_steps": 0},
                                 "config.train.checkpoint_every_steps=0 must be >= 1"),
    "keep_checkpoints=0": ({"train.keep_checkpoints": 0},
                           "config.train.keep_checkpoints=0 must be >= 1"),
    "batch_size=-4": ({"train.batch_size": -4}, "config.train.batch_size=-4 must be >= 1"),
    "fusions=foo": ({"fusions": "foo"}, "fusion kind 'foo' is unknown"),
    "fusions=empty": ({"fusions": ""}, "config.fusions is empty"),
    "slots=0": ({"model.fusion.dmf.slots": 0}, "the dmf model cannot be built"),
    "unknown fusion option": ({"model.fusion.dmf.slot": 3}, "does not accept"),
    "optimiser misspelt": ({"optim.name": "adamm"}, "config.optim.name='adamm'"),
    "learning_rate=0": ({"optim.learning_rate": 0.0}, "config.optim.learning_rate=0.0 must be > 0"),
    "memory_learning_rate=0": ({"optim.memory_learning_rate": 0.0},
                               "config.optim.memory_learning_rate=0.0 must be > 0"),
    "dataset unknown": ({"data.dataset": "iemocapp"}, "config.data.dataset='iemocapp' is unknown"),
    "protocol": ({"data.protocol": "logo"},
                 "config.data.protocol='logo' does not apply to iemocap"),
    "model unknown": ({"model.name": "dmff"}, "config.model.name='dmff' is unknown"),
    "num_classes": ({"model.num_classes": 3}, "config.model.num_classes=3 but iemocap has 4"),
    "parallelism": ({"train.parallelism": "shard"}, "config.train.parallelism='shard'"),
    "num_devices": ({"train.num_devices": 99}, "config.train.num_devices=99"),
}


def _config(overrides):
  return set_fields(iemocap.get_config("smoke"), overrides)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_paragraph_exit_2_and_nothing_is_written(name, tmp_path, capsys):
  overrides, expected = BAD_CONFIGS[name]
  workdir = tmp_path / "run"
  assert main_lib.run(_config(overrides), str(workdir)) == 2
  err = capsys.readouterr().err
  assert expected in err, err
  assert "Traceback" not in err and err.strip().startswith("error: the config cannot run")
  assert "Nothing was read or written" in err
  assert not workdir.exists()  # no config.json, no corpus, no checkpoints


def test_every_problem_is_listed_at_once():
  found = validate.problems(_config({"train.log_every_steps": 0, "train.batch_size": -4,
                                     "model.fusion.dmf.slots": 0}))
  assert len(found) == 3, found
  assert not any("multiple of" in p for p in found)  # batch_size=-4 is not "a multiple of 1"


@pytest.mark.parametrize("get_config", [lambda: iemocap.get_config("demo"),
                                        lambda: iemocap.get_config(), lambda: cebs.get_config()])
def test_the_shipped_configs_have_no_problem(get_config):
  assert validate.problems(get_config()) == []


def test_cebs_mode_pair_is_checked():
  c = cebs.get_config()
  c.data.mode_pair = "F-VII"
  assert any("config.data.mode_pair='F-VII'" in p for p in validate.problems(c))


def test_the_command_line_says_it_in_one_paragraph(tmp_path):
  """The real command: exit 2, one 'error:' paragraph, no traceback, nothing written."""
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "train.main", "--config=configs/iemocap.py:smoke",
       f"--workdir={workdir}", "--config.train.log_every_steps=0",
       "--config.model.fusion.dmf.slots=0"], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: the config cannot run: (1)"), lines
  assert not workdir.exists()


# ------------------------------------------------------------------- data the loader cannot use
@pytest.fixture(scope="module")
def damaged_corpus(tmp_path_factory):
  """A tiny synthetic corpus with one Session1 EmoEvaluation file and all of Session5 deleted,
  and the number of wavs that file labelled."""
  base = tmp_path_factory.mktemp("damaged")
  root = synthetic.write_iemocap(str(base), size="tiny", seed=0)
  label_file = sorted(glob.glob(os.path.join(root, "Session1/dialog/EmoEvaluation/*.txt")))[0]
  dialog = os.path.splitext(os.path.basename(label_file))[0]
  unlabelled = len(glob.glob(os.path.join(root, "Session1/sentences/wav", dialog, "*.wav")))
  os.remove(label_file)
  shutil.rmtree(os.path.join(root, "Session5"))
  return root, unlabelled


def test_a_damaged_corpus_is_reported_with_its_counts(damaged_corpus, tmp_path):
  root, unlabelled = damaged_corpus
  c = iemocap.get_config("smoke")
  c.data.data_dir = root
  with pytest.warns(UserWarning, match="Session5 missing"):
    ds = plans.load_dataset(c, str(tmp_path))
  report = ds.summary.format()
  assert re.search(rf"\b{unlabelled}\s+wav without label", report), report
  assert "per session  Session1" in report and "Session5" not in report.split("warning")[0]
  assert "LOSO" in report and "needs Session1-5" in report
  assert len(ds.folds) == 2  # smoke: max_folds=2 of the 4 sessions present


def test_strict_refuses_a_damaged_corpus_in_one_paragraph(damaged_corpus, tmp_path, capsys):
  root, _ = damaged_corpus
  c = iemocap.get_config("smoke")
  c.data.data_dir = root
  c.data.strict = True
  assert main_lib.run(c, str(tmp_path / "run")) == 2
  err = capsys.readouterr().err
  assert err.strip().startswith("error:") and "Traceback" not in err
  assert "strict mode" in err and ("without label" in err or "Session5" in err), err


def test_a_full_disk_while_writing_the_run_outputs_is_one_paragraph(tmp_path, monkeypatch):
  """metrics.json / a PNG that cannot be written: a UserError naming the file, not a traceback."""
  import errno
  from train import metrics as metrics_lib
  from train import workdir as workdir_lib

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  out = reporting.RunOutput(str(tmp_path), enabled=True)
  monkeypatch.setattr(workdir_lib, "write_json", full)
  monkeypatch.setattr(metrics_lib, "plot_confusion", full)
  with pytest.raises(UserError, match=r"cannot write .*metrics.json \(No space left on "
                     r"device\); the checkpoints already saved are intact"):
    out.write_metrics({})
  with pytest.raises(UserError, match=r"cannot write .*confusion_c_f.png"):
    out.plot_confusion(None, (), "c", "f", "")
  reporting.RunOutput(str(tmp_path), enabled=False).write_metrics({})  # off process 0


def test_the_library_entry_refuses_a_bad_data_config_before_reading(tmp_path):
  """train.loop.train_and_evaluate (without train.main) reads the config through the same plan:
  a bad data config is refused before any file is read or written."""
  c = iemocap.get_config("smoke")
  c.data.protocol = "logo"
  with pytest.raises(UserError, match="config.data.protocol='logo' does not apply"):
    loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # neither the workdir nor the corpus was written
