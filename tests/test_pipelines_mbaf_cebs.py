"""End-to-end training of the MBAF-paper experiments on the synthetic corpora: the MBAF IEMOCAP
model (MBAF-/NF-I/II/III, configs/iemocap_mbaf.py:smoke), CEBS F-IV (configs/cebs.py:smoke) and
an ablation (configs/ablations.py:smoke) through ``train.loop.train_and_evaluate``; the
metrics are sane, the memory was written in training and is only read in evaluation, and the
workdir serves ``train.inference`` and ``train.predict``."""
import json
import os

import jax
import numpy as np
import pytest

from train import loop
from train import inference
from train import predict

import plans  # tests/plans.py


@pytest.fixture(scope="module")
def iemocap_dir(tmp_path_factory):
  from mbaf_jax.data import synthetic
  base = tmp_path_factory.mktemp("iemocap")
  synthetic.write_iemocap(str(base), size="demo", seed=0)
  return str(base)


@pytest.fixture(scope="module")
def cebs_dir(tmp_path_factory):
  from mbaf_jax.data import synthetic_cebs
  base = tmp_path_factory.mktemp("cebs")
  return synthetic_cebs.write_cebs(str(base), size="tiny", seed=0)


def _check_metrics(workdir, kinds, num_classes):
  with open(os.path.join(workdir, "metrics.json")) as f:
    m = json.load(f)
  assert set(m["fusions"]) == set(kinds)
  for kind in kinds:
    folds = m["fusions"][kind]["folds"]
    assert folds
    for name, r in folds.items():
      for key in ("wa", "ua", "f1"):
        assert np.isfinite(r[key]) and 0.0 <= r[key] <= 1.0, (kind, name, key, r[key])
      cm = np.asarray(r["confusion"])
      assert cm.shape == (num_classes, num_classes) and (cm >= 0).all()
      assert cm.sum() == r["sizes"]["test"] == r["count"] > 0
      assert r["wa"] == pytest.approx(np.trace(cm) / cm.sum())
      assert r["steps"] >= 1
  return m


def _initial_memory(config, kind, workdir, fold_index=0):
  """The memory the trainer starts fold ``fold_index`` from (same key, same init)."""
  from mbaf_jax import models
  from mbaf_jax.models import factory
  from train import steps
  vocab = None
  if config.model.name == "mbaf_iemocap":
    with open(os.path.join(workdir, "vocab.json")) as f:
      vocab = len(json.load(f))
  model, _ = models.build_model(config.model, kind, vocab_size=vocab,
                                max_tokens=config.data.max_tokens)
  b = config.train.batch_size
  batch = dict(factory.dummy_batch(config.data, config.model, b), mask=np.ones((b,), bool))
  key = jax.random.fold_in(jax.random.key(config.seed), fold_index)
  return model, steps.init_variables(model, batch, key)["memory"]


def _check_memory(config, kind, workdir, inputs):
  """Training wrote the memory; evaluation (train=False) leaves it unchanged."""
  model, mem0 = _initial_memory(config, kind, workdir)
  p = inference.load(workdir, fusion=kind, checkpoint="latest")
  mem = p.variables["memory"]
  assert jax.tree.structure(mem) == jax.tree.structure(mem0)
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(mem), jax.tree.leaves(mem0)))
  assert diff > 1e-6  # written during training
  _, new = model.apply(p.variables, inputs, train=False, mutable=["memory"])
  for a, b in zip(jax.tree.leaves(new["memory"]), jax.tree.leaves(mem)):
    np.testing.assert_array_equal(a, b)  # read, never written, in evaluation
  return p


def _mbaf_config(arg, data_dir, fusions):
  from configs import iemocap_mbaf
  c = iemocap_mbaf.get_config(arg)
  c.data.data_dir = data_dir
  c.fusions = fusions
  c.data.max_examples = 60
  c.train.max_steps = 2
  c.train.eval_batch_size = 16
  return c


def _mbaf_inputs(p, n=3):
  rng = np.random.default_rng(0)
  waves = [rng.normal(size=(rng.integers(4000, 20000),)).astype(np.float32) * 0.1
           for _ in range(n)]
  texts = ["I am so happy today", "this is unknownwordxyz", ""][:n]
  return waves, texts


# Every placement once, MBAF and NF each at least once (MBAF Table 1's six networks share this
# code path). Each run compiles init + train + eval steps (~20-25 s of CPU), hence slow.
@pytest.mark.slow
@pytest.mark.parametrize("arg,fusions", [("III,smoke", "mbaf"), ("I,nf,smoke", "naive"),
                                         ("II,smoke", "mbaf")])
def test_mbaf_iemocap_trains_end_to_end(iemocap_dir, tmp_path, capsys, arg, fusions):
  c = _mbaf_config(arg, iemocap_dir, fusions)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(c, workdir)
  kinds = fusions.split(",")
  m = _check_metrics(workdir, kinds, 4)
  assert m["class_names"] == ["ang", "hap", "neu", "sad"]
  assert len(m["fusions"][kinds[0]]["folds"]) == 1  # MBAF §4.1: one 8:1:1 split
  with open(os.path.join(workdir, "vocab.json")) as f:
    vocab = json.load(f)
  assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1 and len(vocab) > 20
  p = inference.load(workdir)
  waves, texts = _mbaf_inputs(p)
  probs = p(waves, texts)
  assert probs.shape == (3, 4) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
  if "mbaf" in kinds:
    _check_memory(c, "mbaf", workdir, p._batch([waves, texts]))  # pylint: disable=protected-access
  if arg.startswith("III"):
    _check_mbaf_cli(workdir, tmp_path, capsys, waves[0], texts[0], probs[0])


