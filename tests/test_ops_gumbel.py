"""Gumbel-softmax against the explicit formula and its sampling property."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mbaf_jax import ops


def np_softmax(z, axis=-1):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


LOGITS = np.array([[0.3, -1.2, 2.0, 0.5], [1.0, 1.5, -0.5, 0.0], [0.0, 0.0, 0.0, 3.0]],
                  np.float32)


def test_sample_gumbel_has_gumbel_moments():
  g = np.asarray(ops.sample_gumbel(jax.random.key(0), (200_000,)), np.float64)
  # Gumbel(0, 1): mean = Euler–Mascheroni γ, variance = π²/6, CDF exp(−exp(−x)).
  assert abs(g.mean() - np.euler_gamma) < 0.01
  assert abs(g.var() - np.pi ** 2 / 6) < 0.03
  for q in (-1.0, 0.0, 1.0, 2.5):
    assert abs(np.mean(g <= q) - np.exp(-np.exp(-q))) < 0.005


def test_gumbel_softmax_matches_formula_with_same_noise():
  key = jax.random.key(1)
  tau = np.array([[0.5], [1.0], [2.0]], np.float32)  # one temperature per sample
  got = ops.gumbel_softmax(LOGITS, tau, key=key)
  g = np.asarray(ops.sample_gumbel(key, LOGITS.shape))
  want = np_softmax((LOGITS + g) / tau)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(np.sum(got, -1), 1.0, atol=1e-6)
  # same key -> same sample; different key -> different sample
  np.testing.assert_array_equal(got, ops.gumbel_softmax(LOGITS, tau, key=key))
  assert not np.allclose(got, ops.gumbel_softmax(LOGITS, tau, key=jax.random.key(2)))
  # jit gives the same numbers
  np.testing.assert_allclose(jax.jit(ops.gumbel_softmax)(LOGITS, tau, key), got, atol=1e-6)


def test_no_key_means_no_noise():
  got = ops.gumbel_softmax(LOGITS, 0.7)
  np.testing.assert_allclose(got, np_softmax(LOGITS / 0.7), atol=1e-6)


def test_axis_argument():
  got = ops.gumbel_softmax(LOGITS, 1.3, axis=0)
  np.testing.assert_allclose(got, np_softmax(LOGITS / 1.3, axis=0), atol=1e-6)
  key = jax.random.key(4)
  g = np.asarray(ops.sample_gumbel(key, LOGITS.shape))
  np.testing.assert_allclose(ops.gumbel_softmax(LOGITS, 1.3, key=key, axis=0),
                             np_softmax((LOGITS + g) / 1.3, axis=0), atol=1e-6)


def test_temperature_limits():
  key = jax.random.key(3)
  g = np.asarray(ops.sample_gumbel(key, LOGITS.shape))
  cold = np.asarray(ops.gumbel_softmax(LOGITS, 1e-4, key=key))
  np.testing.assert_allclose(cold, np.eye(4)[np.argmax(LOGITS + g, -1)], atol=1e-5)
  cold = np.asarray(ops.gumbel_softmax(LOGITS, 1e-4))
  np.testing.assert_allclose(cold, np.eye(4)[np.argmax(LOGITS, -1)], atol=1e-5)
  hot = np.asarray(ops.gumbel_softmax(LOGITS, 1e6, key=key))
  np.testing.assert_allclose(hot, 0.25, atol=1e-4)


def test_argmax_of_perturbed_logits_is_softmax_distributed():
  """P(argmax(l + g) = i) = softmax(l)_i (the Gumbel-max trick), chi-square test."""
  logits = jnp.array([0.5, -0.3, 1.2, 0.0, -1.0])
  draws = 20_000
  keys = jax.random.split(jax.random.key(11), draws)
  samples = jax.jit(jax.vmap(lambda k: ops.gumbel_softmax(logits, 1e-3, key=k)))(keys)
  counts = np.bincount(np.argmax(np.asarray(samples), -1), minlength=5)
  expected = draws * np_softmax(logits)
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 18.47, (counts, expected, chi2)  # chi-square(4 dof) 0.999 quantile
  # and the test has power: uniform counts would be rejected
  uniform = np.full(5, draws / 5)
  assert np.sum((uniform - expected) ** 2 / expected) > 100


def test_hard_is_one_hot_with_soft_gradient():
  key = jax.random.key(5)
  hard = ops.gumbel_softmax(LOGITS, 0.8, key=key, hard=True)
  soft = ops.gumbel_softmax(LOGITS, 0.8, key=key)
  np.testing.assert_allclose(hard, np.eye(4)[np.argmax(soft, -1)], atol=1e-6)
  w = jnp.arange(12.0).reshape(3, 4)
  gh = jax.grad(lambda l: jnp.sum(ops.gumbel_softmax(l, 0.8, key=key, hard=True) * w))(LOGITS)
  gs = jax.grad(lambda l: jnp.sum(ops.gumbel_softmax(l, 0.8, key=key) * w))(LOGITS)
  np.testing.assert_allclose(gh, gs, atol=1e-6)


def test_check_grads_logits_and_temperature_float64():
  with jax.enable_x64(True):
    key = jax.random.key(6)
    logits = jnp.asarray(LOGITS, jnp.float64)
    tau = jnp.array([[0.7], [1.1], [2.0]], jnp.float64)
    f = lambda l, t: ops.gumbel_softmax(l, t, key=key)
    assert f(logits, tau).dtype == jnp.float64
    check_grads(f, (logits, tau), order=2, modes=("fwd", "rev"))
    check_grads(lambda l, t: ops.gumbel_softmax(l, t), (logits, tau), order=1,
                modes=("rev",))


def test_clip_temperature_dmf_eq1():
  t = jnp.array([[-20.0], [-0.5], [0.0], [3e-5], [2.0], [11.0]])
  np.testing.assert_allclose(ops.clip_temperature(t),
                             np.clip(np.abs(np.asarray(t)), 1e-4, 10.0))
  g = jax.grad(lambda v: jnp.sum(ops.clip_temperature(v)))(t)
  np.testing.assert_allclose(g[:, 0], [0, -1, 0, 0, 1, 0])
  with pytest.raises(ValueError, match="t_min"):
    ops.clip_temperature(t, t_min=0.0)
  with pytest.raises(ValueError, match="t_max"):
    ops.clip_temperature(t, t_min=2.0, t_max=1.0)


def test_bad_input():
  with pytest.raises(TypeError, match="logits must be a floating-point array"):
    ops.gumbel_softmax(jnp.array([1, 2, 3]), 1.0)
  with pytest.raises(ValueError, match=r"temperature of shape \(2, 1\) does not broadcast"):
    ops.gumbel_softmax(LOGITS, jnp.ones((2, 1)))
  with pytest.raises(ValueError, match=r"temperature of shape \(5, 3, 1\) would change"):
    ops.gumbel_softmax(LOGITS, jnp.ones((5, 3, 1)))
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    ops.gumbel_softmax(LOGITS, 1.0, axis=2)
  with pytest.raises(ValueError, match="logits must have at least 1 dimension"):
    ops.gumbel_softmax(1.0, 1.0)
