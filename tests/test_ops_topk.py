"""Top-k pooling (gPool) against a brute-force NumPy selection."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mbaf_jax import ops


def np_top_k_pool(x, scores, k, mask=None):
  """Brute force: sort rows by (invalid, −score, index); gate by sigmoid; zero invalid."""
  x, scores = np.asarray(x, np.float64), np.asarray(scores, np.float64)
  mask = np.ones(scores.shape, bool) if mask is None else np.asarray(mask).astype(bool)
  lead = scores.shape[:-1]
  pooled = np.zeros(lead + (k, x.shape[-1]))
  idx = np.zeros(lead + (k,), np.int64)
  valid = np.zeros(lead + (k,), bool)
  for b in np.ndindex(*lead):
    n = scores.shape[-1]
    order = sorted(range(n), key=lambda i: (not mask[b][i], -scores[b][i], i))[:k]
    for slot, i in enumerate(order):
      idx[b][slot] = i
      valid[b][slot] = mask[b][i]
      gate = 1.0 / (1.0 + np.exp(-scores[b][i]))
      pooled[b][slot] = x[b][i] * gate if mask[b][i] else 0.0
  return pooled, idx, valid


def test_matches_brute_force_with_batch_dims_and_mask():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 9, 4)).astype(np.float32)
  scores = rng.normal(size=(2, 3, 9)).astype(np.float32)
  mask = rng.random(size=(2, 3, 9)) > 0.3
  mask[..., :5] = True  # at least 5 valid rows per problem, so k=4 never needs masked rows
  pooled, idx, valid = ops.top_k_pool(x, scores, 4, mask=mask, return_valid=True)
  want_p, want_i, want_v = np_top_k_pool(x, scores, 4, mask)
  assert pooled.shape == (2, 3, 4, 4) and idx.shape == (2, 3, 4) and idx.dtype == jnp.int32
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_allclose(pooled, want_p, atol=1e-6)
  assert np.all(valid) and np.all(want_v)
  assert np.all(np.take_along_axis(mask, np.asarray(idx), -1))  # masked rows never kept
  # without a mask, the plain top-k by score
  pooled, idx = ops.top_k_pool(x, scores, 4)
  want_p, want_i, _ = np_top_k_pool(x, scores, 4)
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_array_equal(idx, np.argsort(-scores, axis=-1, kind="stable")[..., :4])
  np.testing.assert_allclose(pooled, want_p, atol=1e-6)


def test_tanh_gate_option():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(6, 3)).astype(np.float32)
  scores = rng.normal(size=(6,)).astype(np.float32)
  pooled, idx = ops.top_k_pool(x, scores, 2, gate="tanh")
  order = np.argsort(-scores, kind="stable")[:2]
  np.testing.assert_array_equal(idx, order)
  np.testing.assert_allclose(pooled, x[order] * np.tanh(scores[order])[:, None], rtol=1e-6)


def test_ties_keep_the_lower_index():
  x = np.arange(12.0, dtype=np.float32).reshape(6, 2)
  scores = np.array([0.5, 1.0, 0.5, 1.0, 0.5, -2.0], np.float32)
  _, idx = ops.top_k_pool(x, scores, 4)
  np.testing.assert_array_equal(idx, [1, 3, 0, 2])


def test_fewer_valid_rows_than_k_gives_zero_rows_and_validity():
  x = np.ones((5, 3), np.float32) * np.arange(1, 6, dtype=np.float32)[:, None]
  scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0], np.float32)
  mask = np.array([0, 1, 0, 1, 0])
  pooled, idx, valid = ops.top_k_pool(x, scores, 4, mask=mask, return_valid=True)
  np.testing.assert_array_equal(idx, [1, 3, 0, 2])  # valid rows first, then masked by index
  np.testing.assert_array_equal(valid, [True, True, False, False])
  np.testing.assert_allclose(pooled[2:], 0.0)  # masked data never reaches the output
  sig = 1 / (1 + np.exp(-np.array([4.0, 2.0])))
  np.testing.assert_allclose(pooled[:2], x[[1, 3]] * sig[:, None], rtol=1e-6)
  want_p, want_i, want_v = np_top_k_pool(x, scores, 4, mask)
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_allclose(pooled, want_p, atol=1e-6)


def test_gradient_reaches_scores_through_the_gate():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 3)).astype(np.float32)
  scores = rng.normal(size=(7,)).astype(np.float32)
  w = rng.normal(size=(3, 3)).astype(np.float32)
  f = lambda s: jnp.sum(ops.top_k_pool(x, s, 3)[0] * w)
  g = np.asarray(jax.grad(f)(scores))
  _, idx = ops.top_k_pool(x, scores, 3)
  want = np.zeros(7)
  for slot, i in enumerate(np.asarray(idx)):
    sig = 1 / (1 + np.exp(-scores[i]))
    want[i] = sig * (1 - sig) * np.dot(x[i], w[slot])  # d/ds of sigmoid(s) <x_i, w_slot>
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
  assert np.count_nonzero(g) == 3  # only kept rows get a gradient


def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 6, 3)))
    # scores spaced >= 0.1 apart: the selection is locally constant for the finite differences
    scores = jnp.asarray(rng.permutation(12).reshape(2, 6) * 0.1)
    mask = jnp.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1]])
    f = lambda a, s: ops.top_k_pool(a, s, 3, mask=mask)[0]
    assert f(x, scores).dtype == jnp.float64
    check_grads(f, (x, scores), order=2, modes=("fwd", "rev"))


def test_jit_and_vmap_equal_loop():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 8, 2)).astype(np.float32)
  scores = rng.normal(size=(4, 8)).astype(np.float32)
  mask = rng.random(size=(4, 8)) > 0.2
  f = lambda a, s, m: ops.top_k_pool(a, s, 5, mask=m)
  loop_p = np.stack([np.asarray(f(x[i], scores[i], mask[i])[0]) for i in range(4)])
  loop_i = np.stack([np.asarray(f(x[i], scores[i], mask[i])[1]) for i in range(4)])
  for fn in (jax.vmap(f), jax.jit(f)):
    p, i = fn(x, scores, mask)
    np.testing.assert_allclose(p, loop_p, atol=1e-6)
    np.testing.assert_array_equal(i, loop_i)


def test_bad_input():
  x, s = jnp.ones((5, 3)), jnp.zeros((5,))
  with pytest.raises(ValueError, match=r"k=6 is larger than the number of rows N=5"):
    ops.top_k_pool(x, s, 6)
  with pytest.raises(ValueError, match="k must be a positive int, got 0"):
    ops.top_k_pool(x, s, 0)
  with pytest.raises(ValueError, match="k must be a positive int, got -1"):
    ops.top_k_pool(x, s, -1)
  with pytest.raises(TypeError, match="k must be a positive Python int"):
    ops.top_k_pool(x, s, 2.0)
  with pytest.raises(TypeError, match="k must be a positive Python int"):
    ops.top_k_pool(x, s, jnp.int32(2))
  with pytest.raises(ValueError, match=r"scores must have shape x.shape\[:-1\] = \(5,\)"):
    ops.top_k_pool(x, jnp.zeros((4,)), 2)
  with pytest.raises(ValueError, match=r"mask must have the shape of scores \(5,\)"):
    ops.top_k_pool(x, s, 2, mask=jnp.ones((4,)))
  with pytest.raises(ValueError, match="x must have at least 2 dimension"):
    ops.top_k_pool(jnp.ones((5,)), s, 2)
  with pytest.raises(ValueError, match=r"gate must be one of \('sigmoid', 'tanh'\), got 'relu'"):
    ops.top_k_pool(x, s, 2, gate="relu")
  with pytest.raises(TypeError, match="scores must be a floating-point array"):
    ops.top_k_pool(x, jnp.zeros((5,), jnp.int32), 2)
