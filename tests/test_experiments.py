"""train/experiments.py and its tables and statistics: statistics against hand-computed numbers,
table layout, resumability (a fake trainer counts its calls), the command line, the random timing
batch, and one real tiny table end to end."""
import json
import math
import os

import numpy as np
import pytest

from configs import iemocap
from mbaf_jax import models
from train import experiment_stats
from train import experiment_tables
from train import experiments
from train import optimizers
from train import steps
from train import timing
from train.errors import NonFiniteLossError, UserError

T_975_DF1 = 12.706204736174707  # Student t 0.975 quantiles (statistical tables)
T_975_DF2 = 4.302652729220313
T_975_DF4 = 2.7764451051977987
NO_CACHE = "--compile_cache=none"  # the persistent cache is process-global: keep tests out of it


def test_t_quantile_matches_tables():
  assert experiment_stats.t_quantile(1) == pytest.approx(T_975_DF1, rel=1e-9)
  assert experiment_stats.t_quantile(2) == pytest.approx(T_975_DF2, rel=1e-9)
  assert experiment_stats.t_quantile(4) == pytest.approx(T_975_DF4, rel=1e-9)


def test_aggregate_hand_computed():
  # 3 seeds x 2 folds. Seed means 75, 75, 80; all-values mean 460/6.
  v = [[70.0, 80.0], [60.0, 90.0], [75.0, 85.0]]
  a = experiment_stats.aggregate(v)
  assert a["mean"] == pytest.approx(460 / 6)
  # Sample variance of the 6 values: sum of squared deviations / 5.
  m = 460 / 6
  ss = sum((x - m) ** 2 for x in (70, 80, 60, 90, 75, 85))
  assert a["std"] == pytest.approx(math.sqrt(ss / 5))
  assert a["seed_means"] == [75.0, 75.0, 80.0]
  sd_seeds = math.sqrt(((75 - 230 / 3) ** 2 * 2 + (80 - 230 / 3) ** 2) / 2)  # = sqrt(25/3)
  assert sd_seeds == pytest.approx(math.sqrt(25 / 3))
  half = T_975_DF2 * sd_seeds / math.sqrt(3)
  assert a["ci95"] == pytest.approx([230 / 3 - half, 230 / 3 + half])
  assert a["n"] == 6
  one = experiment_stats.aggregate([[50.0, 70.0]])
  assert one["ci95"] is None and one["mean"] == 60.0 and one["std"] == pytest.approx(math.sqrt(200))


def test_paired_difference_hand_computed():
  memory = [[1.0, 3.0], [2.0, 2.0]]
  naive = [[0.0, 1.0], [2.0, 3.0]]
  d = experiment_stats.paired_difference(memory, naive)
  assert d["seed_diffs"] == [1.5, -0.5]
  assert d["mean"] == pytest.approx(0.5)
  half = T_975_DF1 * math.sqrt(2.0) / math.sqrt(2)  # sd of (1.5, -0.5) is sqrt(2)
  assert d["ci95"] == pytest.approx([0.5 - half, 0.5 + half])
  assert d["wins"] == [2, 1, 1]  # per-pair differences 1, 2, 0, -1
  with pytest.raises(ValueError, match="shapes differ"):
    experiment_stats.paired_difference([[1.0]], [[1.0, 2.0]])


def _fake_metrics(config):
  """Deterministic fake metrics: memory fusions score (seed + 2·fold) points above naive."""
  folds = max(config.data.max_folds, 1) if config.data.max_folds else 3
  out = {"name": config.name, "fusions": {}, "table": "fake"}
  for kind in [k.strip() for k in config.fusions.split(",")]:
    bonus = 0.0 if kind == "naive" else 0.01 * (config.seed + 2)
    fs = {f"f{i}": {"wa": 0.5 + bonus + 0.02 * i, "ua": 0.4 + bonus + 0.02 * i,
                    "f1": 0.3 + bonus} for i in range(folds)}
    out["fusions"][kind] = {"folds": fs, "summary": {}}
  return out


def _write_fake_run(config, workdir):
  """What the trainer leaves behind: ``<workdir>/metrics.json`` of :func:`_fake_metrics`."""
  os.makedirs(workdir, exist_ok=True)
  m = _fake_metrics(config)
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(m, f)
  return m


@pytest.fixture
def fake_trainer(monkeypatch):
  calls = []

  def train(config, workdir):
    calls.append((config.name, config.seed, workdir))
    return _write_fake_run(config, workdir)

  monkeypatch.setattr(experiments, "_trainer", lambda: train)
  return calls


