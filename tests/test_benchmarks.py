"""The benchmark scripts stay runnable as modules (``python -m benchmarks.<x>`` from the
repository root), and bench_encoders records an out-of-memory size as a JSON line and goes on with
the next one. No benchmark is run here."""
import ast
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import bench_dmf_layer
from benchmarks import bench_encoders
from benchmarks import bench_matmul
from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))


def _env():
  env = dict(os.environ)
  env.pop("PYTHONPATH", None)  # python -m from the repository root finds the packages
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_there_are_scripts():
  assert {"bench_cbp", "bench_train", "bench_encoders", "mbaf_param_count"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS + ["common"])
def test_script_does_not_patch_sys_path(name):
  """Static check (fast): the scripts run as modules from the repository root
  (``python -m benchmarks.<x>``), so none of them edits ``sys.path``."""
  with open(os.path.join(ROOT, "benchmarks", f"{name}.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  patches = [ast.unparse(n) for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and ast.unparse(n) == "sys.path"]
  assert not patches, f"benchmarks/{name}.py touches sys.path: run it with python -m instead"


def test_library_and_trainer_do_not_import_benchmarks():
  """Static check (fast): benchmarks/ builds on mbaf_jax/, train/ and configs/, never the reverse."""
  bad = []
  for pkg in ("mbaf_jax", "train", "configs"):
    for path in glob.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True):
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
      for n in ast.walk(tree):
        mods = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
        bad += [(os.path.relpath(path, ROOT), m) for m in mods if m.split(".")[0] == "benchmarks"]
  assert not bad, bad


def test_every_script_help_as_module():
  """``python -m benchmarks.<x> --help`` for every script, in one process (one JAX import)."""
  code = (
      "import runpy, sys\n"
      f"names = {SCRIPTS!r}\n"
      "bad = []\n"
      "for n in names:\n"
      "  sys.argv = [n, '--help']\n"
      "  try:\n"
      "    runpy.run_module('benchmarks.' + n, run_name='__main__')\n"
      "    bad.append((n, 'no exit'))\n"
      "  except SystemExit as e:\n"
      "    if e.code not in (0, None):\n"
      "      bad.append((n, e.code))\n"
      "print('BAD', bad)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "BAD []" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
  assert r.stdout.count("usage:") == len(SCRIPTS)


def test_mbaf_param_count_quick_matches_table3():
  r = subprocess.run([sys.executable, "-m", "benchmarks.mbaf_param_count", "--quick"], cwd=ROOT,
                     env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
  assert len(recs) == 1 and recs[0]["l"] == 1024
  # MBAF Table 3, F-IV..VI (l = 1024, q = 32): MBAF − NF = 14,628,867 − 11,448,323 parameters,
  # counted by the code's layer in the Table 3 layout; Eq. 10: 2 l² + (q + 1) l
  assert recs[0]["code_table3_layout"] == 14_628_867 - 11_448_323
  assert recs[0]["paper_eq10"] == 2 * 1024 ** 2 + 33 * 1024


# ----------------------------------------------------------------------------- out of memory


def test_is_oom():
  assert common.is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 26577199360 "
                                    "bytes."))
  assert common.is_oom(MemoryError())
  assert not common.is_oom(ValueError("shapes (2, 3) and (4,) do not match"))
  rec = common.oom_record("x_fwd", RuntimeError("RESOURCE_EXHAUSTED: Out of memory\nmore"),
                          shape={"batch": 32}, dtype="float32")
  assert rec["status"] == "oom" and rec["median_ms"] is None
  assert rec["error"] == "RESOURCE_EXHAUSTED: Out of memory"
  json.dumps(rec)


def test_bench_encoders_records_oom_and_continues(monkeypatch, capsys):
  seen = []

  def fake_measure_one(model_name, mode, model, cfg, batch, *a):
    seen.append((mode, batch))
    if batch == 32:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 26577199360 bytes.")
    return {"bench": f"{model_name}_{mode}", "shape": {"batch": batch}, "median_ms": 1.0}

  monkeypatch.setattr(bench_encoders, "measure_one", fake_measure_one)
  monkeypatch.setattr(common, "matmul_peak_gflops", lambda **k: 1.0)
  bench_encoders.main(["--quick", "--models", "bert", "--modes", "fwd,fwd_bwd",
                       "--batches", "8,32"])
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert seen == [("fwd", 8), ("fwd", 32), ("fwd_bwd", 8), ("fwd_bwd", 32)]  # went on
  assert [(r["bench"], r["shape"]["batch"], r.get("status")) for r in lines] == [
      ("bert_fwd", 8, None), ("bert_fwd", 32, "oom"),
      ("bert_fwd_bwd", 8, None), ("bert_fwd_bwd", 32, "oom")]
  assert "26577199360" in lines[1]["error"]


def test_bench_encoders_other_errors_still_fail(monkeypatch):

  def broken(*a):
    raise ValueError("a real bug")

  monkeypatch.setattr(bench_encoders, "measure_one", broken)
  monkeypatch.setattr(common, "matmul_peak_gflops", lambda **k: 1.0)
  with pytest.raises(ValueError, match="a real bug"):
    bench_encoders.main(["--quick", "--models", "bert", "--modes", "fwd"])


# ----------------------------------------------------------------------------- matmul floor


def _mlp_grad_args(b=4, d=5, h=6, o=3):

  def loss(w1, w2, x):
    return jnp.sum(jnp.tanh(x @ w1) @ w2)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))  # a nested jit is walked too
  return grad, (jnp.ones((d, h)), jnp.ones((h, o)), jnp.ones((b, d)))


