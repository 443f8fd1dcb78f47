"""Tests of the MBAF layer (MBAF §3, Eqs. 1–13) against a plain NumPy loop of the equations."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mbaf_jax.fusion import mbaf as mbaf_lib
from mbaf_jax.fusion.mbaf import MBAF, mbaf_parameter_count


def _modes(key, batch, dims):
  keys = jax.random.split(key, len(dims))
  return [jax.random.normal(k, (batch, d), jnp.float32) for k, d in zip(keys, dims)]


def _apply(layer, variables, *modes, mask=None, train=True):
  """``layer.apply`` under one jit (eager dispatch of many tiny ops is slow)."""
  f = jax.jit(lambda v, m, *x: layer.apply(v, *x, mask=m, train=train, mutable=["memory"]))
  return f(variables, mask, *modes)


def _init(layer, modes, seed=0):
  return layer.init({"params": jax.random.key(seed), "memory": jax.random.key(seed + 100)},
                    *modes)


# ----------------------------------------------------------------------------- reference


def _softmax(v):
  e = np.exp(v - v.max())
  return e / e.sum()


def reference(params, memory, modes, mask, *, train, memory_modes=None, read="naive",
              attention="keys", read_projection=True, write_max=None):
  """Eqs. 1–9 (and 11–13) for one sample at a time, in float64 NumPy."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mem = np.array(memory, np.float64)
  modes = [np.asarray(x, np.float64) for x in modes]
  sel = list(range(len(modes))) if memory_modes is None else list(memory_modes)
  n_layers = len([k for k in p if k.startswith("compose_kernel_")])
  out = []
  for t in range(modes[0].shape[0]):
    x = np.concatenate([modes[i][t] for i in sel])  # Eq. 1 / 13
    xc = np.concatenate([modes[i][t] for i in sel[::-1]]) if read == "cross" else x  # Eq. 11
    q = x @ p["read_kernel"] if read_projection else x
    z = _softmax(np.array([mem[j] @ q for j in range(mem.shape[0])]))  # Eq. 2
    m_r = sum(z[j] * mem[j] for j in range(mem.shape[0]))  # Eq. 3
    y = np.concatenate([xc, m_r]) @ p["compose_kernel_0"] + p["compose_bias_0"]  # Eq. 4
    for i in range(1, n_layers):
      y = np.maximum(y, 0) @ p[f"compose_kernel_{i}"] + p[f"compose_bias_{i}"]
    b = y
    if attention == "feature":  # Eqs. 5-6, feature reading
      alpha = _softmax(b * p["attention_context"])
      c = len(b) * alpha * b
    elif attention == "keys":
      alpha = _softmax(p["attention_keys"] @ b / np.sqrt(len(b)))
      c = sum(a * k for a, k in zip(alpha, p["attention_keys"]))
    else:
      c = b
    h = c @ p["write_kernel"] + p.get("write_bias", 0.0)
    h = np.maximum(h, 0.0)  # Eq. 7
    if write_max is not None:  # the ReLU-n cap
      h = np.minimum(h, write_max)
    hh = h @ p["output_kernel"] if "output_kernel" in p else h
    o = x + hh  # Eq. 9
    parts, start = {}, 0
    for i in sel:
      parts[i] = o[start:start + modes[i].shape[1]]
      start += modes[i].shape[1]
    row = np.concatenate([parts.get(i, modes[i][t]) for i in range(len(modes))])
    if mask[t]:
      out.append(row)
      if train:  # Eq. 8, slot by slot
        for j in range(mem.shape[0]):
          mem[j] = mem[j] * (1.0 - z[j]) + z[j] * h
    else:
      out.append(np.zeros_like(row))
  return np.stack(out), mem


