"""LSTMEncoder / RecurrentLayer (MBAF §4.2 CEBS encoder) against explicit NumPy recurrences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.encoders.lstm import BidirectionalRNN, LSTMEncoder, RecurrentLayer


def _sig(z):
  return 1.0 / (1.0 + np.exp(-z))


def _np_lstm(x, w, u, b, steps=None):
  """Standard LSTM with gate order i, f, g, o; runs steps ``steps`` (default all) in order."""
  x, w, u, b = (np.asarray(a, np.float64) for a in (x, w, u, b))
  hidden = u.shape[0]
  h = np.zeros((x.shape[0], hidden))
  c = np.zeros_like(h)
  outs = []
  for t in (range(x.shape[1]) if steps is None else steps):
    gate = lambda j: (x[:, t] @ w[:, j * hidden:(j + 1) * hidden]
                      + h @ u[:, j * hidden:(j + 1) * hidden] + b[j * hidden:(j + 1) * hidden])
    zi, zf, zg, zo = gate(0), gate(1), gate(2), gate(3)
    c = _sig(zf) * c + _sig(zi) * np.tanh(zg)
    h = _sig(zo) * np.tanh(c)
    outs.append(h)
  return np.stack(outs, 1), h


def _np_gru(x, w, u, b, b_rec):
  x, w, u, b, b_rec = (np.asarray(a, np.float64) for a in (x, w, u, b, b_rec))
  hd = u.shape[0]
  h = np.zeros((x.shape[0], hd))
  for t in range(x.shape[1]):
    xw = x[:, t] @ w + b
    hu = h @ u + b_rec
    r = _sig(xw[:, :hd] + hu[:, :hd])
    z = _sig(xw[:, hd:2 * hd] + hu[:, hd:2 * hd])
    n = np.tanh(xw[:, 2 * hd:] + r * hu[:, 2 * hd:])
    h = (1 - z) * n + z * h
  return h


def _rand_params(params, key):
  """Replaces every leaf by N(0, 0.5) so the bias/forget init does not hide mistakes."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [0.5 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def test_lstm_encoder_matches_numpy_two_layer_recurrence():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3))
  enc = LSTMEncoder(hidden=4, num_layers=2)
  params = _rand_params(enc.init(jax.random.key(1), x)["params"], jax.random.key(2))
  got = enc.apply({"params": params}, x)
  p0, p1 = params["lstm_0"], params["lstm_1"]
  seq, _ = _np_lstm(x, p0["input_kernel"], p0["recurrent_kernel"], p0["bias"])
  _, want = _np_lstm(seq, p1["input_kernel"], p1["recurrent_kernel"], p1["bias"])
  assert got.shape == (2, 4)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_forget_bias_initialised_to_one():
  layer = RecurrentLayer(hidden=3)
  b = layer.init(jax.random.key(0), jnp.zeros((1, 2, 2)))["params"]["bias"]
  np.testing.assert_array_equal(np.asarray(b), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_gru_matches_numpy():
  x = jax.random.normal(jax.random.key(3), (2, 4, 3))
  layer = RecurrentLayer(hidden=5, cell="gru")
  params = _rand_params(layer.init(jax.random.key(1), x)["params"], jax.random.key(4))
  _, got = layer.apply({"params": params}, x)
  want = _np_gru(x, params["input_kernel"], params["recurrent_kernel"], params["bias"],
                 params["recurrent_bias"])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_masked_padding_steps_do_not_change_final_state():
  key = jax.random.key(5)
  x = jax.random.normal(key, (2, 6, 3))
  enc = LSTMEncoder(hidden=4, num_layers=2)
  params = enc.init(jax.random.key(1), x)["params"]
  # row 0: steps 4, 5 padded (garbage values there); row 1: all real
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6])
  garbage = x.at[0, 4:].set(1e3)
  got = enc.apply({"params": params}, garbage, mask)
  short = enc.apply({"params": params}, x[:1, :4])
  full = enc.apply({"params": params}, x[1:])
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(short[0]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(full[0]), atol=1e-6)


def test_bidirectional_backward_direction_starts_at_last_real_step():
  x = jax.random.normal(jax.random.key(6), (1, 5, 2))
  rnn = BidirectionalRNN(hidden=3)
  params = _rand_params(rnn.init(jax.random.key(0), x)["params"], jax.random.key(7))
  mask = jnp.array([[1, 1, 1, 0, 0]])
  out, final = rnn.apply({"params": params}, x, mask)
  pb = params["backward"]
  bw_seq, bw_h = _np_lstm(x, pb["input_kernel"], pb["recurrent_kernel"], pb["bias"],
                          steps=[2, 1, 0])
  # outputs of the backward direction at steps 2,1,0 and its final state after step 0
  np.testing.assert_allclose(np.asarray(out[0, [2, 1, 0], 3:]), bw_seq[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(final[0, 3:]), bw_h[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out[0, 3:]), 0.0)


def test_dropout_between_layers_needs_train_and_rng():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3))
  enc = LSTMEncoder(hidden=4, num_layers=2, dropout=0.5)
  variables = enc.init(jax.random.key(1), x)
  a = enc.apply(variables, x, train=False)
  b = enc.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(enc.apply(variables, x)))


def test_bf16_compute_dtype():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3))
  enc = LSTMEncoder(hidden=4, dtype=jnp.bfloat16)
  variables = enc.init(jax.random.key(1), x)
  assert variables["params"]["lstm_0"]["input_kernel"].dtype == jnp.float32
  out = enc.apply(variables, x)
  assert out.dtype == jnp.bfloat16
  ref = LSTMEncoder(hidden=4).apply(variables, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=5e-2)


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((2, 6000), np.float32)), "batch, time, features"),
    (dict(x=np.zeros((2, 6, 4), np.int32)), "floating-point"),
    (dict(mask=np.ones((2, 5))), "mask must have shape"),
])
def test_bad_inputs_name_the_argument(bad, match):
  x = bad.get("x", np.zeros((2, 6, 4), np.float32))
  enc = LSTMEncoder(hidden=2, num_layers=1)
  with pytest.raises((ValueError, TypeError), match=match):
    enc.init(jax.random.key(0), x, bad.get("mask"))


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="cell must be one of"):
    RecurrentLayer(hidden=2, cell="rnn").init(jax.random.key(0), jnp.zeros((1, 2, 2)))
  with pytest.raises(ValueError, match="num_layers"):
    LSTMEncoder(hidden=2, num_layers=0).init(jax.random.key(0), jnp.zeros((1, 2, 2)))
