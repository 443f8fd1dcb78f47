"""DMF Eq. 4 similarity loss against a NumPy double loop; check_finite."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mbaf_jax import ops


def np_similarity_loss(m, reduction):
  """Σ_{i<j} cos(m_i, m_j) / (n(n−1)) ["paper"] or / (n(n−1)/2) ["mean"], by loops."""
  m = np.asarray(m, np.float64)
  n = m.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(i + 1, n):
      total += m[i] @ m[j] / (np.linalg.norm(m[i]) * np.linalg.norm(m[j]))
  return total / (n * (n - 1) if reduction == "paper" else n * (n - 1) / 2)


@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_matches_double_loop(reduction):
  m = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) + 0.3
  got = ops.memory_similarity_loss(m, reduction=reduction)
  assert got.shape == ()
  np.testing.assert_allclose(got, np_similarity_loss(m, reduction), rtol=1e-5, atol=1e-6)


def test_known_values_and_paper_is_half_the_mean():
  same = np.tile([[1.0, 2.0, -1.0]], (4, 1)).astype(np.float32)  # all slots parallel
  np.testing.assert_allclose(ops.memory_similarity_loss(same, reduction="mean"), 1.0, rtol=1e-6)
  np.testing.assert_allclose(ops.memory_similarity_loss(same), 0.5, rtol=1e-6)  # Eq. 4 as printed
  ortho = np.eye(4, 6, dtype=np.float32) * 3.0
  np.testing.assert_allclose(ops.memory_similarity_loss(ortho), 0.0, atol=1e-7)
  m = np.random.default_rng(1).normal(size=(9, 4)).astype(np.float32)
  np.testing.assert_allclose(ops.memory_similarity_loss(m, reduction="paper") * 2,
                             ops.memory_similarity_loss(m, reduction="mean"), rtol=1e-6)


def test_batched_memories_and_jit():
  m = np.random.default_rng(2).normal(size=(3, 6, 4)).astype(np.float32)
  got = jax.jit(ops.memory_similarity_loss, static_argnames="reduction")(m, reduction="mean")
  np.testing.assert_allclose(got, [np_similarity_loss(v, "mean") for v in m], rtol=1e-5)


def test_zero_slot_gives_finite_loss_and_gradient():
  m = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
  m[2] = 0.0
  loss, grad = jax.value_and_grad(ops.memory_similarity_loss)(jnp.asarray(m))
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  keep = [0, 1, 3, 4]  # the zero slot contributes 0 to the sum, but n stays 5
  np.testing.assert_allclose(loss, np_similarity_loss(m[keep], "paper") * 4 * 3 / (5 * 4),
                             rtol=1e-5, atol=1e-7)


def test_check_grads_float64():
  with jax.enable_x64(True):
    m = jnp.asarray(np.random.default_rng(4).normal(size=(5, 3)))
    for reduction in ("paper", "mean"):
      check_grads(lambda v: ops.memory_similarity_loss(v, reduction=reduction), (m,),
                  order=2, modes=("fwd", "rev"))


def test_bad_input():
  with pytest.raises(ValueError, match=r"reduction must be one of \('paper', 'mean'\), got 'sum'"):
    ops.memory_similarity_loss(jnp.ones((3, 2)), reduction="sum")
  with pytest.raises(ValueError, match="at least 2 slots"):
    ops.memory_similarity_loss(jnp.ones((1, 4)))
  with pytest.raises(ValueError, match="memory must have at least 2 dimension"):
    ops.memory_similarity_loss(jnp.ones((4,)))
  with pytest.raises(TypeError, match="memory must be a floating-point array"):
    ops.memory_similarity_loss(jnp.ones((3, 2), jnp.int32))


def test_check_finite_eager_and_under_jit():
  ok = jnp.array([1.0, 2.0])
  assert ops.check_finite(ok, "x_a") is ok
  with pytest.raises(FloatingPointError, match=r"x_a contains 1 non-finite value"):
    ops.check_finite(jnp.array([1.0, jnp.nan]), "x_a")
  with pytest.raises(FloatingPointError, match=r"loss contains 2 non-finite"):
    ops.check_finite(np.array([np.inf, -np.inf, 0.0]), "loss")
  f = jax.jit(lambda v: ops.check_finite(v * 2.0, "scaled") + 1.0)
  np.testing.assert_allclose(f(ok), [3.0, 5.0])
  with pytest.raises(Exception, match=r"scaled contains 1 non-finite value"):
    jax.block_until_ready(f(jnp.array([1.0, jnp.inf])))


@pytest.mark.parametrize("module", ["cbp", "gumbel", "topk", "losses"])
def test_docstring_examples_run(module):
  import doctest
  import importlib
  mod = importlib.import_module(f"mbaf_jax.ops.{module}")
  result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0, result
