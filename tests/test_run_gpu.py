"""benchmarks/run_gpu.sh runs end to end (``--quick``, on the CPU) and benchmarks/mfu.py's
arithmetic against the datasheet peaks."""
import json
import os
import subprocess

import pytest

from benchmarks import mfu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.startswith("{")]


def test_spec_peaks_by_device_kind():
  assert mfu.spec_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert mfu.spec_peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.5
  assert mfu.spec_peak_tflops("NVIDIA H200", "float32") == 494.7  # f32 matmuls run as TF32
  assert mfu.spec_peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
  assert mfu.spec_peak_tflops("cpu (x86_64, 2 cores) x1", "float32") is None


def test_add_mfu():
  # 494.7 GFLOP in 1 ms = 494.7 TFLOP/s: half an H100's bf16 peak.
  rec = mfu.add_mfu({"device": "NVIDIA H100 80GB HBM3 x1", "dtype": "bfloat16",
                     "gflop": 494.7, "median_ms": 1.0})
  assert rec["mfu"] == pytest.approx(0.5) and rec["spec_peak_tflops"] == 989.4
  # 78 TFLOP/s in float32 on an A100: half the TF32 peak, 4x the plain FP32 peak.
  rec = mfu.add_mfu({"device": "NVIDIA A100-SXM4-40GB x1", "dtype": "float32", "gflop": 78.0,
                     "median_ms": 1.0})
  assert rec["mfu"] == pytest.approx(0.5) and rec["mfu_fp32"] == pytest.approx(4.0)
  rec = mfu.add_mfu({"device": "cpu (x86_64, 2 cores) x1", "dtype": "float32", "gflop": 1.0,
                     "median_ms": 1.0})
  assert rec["mfu"] is None and rec["spec_peak_tflops"] is None


@pytest.mark.slow
def test_run_gpu_quick(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)
  r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "run_gpu.sh"), "--quick",
                      str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  train = _lines(tmp_path / "bench_train.jsonl")
  runs = [x for x in train if x["bench"] == "_run"]
  assert runs and all(x["rc"] == 0 for x in runs), runs
  benches = {x["bench"] for x in train}
  assert {"train_step_dmf", "train_step_naive", "infer_dmf_b1", "infer_naive_b1",
          "memory_fusion_overhead_infer_b1"} <= benches
  step = next(x for x in train if x["bench"] == "train_step_dmf")
  assert step["median_ms"] > 0 and step["gflop"] > 0
  with_mfu = [x for x in _lines(tmp_path / "train_mfu.jsonl") if x["bench"] != "_run"]
  assert len(with_mfu) == len(train) - len(runs)
  assert all("mfu" in x and x["spec_peak_tflops"] is None for x in with_mfu)  # a CPU: no peak
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    assert not (tmp_path / "bench_vs_torch.jsonl").exists()
    return
  vs = _lines(tmp_path / "bench_vs_torch.jsonl")
  assert all(x["rc"] == 0 for x in vs if x["bench"] == "_run")
  rows = {x["bench"]: x for x in vs if x["bench"] != "_run"}
  assert {"vs_torch_dmf_train_step", "vs_torch_bert_fwd", "vs_torch_bert_fwd_bwd"} <= set(rows)
  for row in rows.values():
    assert row["ratio_torch_eager"] > 0 and row["jax_median_ms"] > 0
  assert rows["vs_torch_dmf_train_step"]["max_abs_dev_eval_fused"] < 1e-4