def _check_mbaf_cli(workdir, tmp_path, capsys, wave, text, probs):
  """``python -m train.predict --wav a.wav --text "..."`` prints the API's probabilities."""
  import soundfile as sf
  path = str(tmp_path / "u0.wav")
  sf.write(path, wave, 16000, subtype="FLOAT")
  capsys.readouterr()
  assert predict.run(["--workdir", workdir, "--wav", path, "--text", text]) == 0
  line = capsys.readouterr().out.strip()
  got = [float(part.split()[1]) for part in line.split("(")[1].rstrip(")").split(", ")]
  np.testing.assert_allclose(got, probs, atol=1e-4)
  assert predict.run(["--workdir", workdir, "--npy", path]) == 2  # --npy is for CEBS
  assert "--npy is for CEBS models" in capsys.readouterr().err


def _cebs_config(arg, data_dir, fusions):
  from configs import cebs
  c = cebs.get_config(arg)
  c.data.data_dir = data_dir
  c.data.synthetic = False
  c.fusions = fusions
  c.data.max_folds = 1
  c.train.max_steps = 2
  return c


@pytest.mark.slow
def test_cebs_f4_trains_end_to_end(cebs_dir, tmp_path):
  c = _cebs_config("F-IV,smoke", cebs_dir, "mbaf,naive")
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(c, workdir)
  m = _check_metrics(workdir, ["mbaf", "naive"], 3)
  assert m["class_names"] == ["basal", "music", "post-music"]
  rng = np.random.default_rng(1)
  ecg, resp = (rng.normal(size=(3, 6, 1000)).astype(np.float32) for _ in range(2))
  p = _check_memory(c, "mbaf", workdir, {"modes": (ecg, resp)})
  assert [(i.name, i.medium, i.shape) for i in p.inputs] == [("ECG", "array", (6, 1000)),
                                                         ("RESP", "array", (6, 1000))]
  probs = p(ecg, resp)
  assert probs.shape == (3, 3) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(p(ecg[1], resp[1])[0], probs[1], rtol=1e-5, atol=1e-6)
  with pytest.raises(inference.PredictError, match=r"RESP input must have shape \(N, 6, 1000\)"):
    p(ecg, resp[:, :, :10])
  with pytest.raises(inference.PredictError, match="takes 2 arrays"):
    p(ecg)
  # CLI: one .npy per mode; audio inputs are refused with a pointer to --npy.
  np.save(tmp_path / "ecg.npy", ecg)
  np.save(tmp_path / "resp.npy", resp)
  out = tmp_path / "probs.csv"
  assert predict.run(["--workdir", workdir, "--fusion", "mbaf", "--checkpoint", "latest",
                      "--npy", str(tmp_path / "ecg.npy"), str(tmp_path / "resp.npy"),
                      "--output", str(out)]) == 0
  import csv
  rows = list(csv.DictReader(open(out)))
  got = np.array([[float(r[f"p_{k}"]) for k in ("basal", "music", "post-music")] for r in rows])
  np.testing.assert_allclose(got, probs, atol=2e-6)
  assert predict.run(["--workdir", workdir, "--wav", "a.wav", "--text", "x"]) == 2


def test_synthetic_cebs_loads_with_its_own_record_length(cebs_dir, tmp_path):
  """The manifest's seconds per state reach load_cebs (the real corpus uses 300 s)."""
  from mbaf_jax.data import synthetic_cebs
  c = _cebs_config("F-VI,smoke", cebs_dir, "naive")
  c.data.max_examples = 0
  ds = plans.load_dataset(c, str(tmp_path))
  secs = synthetic_cebs.read_synthetic_manifest(cebs_dir)["seconds_per_state"]
  per_record = int(secs * 5000) // 6000
  assert per_record >= 1
  assert len(ds.labels) == per_record * 20 * 3  # 20 subjects × 3 states, nothing dropped
  assert np.bincount(ds.labels).tolist() == [per_record * 20] * 3
  assert [x.shape[1:] for x in ds.inputs["modes"]] == [(6, 1000)] * 2
  assert len(ds.folds) == 1  # smoke keeps one of the 4 LOGO folds
  c.data.max_folds = 0
  folds = plans.load_dataset(c, str(tmp_path)).folds
  assert len(folds) == 4
  np.testing.assert_array_equal(np.sort(np.concatenate([f.test for f in folds])),
                                np.arange(len(ds.labels)))


@pytest.mark.slow
def test_ablation_smoke_trains(iemocap_dir, tmp_path):
  from configs import ablations
  c = ablations.get_config("cross,single=1,slots=4,smoke")
  c.data.data_dir = iemocap_dir
  c.data.max_examples = 60
  c.train.max_steps = 2
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(c, workdir)
  _check_metrics(workdir, ["mbaf"], 4)
  p = inference.load(workdir)
  mem = jax.tree.leaves(p.variables["memory"])[0]
  assert mem.shape == (4, 32)  # single=1: the memory holds the text mode only (Eq. 13)
