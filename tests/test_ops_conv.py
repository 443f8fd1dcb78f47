"""ops.conv.grouped_conv1d: values and gradients against lax's grouped convolution and NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.encoders import Wav2Vec2, Wav2Vec2Config
from mbaf_jax.ops import conv as conv_ops


def _numpy_conv(x, w, padding, groups):
  """Direct float64 sum: y[b, t, g·m + o] = Σ_k Σ_i xp[b, t + k, g·c + i] · w[k, i, g·m + o]."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  k, c, out = w.shape
  m = out // groups
  xp = np.pad(x, ((0, 0), padding, (0, 0)))
  t_out = xp.shape[1] - k + 1
  y = np.zeros((x.shape[0], t_out, out))
  for g in range(groups):
    for tap in range(k):
      y[:, :, g * m:(g + 1) * m] += xp[:, tap:tap + t_out, g * c:(g + 1) * c] @ w[tap, :,
                                                                                   g * m:(g + 1) * m]
  return y


CASES = [  # (B, T, C_in, C_out, K, groups, padding)
    (2, 17, 12, 12, 6, 3, (3, 3)),  # Wav2Vec2-like: even K, pad K//2 both sides
    (3, 11, 8, 16, 5, 4, (2, 2)),  # odd K, C_out ≠ C_in
    (1, 9, 6, 6, 4, 1, (0, 2)),  # one group, asymmetric padding
    (2, 10, 16, 16, 7, 16, (3, 3)),  # depthwise
]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_lax_and_numpy(case):
  b, t, cin, cout, k, groups, padding = case
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, t, cin), jnp.float32)
  w = jax.random.normal(kw, (k, cin // groups, cout), jnp.float32)
  t_out = t + sum(padding) - k + 1
  cot = jax.random.normal(kc, (b, t_out, cout), jnp.float32)

  def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1,), [padding], dimension_numbers=(
        "NWC", "WIO", "NWC"), feature_group_count=groups)

  y = conv_ops.grouped_conv1d(x, w, padding, groups, impl="per_group")
  np.testing.assert_allclose(np.asarray(y), _numpy_conv(x, w, padding, groups), atol=1e-4,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y), np.asarray(lax_conv(x, w)), atol=1e-5, rtol=0)

  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cot)
  gx, gw = jax.jit(jax.grad(loss(lambda x, w: conv_ops.grouped_conv1d(
      x, w, padding, groups, impl="per_group")), (0, 1)))(x, w)
  rx, rw = jax.grad(loss(lax_conv), (0, 1))(x, w)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), atol=1e-4, rtol=0)
  # Weight gradient from the definition, float64: dw[k, i, g·m + o] = Σ_b Σ_t xp[b, t+k, g·c+i]·dy.
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), padding, (0, 0)))
  c, m = cin // groups, cout // groups
  ref_w = np.zeros(w.shape)
  for g in range(groups):
    for tap in range(k):
      ref_w[tap, :, g * m:(g + 1) * m] = np.einsum(
          "bti,bto->io", xp[:, tap:tap + t_out, g * c:(g + 1) * c],
          np.asarray(cot, np.float64)[:, :, g * m:(g + 1) * m])
  np.testing.assert_allclose(np.asarray(gw), ref_w, atol=1e-4, rtol=1e-5)


def test_weight_gradient_matches_finite_differences():
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (2, 8, 4), jnp.float64 if jax.config.x64_enabled else jnp.float32)
  w = jax.random.normal(kw, (3, 2, 4), x.dtype)
  f = lambda w: jnp.sum(jnp.sin(conv_ops.grouped_conv1d(x, w, (1, 1), 2, impl="per_group")))
  g = np.asarray(jax.grad(f)(w))
  eps = 1e-2
  for idx in [(0, 0, 0), (2, 1, 3), (1, 0, 2)]:
    e = np.zeros(w.shape, np.float32)
    e[idx] = eps
    fd = (float(f(w + e)) - float(f(w - e))) / (2 * eps)
    assert abs(fd - g[idx]) < 2e-2 * max(1.0, abs(fd)), (idx, fd, g[idx])


def test_auto_resolves_by_backend_and_groups_and_bad_impl_raises():
  expected = "per_group" if jax.default_backend() == "cpu" else "xla"
  assert conv_ops.resolve_impl("auto", 16) == expected
  assert conv_ops.resolve_impl("auto", 1) == "xla"
  assert conv_ops.resolve_impl("xla", 16) == "xla"
  with pytest.raises(ValueError, match="impl='fft'"):
    conv_ops.resolve_impl("fft", 16)
  with pytest.raises(ValueError, match="pos_conv_impl"):
    Wav2Vec2Config.tiny(pos_conv_impl="fft")
  with pytest.raises(ValueError, match="channels"):
    conv_ops.grouped_conv1d(jnp.ones((1, 5, 6)), jnp.ones((3, 2, 6)), (1, 1), groups=2)


def test_wav2vec2_gradients_equal_between_impls():
  """The whole (tiny) model: loss and every parameter gradient equal for xla and per_group."""
  x = jax.random.normal(jax.random.key(3), (2, 1200), jnp.float32)
  grads = {}
  for impl in ("xla", "per_group"):
    model = Wav2Vec2(Wav2Vec2Config.tiny(pos_conv_impl=impl, layerdrop=0.0))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, train=True,
                                         rngs={"dropout": jax.random.key(4)}).pooled ** 2)
    grads[impl] = jax.jit(jax.value_and_grad(loss))(params)
  (l_x, g_x), (l_p, g_p) = grads["xla"], grads["per_group"]
  np.testing.assert_allclose(float(l_p), float(l_x), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_x)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
  conv_grad = g_p["encoder"]["pos_conv_embed"]["conv"]["weight_v"]
  assert float(jnp.max(jnp.abs(conv_grad))) > 0  # the positional conv's weights do get gradient
