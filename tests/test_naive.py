"""NaiveFusion: concatenation baseline (DMF §4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.fusion.naive import NaiveFusion


def test_concatenates_n_modes_and_zeroes_padded_rows():
  rng = np.random.default_rng(0)
  modes = [rng.normal(size=(4, d)).astype(np.float32) for d in (3, 5, 2)]
  layer = NaiveFusion()
  v = layer.init(jax.random.key(0), *modes)
  assert not jax.tree_util.tree_leaves(v)  # no parameters, no memory
  out = layer.apply(v, *modes)
  np.testing.assert_array_equal(out.fused, np.concatenate(modes, axis=1))
  assert out.aux == {} and layer.output_dim(3, 5, 2) == out.fused.shape[1] == 10
  mask = np.array([1, 0, 1, 1])
  junk = [np.where(mask[:, None] > 0, m, np.nan) for m in modes]
  masked = jax.jit(lambda *a: layer.apply(v, *a, mask=mask, train=True))(*junk)
  np.testing.assert_array_equal(masked.fused[mask > 0], out.fused[mask > 0])
  np.testing.assert_array_equal(masked.fused[1], 0.0)
  single = layer.apply(v, modes[0])
  np.testing.assert_array_equal(single.fused, modes[0])


def test_bad_input():
  layer = NaiveFusion()
  a = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="at least one mode"):
    layer.apply({}, )
  with pytest.raises(ValueError, match="same batch size"):
    layer.apply({}, a, jnp.ones((5, 3)))
  with pytest.raises(ValueError, match=r"must have shape \(B, d\)"):
    layer.apply({}, a, jnp.ones((4, 3, 2)))
  with pytest.raises(TypeError, match="floating-point"):
    layer.apply({}, a, jnp.ones((4, 3), jnp.int32))
  with pytest.raises(ValueError, match="mask must have shape"):
    layer.apply({}, a, mask=jnp.ones(3))
  with pytest.raises(ValueError, match="output_dim needs"):
    layer.output_dim()