CASES = [
    dict(dims=(3, 2), kw={}),
    dict(dims=(3, 2), kw=dict(mlp_dims=(6,), attention="keys", attention_keys=3,
                              write_bias=True)),
    dict(dims=(3, 2), kw=dict(read="cross", attention="none")),
    dict(dims=(2, 3, 2), kw=dict(hidden=4, compose_dim=5)),  # n = 3 modes, H != l
    dict(dims=(3, 2), kw=dict(memory_modes=(1,))),  # Eq. 13
    dict(dims=(3, 2), kw=dict(read_projection=False, write_bias=True)),
    dict(dims=(2, 3, 2), kw=dict(read="cross", memory_modes=(2, 0))),  # Eqs. 11-13, n = 3
    dict(dims=(3, 2), kw=dict(write_max=0.05, write_bias=True)),  # capped Eq. 7 (clips here)
    dict(dims=(3, 2), kw=dict(attention="feature")),  # the unbounded feature reading
]


REFERENCE_CASES = [
    pytest.param(c, t, id=f"{'train' if t else 'eval'}-{c['kw'] or 'default'}",
                 marks=() if t or i == 0 else pytest.mark.slow)
    for i, c in enumerate(CASES) for t in (True, False)]


@pytest.mark.parametrize("case, train", REFERENCE_CASES)
def test_scan_matches_numpy_loop(case, train):
  modes = _modes(jax.random.key(1), 5, case["dims"])
  mask = np.array([1, 1, 0, 1, 1], bool)
  layer = MBAF(slots=4, **case["kw"])
  v = _init(layer, modes)
  out, new = _apply(layer, v, *modes, mask=mask, train=train)
  ref_kw = {k: case["kw"][k] for k in ("memory_modes", "read", "attention", "read_projection",
                                       "write_max") if k in case["kw"]}
  want, want_mem = reference(v["params"], v["memory"]["memory"], modes, mask, train=train,
                             **ref_kw)
  np.testing.assert_allclose(out.fused, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new["memory"]["memory"], want_mem, rtol=1e-5, atol=1e-5)
  assert out.aux == {}
  assert out.fused.shape == (5, sum(case["dims"]))


def test_write_max_bounds_the_memory_recurrence():
  """Eqs. 2-8 with a gain > 1 (inflated W): uncapped the memory grows without bound; with
  write_max every entry stays in [min(M_0, 0), max(M_0, write_max)] (convex writes)."""
  modes = _modes(jax.random.key(3), 16, (3, 2))
  grown = {}
  for cap in (None, 2.0):
    layer = MBAF(slots=4, write_max=cap, attention="feature")
    v = _init(layer, modes)
    m0 = np.asarray(v["memory"]["memory"])
    params = dict(v["params"], write_kernel=v["params"]["write_kernel"] * 50.0,
                  compose_kernel_0=v["params"]["compose_kernel_0"] * 5.0)
    variables = {"params": params, "memory": v["memory"]}
    f = jax.jit(lambda var, *x: layer.apply(var, *x, train=True, mutable=["memory"])[1])
    for _ in range(10):
      variables = dict(variables, memory=f(variables, *modes)["memory"])
    mem = np.asarray(variables["memory"]["memory"])
    assert np.all(np.isfinite(mem))
    grown[cap] = np.abs(mem).max()
    if cap is not None:
      assert mem.max() <= max(m0.max(), cap) + 1e-6 and mem.min() >= min(m0.min(), 0.0) - 1e-6
  assert grown[None] > 20 * grown[2.0]  # uncapped, this setting leaves the bound (119 vs 1.6)


