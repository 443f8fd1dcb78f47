"""Shared fusion pieces: the CBP layer's constants, masked (and synced) batch norm, checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.fusion.common import (CompactBilinearPooling, FusionOutput, MaskedBatchNorm,
                                    batch_mask, check_modes, gather_batch, xavier_normal)

DIM = 16


def np_cbp(x, y, hx, sx, hy, sy, dim):
  """Explicit definition: Σ_{i,j} s_x[i] s_y[j] x_i y_j into bucket (h_x[i] + h_y[j]) mod D."""
  out = np.zeros((x.shape[0], dim))
  for i in range(x.shape[1]):
    for j in range(y.shape[1]):
      out[:, (hx[i] + hy[j]) % dim] += sx[i] * sy[j] * x[:, i] * y[:, j]
  return out


def test_cbp_layer_constants_and_values():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 7)).astype(np.float32)
  layer = CompactBilinearPooling(output_dim=DIM)
  v = layer.init(jax.random.key(0), x, y)
  assert set(v) == {"constants"}  # no trainable parameters
  c = jax.tree_util.tree_map(np.asarray, v["constants"])
  assert c["hashes_x"].shape == (5,) and c["hashes_y"].shape == (7,)
  assert c["hashes_x"].dtype == np.int32 and c["hashes_x"].min() >= 0 and c["hashes_y"].max() < DIM
  assert set(np.unique(c["signs_x"])) <= {-1.0, 1.0}
  out = layer.apply(v, x, y)  # no RNG needed at apply
  want = np_cbp(x, y, c["hashes_x"], c["signs_x"], c["hashes_y"], c["signs_y"], DIM)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  # deterministic in the 'params' key, different for another key
  same = layer.init(jax.random.key(0), x, y)["constants"]["hashes_x"]
  other = layer.init(jax.random.key(1), x, y)["constants"]
  np.testing.assert_array_equal(same, c["hashes_x"])
  assert not (np.array_equal(other["hashes_x"], c["hashes_x"])
              and np.array_equal(other["signs_x"], c["signs_x"]))
  # options: signed sqrt then L2 normalisation (Fukui et al. §3.1)
  normed = CompactBilinearPooling(DIM, signed_sqrt=True, l2_normalize=True).apply(v, x, y)
  s = np.sign(want) * np.sqrt(np.abs(want))
  np.testing.assert_allclose(normed, s / np.linalg.norm(s, axis=-1, keepdims=True), atol=1e-3)


def test_cbp_layer_errors():
  x, y = jnp.ones((2, 5)), jnp.ones((2, 7))
  layer = CompactBilinearPooling(output_dim=DIM)
  v = layer.init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match="'constants'"):
    layer.apply({}, x, y)
  with pytest.raises(ValueError, match="initialised for inputs of dims"):
    layer.apply(v, jnp.ones((2, 6)), y)
  with pytest.raises(TypeError, match="output_dim"):
    CompactBilinearPooling(output_dim=2.5).init(jax.random.key(0), x, y)


def np_bn(x, mask, scale, bias, eps=1e-5):
  r = x[mask.astype(bool)]
  mean, var = r.mean(0), r.var(0)
  return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


def test_masked_batch_norm_matches_numpy_and_ignores_padded_rows():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(6, 4)).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
  x_junk = np.where(mask[:, None] > 0, x, 1e30).astype(np.float32)
  bn = MaskedBatchNorm()
  v = bn.init(jax.random.key(0), x, mask)
  params = {"scale": jnp.arange(1.0, 5.0), "bias": jnp.full((4,), 0.5)}
  v = {**v, "params": params}
  y, new = bn.apply(v, x_junk, mask, mutable=["batch_stats"])
  want, mean, var = np_bn(x.astype(np.float64), mask, np.arange(1.0, 5.0), 0.5)
  real = mask > 0
  np.testing.assert_allclose(np.asarray(y)[real], want[real], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
  # gradients stay finite with Inf in padded rows, and padded rows get none
  g = jax.grad(lambda a: jnp.sum(bn.apply(v, a, mask, mutable=["batch_stats"])[0][real] ** 3))(
      jnp.where(real[:, None], x, jnp.inf))
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~real] == 0)
  # evaluation uses the running statistics
  ev = bn.apply({**v, **new}, x, None, use_running_average=True)
  np.testing.assert_allclose(
      ev, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5) * np.arange(1.0, 5.0) + 0.5,
      rtol=1e-5, atol=1e-5)
  # a batch with no real rows leaves the running statistics unchanged
  _, none = bn.apply(v, x, np.zeros(6), mutable=["batch_stats"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, none["batch_stats"], v["batch_stats"])


def test_masked_batch_norm_pmap_sync_is_count_weighted():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 3)).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)  # device 1 has 1 real row, device 0 has 4
  bn = MaskedBatchNorm(axis_name="b")
  v = MaskedBatchNorm().init(jax.random.key(0), x, mask)
  f = jax.pmap(lambda xs, ms: bn.apply(v, xs, ms, mutable=["batch_stats"]), axis_name="b",
               devices=jax.devices()[:2])
  y, new = f(x.reshape(2, 4, 3), mask.reshape(2, 4))
  want, mean, _ = np_bn(x.astype(np.float64), mask, 1.0, 0.0)
  np.testing.assert_allclose(np.asarray(y).reshape(8, 3)[:5], want[:5], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["mean"][1], 0.1 * mean, rtol=1e-5)


def test_gather_batch_and_checks():
  x = np.arange(8.0).reshape(4, 2)
  g = jax.pmap(lambda a, m: gather_batch(a, m, "i"), axis_name="i", devices=jax.devices()[:2])
  gx, gm = g(x.reshape(2, 2, 2), np.array([[1, 0], [1, 1]]))
  np.testing.assert_array_equal(gx[1], x)
  np.testing.assert_array_equal(gm[0], [1, 0, 1, 1])
  np.testing.assert_array_equal(batch_mask(None, 3), np.ones(3))
  with pytest.raises(ValueError, match=r"mask must have shape \(3,\)"):
    batch_mask(np.ones(4), 3)
  with pytest.raises(ValueError, match="at least one mode"):
    check_modes((), "L")
  with pytest.raises(ValueError, match="exactly 2 modes"):
    check_modes((np.ones((2, 3)),), "L", count=2, names=("x_a", "x_t"))
  with pytest.raises(ValueError, match=r"modes\[1\] must have shape \(B, d\)"):
    check_modes((np.ones((2, 3)), np.ones((2, 3, 4))), "L")
  with pytest.raises(ValueError, match="same batch size"):
    check_modes((np.ones((2, 3)), np.ones((3, 3))), "L")
  with pytest.raises(ValueError, match="2-D shape"):
    xavier_normal()(jax.random.key(0), (3,))
  out = FusionOutput(fused=jnp.ones((2, 3)))
  assert out.aux == {} and jax.tree_util.tree_leaves(out)[0].shape == (2, 3)