def test_resumable_and_table_values(fake_trainer, tmp_path):
  argv = ["dmf_table1", "--synthetic", "--seeds=3", f"--workdir={tmp_path}", NO_CACHE]
  assert experiments.main(argv) == 0
  assert len(fake_trainer) == 3  # one run (DMF + naive) per seed
  assert {c[2] for c in fake_trainer} == {str(tmp_path / "iemocap_both" / f"seed{s}")
                                          for s in range(3)}
  with open(tmp_path / "dmf_table1.json") as f:
    s = json.load(f)
  # WA of DMF, seed s, fold i: 100 (0.5 + 0.01 (s + 2) + 0.02 i); folds 0..2 → fold mean +2.
  dmf_wa = s["cells"]["DMF (memory fusion)|WA (%)"]
  assert dmf_wa["seed_means"] == pytest.approx([54.0, 55.0, 56.0])
  assert dmf_wa["paper"] == 76.8
  wa_pair = [p for p in s["pairs"] if p["metric"] == "wa"][0]
  assert wa_pair["seed_diffs"] == pytest.approx([2.0, 3.0, 4.0])
  half = T_975_DF2 * 1.0 / math.sqrt(3)
  assert wa_pair["ci95"] == pytest.approx([3.0 - half, 3.0 + half])
  assert wa_pair["paper"] == pytest.approx(2.5)
  assert wa_pair["wins"] == [9, 0, 0]
  md = (tmp_path / "dmf_table1.md").read_text()
  assert "| DMF (memory fusion) — paper | 76.80 | 77.30 | 0.770 |" in md
  assert "| naive fusion — paper | 74.30 | 75.20 | 0.740 |" in md
  assert "| DMF − naive (WA (%)) | WA | 2.50 | 3.00 |" in md
  # Second call: every run is complete → the trainer is not called again.
  assert experiments.main(argv) == 0
  assert len(fake_trainer) == 3
  # A run whose metrics.json lacks the final table (interrupted) is rerun; others are not.
  path = tmp_path / "iemocap_both" / "seed1" / "metrics.json"
  m = json.loads(path.read_text())
  del m["table"]
  path.write_text(json.dumps(m))
  assert experiments.main(argv + ["--seeds=3"]) == 0
  assert [c[1] for c in fake_trainer[3:]] == [1]


def test_sweep_table_writes_plot_and_shares_runs(fake_trainer, tmp_path):
  argv = ["mbaf_table4", "--synthetic", "--seeds=2", f"--workdir={tmp_path}", NO_CACHE]
  assert experiments.main(argv) == 0
  assert len(fake_trainer) == 2 * 7  # 6 memory sizes + NF-III
  assert (tmp_path / "mbaf_table4_memory_size.png").stat().st_size > 1000
  s = json.loads((tmp_path / "mbaf_table4_memory_size.json").read_text())
  assert s["cells"]["UA (%)|30"]["paper"] == 80.66
  assert s["cells"]["WA (%)|NF-III"]["paper"] == 80.51
  # Table 6 reuses the naive-read runs of Table 4: only the 6 cross-attention runs × 2 seeds.
  assert experiments.main(["mbaf_table6", "--synthetic", "--seeds=2",
                           f"--workdir={tmp_path}", NO_CACHE]) == 0
  assert len(fake_trainer) == 14 + 12
  s6 = json.loads((tmp_path / "mbaf_table6_read.json").read_text())
  assert s6["cells"]["UA-CA (%)|20"]["paper"] == 80.27
  assert (tmp_path / "mbaf_table6_read.png").exists()


def test_build_config_sizes_and_overrides(tmp_path):
  spec = experiment_tables.RunSpec("cebs", "F-V", (("model.fusion.mbaf.slots", 40),))
  c = experiments.build_config(spec, 3, True, "smoke", "", str(tmp_path), folds=1,
                               overrides=["train.epochs=2", "optim.learning_rate=1"])
  assert (c.seed, c.data.mode_pair, c.model.fusion.mbaf.slots) == (3, "F-V", 40)
  assert (c.train.epochs, c.optim.learning_rate, c.data.max_folds) == (2, 1.0, 1)
  assert c.data.data_dir == os.path.join(str(tmp_path), "data", "cebs")
  assert c.train.max_steps == 3  # smoke size
  real = experiments.build_config(experiment_tables.RunSpec("iemocap", "both"), 0, False, "",
                                  "/data/IEMOCAP", str(tmp_path))
  assert real.data.data_dir == "/data/IEMOCAP" and not real.data.synthetic
  assert real.model.audio.size == "base"
  with pytest.raises(UserError, match="no field 'epoch'"):
    experiments.build_config(spec, 0, True, "smoke", "", str(tmp_path), overrides=["train.epoch=2"])
  assert spec.key == "cebs_F-V_slots40"