def test_keys_reading_keeps_the_memory_bounded_without_a_cap():
  """The default "keys" reading: c_t is a convex mix of the keys, so with W and the inputs
  inflated the memory stays within max(|M_0|, max‖key‖ · max‖W_col‖ + max|bias|)."""
  modes = [50.0 * m for m in _modes(jax.random.key(3), 16, (3, 2))]
  layer = MBAF(slots=4, write_bias=True)
  assert layer.attention == "keys" and layer.write_max is None
  v = _init(layer, modes)
  params = dict(v["params"], write_kernel=v["params"]["write_kernel"] * 50.0,
                compose_kernel_0=v["params"]["compose_kernel_0"] * 5.0,
                write_bias=v["params"]["write_bias"] + 3.0)
  bound = max(np.abs(np.asarray(v["memory"]["memory"])).max(),
              np.linalg.norm(params["attention_keys"], axis=1).max()
              * np.linalg.norm(params["write_kernel"], axis=0).max()
              + np.abs(np.asarray(params["write_bias"])).max())
  variables = {"params": params, "memory": v["memory"]}
  f = jax.jit(lambda var, *x: layer.apply(var, *x, train=True, mutable=["memory"])[1])
  peak = 0.0
  for _ in range(30):
    variables = dict(variables, memory=f(variables, *modes)["memory"])
    peak = max(peak, float(np.abs(np.asarray(variables["memory"]["memory"])).max()))
  assert np.isfinite(peak) and peak <= bound + 1e-4
  assert peak > 0.2 * bound  # the bound is not vacuous here


