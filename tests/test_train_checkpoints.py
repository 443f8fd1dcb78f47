"""train.checkpoints: bit-exact round trip of the whole state (memory included), keep-N,
best-by-validation-UA, refusal of a checkpoint written by another config."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import run_identity
from train import workdir as workdir_lib
from train import cli
from train import checkpoints, steps

import plans  # tests/plans.py


def _state(seed, width=3):
  rng = np.random.default_rng(seed)
  params = {"fusion": {"w": jnp.asarray(rng.normal(size=(width, 2)), jnp.float32)},
            "head": {"b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  opt_state = jax.tree.map(lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x,
                           opt_state)
  return steps.TrainState(
      step=jnp.asarray(seed, jnp.int32), params=params, opt_state=opt_state,
      batch_stats={"bn": {"mean": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}},
      constants={"cbp": {"hashes": jnp.asarray(rng.integers(0, 7, size=(5,)), jnp.int32)}},
      memory={"fusion": {"M_a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}},
      first_nonfinite=jnp.asarray(-1, jnp.int32))


def _assert_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keep_n_and_best(tmp_path):
  ck = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=2, fingerprint="abc")
  states = {s: _state(s) for s in (1, 2, 3)}
  for s, st in states.items():
    ck.save_latest(s, st.saveable(), {"step": s, "batcher": {"epoch": 0, "position": s}})
  assert ck.latest.all_steps() == [2, 3]  # keep-N = 2
  tree, meta = ck.restore_latest(_state(0).saveable())
  _assert_equal(tree, states[3].saveable())
  restored = steps.TrainState.from_saved(tree)
  np.testing.assert_array_equal(restored.memory["fusion"]["M_a"], states[3].memory["fusion"]["M_a"])
  assert meta["batcher"] == {"epoch": 0, "position": 3} and meta["fingerprint"] == "abc"
  for s, ua in ((1, 0.4), (2, 0.7), (3, 0.5)):
    ck.save_best(s, states[s].saveable(), {"step": s}, ua)
  assert ck.best_step() == 2
  tree, meta = ck.restore_best(_state(0).saveable())
  _assert_equal(tree, states[2].saveable())
  ck.close()


def test_checkpoint_of_another_config_is_refused(tmp_path):
  ck = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=1, fingerprint="abc")
  ck.save_latest(1, _state(1).saveable(), {"step": 1})
  ck.close()
  other = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=1, fingerprint="xyz")
  with pytest.raises(checkpoints.CheckpointMismatchError, match="different model"):
    other.restore_latest(_state(0).saveable())
  other.close()
  same_fp = checkpoints.FoldCheckpointer(str(tmp_path / "fold"), keep=1, fingerprint="")
  with pytest.raises(checkpoints.CheckpointMismatchError, match="does not match"):
    same_fp.restore_latest(_state(0, width=5).saveable())  # other shapes
  same_fp.close()


def test_fingerprint_tracks_model_config():
  from configs import iemocap
  a, b = iemocap.get_config(), iemocap.get_config()
  assert plans.fingerprint(a) == plans.fingerprint(b)
  b.model.fusion.dmf.slots = 60
  assert plans.fingerprint(a) != plans.fingerprint(b)
  c = iemocap.get_config()
  c.train.epochs = 99  # not part of the state's shapes
  assert plans.fingerprint(a) == plans.fingerprint(c)
  c.model.fusion.mbaf.slots = 7  # a fusion this run does not train (fusions="dmf")
  assert "mbaf" not in c.fusions
  assert plans.fingerprint(a) == plans.fingerprint(c)
  c.fusions = "dmf,mbaf"  # ... unless it does
  assert plans.fingerprint(a) != plans.fingerprint(c)
  from configs import iemocap_mbaf
  g, h = iemocap_mbaf.get_config(), iemocap_mbaf.get_config()
  h.model.text.glove = "/moved/glove.6B.300d.txt"  # init-only file: a move must not block resume
  assert plans.fingerprint(g) == plans.fingerprint(h)
  h.model.dtype = "bfloat16"  # compute dtype: the saved state is float32 either way
  assert plans.fingerprint(g) == plans.fingerprint(h)
  h.model.text.kwargs.embed_dim = 100  # ... but the embedding's shape does count
  assert plans.fingerprint(g) != plans.fingerprint(h)
  d = iemocap.get_config()
  d.data.chunks = 3  # not a DMF data field (models/dmf.DATA_FIELDS): no shape depends on it
  assert plans.fingerprint(a) == plans.fingerprint(d)
  d.data.max_tokens = 7  # ... but the text length is one
  assert plans.fingerprint(a) != plans.fingerprint(d)


def test_paths_of_the_workdir_layout():
  w = os.path.join("runs", "demo")
  assert workdir_lib.config_path(w) == os.path.join(w, "config.json")
  assert workdir_lib.checkpoint_root(w) == os.path.join(w, "ckpt")
  assert workdir_lib.fusion_dir(w, "dmf") == os.path.join(w, "ckpt", "dmf")
  assert workdir_lib.fold_dir(w, "dmf", "loso_s1") == os.path.join(w, "ckpt", "dmf", "loso_s1")
  assert workdir_lib.slot_dir(w, "dmf", "loso_s1", "best") == os.path.join(
      w, "ckpt", "dmf", "loso_s1", "best")


def test_workdir_config_is_written_checked_and_read_back(tmp_path):
  from configs import iemocap
  from mbaf_jax.errors import UserError
  w = str(tmp_path / "run")
  a = iemocap.get_config()
  plans.prepare_workdir(w, a, write=False)  # checks only: nothing written
  assert not os.path.exists(workdir_lib.config_path(w))
  plans.prepare_workdir(w, a)
  plans.prepare_workdir(w, iemocap.get_config())  # same config: resumes
  config, fp = run_identity.read_workdir_config(w)
  assert fp == plans.fingerprint(a) == plans.fingerprint(config)
  assert config.model.name == a.model.name and config.fusions == a.fusions
  b = iemocap.get_config()
  b.model.fusion.dmf.slots = 30
  with pytest.raises(UserError, match=r"holds a different run .*model\.fusion\.dmf\.slots: "
                     r"120 then, 30 now.*--config\.train\.restart=True"):
    plans.prepare_workdir(w, b)
  with pytest.raises(UserError, match="--workdir is empty"):
    plans.prepare_workdir("", a)
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="is a file, not a directory"):
    plans.prepare_workdir(str(tmp_path / "file"), a)
  with pytest.raises(UserError, match="is a file"):
    run_identity.read_workdir_config(str(tmp_path / "file"))
  with pytest.raises(UserError, match="does not exist"):
    run_identity.read_workdir_config(str(tmp_path / "none"))
  with open(workdir_lib.config_path(w), "w") as f:
    f.write("{broken")
  with pytest.raises(UserError, match="exists but is not readable JSON"):
    plans.prepare_workdir(w, a)
  with pytest.raises(UserError, match="is not a readable training config"):
    run_identity.read_workdir_config(w)


def test_find_falls_back_to_latest_and_restores_the_optimiser_state_as_saved(tmp_path):
  """What predict does: find (best, else latest), then read the variables into the model's
  shapes with the optimiser state as saved (no optimiser needed)."""
  w = str(tmp_path)
  reader = checkpoints.FoldCheckpointer(workdir_lib.fold_dir(w, "dmf", "loso_s1"), create=False)
  assert reader.find("best") is None and not os.path.exists(workdir_lib.checkpoint_root(w))
  reader.close()
  ck = checkpoints.FoldCheckpointer(workdir_lib.fold_dir(w, "dmf", "loso_s1"), keep=2,
                                    fingerprint="abc")
  ck.save_latest(1, _state(1).saveable(), {"step": 1})
  ck.save_latest(2, _state(2).saveable(), {"step": 2})
  assert checkpoints.find_checkpoint(w) == ("dmf", "loso_s1", "latest", 2)  # no best yet
  ck.save_best(1, _state(1).saveable(), {"step": 1}, 0.5)
  ck.close()
  assert checkpoints.find_checkpoint(w) == checkpoints.CheckpointRef("dmf", "loso_s1", "best", 1)
  assert checkpoints.find_checkpoint(w, slot="latest").step == 2
  reader = checkpoints.FoldCheckpointer(workdir_lib.fold_dir(w, "dmf", "loso_s1"),
                                        fingerprint="abc", create=False)
  assert reader.path("best", 1) == os.path.join(
      os.path.abspath(workdir_lib.slot_dir(w, "dmf", "loso_s1", "best")), "1")
  target = dict(jax.eval_shape(lambda: _state(0).saveable()), opt_state=None)
  tree, meta = reader.restore("best", 1, target)
  _assert_equal(tree, _state(1).saveable())  # the optimiser state too, read as saved
  assert meta["step"] == 1 and meta["fingerprint"] == "abc"
  wider = dict(jax.eval_shape(lambda: _state(0, width=5).saveable()), opt_state=None)
  with pytest.raises(checkpoints.CheckpointMismatchError, match="does not match") as e:
    reader.restore("latest", 2, wider)
  assert e.value.problem in str(e.value) and "fresh --workdir" not in e.value.problem
  reader.close()


def _smoke(workdir_data, parallelism="jit"):
  from configs import iemocap
  c = iemocap.get_config("smoke")
  c.train.parallelism = parallelism
  c.data.data_dir = workdir_data
  c.fusions = "dmf"
  c.data.max_folds = 1
  c.train.max_steps = 5
  c.train.checkpoint_every_steps = 100
  c.train.batch_size = 8
  return c


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["pmap"])
def test_interrupted_run_resumes_bit_identical(tmp_path, parallelism):
  """N steps straight == k steps, stop, resume to N (params, memory, batch stats, opt state) in
  the pmap layout (8 devices: the checkpoint holds one host copy of the replicated state and is
  placed back in the layout on resume). The default jit layout's bit-identical resume is
  tests/test_resume_sigkill.py (after a kill -9) and tests/test_signals.py (after SIGINT)."""
  from train import loop
  from mbaf_jax.data import synthetic
  data = synthetic.write_iemocap(str(tmp_path / "data"), size="tiny", seed=0)

  def final_state(workdir):
    ck = checkpoints.FoldCheckpointer(str(workdir / "ckpt" / "dmf" / "loso_s1"), keep=2)
    step = ck.latest_step()
    import orbax.checkpoint as ocp
    tree = ck.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    ck.close()
    return step, tree

  loop.train_and_evaluate(_smoke(data, parallelism), str(tmp_path / "straight"))
  stop = cli.StopRequest()
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(_smoke(data, parallelism), str(tmp_path / "resumed"), stop=stop,
                               on_step=lambda kind, fold, step: step == 2 and stop.set())
  assert final_state(tmp_path / "resumed")[0] == 2
  out = loop.train_and_evaluate(_smoke(data, parallelism), str(tmp_path / "resumed"))
  assert out["parallelism"] == parallelism and out["devices"] == jax.device_count()
  s1, a = final_state(tmp_path / "straight")
  s2, b = final_state(tmp_path / "resumed")
  assert s1 == s2 == 5
  _assert_equal(a, b)
  assert out["fusions"]["dmf"]["folds"]["loso_s1"]["steps"] == 5


def test_orbax_info_logs_are_silenced(tmp_path):
  """Every FoldCheckpointer user (not only train.main) is spared orbax's per-save INFO lines;
  other INFO logs and orbax warnings still pass."""
  import logging
  records = []

  class _Keep(logging.Handler):
    def emit(self, record):
      records.append(record)

  absl_logger = logging.getLogger("absl")
  handler, old_level = _Keep(level=logging.DEBUG), absl_logger.level
  absl_logger.addHandler(handler)
  absl_logger.setLevel(logging.DEBUG)
  try:
    ck = checkpoints.FoldCheckpointer(str(tmp_path / "ck"), keep=1)
    tree = {"w": np.arange(3, dtype=np.float32)}
    ck.save_latest(1, tree, {"step": 1})
    np.testing.assert_array_equal(ck.restore_latest(tree)[0]["w"], tree["w"])
    ck.close()
    absl_logger.info("a line of ours")
    absl_logger.warning("an orbax-looking warning")
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(old_level)
  from_orbax = [r for r in records if "orbax" in f"{r.name} {r.pathname}"
                and r.levelno < logging.WARNING]
  assert from_orbax == []
  assert [r.getMessage() for r in records if r.levelno < logging.WARNING] == ["a line of ours"]
  assert any(r.getMessage() == "an orbax-looking warning" for r in records)