def test_dot_general_calls_finds_every_product_of_a_gradient():
  b, d, h, o = 4, 5, 6, 3
  grad, args = _mlp_grad_args(b, d, h, o)
  calls = common.dot_general_calls(grad, args)
  # forward x·W1, h·W2; backward dW2 = hᵀg, dh = g·W2ᵀ, dW1 = xᵀ·dz (no dx: x is not
  # differentiated)
  assert sum(c.count for c in calls) == 5
  # (JAX's transpose rules put the cotangent first in dW2 and second in dW1)
  assert sorted((c.lhs.shape, c.rhs.shape) for c in calls) == sorted(
      [((b, d), (d, h)), ((b, h), (h, o)), ((b, o), (b, h)), ((b, o), (h, o)),
       ((b, h), (b, d))])
  assert sum(c.count * c.gflop for c in calls) == pytest.approx((4 * b * d * h + 6 * b * h * o)
                                                                / 1e9)


def test_dot_call_gflop_matches_xla_cost_analysis():
  """``DotCall.gflop`` (batch and contracting dims) against XLA's own FLOP count."""
  q = jnp.ones((2, 7, 3, 5))
  k = jnp.ones((2, 9, 3, 5))
  fn = lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k)
  (call,) = common.dot_general_calls(fn, (q, k))
  xla = common.compiled_gflop(jax.jit(fn).lower(q, k).compile())
  assert call.count == 1 and call.gflop == pytest.approx(2 * 2 * 3 * 7 * 9 * 5 / 1e9)
  assert call.gflop == pytest.approx(xla)


def test_dot_general_calls_counts_a_scan_body_length_times_and_refuses_while():
  w = jnp.ones((3, 3))
  scanned = lambda w: jax.lax.scan(lambda c, _: (c @ w, None), w, None, length=7)[0]
  (call,) = common.dot_general_calls(scanned, (w,))
  assert call.count == 7
  looped = lambda w: jax.lax.while_loop(lambda c: c[0, 0] < 10.0, lambda c: c @ w, w)
  with pytest.raises(ValueError, match="while"):
    common.dot_general_calls(looped, (w,))
  branched = lambda w: jax.lax.cond(w[0, 0] > 0, lambda c: c @ c, lambda c: c, w)
  with pytest.raises(ValueError, match="cond"):
    common.dot_general_calls(branched, (w,))


def test_dot_floor_sums_each_product_times_its_count_less_dispatch(monkeypatch):
  """With a fake clock (a product whose left operand has s elements 'takes' 1 + s µs per
  call, so the 1×1 dispatch product 2 µs), the floor is the sum over the five products of
  s − 1 µs, and max_frac_of_peak follows."""
  b, d, h, o = 4, 5, 6, 3
  grad, args = _mlp_grad_args(b, d, h, o)

  def fake_time_fn(fn, fargs, warmup=3, iters=20):
    del fn, warmup, iters
    return {"min_ms": 10 * (1 + fargs[0].size) * 1e-3}  # 10 back-to-back calls

  monkeypatch.setattr(common, "time_fn", fake_time_fn)
  floor = common.dot_floor(grad, args, repeat=10)
  lhs_sizes = [b * d, b * h, b * o, b * o, b * h]  # the five left operands
  assert floor["dot_calls"] == 5
  assert floor["dot_dispatch_ms"] == pytest.approx(2e-3)
  floor_ms = (sum(lhs_sizes) - 5) * 1e-3
  assert floor["dot_floor_ms"] == pytest.approx(floor_ms)
  rec = common.add_dot_floor({"gflop": 2.0}, grad, args, peak_gflops=50.0)
  assert rec["max_frac_of_peak"] == pytest.approx(2.0 / (floor_ms * 1e-3) / 50.0, rel=1e-3)


