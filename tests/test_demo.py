"""The embedded demo, shortened (`:smoke`), run exactly as a user would, as a subprocess."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_demo_writes_every_output(tmp_path):
  workdir = tmp_path / "demo"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as on a user's machine
  r = subprocess.run([sys.executable, "-m", "train.main", "--config=configs/iemocap.py:smoke",
                      f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Generating the synthetic IEMOCAP-format corpus" in r.stdout
  assert os.path.isdir(workdir / "data" / "IEMOCAP_full_release" / "Session5")
  assert os.path.isfile(workdir / "tokenizer" / "vocab.txt")
  # The WA/UA/F1 table of both models.
  table = r.stdout[r.stdout.index("model"):]
  assert "dmf" in table and "naive" in table and "±" in table
  m = json.loads((workdir / "metrics.json").read_text())
  assert set(m["fusions"]) == {"dmf", "naive"}
  assert m["class_names"] == ["ang", "hap", "neu", "sad"]
  for kind, res in m["fusions"].items():
    assert list(res["folds"]) == ["loso_s1", "loso_s2"]
    assert res["train_traces"] == 1  # one compilation for every batch of both folds
    for fold, f in res["folds"].items():
      assert 0.0 <= f["wa"] <= 1.0 and 0.0 <= f["ua"] <= 1.0 and 0.0 <= f["f1"] <= 1.0
      cm = f["confusion"]
      assert sum(map(sum, cm)) == f["count"] == f["sizes"]["test"]
      assert abs(f["wa"] - sum(cm[i][i] for i in range(4)) / f["count"]) < 1e-9
      assert f["steps"] == 3
      assert os.path.getsize(workdir / f"confusion_{kind}_{fold}.png") > 1000
      events = os.listdir(workdir / "tb" / kind / fold)
      assert any(e.startswith("events.out.tfevents") for e in events)
    s = res["summary"]
    for k in ("wa", "ua", "f1"):
      assert len(s[k]["values"]) == 2 and s[k]["std"] >= 0
    assert os.path.getsize(workdir / f"confusion_{kind}_mean.png") > 1000
