"""Bad input gives one clear paragraph and a non-zero exit, never a traceback wall."""
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from configs import iemocap
from train import loop
from train import validate
from train import main as main_lib
from train.errors import NonFiniteLossError, UserError

import plans  # tests/plans.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_unknown_config_key_and_workdir_file(tmp_path):
  r = _cli("--config=configs/iemocap.py", f"--workdir={tmp_path / 'w'}",
           "--config.model.fusion.slots=30")
  assert r.returncode == 2
  assert "--config.model.fusion.slots" in r.stderr and "locked" in r.stderr
  assert "Traceback" not in r.stderr
  f = tmp_path / "afile"
  f.write_text("x")
  r = _cli("--config=configs/iemocap.py", f"--workdir={f}")
  assert r.returncode == 2
  assert "is a file, not a directory" in r.stderr and "Traceback" not in r.stderr


def _run(config, workdir, capsys):
  rc = main_lib.run(config, str(workdir))
  return rc, capsys.readouterr().err


def test_data_dir_missing_or_not_iemocap(tmp_path, capsys):
  c = iemocap.get_config()
  c.data.data_dir = str(tmp_path / "missing")
  rc, err = _run(c, tmp_path / "w1", capsys)
  assert rc == 2 and "does not exist" in err and "config.data.data_dir" in err
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "readme.txt").write_text("not iemocap")
  c.data.data_dir = str(tmp_path / "other")
  rc, err = _run(c, tmp_path / "w2", capsys)
  assert rc == 2 and "is not the IEMOCAP data set" in err and "Session1" in err
  c.data.data_dir = ""
  rc, err = _run(c, tmp_path / "w3", capsys)
  assert rc == 2 and "data_dir is empty" in err


def test_workdir_of_another_config_is_refused(tmp_path):
  a = iemocap.get_config()
  plans.prepare_workdir(str(tmp_path), a)
  plans.prepare_workdir(str(tmp_path), iemocap.get_config())  # same config: resumes
  b = iemocap.get_config()
  b.model.fusion.dmf.slots = 30
  with pytest.raises(UserError, match="different model/optimiser config"):
    plans.prepare_workdir(str(tmp_path), b)
  with pytest.raises(UserError, match="--workdir is empty"):
    plans.prepare_workdir("", a)


def test_nonfinite_loss_names_the_step():
  class _State:
    first_nonfinite = jnp.asarray(17, jnp.int32)
  with pytest.raises(NonFiniteLossError, match="step 17 of fold loso_s2"):
    loop._check_finite(_State(), "loso_s2", "dmf")
  _State.first_nonfinite = jnp.asarray(-1, jnp.int32)
  loop._check_finite(_State(), "loso_s2", "dmf")


def test_bad_protocol_and_dataset():
  c = iemocap.get_config()
  c.data.dataset = "mnist"
  with pytest.raises(UserError, match="config.data.dataset='mnist'"):
    validate.plan(c)


def test_every_user_facing_error_derives_from_the_one_user_error_base():
  """One family: train.main catches mbaf_jax.errors.UserError and nothing else of the project's."""
  from mbaf_jax.data.audio import AudioFileError
  from mbaf_jax.data.report import DataError
  from mbaf_jax.errors import UserError
  from train import errors
  from train.checkpoints import CheckpointMismatchError
  from train.inference import PredictError
  for cls in (AudioFileError, DataError, errors.UserError, errors.NonFiniteLossError,
              PredictError, CheckpointMismatchError):
    assert issubclass(cls, UserError), cls
  assert errors.UserError is UserError