def test_every_table_builds_its_configs(tmp_path):
  """Every run of every table names a config variant that exists (real and synthetic sizes)."""
  for table in experiment_tables.TABLES.values():
    for spec in {c.spec for c in table.cells}:
      for size in ("", "demo"):
        c = experiments.build_config(spec, 0, bool(size), size, "/d", str(tmp_path))
        assert c.fusions
        if "slots=" in spec.arg:
          assert c.model.fusion.mbaf.slots == int(spec.arg.split("slots=")[1])
        if "cross" in spec.arg:
          assert c.model.fusion.mbaf.read == "cross"


def test_command_line_errors(capsys):
  with pytest.raises(SystemExit):
    experiments.parse_args(["dmf_table1", "--workdir=/tmp/x"])  # neither data nor --synthetic
  assert "--data_dir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    experiments.parse_args(["table9", "--synthetic", "--workdir=/tmp/x"])
  a = experiments.parse_args(["mbaf_table5", "--synthetic", "--workdir=/tmp/x"])
  assert (a.table, a.seeds, a.size) == ("mbaf_table5_cebs_memory_size", 5, "demo")
  a = experiments.parse_args(["mbaf_table1", "--data_dir=/d", "--workdir=/tmp/x"])
  assert (a.seeds, a.size) == (1, "")