def test_bench_dmf_layer_dtype_flag_sets_the_compute_dtype_and_its_roofline(monkeypatch, capsys):
  """``--dtype bfloat16``: the timed layer computes in bf16 (fused output bf16) while the params,
  the carried memory and the loss stay float32, the roofline is measured in bf16, and every
  DMF record says so. Timing is faked; the functions themselves are run once."""
  peaks, runs = [], {}
  monkeypatch.setattr(common, "matmul_peak_gflops",
                      lambda dtype=jnp.float32, quick=False: peaks.append(dtype) or 1.0)

  def fake_measure(name, fn, fargs, dtype, **kw):
    del kw
    runs[name] = jax.jit(fn)(*fargs)
    return {"bench": name, "dtype": dtype}

  monkeypatch.setattr(common, "measure", fake_measure)
  monkeypatch.setattr(common, "add_dot_floor", lambda rec, *a, **k: rec)
  bench_dmf_layer.main(["--quick", "--dtype", "bfloat16"])
  recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert peaks == [jnp.bfloat16]
  assert {r["bench"]: r["dtype"] for r in recs if r["bench"].startswith("dmf")} == {
      "dmf_forward_eval": "bfloat16", "dmf_forward_train": "bfloat16",
      "dmf_train_step": "bfloat16"}
  assert runs["dmf_forward_eval"].dtype == jnp.bfloat16
  params, state, _, loss = runs["dmf_train_step"]
  assert loss.dtype == jnp.float32 and bool(jnp.isfinite(loss))
  assert {x.dtype for x in jax.tree.leaves((params, state["memory"]))} == {jnp.dtype("float32")}
  with pytest.raises(SystemExit):
    bench_dmf_layer.main(["--quick", "--dtype", "float16"])


def test_bench_matmul_rows_flops_and_errors(monkeypatch, capsys):
  """Every (shape, precision) row: XLA's FLOP count is 2·m·k·n, the f32 product matches float64
  to f32 rounding in both layouts (a wrong transpose would be O(1) off), bf16 inputs cost
  bf16 rounding (~2⁻⁹), and accumulating them in f32 is no less accurate than bf16 out."""
  monkeypatch.setattr(common, "matmul_peak_gflops", lambda **k: 100.0)
  bench_matmul.main(["--quick", "--iters", "1", "--warmup", "0",
                     "--shapes", "writer_ff1_fwd,writer_ff1_dW"])
  recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["bench"], r["dtype"]) for r in recs] == [
      (f"matmul_{s}", p) for s in ("writer_ff1_fwd", "writer_ff1_dW")
      for p in ("float32", "bfloat16", "bfloat16_f32acc")]
  err = {(r["bench"], r["dtype"]): r["max_rel_err"] for r in recs}
  for r in recs:
    s = r["shape"]
    assert (s["m"], s["k"], s["n"]) == (19, 96, 256)
    assert r["shape"]["contract_rows"] == r["bench"].endswith("_dW")
    assert r["gflop"] == pytest.approx(2 * 19 * 96 * 256 / 1e9, rel=0.05)
    assert r["frac_of_f32_peak"] == pytest.approx(r["gflops_per_s"] / 100.0, abs=1e-4)
    if r["dtype"] == "float32":
      assert r["max_rel_err"] < 1e-5
    else:
      assert 1e-4 < r["max_rel_err"] < 2e-2
  for s in ("writer_ff1_fwd", "writer_ff1_dW"):
    b = f"matmul_{s}"
    assert err[(b, "bfloat16_f32acc")] <= err[(b, "bfloat16")]
  with pytest.raises(SystemExit, match="unknown"):
    bench_matmul.main(["--quick", "--shapes", "square_4096"])
