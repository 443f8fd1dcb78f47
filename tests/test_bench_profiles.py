"""The whole-model / positional-conv rows of bench_vs_torch, the per-op profiler of
profile_encoders and the roofline arithmetic of roofline_dmf: cheap checks of their parts."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_vs_torch, profile_encoders, roofline_dmf


def test_cpu_model_is_proc_cpuinfo_model_name_and_quiet_threshold():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = re.findall(r"^model name\s*:\s*(.*)$", f.read(), re.M)
  except OSError:
    names = []
  if names:
    assert bench_vs_torch.cpu_model() == names[0].strip()
  assert bench_vs_torch.is_quiet(0.2, 1.5) and not bench_vs_torch.is_quiet(0.2, 1.51)
  assert not bench_vs_torch.is_quiet(3.0, 0.1)


def test_other_cpu_cores_is_machine_busy_time_less_own_over_wall():
  # (wall s, machine busy CPU s, own CPU s): 10 s in which the machine was busy 25 CPU s, 5 ours.
  assert bench_vs_torch.other_cpu_cores((100.0, 50.0, 3.0), (110.0, 75.0, 8.0)) == 2.0
  assert bench_vs_torch.other_cpu_cores((0.0, 10.0, 1.0), (1.0, 10.5, 1.5)) == 0.0
  a = bench_vs_torch.cpu_sample()
  x = 0.0
  while bench_vs_torch.cpu_sample()[0] - a[0] < 0.2:  # keep one core busy ourselves
    x += 1.0
  b = bench_vs_torch.cpu_sample()
  assert b[2] - a[2] > 0.05  # our own CPU time is counted
  assert 0.0 <= bench_vs_torch.other_cpu_cores(a, b) <= os.cpu_count()


def test_roofline_compute_and_memory_bound():
  # 989.4 TFLOP at 989.4 TFLOP/s = 1 s of compute; 1 TB at 3.35 TB/s = 0.2985 s of traffic.
  r = roofline_dmf.roofline(989.4e12, 1e12, *roofline_dmf.ACCELERATORS["H100 SXM"])
  assert r["bound"] == "compute" and r["mfu_ceiling"] == 1.0 and r["t_roofline_ms"] == 1000.0
  assert r["t_memory_ms"] == pytest.approx(1e12 / 3.35e12 * 1e3, abs=1e-3)
  # TPU v5e: 197 GFLOP (1 ms) and 1.638 GB (2 ms): memory-bound, MFU ceiling 1/2.
  r = roofline_dmf.roofline(197e9, 2 * 819e6, *roofline_dmf.ACCELERATORS["TPU v5e"])
  assert r["bound"] == "memory" and r["mfu_ceiling"] == pytest.approx(0.5)
  assert r["arithmetic_intensity"] == pytest.approx(197e9 / (2 * 819e6), abs=0.01)


def test_scope_of_strips_transformations_and_folds_layers():
  assert profile_encoders.scope_of(
      "jit(f)/transpose(jvp(Bert))/encoder/layer_11/attention/self/query/dot_general") == (
          "encoder/layer_*/attention/self/query", "bwd")
  assert profile_encoders.scope_of("jit(f)/jvp(Wav2Vec2)/feature_extractor/conv_layers_0/conv/"
                                   "conv_general_dilated") == (
                                       "feature_extractor/conv_layers_*/conv", "fwd")
  assert profile_encoders.scope_of("") == ("(top)", "fwd")


def test_profile_jax_attributes_time_to_the_compiled_instructions():
  w = jnp.ones((64, 64))
  x = jnp.ones((32, 64))
  fn = jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2))
  prof = profile_encoders.profile_jax(fn, (w, x), iters=2)
  instrs = profile_encoders.hlo_instructions(jax.jit(fn).lower(w, x).compile().as_text())
  assert prof["ops"] and all(o["name"] in instrs for o in prof["ops"])
  assert {o["opcode"] for o in prof["ops"]} & {"dot", "fusion", "custom-call", "convolution"}
  assert prof["op_ms_per_call"] == pytest.approx(sum(o["ms_per_call"] for o in prof["ops"]))
  assert all(o["calls_per_call"] == pytest.approx(1.0) for o in prof["ops"])  # once per call
  assert any(o["direction"] == "bwd" for o in prof["ops"])


def test_posconv_rows_quick(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  bench_vs_torch.main(["--quick", "--only", "wav2vec2_posconv", "--rounds", "1", "--warmup", "0"])
  rows = [__import__("json").loads(line) for line in capsys.readouterr().out.splitlines()
          if line.startswith("{")]
  assert [r["bench"] for r in rows] == ["vs_torch_wav2vec2_posconv_fwd",
                                        "vs_torch_wav2vec2_posconv_fwd_bwd"]
  for r in rows:
    assert r["max_abs_dev_fwd_jax"] < 1e-5 and r["max_abs_dev_fwd_jax_xla"] < 1e-5
    assert r["max_abs_dev_grads_auto_vs_xla"] < 1e-4
    assert r["default_impl"] == ("per_group" if jax.default_backend() == "cpu" else "xla")
    assert r["cpu_model"] and isinstance(r["quiet"], bool)
    assert r["quiet"] == (max(r["loadavg_before"][0], r["loadavg_after"][0]) <= 1.5)
    assert 0.0 <= r["other_cpu_cores"] <= os.cpu_count()
    assert r["jax_median_ms"] > 0 and r["jax_xla_median_ms"] > 0 and r["torch_eager_median_ms"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dmf", "naive"])
def test_whole_dmf_model_twin_same_loss_and_frozen_parts(kind):
  """Step 0's loss equal in JAX and PyTorch (tiny encoders), the DMF §2.1 parts frozen on both
  sides, and one PyTorch step leaves the frozen weights unchanged."""
  torch = pytest.importorskip("torch")
  from benchmarks import dmf_model_torch as dm  # pylint: disable=g-import-not-at-top
  from mbaf_jax.encoders import BertConfig, frozen_mask  # pylint: disable=g-import-not-at-top
  c = dm.model_config(True)
  batch = dm.random_batch(c, 2, BertConfig.tiny().vocab_size)
  model, variables, tm = dm.build_pair(c, kind, batch)
  check = dm.step0_loss_deviation(model, variables, tm, batch)
  assert check["loss_abs_dev"] < 1e-5 and np.isfinite(check["loss_jax"])
  # Loss by hand from the JAX log-probs (CE only for naive; + Eq. 4 for DMF).
  frozen_t = {n for n, p in tm.named_parameters() if not p.requires_grad}
  assert frozen_t and all(n.startswith(("wav2vec2.feature_extractor", "bert.embeddings"))
                          for n in frozen_t)
  n_frozen_jax = sum(jax.tree.leaves(frozen_mask(variables["params"])))
  assert n_frozen_jax == len(frozen_t)
  before = {n: p.detach().clone() for n, p in tm.named_parameters()}
  saved = dm.snapshot(tm)
  opt = dm.torch_optimizer(tm)
  dm.torch_train_step(tm, tm, opt, dm.torch_batch(batch), dm.torch_gumbel(tm, 2))
  after = dict(tm.named_parameters())
  assert all(torch.equal(before[n], after[n]) for n in frozen_t)
  assert any(not torch.equal(before[n], after[n]) for n in after if n not in frozen_t)
  dm.restore(tm, saved)  # the step undone: step 0's loss again
  assert dm.step0_loss_deviation(model, variables, tm, batch)["loss_abs_dev"] < 1e-5
  # Evaluation forward at batch 1 (memory read only): equal log-probabilities.
  b1 = {k: v[:1] for k, v in batch.items()}
  j = model.apply(variables, dm.inputs_of(b1), mask=b1["mask"], train=False).log_probs
  tm.eval()
  tb1 = dm.torch_batch(b1)
  with torch.no_grad():
    t = tm(tb1, tb1["mask"], False, None)[0].numpy()
  np.testing.assert_allclose(t, np.asarray(j), atol=1e-5)