@pytest.mark.slow
def test_real_tiny_table_end_to_end(tmp_path):
  """dmf_table1 on the synthetic corpus at smoke size (1 seed, 1 fold), through the trainer."""
  argv = ["dmf_table1", "--synthetic", "--size=smoke", "--seeds=1", "--folds=1",
          "--set", "train.num_devices=1", f"--workdir={tmp_path}", NO_CACHE]
  assert experiments.main(argv) == 0
  s = json.loads((tmp_path / "dmf_table1.json").read_text())
  for key in ("DMF (memory fusion)|UA (%)", "naive fusion|UA (%)"):
    c = s["cells"][key]
    assert np.array(c["values"]).shape == (1, 1) and 0.0 <= c["mean"] <= 100.0
  m = json.loads((tmp_path / "iemocap_both" / "seed0" / "metrics.json").read_text())
  assert c["mean"] == pytest.approx(100 * m["fusions"]["naive"]["folds"]["loso_s1"]["ua"])
  mtime = (tmp_path / "iemocap_both" / "seed0" / "metrics.json").stat().st_mtime_ns
  assert experiments.main(argv) == 0  # rerun: read, not retrained
  assert (tmp_path / "iemocap_both" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime


def test_inference_table_math(monkeypatch, tmp_path):
  """dmf_inference: the overhead and the files, with the timing itself faked (3 vs 2 ms)."""
  built = []

  class Model:  # what build_model returns is only used for .apply: here the fusion kind
    def __init__(self, kind):
      self.apply = kind

  monkeypatch.setattr(models, "build_model",
                      lambda model_cfg, kind: (built.append(kind) or Model(kind), None))
  monkeypatch.setattr(timing, "random_batch", lambda c, b, seed=0: {"b": b})
  monkeypatch.setattr(steps, "init_variables", lambda *a: {"params": {}})
  monkeypatch.setattr(optimizers, "make_optimizer", lambda *a: None)
  monkeypatch.setattr(steps, "create_state", lambda *a: None)
  monkeypatch.setattr(steps, "make_eval_step", lambda apply: apply)
  monkeypatch.setattr(timing, "compile_and_time", lambda fn, args, **k: (
      None, {"median_ms": 3.0 if fn == "dmf" else 2.0}))
  assert experiments.main(["dmf_inference", "--synthetic", f"--workdir={tmp_path}",
                           NO_CACHE]) == 0
  assert built == ["dmf", "naive"]
  s = json.loads((tmp_path / "dmf_inference.json").read_text())
  assert s["ms_per_sample"] == {"dmf": 3.0, "naive": 2.0}
  assert s["overhead_frac"] == pytest.approx(0.5)
  assert s["paper_overhead_frac"] == pytest.approx(28 / 63)
  assert (s["encoders"], s["slots"]) == ("tiny/tiny", 16)
  md = (tmp_path / "dmf_inference.md").read_text()
  assert "| paper | 91 | 63 | 44.4 % |" in md and "| ours | 3.00 | 2.00 | 50.0 % |" in md


def test_finished_run_of_another_config_is_refused(fake_trainer, tmp_path):
  """A finished run whose stored config.json differs (here: another --set) is not silently read."""
  argv = ["dmf_table1", "--synthetic", "--seeds=1", f"--workdir={tmp_path}", NO_CACHE]
  assert experiments.main(argv) == 0
  run_dir = tmp_path / "iemocap_both" / "seed0"
  c = experiments.build_config(experiment_tables.RunSpec("iemocap", "both"), 0, True, "demo", "",
                               str(tmp_path))
  (run_dir / "config.json").write_text(json.dumps({"config": json.loads(c.to_json_best_effort())}))
  assert experiments.main(argv) == 0 and len(fake_trainer) == 1  # same config: read
  assert experiments.main(argv + ["--set", "train.epochs=3"]) == 2  # refused (user error)
  assert experiments.main(argv + ["--set", "train.epochs=3", "--reuse_existing"]) == 0
  assert len(fake_trainer) == 1
  assert experiments.config_differences(str(run_dir), c) == []
  c.train.epochs = 3
  assert experiments.config_differences(str(run_dir), c) == ["train.epochs"]


def test_diverged_run_is_recorded_and_excluded(monkeypatch, tmp_path):
  """A run that stops on a non-finite loss is recorded (failed.json), excluded from its cells and
  pairs, not retried on rerun unless --retry_failed."""
  calls = []

  def train(config, workdir):
    calls.append((config.name, config.seed))
    if config.seed == 1 and config.data.mode_pair == "F-V":
      raise NonFiniteLossError("the training loss became NaN/inf at step 7")
    return _write_fake_run(config, workdir)

  monkeypatch.setattr(experiments, "_trainer", lambda: train)
  argv = ["mbaf_table2", "--synthetic", "--seeds=3", f"--workdir={tmp_path}", NO_CACHE]
  assert experiments.main(argv) == 0 and len(calls) == 9
  s = json.loads((tmp_path / "mbaf_table2.json").read_text())
  assert s["failed_runs"] == [{"run": "cebs_F-V_both", "seed": 1,
                               "error": "NonFiniteLossError: the training loss became NaN/inf "
                               "at step 7"}]
  fv = s["cells"]["F-V (ECG+SCG)|UA-MBAF (%)"]
  assert fv["seeds"] == [0, 2] and np.array(fv["values"]).shape == (2, 3)
  pair = [p for p in s["pairs"] if p["label"].startswith("F-V")][0]
  assert pair["seeds"] == [0, 2] and pair["seed_diffs"] == pytest.approx([2.0, 4.0])
  assert s["cells"]["F-IV (ECG+RS)|UA-MBAF (%)"]["seeds"] == [0, 1, 2]
  assert "Failed run" in (tmp_path / "mbaf_table2.md").read_text()
  assert experiments.main(argv) == 0 and len(calls) == 9  # not retried
  assert experiments.main(argv + ["--retry_failed"]) == 0 and calls[9:] == [("cebs_F-V_mbaf", 1)]


def test_random_batch_shapes_ranges_and_seed():
  """train.timing.random_batch: dummy_batch's shapes, random values in range, same seed = same."""
  c = iemocap.get_config("demo")
  b = timing.random_batch(c.data, c.model, 3, seed=0)
  zeros = models.dummy_batch(c.data, c.model, 3)
  assert {k: v.shape for k, v in zeros.items()} == {k: b[k].shape for k in zeros}
  assert b["label"].shape == (3,) and b["mask"].all() and b["mask"].dtype == bool
  assert b["input_values"].dtype == np.float32 and b["input_values"].std() > 0.5
  assert b["input_ids"].min() >= 5 and b["input_ids"].max() < 100  # tiny text encoder
  assert 0 <= b["label"].min() and b["label"].max() < 4
  again = timing.random_batch(c.data, c.model, 3, seed=0)
  assert all(np.array_equal(b[k], again[k]) for k in b)
  assert not np.array_equal(b["input_values"], timing.random_batch(c.data, c.model, 3, seed=1)["input_values"])
