"""Count sketch and compact bilinear pooling against explicit NumPy definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mbaf_jax import ops
from mbaf_jax.ops import cbp

D1, D2, D = 5, 7, 16


# ----- independent NumPy references (loops, no FFT) -----

def np_count_sketch(x, h, s, dim):
  """Ψ(x)[c] = Σ_{i: h[i]=c} s[i] x[i], by an explicit loop."""
  x = np.asarray(x, np.float64)
  out = np.zeros(x.shape[:-1] + (dim,))
  for i in range(x.shape[-1]):
    out[..., int(h[i])] += float(s[i]) * x[..., i]
  return out


def np_circular_conv(a, b):
  """(a ⊛ b)[c] = Σ_k a[k] b[(c − k) mod D], O(D²) loop."""
  dim = a.shape[-1]
  out = np.zeros(np.broadcast_shapes(a.shape, b.shape))
  for c in range(dim):
    for k in range(dim):
      out[..., c] += a[..., k] * b[..., (c - k) % dim]
  return out


def np_cbp(x, y, sk):
  h1, h2 = (np.asarray(h) for h in sk.hashes)
  s1, s2 = (np.asarray(s) for s in sk.signs)
  return np_circular_conv(np_count_sketch(x, h1, s1, sk.dim),
                          np_count_sketch(y, h2, s2, sk.dim))


def np_bilinear_then_project(x, y, sk):
  """Count sketch of vec(x yᵀ) with hash (h1[i]+h2[j]) mod D, sign s1[i] s2[j]."""
  h1, h2 = (np.asarray(h) for h in sk.hashes)
  s1, s2 = (np.asarray(s) for s in sk.signs)
  out = np.zeros(x.shape[:-1] + (sk.dim,))
  for i in range(len(h1)):
    for j in range(len(h2)):
      out[..., (h1[i] + h2[j]) % sk.dim] += s1[i] * s2[j] * x[..., i] * y[..., j]
  return out


@pytest.fixture(scope="module")
def sketch():
  return ops.make_count_sketch(jax.random.key(3), in_dims=(D1, D2), dim=D)


@pytest.fixture(scope="module")
def xy():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(2, 3, D1)).astype(np.float32),
          rng.normal(size=(2, 3, D2)).astype(np.float32))


def test_every_exported_name_resolves():
  for name in ops.__all__:
    assert callable(getattr(ops, name)), name
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    getattr(ops, "nope")


# ----- the sketch itself -----

def test_make_count_sketch_ranges_dtypes_and_determinism():
  sk = ops.make_count_sketch(jax.random.key(0), in_dims=(300, 200), dim=64)
  assert isinstance(sk, ops.CountSketch) and sk.dim == 64 and sk.in_dims == (300, 200)
  for h, s, d in zip(sk.hashes, sk.signs, (300, 200)):
    h, s = np.asarray(h), np.asarray(s)
    assert h.dtype == np.int32 and h.shape == (d,)
    assert s.dtype == np.float32 and s.shape == (d,)
    assert h.min() >= 0 and h.max() < 64
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert len(np.unique(h)) > 40  # spread over the buckets, not constant
  again = ops.make_count_sketch(jax.random.key(0), in_dims=(300, 200), dim=64)
  other = ops.make_count_sketch(jax.random.key(1), in_dims=(300, 200), dim=64)
  for a, b, c in zip(sk.hashes + sk.signs, again.hashes + again.signs,
                     other.hashes + other.signs):
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
  # raw uint32 keys work too and a sketch is a pytree (dim static)
  raw = ops.make_count_sketch(jax.random.PRNGKey(0), in_dims=(4,), dim=8)
  assert len(jax.tree_util.tree_leaves(raw)) == 2


@pytest.mark.parametrize("method", cbp.SKETCH_METHODS)
def test_count_sketch_matches_loop(sketch, xy, method):
  x, _ = xy
  got = ops.count_sketch(x, sketch.hashes[0], sketch.signs[0], D, method=method)
  want = np_count_sketch(x, sketch.hashes[0], sketch.signs[0], D)
  assert got.shape == (2, 3, D)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_default_count_sketch_has_no_matmul(sketch):
  x = jnp.ones((4, D1))
  jaxpr = str(jax.make_jaxpr(lambda v: ops.count_sketch(v, sketch.hashes[0], sketch.signs[0], D))(x))
  assert "dot_general" not in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda a, b: ops.compact_bilinear_pooling(a, b, sketch))(
      x, jnp.ones((4, D2))))
  assert "dot_general" not in jaxpr and "fft" in jaxpr


# ----- compact bilinear pooling -----

@pytest.mark.parametrize("method", cbp.SKETCH_METHODS)
def test_cbp_equals_circular_convolution_of_sketches(sketch, xy, method):
  x, y = xy
  got = ops.compact_bilinear_pooling(x, y, sketch, method=method)
  want = np_cbp(x, y, sketch)
  assert got.shape == (2, 3, D) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # and the same as the explicit bilinear-then-project form
  np.testing.assert_allclose(got, np_bilinear_then_project(x, y, sketch), atol=1e-5, rtol=1e-5)


def test_cbp_broadcasts_batch_dims(sketch, xy):
  x, y = xy
  got = ops.compact_bilinear_pooling(x[:, :1], y, sketch)  # (2,1,d1) with (2,3,d2)
  np.testing.assert_allclose(got, np_cbp(np.broadcast_to(x[:, :1], (2, 3, D1)), y, sketch),
                             atol=1e-5)


def test_cbp_signed_sqrt_and_l2_normalize(sketch, xy):
  x, y = xy
  eps = 1e-8
  z = np_cbp(x, y, sketch)
  want_sqrt = z / np.sqrt(np.abs(z) + eps)
  # sqrt is not Lipschitz at 0: float32 FFT round-off (~1e-7) on an exactly-zero
  # bucket becomes ~3e-4 after it, so compare tightly away from 0 and loosely there.
  away = np.abs(z) > 1e-3
  assert away.mean() > 0.8
  got = np.asarray(ops.compact_bilinear_pooling(x, y, sketch, signed_sqrt=True))
  np.testing.assert_allclose(got[away], want_sqrt[away], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got, want_sqrt, atol=2e-3)
  np.testing.assert_allclose(got[away], (np.sign(z) * np.sqrt(np.abs(z)))[away], rtol=1e-4)
  got = ops.compact_bilinear_pooling(x, y, sketch, signed_sqrt=True, l2_normalize=True)
  want = want_sqrt / np.sqrt(np.sum(want_sqrt ** 2, -1, keepdims=True) + eps)
  np.testing.assert_allclose(got, want, atol=5e-4)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  got = ops.compact_bilinear_pooling(x, y, sketch, l2_normalize=True)
  np.testing.assert_allclose(got, z / np.linalg.norm(z, axis=-1, keepdims=True), atol=1e-5)


def test_cbp_gradients_are_finite_at_zero(sketch):
  f = lambda a, b: jnp.sum(ops.compact_bilinear_pooling(
      a, b, sketch, signed_sqrt=True, l2_normalize=True) * jnp.arange(D))
  ga, gb = jax.grad(f, argnums=(0, 1))(jnp.zeros((2, D1)), jnp.ones((2, D2)))
  assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))


def test_cbp_kernel_property_over_hash_draws():
  """E_{h,s}⟨CBP(x,y), CBP(x',y')⟩ = ⟨x,x'⟩⟨y,y'⟩ (Gao et al. 2016)."""
  rng = np.random.default_rng(1)
  d1, d2, dim, draws = 6, 4, 8, 4000
  x, y = rng.normal(size=d1), rng.normal(size=d2)
  xp, yp = x + 0.5 * rng.normal(size=d1), y + 0.5 * rng.normal(size=d2)
  x, y, xp, yp = (jnp.asarray(v, jnp.float32) for v in (x, y, xp, yp))
  target = float(jnp.dot(x, xp) * jnp.dot(y, yp))

  def one(key):
    sk = ops.make_count_sketch(key, in_dims=(d1, d2), dim=dim)
    return jnp.dot(ops.compact_bilinear_pooling(x, y, sk),
                   ops.compact_bilinear_pooling(xp, yp, sk))

  keys = jax.random.split(jax.random.key(7), draws)
  samples = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
  mean, sem = samples.mean(), samples.std(ddof=1) / np.sqrt(draws)
  assert sem > 0  # the estimate really varies with the hashes
  assert abs(mean - target) < 4.5 * sem, (mean, target, sem)
  assert abs(target) > 10 * sem  # the test can tell the target from 0


def test_cbp_check_grads_float64():
  with jax.enable_x64(True):
    sk = ops.make_count_sketch(jax.random.key(5), in_dims=(3, 4), dim=6)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 3)), jnp.float64)
    y = jnp.asarray(rng.normal(size=(2, 4)), jnp.float64)
    plain = lambda a, b: ops.compact_bilinear_pooling(a, b, sk)
    assert plain(x, y).dtype == jnp.float64
    check_grads(plain, (x, y), order=2, modes=("fwd", "rev"))
    fukui = lambda a, b: ops.compact_bilinear_pooling(a, b, sk, signed_sqrt=True,
                                                       l2_normalize=True)
    check_grads(fukui, (x, y), order=1, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cbp_check_grads_float64_second_order_options_and_methods():
  with jax.enable_x64(True):
    sk = ops.make_count_sketch(jax.random.key(8), in_dims=(4, 3), dim=5)
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float64)
    y = jnp.asarray(rng.normal(size=(3, 3)), jnp.float64)
    for method in cbp.SKETCH_METHODS:
      f = lambda a, b: ops.compact_bilinear_pooling(a, b, sk, signed_sqrt=True,
                                                    l2_normalize=True, method=method)
      check_grads(f, (x, y), order=2, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cbp_kernel_property_larger_dims_tighter():
  rng = np.random.default_rng(12)
  d1, d2, dim, draws = 20, 12, 32, 20_000
  x, y = rng.normal(size=d1), rng.normal(size=d2)
  xp, yp = x + 0.3 * rng.normal(size=d1), -y + 0.3 * rng.normal(size=d2)
  x, y, xp, yp = (jnp.asarray(v, jnp.float32) for v in (x, y, xp, yp))
  target = float(jnp.dot(x, xp) * jnp.dot(y, yp))

  def one(key):
    sk = ops.make_count_sketch(key, in_dims=(d1, d2), dim=dim)
    return jnp.dot(ops.compact_bilinear_pooling(x, y, sk),
                   ops.compact_bilinear_pooling(xp, yp, sk))

  keys = jax.random.split(jax.random.key(13), draws)
  samples = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
  sem = samples.std(ddof=1) / np.sqrt(draws)
  assert abs(samples.mean() - target) < 4.5 * sem
  assert abs(samples.mean() - target) < 0.05 * abs(target)


def test_cbp_vmap_and_jit_equal_loop(sketch, xy):
  x, y = xy
  x, y = x.reshape(6, D1), y.reshape(6, D2)
  f = lambda a, b: ops.compact_bilinear_pooling(a, b, sketch)
  loop = np.stack([np.asarray(f(x[i], y[i])) for i in range(6)])
  np.testing.assert_allclose(jax.vmap(f)(x, y), loop, atol=1e-6)
  np.testing.assert_allclose(jax.jit(f)(x, y), loop, atol=1e-6)
  # the sketch passes through jit as a pytree argument (e.g. from 'constants')
  g = jax.jit(lambda a, b, s: ops.compact_bilinear_pooling(a, b, s))
  np.testing.assert_allclose(g(x, y, sketch), loop, atol=1e-6)


def test_cbp_low_precision_inputs_keep_dtype(sketch, xy):
  x, y = xy
  got = ops.compact_bilinear_pooling(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16), sketch)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np_cbp(x, y, sketch), atol=0.2, rtol=0.05)


# ----- bad input -----

@pytest.mark.parametrize("kwargs, err, words", [
    (dict(in_dims=(4, 5), dim=0), ValueError, "dim"),
    (dict(in_dims=(4, 5), dim=-3), ValueError, "dim"),
    (dict(in_dims=(4, 5), dim=8.0), TypeError, "dim"),
    (dict(in_dims=(4, 0), dim=8), ValueError, "in_dims[1]"),
    (dict(in_dims=(4, 2.5), dim=8), TypeError, "in_dims[1]"),
    (dict(in_dims=(), dim=8), TypeError, "in_dims"),
    (dict(in_dims="45", dim=8), TypeError, "in_dims"),
])
def test_make_count_sketch_rejects_bad_sizes(kwargs, err, words):
  with pytest.raises(err, match=words.replace("[", r"\[").replace("]", r"\]")):
    ops.make_count_sketch(jax.random.key(0), **kwargs)


def test_make_count_sketch_rejects_int_key():
  with pytest.raises(TypeError, match=r"jax.random.key\(0\)"):
    ops.make_count_sketch(0, in_dims=(4,), dim=8)


def test_cbp_bad_inputs_name_the_argument(sketch):
  x, y = jnp.ones((2, D1)), jnp.ones((2, D2))
  with pytest.raises(ValueError, match=r"x has last dimension 6.*expects 5"):
    ops.compact_bilinear_pooling(jnp.ones((2, 6)), y, sketch)
  with pytest.raises(ValueError, match=r"y has last dimension 5.*expects 7"):
    ops.compact_bilinear_pooling(x, jnp.ones((2, 5)), sketch)
  with pytest.raises(ValueError, match=r"batch.*x: \(2,\), y: \(3,\)"):
    ops.compact_bilinear_pooling(x, jnp.ones((3, D2)), sketch)
  with pytest.raises(TypeError, match="x must be a floating-point array"):
    ops.compact_bilinear_pooling(jnp.ones((2, D1), jnp.int32), y, sketch)
  with pytest.raises(ValueError, match="x must have at least 1 dimension"):
    ops.compact_bilinear_pooling(jnp.float32(1.0), y, sketch)
  with pytest.raises(TypeError, match="sk must be a CountSketch"):
    ops.compact_bilinear_pooling(x, y, {"hashes": sketch.hashes})
  three = ops.make_count_sketch(jax.random.key(0), in_dims=(D1, D2, 3), dim=D)
  with pytest.raises(ValueError, match="exactly two inputs"):
    ops.compact_bilinear_pooling(x, y, three)
  with pytest.raises(ValueError, match=r"method must be one of .*'fft'"):
    ops.compact_bilinear_pooling(x, y, sketch, method="fft")
  with pytest.raises(ValueError, match="eps must be a non-negative"):
    ops.compact_bilinear_pooling(x, y, sketch, signed_sqrt=True, eps=-1e-3)


def test_count_sketch_bad_inputs(sketch):
  h, s = sketch.hashes[0], sketch.signs[0]
  with pytest.raises(ValueError, match="x has last dimension 4"):
    ops.count_sketch(jnp.ones((2, 4)), h, s, D)
  with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
    ops.count_sketch(jnp.ones((2, D1)), h, s, 0)
  with pytest.raises(TypeError, match="dim must be a positive Python int"):
    ops.count_sketch(jnp.ones((2, D1)), h, s, 16.0)
  with pytest.raises(ValueError, match="same length"):
    ops.count_sketch(jnp.ones((2, D1)), h, s[:3], D)
  with pytest.raises(TypeError, match="hashes must be an integer array"):
    ops.count_sketch(jnp.ones((2, D1)), s, s, D)
  with pytest.raises(ValueError, match="method must be one of"):
    ops.count_sketch(jnp.ones((2, D1)), h, s, D, method="matmul")
  with pytest.raises(ValueError, match=r"hashes has values in \[\d+, \d+\] but must lie in \[0, dim=4\)"):
    ops.count_sketch(jnp.ones((2, D1)), h, s, 4)  # sketch made for D=16


@pytest.mark.slow
def test_bench_cbp_quick_prints_json_lines(capsys):
  import importlib.util
  import json
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cbp.py"
  spec = importlib.util.spec_from_file_location("bench_cbp_under_test", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(["--quick", "--methods", "segment_sum", "--iters", "1"])
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["bench"] for r in records] == ["cbp_explicit", "cbp_fft"] * 2
  for r in records:
    for key in ("device", "shape", "dtype", "median_ms", "throughput", "peak_mem_mb",
                "gflop", "gflops_per_s", "matmul_peak_gflops", "frac_of_peak"):
      assert key in r, key
    assert r["median_ms"] > 0 and r["matmul_peak_gflops"] > 0
  assert all(r["max_rel_err_vs_explicit"] <= 1e-4 for r in records[1::2])
