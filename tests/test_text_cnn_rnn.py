"""CnnRnnTextEncoder (MBAF §4.1 TE), its tokenizer and the cross-attention pooling."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.encoders.text_cnn_rnn import (CnnRnnTextEncoder, build_vocab, cross_attention_pool,
                                            encode_texts, tokenize)


def test_tokenizer_vocab_and_encoding():
  assert tokenize("I don't know, [LAUGHTER] OK!") == ["i", "don't", "know", ",", "[", "laughter",
                                                        "]", "ok", "!"]
  vocab = build_vocab(["b a a", "c a b"], min_count=2)
  assert vocab == {"<pad>": 0, "<unk>": 1, "a": 2, "b": 3}
  assert build_vocab(["b a a c"], max_size=3) == {"<pad>": 0, "<unk>": 1, "a": 2}
  ids, mask = encode_texts(["a zzz b", "", "a a a a a"], vocab, max_tokens=4)
  np.testing.assert_array_equal(ids, [[2, 1, 3, 0], [0, 0, 0, 0], [2, 2, 2, 2]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  with pytest.raises(TypeError, match="list of strings"):
    encode_texts("a b", vocab)
  with pytest.raises(ValueError, match="min_count"):
    build_vocab(["a"], min_count=0)


def test_cross_attention_pool_matches_numpy_loop():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, 3)).astype(np.float32)
  kv = rng.normal(size=(2, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  for pool in ("max", "mean"):
    got = np.asarray(cross_attention_pool(jnp.asarray(q), jnp.asarray(kv), jnp.asarray(mask), pool))
    for b in range(2):
      n = mask[b].sum()
      att = []
      for t in range(n):
        s = np.array([q[b, t] @ kv[b, j] / np.sqrt(3) for j in range(n)])
        w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        att.append((w[:, None] * kv[b, :n]).sum(0))
      red = np.max if pool == "max" else np.mean
      want = np.concatenate([red(np.array(att), 0), red(q[b, :n], 0)])
      np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


def _tiny(**kw):
  cfg = dict(vocab_size=12, embed_dim=6, max_tokens=8, rnn_hidden=4, conv_features=5,
             output_dim=7, glove=np.ones((12, 6), np.float32) * 0.1)
  return CnnRnnTextEncoder(**{**cfg, **kw})


def test_padding_tokens_do_not_change_the_output():
  enc = _tiny(glove=None)
  ids = jnp.array([[3, 4, 5, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    variables = jax.jit(enc.init)(jax.random.key(0), ids)
  apply = jax.jit(enc.apply)
  out = apply(variables, ids)
  assert out.shape == (2, 7)
  # other ids at the padded positions but the same mask -> same output
  garbage = ids.at[0, 3:].set(9)
  mask = (ids != 0).astype(jnp.int32)
  np.testing.assert_allclose(np.asarray(apply(variables, garbage, mask)), np.asarray(out),
                             rtol=1e-5, atol=1e-6)
  # the same sentence with fewer padding positions -> same output
  short = jax.jit(enc.apply)(variables, ids[:1, :4])
  np.testing.assert_allclose(np.asarray(short[0]), np.asarray(out[0]), rtol=1e-5, atol=1e-6)
  # and the real tokens do matter
  other = apply(variables, ids.at[0, 1].set(6))
  assert not np.allclose(np.asarray(other[0]), np.asarray(out[0]))


def test_glove_initialises_the_embedding_and_no_glove_warns():
  glove = np.arange(72, dtype=np.float32).reshape(12, 6) / 72
  ids = jnp.array([[3, 4, 0, 0]])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # GloVe given: no warning
    params = _tiny(glove=glove).init(jax.random.key(0), ids)["params"]
  np.testing.assert_array_equal(np.asarray(params["embedding"]), glove)
  with pytest.warns(UserWarning, match="no GloVe matrix was given"):
    variables = _tiny(glove=None).init(jax.random.key(0), ids)
  params = variables["params"]
  assert params["embedding"].shape == (12, 6) and float(params["embedding"].std()) > 0.5
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # warned once at init, not at every apply
    _tiny(glove=None).apply(variables, ids)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # replaced after init (config.model.text.glove): no warning
    quiet = _tiny(glove=None, warn_random_embedding=False).init(jax.random.key(0), ids)
  np.testing.assert_array_equal(np.asarray(quiet["params"]["embedding"]),
                                np.asarray(params["embedding"]))  # same random init


def test_frozen_embedding_gets_no_gradient_and_dropout_only_in_training():
  ids = jnp.array([[3, 4, 5, 0], [1, 2, 0, 0]])
  enc = _tiny(dropout=0.5)
  variables = jax.jit(enc.init)(jax.random.key(0), ids)
  grads = lambda e: jax.jit(jax.grad(lambda p: jnp.sum(e.apply({"params": p}, ids) ** 2)))(
      variables["params"])
  g = grads(enc)
  assert float(jnp.abs(g["embedding"][3]).sum()) > 0  # used token
  assert float(jnp.abs(g["embedding"][7]).sum()) == 0  # unused token
  g = grads(enc.clone(train_embedding=False))
  assert float(jnp.abs(g["embedding"]).sum()) == 0
  a = jax.jit(enc.apply)(variables, ids)
  b = jax.jit(lambda v, k: enc.apply(v, ids, train=True, rngs={"dropout": k}))(
      variables, jax.random.key(1))
  assert not np.allclose(np.asarray(a), np.asarray(b))


def test_paper_sizes_give_4800():
  """MBAF §4.1: 100 tokens, GloVe-300d, kernels 1/3/5 -> 3 x 2 x 800 pooled -> Dense 4,800."""
  enc = CnnRnnTextEncoder(vocab_size=50, glove=np.zeros((50, 300), np.float32))
  ids = jnp.zeros((2, 100), jnp.int32).at[:, :7].set(5)
  variables = jax.eval_shape(enc.init, jax.random.key(0), ids)  # shapes only: no compile
  p = variables["params"]
  assert p["dense"]["kernel"].shape == (4800, 4800)
  assert p["left_conv_5"]["kernel"].shape == (5, 256, 800)  # Bi-LSTM 2 x 128 -> 800
  assert p["right_conv_3"]["kernel"].shape == (3, 300, 800)  # GloVe 300 -> 800
  assert jax.eval_shape(enc.apply, variables, ids).shape == (2, 4800)


@pytest.mark.slow
def test_paper_sizes_run_finite():
  enc = CnnRnnTextEncoder(vocab_size=50, glove=np.zeros((50, 300), np.float32))
  ids = jnp.zeros((2, 100), jnp.int32).at[:, :7].set(5)
  variables = jax.jit(enc.init)(jax.random.key(0), ids)
  p = variables["params"]
  assert p["dense"]["kernel"].shape == (4800, 4800)
  assert p["left_conv_5"]["kernel"].shape == (5, 256, 800)  # Bi-LSTM 2 x 128 -> 800
  assert p["right_conv_3"]["kernel"].shape == (3, 300, 800)  # GloVe 300 -> 800
  out = jax.jit(enc.apply)(variables, ids)
  assert out.shape == (2, 4800) and np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("kw, ids, match", [
    (dict(glove=np.zeros((3, 6))), None, r"glove must have shape \(vocab_size, embed_dim\)"),
    (dict(pool="sum"), None, "pool must be"),
    ({}, np.zeros((2, 9), np.int32), "more than max_tokens=8"),
    ({}, np.zeros((2, 4), np.float32), "integer token ids"),
])
def test_bad_config_and_inputs_are_named(kw, ids, match):
  ids = np.zeros((2, 4), np.int32) if ids is None else ids
  with pytest.raises(ValueError, match=match):
    _tiny(**kw).init(jax.random.key(0), ids)