def test_compose_writes_equals_sequential_writes():
  rng = np.random.default_rng(0)
  mem = rng.normal(size=(4, 3))
  z = rng.dirichlet(np.ones(4), size=6)
  z[2] = 0.0  # a padded row is a no-op
  z[4] = np.eye(4)[1]  # a hard write: erases slot 1 completely
  h = rng.normal(size=(6, 3))
  want = mem.copy()
  for b in range(6):
    want = want * (1 - z[b][:, None]) + np.outer(z[b], h[b])
  got = mbaf_lib.compose_writes(jnp.asarray(mem, jnp.float32), jnp.asarray(z, jnp.float32),
                                jnp.asarray(h, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_write_and_attention_gradients_check_grads():
  from jax.test_util import check_grads
  rng = np.random.default_rng(1)
  mem = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  z = jnp.asarray(rng.dirichlet(np.ones(3), size=2), jnp.float32)
  h = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  check_grads(mbaf_lib.compose_writes, (mem, z, h), order=1, modes=("rev",), eps=1e-2,
              atol=2e-2, rtol=2e-2)
  check_grads(lambda q, m: mbaf_lib.address(q, m)[1], (h[0], mem), order=1, modes=("rev",),
              eps=1e-2, atol=2e-2, rtol=2e-2)
  p = {"attention_context": jnp.asarray(rng.normal(size=4), jnp.float32)}
  check_grads(lambda b: mbaf_lib.attend(p, b, "feature"), (h,), order=1, modes=("rev",),
              eps=1e-2, atol=2e-2, rtol=2e-2)


def test_batched_write_deviation_from_scan():
  """write="batched" reads stale memory: equal to scan for B = 1, measurably off for B > 1."""
  modes = _modes(jax.random.key(2), 16, (6, 4))
  scan, batched = MBAF(slots=5), MBAF(slots=5, write="batched")
  v = _init(scan, modes)
  for b in (1, 16):
    xs = [x[:b] for x in modes]
    o1, m1 = _apply(scan, v, *xs, train=True)
    o2, m2 = _apply(batched, v, *xs, train=True)
    dev_mem = float(jnp.max(jnp.abs(m1["memory"]["memory"] - m2["memory"]["memory"])))
    dev_out = float(jnp.max(jnp.abs(o1.fused - o2.fused)))
    if b == 1:
      assert dev_mem < 1e-5 and dev_out < 1e-5
    else:
      print(f"batched vs scan, B={b}: max |ΔM| = {dev_mem:.3g}, max |Δo| = {dev_out:.3g}")
      assert 1e-4 < dev_mem < 10.0 and dev_out > 1e-4
  # the first row reads M_{t-1} in both modes
  np.testing.assert_allclose(o1.fused[0], o2.fused[0], rtol=1e-5, atol=1e-5)


def test_memory_init_statistics_and_streams():
  x = _modes(jax.random.key(3), 2, (40, 60))
  layer = MBAF(slots=100)
  v = _init(layer, x)
  mem = np.asarray(v["memory"]["memory"])
  assert mem.shape == (100, 100)
  assert abs(mem.mean()) < 0.03 and abs(mem.std() - 1.0) < 0.03  # N(0, 1), 10^4 draws
  v2 = layer.init({"params": jax.random.key(0), "memory": jax.random.key(7)}, *x)
  assert not np.allclose(v2["memory"]["memory"], mem)  # from the 'memory' stream
  np.testing.assert_array_equal(v2["params"]["write_kernel"], v["params"]["write_kernel"])
  v3 = layer.init(jax.random.key(0), *x)  # no 'memory' stream: drawn from 'params'
  assert np.isfinite(np.asarray(v3["memory"]["memory"])).all()
  lim = np.sqrt(6.0 / (100 + 100))  # Glorot uniform
  w = np.asarray(v["params"]["write_kernel"])
  assert np.abs(w).max() <= lim and np.abs(w).max() > 0.9 * lim


def test_eval_never_writes_and_train_leaves_inputs_untouched():
  x = _modes(jax.random.key(4), 4, (3, 2))
  layer = MBAF(slots=3)
  v = _init(layer, x)
  before = jax.tree_util.tree_map(np.array, v)
  out, new = _apply(layer, v, *x, train=False)
  np.testing.assert_array_equal(new["memory"]["memory"], before["memory"]["memory"])
  out, new = _apply(layer, v, *x, train=True)
  assert not np.allclose(new["memory"]["memory"], before["memory"]["memory"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, v, before)
  # not mutable: train=True still computes the outputs of the sequential write
  out2 = layer.apply(v, *x, train=True)
  np.testing.assert_allclose(out2.fused, out.fused, rtol=1e-6)


@pytest.mark.parametrize("write", ["scan", "batched"])
def test_padded_rows_do_not_affect_real_rows(write):
  real = _modes(jax.random.key(5), 3, (3, 2))
  junk = _modes(jax.random.key(6), 3, (3, 2))
  layer = MBAF(slots=4, write=write)
  v = _init(layer, real)
  # interleave: real0, junk0, real1, junk1, junk2, real2
  order = [("r", 0), ("j", 0), ("r", 1), ("j", 1), ("j", 2), ("r", 2)]
  padded = [jnp.stack([(r if s == "r" else j)[i] for s, i in order]) for r, j in zip(real, junk)]
  mask = np.array([s == "r" for s, _ in order])
  o1, m1 = _apply(layer, v, *real, train=True)
  o2, m2 = _apply(layer, v, *padded, mask=mask, train=True)
  np.testing.assert_allclose(o2.fused[mask], o1.fused, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o2.fused[~mask], 0.0)
  np.testing.assert_allclose(m2["memory"]["memory"], m1["memory"]["memory"], rtol=1e-5, atol=1e-6)


def test_same_keys_same_outputs_and_write_then_carry():
  x = _modes(jax.random.key(8), 4, (3, 2))
  layer = MBAF(slots=3)
  va, vb = _init(layer, x, seed=1), _init(layer, x, seed=1)
  jax.tree_util.tree_map(np.testing.assert_array_equal, va, vb)
  oa, na = _apply(layer, va, *x, train=True)
  # carrying the new memory: a second step reads what the first wrote
  carried = {"params": va["params"], "memory": jax.lax.stop_gradient(na["memory"])}
  ob, nb = _apply(layer, carried, *x, train=True)
  _, want_mem = reference(va["params"], va["memory"]["memory"],
                          [jnp.concatenate([a, a]) for a in x], np.ones(8, bool), train=True)
  np.testing.assert_allclose(nb["memory"]["memory"], want_mem, rtol=1e-5, atol=1e-5)
  assert not np.allclose(oa.fused, ob.fused)


def test_jit_and_grad_reach_every_weight():
  with jax.enable_x64(True):  # float64: the central difference below is then exact to ~1e-8
    x = [m.astype(jnp.float64) for m in _modes(jax.random.key(9), 4, (3, 2))]
    layer = MBAF(slots=3, mlp_dims=(4,), param_dtype=jnp.float64)
    v = _init(layer, x)

    @jax.jit
    def loss(params, memory):
      out, new = layer.apply({"params": params, "memory": memory}, *x, train=True,
                             mutable=["memory"])
      return jnp.sum(out.fused ** 2) + jnp.sum(new["memory"]["memory"] ** 2)

    grads = jax.grad(loss)(v["params"], v["memory"])
    for name in ("read_kernel", "compose_kernel_0", "compose_kernel_1", "attention_keys",
                 "write_kernel"):
      g = np.asarray(grads[name])
      assert np.isfinite(g).all() and np.abs(g).max() > 0, name
    # directional derivative against a central difference of the same function
    d = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(1), a.shape, a.dtype),
                               v["params"])
    eps = 1e-4
    plus = jax.tree_util.tree_map(lambda a, b: a + eps * b, v["params"], d)
    minus = jax.tree_util.tree_map(lambda a, b: a - eps * b, v["params"], d)
    fd = (loss(plus, v["memory"]) - loss(minus, v["memory"])) / (2 * eps)
    an = sum(jnp.vdot(g, b) for g, b in zip(jax.tree_util.tree_leaves(grads),
                                            jax.tree_util.tree_leaves(d)))
    np.testing.assert_allclose(an, fd, rtol=1e-5)


@pytest.mark.parametrize("write", ["scan", "batched"])
def test_sharded_batch_equals_one_device(write):
  devices = np.array(jax.devices()[:8])
  if len(devices) < 8:
    pytest.skip("needs 8 devices")
  x = _modes(jax.random.key(10), 16, (3, 2))
  mask = np.ones(16, bool)
  mask[[3, 12]] = False
  layer = MBAF(slots=4, write=write)
  v = _init(layer, x)
  f = jax.jit(lambda v, m, *x: layer.apply(v, *x, mask=m, train=True, mutable=["memory"]))
  o1, n1 = f(v, mask, *x)
  mesh = Mesh(devices, ("data",))
  sh = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  xs = [jax.device_put(a, sh) for a in x]
  o8, n8 = f(jax.device_put(v, rep), jax.device_put(mask, sh), *xs)
  assert len(o8.fused.sharding.device_set) == 8
  np.testing.assert_allclose(o8.fused, o1.fused, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(n8["memory"]["memory"], n1["memory"]["memory"], rtol=1e-5,
                             atol=1e-6)


def test_pmap_axis_name_equals_one_device():
  n = 8
  if jax.device_count() < n:
    pytest.skip("needs 8 devices")
  x = _modes(jax.random.key(11), 16, (3, 2))
  mask = np.ones(16, bool)
  mask[[1, 9, 10]] = False
  one = MBAF(slots=4)
  v = _init(one, x)
  o1, n1 = _apply(one, v, *x, mask=mask, train=True)
  par = MBAF(slots=4, axis_name="batch")
  rep = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), v)
  split = lambda a: a.reshape((n, a.shape[0] // n) + a.shape[1:])
  f = jax.pmap(lambda v, m, *x: par.apply(v, *x, mask=m, train=True, mutable=["memory"]),
               axis_name="batch")
  o8, n8 = f(rep, split(mask), *[split(a) for a in x])
  np.testing.assert_allclose(o8.fused.reshape(16, -1), o1.fused, rtol=1e-5, atol=1e-6)
  for d in range(n):  # identical memory on every device
    np.testing.assert_allclose(n8["memory"]["memory"][d], n1["memory"]["memory"], rtol=1e-5,
                               atol=1e-6)


def test_parameter_count_matches_own_formula_and_table3():
  def own(l, slots_unused, h=None, c=None, mlp=(), read_projection=True, attention="keys",
          keys=32, write_bias=False):
    h = h or l
    c = c or h
    widths = list(mlp) + [c]
    n, fan = 0, l + h
    for w in widths:
      n += fan * w + w
      fan = w
    n += l * h if read_projection else 0
    n += {"feature": c, "keys": keys * c, "none": 0}[attention]
    n += c * h + (h if write_bias else 0)
    n += h * l if h != l else 0
    return n

  assert mbaf_parameter_count(5, 7) == own(12, 3)
  assert mbaf_parameter_count(5, 7, hidden=6, compose_dim=4, mlp_dims=(3,), attention="keys",
                              attention_keys=5, write_bias=True) == own(
                                  12, 3, h=6, c=4, mlp=(3,), attention="keys", keys=5,
                                  write_bias=True)
  assert mbaf_parameter_count(5, 7, attention="none", read_projection=False) == own(
      12, 3, attention="none", read_projection=False)
  # Table 3 / Eq. 10 numbers for l = 1024, batch 32 (shapes only, via eval_shape)
  count = mbaf_parameter_count(512, 512, attention_keys=32, **mbaf_lib.TABLE3_LAYOUT)
  assert count == 14_628_867 - 11_448_323 == 3_180_544
  assert mbaf_lib.paper_eq10(1024, 32) == 2_130_944 == count - (1024 ** 2 + 1024)
  assert mbaf_lib.paper_table3_difference(6848, 64) + 4 * 6848 + 4 == 157_550_146 - 16_385_470


def test_output_dim_and_dtype():
  layer = MBAF(slots=2, dtype=jnp.bfloat16)
  assert layer.output_dim(2048, 4800) == 6848
  x = _modes(jax.random.key(12), 2, (3, 2))
  v = _init(layer, x)
  out, new = _apply(layer, v, *x, train=True)
  assert out.fused.dtype == jnp.bfloat16
  assert new["memory"]["memory"].dtype == jnp.float32


@pytest.mark.parametrize("kw, match", [
    (dict(write="sequential"), "write must be one of"),
    (dict(read="cross_attention"), "read must be one of"),
    (dict(attention="dot"), "attention must be one of"),
    (dict(memory_modes=(2,)), r"memory_modes=\(2,\)"),
    (dict(memory_modes=1), "memory_modes must be None or a non-empty tuple"),
    (dict(hidden=4, read_projection=False), "read_projection=False"),
    (dict(slots=0), "slots must be a positive int"),
    (dict(write_max=0.0), "write_max must be None"),
    (dict(write_max=float("inf")), "write_max must be None"),
    (dict(write_max="6"), "write_max must be None"),
])
def test_bad_options(kw, match):
  x = _modes(jax.random.key(13), 2, (3, 2))
  with pytest.raises(ValueError, match=match):
    _init(MBAF(**kw), x)


def test_bad_inputs():
  layer = MBAF(slots=2)
  x = _modes(jax.random.key(14), 2, (3, 2))
  v = _init(layer, x)
  with pytest.raises(ValueError, match="same batch size"):
    layer.apply(v, x[0], x[1][:1])
  with pytest.raises(ValueError, match="'memory' variable has shape"):
    layer.apply(v, x[0], jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="mask must have shape"):
    layer.apply(v, *x, mask=np.ones(3))
  with pytest.raises(ValueError, match="at least one mode"):
    layer.apply(v)
  with pytest.raises(ValueError, match="shape \\(B, d\\)"):
    layer.apply(v, x[0][None], x[1][None])
  # hidden set: memory width fixed, input width changed -> named error
  lh = MBAF(slots=2, hidden=4)
  vh = _init(lh, x)
  with pytest.raises(ValueError, match="initialised for memory inputs of total width 5"):
    lh.apply(vh, x[0], jnp.ones((2, 4)))


# ----------------------------------------------------------------------------- placements

from mbaf_jax.fusion import mbaf_blocks  # noqa: E402


def _np_attention(p, x):
  s = np.asarray(x, np.float64) @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(
      p["Dense_0"]["bias"])
  e = np.exp(s - s.max(-1, keepdims=True))
  return np.asarray(x, np.float64) * e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", ["NF-I", "NF-II", "NF-III", "MBAF-II", "MBAF-III"])
def test_fusion_blocks_match_composed_reference(name):
  x = _modes(jax.random.key(15), 4, (3, 2))
  mask = np.array([1, 0, 1, 1], bool)
  block = mbaf_blocks.fusion_block(name, **({"slots": 3} if name.startswith("MBAF") else {}))
  v = _init(block, x)
  out, new = _apply(block, v, *x, mask=mask, train=True)
  p = v.get("params", {})
  placement = name.split("-")[1]
  modes = [np.asarray(a, np.float64) for a in x]
  if placement == "III":
    modes = [_np_attention(p[f"attention_{i}"], a) for i, a in enumerate(modes)]
  if name.startswith("MBAF"):
    fused, mem = reference(p["fusion"], v["memory"]["fusion"]["memory"], modes, mask, train=True)
    np.testing.assert_allclose(new["memory"]["fusion"]["memory"], mem, rtol=1e-5, atol=1e-5)
  else:
    fused = np.concatenate(modes, -1)
  if placement == "II":
    fused = _np_attention(p["attention"], fused)
  fused = fused * mask[:, None]
  np.testing.assert_allclose(out.fused, fused, rtol=1e-5, atol=1e-5)
  assert block.output_dim(3, 2) == 5


def test_fusion_block_errors():
  with pytest.raises(ValueError, match="fusion block name must be one of"):
    mbaf_blocks.fusion_block("MBAF-IV")
  with pytest.raises(ValueError, match="takes no MBAF options"):
    mbaf_blocks.fusion_block("NF-I", slots=3)
  x = _modes(jax.random.key(16), 2, (3, 2))
  with pytest.raises(ValueError, match="placement must be one of"):
    _init(mbaf_blocks.FusionBlock(placement="IV"), x)
  with pytest.raises(ValueError, match="gate must be one of"):
    _init(mbaf_blocks.FusionBlock(placement="II", gate="relu"), x)


# ----------------------------------------------------------------------------- scripts

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script_lines(module, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  res = subprocess.run([sys.executable, "-m", module, *flags], cwd=_ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_param_count_script_reports_table3_match():
  (rec,) = _script_lines("benchmarks.mbaf_param_count", "--quick")
  assert rec["code_table3_layout"] == rec["paper_table3_mbaf_minus_nf"] == 3_180_544
  assert rec["paper_eq10"] == 2_130_944
  assert rec["code_default"] == 4 * 1024 ** 2 + (1 + 32) * 1024  # default "keys", K = 32


@pytest.mark.slow
def test_bench_quick_emits_complete_records():
  recs = _script_lines("benchmarks.bench_mbaf_layer", "--quick")
  assert {(r["bench"], r["write"]) for r in recs} == {
      ("mbaf_forward_eval", "scan"), ("mbaf_forward_train", "scan"), ("mbaf_train_step", "scan"),
      ("mbaf_forward_train", "batched"), ("mbaf_train_step", "batched")}
  for r in recs:
    for key in ("device", "shape", "dtype", "median_ms", "throughput", "peak_mem_mb", "gflop",
                "gflops_per_s", "matmul_peak_gflops", "frac_of_peak", "gflop_model"):
      assert key in r, key
    assert r["median_ms"] > 0
  assert all(r["max_abs_dev_memory"] > 0 for r in recs if r["write"] == "batched")
