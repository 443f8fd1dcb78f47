"""DualMemoryFusion (DMF §2.2–2.3) against a NumPy reference of Eqs. 1–4, plus the
write-then-carry / masking / determinism / multi-device properties of issue 2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mbaf_jax.fusion.common import xavier_normal
from mbaf_jax.fusion.dual_memory import DualMemoryFusion, MemoryReader

N, D, CBP, B = 6, 8, 32, 8
CFG = dict(slots=N, cbp_dim=CBP, attention_tokens=4, num_heads=2, writer_ff_dim=16)


def make_inputs(seed=0, b=B):
  ka, kt = jax.random.split(jax.random.key(seed))
  return jax.random.normal(ka, (b, D)), jax.random.normal(kt, (b, D))


@pytest.fixture(scope="module")
def setup():
  layer = DualMemoryFusion(**CFG)
  x_a, x_t = make_inputs()
  variables = jax.jit(layer.init)({"params": jax.random.key(0), "memory": jax.random.key(1)},
                                  x_a, x_t)
  return layer, variables, x_a, x_t


def train_call(layer, variables, x_a, x_t, mask=None, key=3):
  return layer.apply(variables, x_a, x_t, mask=mask, train=True,
                     rngs={"gumbel": jax.random.key(key)}, mutable=["memory", "batch_stats"])


# ---------------------------------------------------------------- NumPy reference
def np_softmax(z, axis=-1):
  z = z - z.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def np_read(x, memory, dense, mode="log_softmax"):
  """DMF Eqs. 1–2 without noise: returns (read, weights, tau)."""
  scores = x @ memory.T
  tau = np.clip(np.abs(scores @ dense["kernel"] + dense["bias"]), 1e-4, 10.0)
  if mode == "log_softmax":
    logits = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
  elif mode == "log_clamp":
    logits = np.log(np.maximum(scores, 1e-6))
  else:
    logits = np.log(np.log1p(np.exp(scores)) + 1e-6)
  w = np_softmax(logits / tau)
  return w @ memory, w, tau


def np_cbp(x, y, c):
  """Count sketches, then a direct circular convolution (no FFT)."""
  def sketch(v, h, s):
    out = np.zeros((v.shape[0], CBP))
    for i in range(v.shape[1]):
      out[:, h[i]] += s[i] * v[:, i]
    return out
  px = sketch(x, np.asarray(c["hashes_x"]), np.asarray(c["signs_x"]))
  py = sketch(y, np.asarray(c["hashes_y"]), np.asarray(c["signs_y"]))
  out = np.zeros_like(px)
  for i in range(CBP):
    for j in range(CBP):
      out[:, (i + j) % CBP] += px[:, i] * py[:, j]
  return out


def np_mha(xq, p, mask=None):
  """Flax MultiHeadDotProductAttention on (L, F) inputs, from its params."""
  q = np.einsum("lf,fhd->lhd", xq, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("lf,fhd->lhd", xq, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("lf,fhd->lhd", xq, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("qhd,khd->hqk", q / np.sqrt(q.shape[-1]), k)
  w = np_softmax(logits)
  o = np.einsum("hqk,khd->qhd", w, v)
  return np.einsum("qhd,hdf->qf", o, p["out"]["kernel"]) + p["out"]["bias"]


def np_ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_write(memory, x, p):
  """Writer with padded rows simply *absent* from x: concat → post-LN encoder → gPool."""
  e = np.concatenate([memory, x], 0)
  enc = p["encoder"]
  h = np_ln(e + np_mha(e, enc["attention"]), enc["norm1"])
  f = np.maximum(h @ enc["ff1"]["kernel"] + enc["ff1"]["bias"], 0)
  y = np_ln(h + f @ enc["ff2"]["kernel"] + enc["ff2"]["bias"], enc["norm2"])
  proj = np.asarray(p["projection"], np.float64)
  scores = y @ proj / np.linalg.norm(proj)
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:memory.shape[0]]
  return np.stack([y[i] / (1 + np.exp(-scores[i])) for i in order])


def np_similarity(memory):
  n = memory.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(i + 1, n):
      total += memory[i] @ memory[j] / np.linalg.norm(memory[i]) / np.linalg.norm(memory[j])
  return total / (n * (n - 1))


def np_dmf_eval(variables, x_a, x_t):
  """Eval-mode DMF (no noise, running BN stats) + the writer and Eq. 4 on real rows."""
  v = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
  pr, mem, c = v["params"], v["memory"], variables["constants"]["cbp"]
  x_at, _, _ = np_read(x_a, mem["M_t"], pr["reader_a"]["temperature"])  # audio reads text
  x_ta, _, _ = np_read(x_t, mem["M_a"], pr["reader_t"]["temperature"])  # text reads audio
  outs = []
  for i, pooled in enumerate((np_cbp(x_a, x_at, c), np_cbp(x_ta, x_t, c)), start=1):
    tok = pooled.reshape(len(pooled), 4, CBP // 4)
    att = np.stack([t + np_mha(t, pr[f"attention_{i}"]["attention"]) for t in tok])
    z = att.reshape(len(pooled), CBP)
    st, nb = v["batch_stats"][f"norm_{i}"], pr[f"norm_{i}"]
    outs.append((z - st["mean"]) / np.sqrt(st["var"] + 1e-5) * nb["scale"] + nb["bias"])
  new_a = np_write(mem["M_a"], x_a, pr["writer_a"])
  new_t = np_write(mem["M_t"], x_t, pr["writer_t"])
  return 0.5 * (outs[0] + outs[1]), new_a, new_t, np_similarity(new_a) + np_similarity(new_t)


# ---------------------------------------------------------------- values
def test_forward_matches_numpy_reference_with_padded_rows(setup):
  layer, variables, x_a, x_t = setup
  _, trained = train_call(layer, variables, x_a, x_t)  # non-trivial running BN stats
  variables = {**variables, "batch_stats": trained["batch_stats"]}
  mask = np.array([1, 1, 0, 1, 1, 0, 1, 1], bool)
  bad_a = np.where(mask[:, None], np.asarray(x_a), 1e6)  # garbage in padded rows
  bad_t = np.where(mask[:, None], np.asarray(x_t), np.nan)
  ev = DualMemoryFusion(**CFG, writer_in_eval=True)
  out, new_vars = ev.apply(variables, bad_a, bad_t, mask=mask, train=False,
                           mutable=["memory", "batch_stats"])
  fused, new_a, new_t, sim = np_dmf_eval(variables, np.asarray(x_a, np.float64)[mask],
                                         np.asarray(x_t, np.float64)[mask])
  np.testing.assert_allclose(out.fused[mask], fused, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(out.aux["memory_similarity"], sim, rtol=1e-4, atol=1e-6)
  # eval: the memory is read, never written, even with writer_in_eval and mutable memory
  for name in ("M_a", "M_t"):
    np.testing.assert_array_equal(new_vars["memory"][name], variables["memory"][name])
  # ... and the memory a training call writes is the writer's output on real rows only
  _, tr = train_call(layer, variables, bad_a, bad_t, mask=mask)
  np.testing.assert_allclose(tr["memory"]["M_a"], new_a, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(tr["memory"]["M_t"], new_t, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("mode", ["log_softmax", "log_clamp", "log_softplus"])
def test_reader_matches_eqs_1_2(mode):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, D)).astype(np.float32)
  memory = rng.normal(size=(N, D)).astype(np.float32)
  reader = MemoryReader(logits=mode)
  params = reader.init(jax.random.key(0), x, memory)
  read, w, tau = reader.apply(params, x, memory)
  want_read, want_w, want_tau = np_read(x.astype(np.float64), memory.astype(np.float64),
                                        jax.tree_util.tree_map(np.asarray, params)["params"]
                                        ["temperature"], mode)
  np.testing.assert_allclose(tau, want_tau, rtol=1e-5)
  np.testing.assert_allclose(w, want_w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(read, want_read, rtol=1e-4, atol=1e-5)
  # with noise g: softmax((log π + g) / τ)
  g = rng.gumbel(size=(4, N)).astype(np.float32)
  _, w_noisy, _ = reader.apply(params, x, memory, jnp.asarray(g))
  scores = x.astype(np.float64) @ memory.T
  logits = {"log_softmax": scores - np.log(np.exp(scores).sum(-1, keepdims=True)),
            "log_clamp": np.log(np.maximum(scores, 1e-6)),
            "log_softplus": np.log(np.log1p(np.exp(scores)) + 1e-6)}[mode]
  np.testing.assert_allclose(w_noisy, np_softmax((logits + g) / want_tau), rtol=1e-4, atol=1e-6)


def test_memory_init_is_xavier_normal_gain_1_from_memory_stream():
  z = np.asarray(xavier_normal(1.0)(jax.random.key(0), (120, 768)))
  std = np.sqrt(2.0 / (120 + 768))
  assert abs(z.std() / std - 1) < 0.02 and abs(z.mean()) < 3 * std / np.sqrt(z.size)
  assert np.abs(z).max() > 3.5 * std  # a plain normal, not glorot_normal's truncated one
  layer = DualMemoryFusion(**CFG)
  x_a, x_t = make_inputs()
  init = lambda rngs: layer.init(rngs, x_a, x_t)
  v1 = init({"params": jax.random.key(0), "memory": jax.random.key(1)})
  v2 = init({"params": jax.random.key(0), "memory": jax.random.key(2)})
  v3 = init({"params": jax.random.key(0)})
  assert not np.allclose(v1["memory"]["M_a"], v2["memory"]["M_a"])
  assert not np.allclose(v1["memory"]["M_a"], v1["memory"]["M_t"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, v1["params"], v2["params"])
  assert v3["memory"]["M_a"].shape == (N, D) and v3["memory"]["M_a"].dtype == jnp.float32


# ---------------------------------------------------------------- write-then-carry
def test_eval_never_changes_memory_and_train_returns_new_memory(setup):
  layer, variables, x_a, x_t = setup
  before = jax.tree_util.tree_map(np.array, variables)
  out, new_vars = layer.apply(variables, x_a, x_t, train=False,
                              mutable=["memory", "batch_stats"])
  assert out.aux == {} and out.fused.shape == (B, CBP)
  jax.tree_util.tree_map(np.testing.assert_array_equal, dict(new_vars), 
                         {k: before[k] for k in new_vars})
  out, new_vars = train_call(layer, variables, x_a, x_t)
  assert np.isfinite(out.aux["memory_similarity"]) and out.aux["memory_similarity"].shape == ()
  for name in ("M_a", "M_t"):
    assert new_vars["memory"][name].shape == (N, D)
    assert np.abs(new_vars["memory"][name] - before["memory"][name]).max() > 1e-3
  jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                         jax.tree_util.tree_map(np.asarray, variables))  # input untouched
  # the similarity term is Eq. 4 on the NEW memories
  want = np_similarity(np.asarray(new_vars["memory"]["M_a"], np.float64)) + np_similarity(
      np.asarray(new_vars["memory"]["M_t"], np.float64))
  np.testing.assert_allclose(out.aux["memory_similarity"], want, rtol=1e-5)
  # memory not mutable: the loss is still returned, nothing is written
  out2, nv2 = layer.apply(variables, x_a, x_t, train=True, rngs={"gumbel": jax.random.key(3)},
                          mutable=["batch_stats"])
  assert "memory" not in nv2
  np.testing.assert_allclose(out2.aux["memory_similarity"], out.aux["memory_similarity"])


def test_writer_gets_gradients_through_similarity_loss_memory_gets_none(setup):
  layer, variables, x_a, x_t = setup

  def loss(params, memory):
    out, _ = layer.apply({**variables, "params": params, "memory": memory}, x_a, x_t,
                         train=True, rngs={"gumbel": jax.random.key(3)},
                         mutable=["memory", "batch_stats"])
    return out.aux["memory_similarity"]

  g_params, g_memory = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"],
                                                               variables["memory"])
  for writer in ("writer_a", "writer_t"):
    leaves = jax.tree_util.tree_leaves_with_path(g_params[writer])
    assert leaves and all(np.all(np.isfinite(g)) for _, g in leaves)
    assert np.abs(g_params[writer]["encoder"]["ff2"]["kernel"]).max() > 0
    # gPool's projection p only scales the kept rows (sigmoid gate > 0), and cosine
    # similarity ignores positive scales: Eq. 4 gives p no gradient (float round-off only).
    enc = np.linalg.norm(g_params[writer]["encoder"]["ff1"]["kernel"])
    assert np.linalg.norm(g_params[writer]["projection"]) < 1e-6 * enc
  # the memory is state: the carried memory gets exactly zero gradient
  for g in jax.tree_util.tree_leaves(g_memory):
    np.testing.assert_array_equal(g, 0.0)
  # and "memory" is not among the trainable params
  assert "memory" not in variables["params"] and "M_a" not in str(jax.tree_util.tree_structure(
      variables["params"]))


def test_same_keys_same_outputs_different_gumbel_keys_differ(setup):
  layer, variables, x_a, x_t = setup
  o1, v1 = train_call(layer, variables, x_a, x_t, key=5)
  o2, v2 = train_call(layer, variables, x_a, x_t, key=5)
  o3, _ = train_call(layer, variables, x_a, x_t, key=6)
  np.testing.assert_array_equal(o1.fused, o2.fused)
  np.testing.assert_array_equal(v1["memory"]["M_a"], v2["memory"]["M_a"])
  assert np.abs(np.asarray(o1.fused) - np.asarray(o3.fused)).max() > 1e-3
  # evaluation is deterministic without any 'gumbel' key; with the noise option it needs one
  e1 = layer.apply(variables, x_a, x_t)
  e2 = layer.apply(variables, x_a, x_t)
  np.testing.assert_array_equal(e1.fused, e2.fused)
  # writer dropout (off by default) draws from the 'dropout' stream only
  drop = DualMemoryFusion(**CFG, dropout_rate=0.5)
  d1, d2 = [drop.apply(variables, x_a, x_t, train=True, mutable=["memory", "batch_stats"],
                       rngs={"gumbel": jax.random.key(5), "dropout": jax.random.key(k)})[1]
            for k in (0, 1)]
  assert np.abs(np.asarray(d1["memory"]["M_a"]) - np.asarray(d2["memory"]["M_a"])).max() > 1e-3
  noisy = DualMemoryFusion(**CFG, gumbel_noise_in_eval=True)
  n1 = noisy.apply(variables, x_a, x_t, rngs={"gumbel": jax.random.key(1)})
  assert np.abs(np.asarray(n1.fused) - np.asarray(e1.fused)).max() > 1e-4


def test_padded_rows_change_nothing_in_training(setup):
  layer, variables, x_a, x_t = setup
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 1], bool)
  clean_a = np.where(mask[:, None], np.asarray(x_a), 0.0)
  o1, v1 = train_call(layer, variables, clean_a, x_t, mask=mask)
  junk_a = np.where(mask[:, None], np.asarray(x_a), 1e30)
  junk_t = np.where(mask[:, None], np.asarray(x_t), np.inf)
  o2, v2 = train_call(layer, variables, junk_a, junk_t, mask=mask)
  np.testing.assert_allclose(o1.fused[mask], o2.fused[mask], rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(o2.fused))
  np.testing.assert_allclose(o1.aux["memory_similarity"], o2.aux["memory_similarity"])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                         v1, v2)  # memory and running BN stats
  # the masked BN statistics are those of the real rows only
  o3, _ = train_call(layer, variables, clean_a, x_t, mask=None)
  assert np.abs(np.asarray(o3.fused[mask]) - np.asarray(o1.fused[mask])).max() > 1e-4


def test_jit_train_step_matches_eager(setup):
  layer, variables, x_a, x_t = setup
  eager, ev = train_call(layer, variables, x_a, x_t)
  jitted, jv = jax.jit(lambda v, a, t: train_call(layer, v, a, t))(variables, x_a, x_t)
  np.testing.assert_allclose(jitted.fused, eager.fused, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jv["memory"]["M_t"], ev["memory"]["M_t"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- multi-device
@pytest.fixture(scope="module")
def single_device_run(setup):
  layer, variables, x_a, x_t = setup
  mask = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)
  step = jax.jit(lambda v, a, t, m: train_call(layer, v, a, t, mask=m))
  return mask, step(variables, x_a, x_t, mask)


def assert_runs_equal(got, want, mask):
  (o1, v1), (o2, v2) = got, want
  np.testing.assert_allclose(np.asarray(o1.fused)[mask], np.asarray(o2.fused)[mask],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(o1.aux["memory_similarity"], o2.aux["memory_similarity"],
                             rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         v1, v2)


def test_batch_sharded_over_8_devices_equals_one_device(setup, single_device_run):
  layer, variables, x_a, x_t = setup
  mask, want = single_device_run
  mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
  rows, rep = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  args = [jax.device_put(a, rows) for a in (x_a, x_t, jnp.asarray(mask))]
  v = jax.device_put(variables, rep)
  step = jax.jit(lambda v, a, t, m: train_call(layer, v, a, t, mask=m))
  got = step(v, *args)
  assert len(got[0].fused.sharding.device_set) == 8 or got[0].fused.sharding.is_fully_replicated
  assert_runs_equal(got, want, mask)


@pytest.mark.slow
def test_pmap_with_axis_name_equals_one_device(setup, single_device_run):
  layer, variables, x_a, x_t = setup
  mask, (want_out, want_vars) = single_device_run
  lp = DualMemoryFusion(**CFG, axis_name="batch")
  shard = lambda a: np.asarray(a).reshape(4, B // 4, *np.shape(a)[1:])
  step = jax.pmap(lambda v, a, t, m: train_call(lp, v, a, t, mask=m), axis_name="batch",
                  in_axes=(None, 0, 0, 0), devices=jax.devices()[:4])
  out, new_vars = step(variables, shard(x_a), shard(x_t), shard(mask))
  fused = np.asarray(out.fused).reshape(B, CBP)
  np.testing.assert_allclose(fused[mask], np.asarray(want_out.fused)[mask], rtol=1e-5,
                             atol=1e-5)
  for dev in range(4):  # every device holds the same (global-batch) memory and stats
    np.testing.assert_allclose(out.aux["memory_similarity"][dev],
                               want_out.aux["memory_similarity"], rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a[dev], b, rtol=1e-5, atol=1e-5),
        new_vars, want_vars)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_and_options_raise_clear_errors(setup):
  layer, variables, x_a, x_t = setup
  with pytest.raises(ValueError, match="exactly 2 modes"):
    layer.apply(variables, x_a, x_t, x_t)
  with pytest.raises(ValueError, match="exactly 2 modes"):
    layer.apply(variables, x_a)
  with pytest.raises(ValueError, match="same batch size"):
    layer.apply(variables, x_a, x_t[:5])
  with pytest.raises(ValueError, match="x_t has width 4"):
    layer.apply(variables, x_a, x_t[:, :4])
  with pytest.raises(ValueError, match="mask must have shape"):
    layer.apply(variables, x_a, x_t, mask=np.ones(5))
  with pytest.raises(TypeError, match="x_a must be a floating-point"):
    layer.apply(variables, np.ones((B, D), np.int32), x_t)
  with pytest.raises(ValueError, match=r"memory_dim=16"):
    DualMemoryFusion(**CFG, memory_dim=16).apply(variables, x_a, x_t)
  with pytest.raises(ValueError, match=r"memory 'M_a' has shape \(6, 8\)"):
    DualMemoryFusion(**{**CFG, "slots": 5}).apply(variables, x_a, x_t)
  with pytest.raises(ValueError, match="no memory 'M_a'"):
    layer.apply({k: v for k, v in variables.items() if k != "memory"}, x_a, x_t)
  with pytest.raises(ValueError, match="'constants'"):
    layer.apply({k: v for k, v in variables.items() if k != "constants"}, x_a, x_t)
  with pytest.raises(ValueError, match="'gumbel' RNG"):
    layer.apply(variables, x_a, x_t, train=True, mutable=["memory", "batch_stats"])
  bad = [({"similarity_reduction": "sum"}, "similarity_reduction"),
         ({"reader_logits": "log"}, "reader_logits"),
         ({"composer_attention": "gate"}, "composer_attention"),
         ({"tau_min": 0.0}, "tau_min"), ({"tau_min": 20.0}, "tau_max"),
         ({"num_heads": 3}, "num_heads=3 must divide"),
         ({"attention_tokens": 5}, "attention_tokens=5"),
         ({"slots": 1}, "slots must be >= 2"), ({"cbp_dim": 0}, "cbp_dim"),
         ({"dropout_rate": 1.0}, "dropout_rate")]
  for opts, msg in bad:
    with pytest.raises(ValueError, match=msg):
      DualMemoryFusion(**{**CFG, **opts}).init(jax.random.key(0), x_a, x_t)
  assert layer.output_dim(D, D) == CBP
  with pytest.raises(ValueError, match="exactly 2 modes"):
    layer.output_dim(D, D, D)


def test_self_attention_matches_numpy_and_flax_parameter_tree():
  """SelfAttention (the writer's / composer's attention) against a NumPy multi-head attention
  with masked keys; its parameters and init equal Flax's MultiHeadDotProductAttention's."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from mbaf_jax.fusion.dual_memory import SelfAttention  # pylint: disable=g-import-not-at-top
  n, d, h = 7, 12, 3
  x = jax.random.normal(jax.random.key(0), (n, d))
  valid = np.arange(n) < 5
  att = SelfAttention(h)
  params = att.init(jax.random.key(1), x, jnp.asarray(valid))
  flax_params = nn.MultiHeadDotProductAttention(num_heads=h).init(jax.random.key(1), x, x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, flax_params))
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), params)
  got = np.asarray(att.apply(params, x, jnp.asarray(valid)))
  p = jax.tree.map(np.asarray, params["params"])
  xn = np.asarray(x, np.float64)
  proj = lambda name: (xn @ p[name]["kernel"].reshape(d, d) + p[name]["bias"].reshape(d)
                       ).reshape(n, h, d // h)
  q, k, v = proj("query"), proj("key"), proj("value")
  out = np.zeros((n, h, d // h))
  for head in range(h):
    s = q[:, head] @ k[:, head].T / np.sqrt(d // h)
    s = np.where(valid[None, :], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out[:, head] = w @ v[:, head]
  want = out.reshape(n, d) @ p["out"]["kernel"].reshape(d, d) + p["out"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Eq. 4 options, diagnostics
def _aux_grads(layer, variables, x_a, x_t):
  def aux(params, x_a, x_t):
    out, _ = train_call(layer, {**variables, "params": params}, x_a, x_t)
    return out.aux["memory_similarity"]
  return jax.grad(aux, argnums=(0, 1, 2))(variables["params"], x_a, x_t)


def test_similarity_grad_writer_stops_eq4_at_the_writer_inputs(setup):
  layer, variables, x_a, x_t = setup
  assert layer.similarity_grad == "writer"  # the default
  g_p, g_a, g_t = _aux_grads(layer, variables, x_a, x_t)
  np.testing.assert_array_equal(g_a, 0.0)
  np.testing.assert_array_equal(g_t, 0.0)
  assert np.abs(g_p["writer_a"]["encoder"]["ff1"]["kernel"]).max() > 1e-4
  g_p_all, g_a_all, g_t_all = _aux_grads(layer.clone(similarity_grad="all"), variables, x_a, x_t)
  assert np.abs(g_a_all).max() > 1e-4 and np.abs(g_t_all).max() > 1e-4
  # the writer's own gradient is the same either way
  np.testing.assert_allclose(g_p_all["writer_t"]["encoder"]["ff1"]["kernel"],
                             g_p["writer_t"]["encoder"]["ff1"]["kernel"], atol=1e-6)


def test_similarity_weight_scales_eq4_and_zero_turns_it_off(setup):
  layer, variables, x_a, x_t = setup
  full, new_full = train_call(layer, variables, x_a, x_t)
  half, new_half = train_call(layer.clone(similarity_weight=0.5), variables, x_a, x_t)
  off, new_off = train_call(layer.clone(similarity_weight=0.0), variables, x_a, x_t)
  ref = np_dmf_eval(variables, np.asarray(x_a, np.float64), np.asarray(x_t, np.float64))[3]
  np.testing.assert_allclose(float(full.aux["memory_similarity"]), ref, rtol=1e-4)
  np.testing.assert_allclose(float(half.aux["memory_similarity"]), 0.5 * ref, rtol=1e-4)
  assert float(off.aux["memory_similarity"]) == 0.0
  # the write itself does not depend on the weight
  np.testing.assert_allclose(new_off["memory"]["M_a"], new_full["memory"]["M_a"], atol=1e-6)


def test_uniform_read_ablation_reads_the_slot_mean(setup):
  layer, variables, x_a, x_t = setup
  uniform = layer.clone(read_mode="uniform")
  out1, _ = train_call(uniform, variables, x_a, x_t, key=3)
  out2, _ = train_call(uniform, variables, x_a, x_t, key=4)  # Gumbel noise no longer matters
  np.testing.assert_allclose(out1.fused, out2.fused, atol=1e-6)
  _, diag = uniform.apply(variables, x_a, x_t, train=False, mutable=["diagnostics"])
  assert float(diag["diagnostics"]["read_spread_a"][0]) < 1e-6
  with pytest.raises(ValueError, match="read_mode"):
    layer.clone(read_mode="zeros").apply(variables, x_a, x_t)
  with pytest.raises(ValueError, match="similarity_grad"):
    layer.clone(similarity_grad="encoders").apply(variables, x_a, x_t)


def test_read_diagnostics_against_explicit_formulas():
  from mbaf_jax.fusion.dual_memory import read_diagnostics
  n = 4
  w = np.array([[0.25] * 4, [1.0, 0, 0, 0], [0.5, 0.5, 0, 0]], np.float32)
  reads = np.array([[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]], np.float32)
  mask = np.array([1, 1, 0], np.float32)  # the third row is padding
  d = read_diagnostics(w, np.array([[2.0], [4.0], [9.0]]), reads, mask)
  np.testing.assert_allclose(float(d["read_entropy"]), (1.0 + 0.0) / 2, atol=1e-6)
  # reads 1 and 3 around mean 2: RMS distance 1, |mean| 2
  np.testing.assert_allclose(float(d["read_spread"]), 0.5, atol=1e-6)
  np.testing.assert_allclose(float(d["tau"]), 3.0, atol=1e-6)
  half = read_diagnostics(w[2:], np.ones((1, 1)), reads[2:], np.ones(1))
  np.testing.assert_allclose(float(half["read_entropy"]), np.log(2) / np.log(n), atol=1e-6)


def test_memory_diagnostics_against_explicit_formulas():
  from mbaf_jax.fusion.dual_memory import memory_diagnostics
  old = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
  new = np.array([[3.0, 0.0], [0.0, 4.0]], np.float32)
  d = memory_diagnostics(old, new)
  np.testing.assert_allclose(float(d["slot_similarity"]), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(d["slot_norm"]), 3.5, atol=1e-6)
  np.testing.assert_allclose(float(d["mean_shift"]), np.hypot(0.5, 2.0), atol=1e-6)


def test_diagnostics_are_collected_only_when_asked_and_never_at_init(setup):
  layer, variables, x_a, x_t = setup
  assert "diagnostics" not in variables
  out, new = layer.apply(variables, x_a, x_t, train=True, rngs={"gumbel": jax.random.key(3)},
                         mutable=["memory", "batch_stats", "diagnostics"])
  diag = new["diagnostics"]
  names = {"read_entropy_a", "read_spread_a", "tau_a", "slot_similarity_a", "slot_norm_a",
           "mean_shift_a"}
  assert names <= set(diag) and set(diag["writer_a"]) == {"from_batch"}
  for name in names:
    assert np.isfinite(float(diag[name][0]))
  assert 0.0 <= float(diag["writer_a"]["from_batch"][0]) <= 1.0
  plain, _ = train_call(layer, variables, x_a, x_t)
  np.testing.assert_array_equal(out.fused, plain.fused)
