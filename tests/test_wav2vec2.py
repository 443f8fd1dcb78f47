"""Flax Wav2Vec2 vs the reference PyTorch implementation (fixtures from
scripts/make_parity_fixtures.py; no torch needed) and behavioural properties."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.encoders import Wav2Vec2, Wav2Vec2Config, from_pretrained
from mbaf_jax.encoders.wav2vec2 import (compute_span_mask, feat_extract_output_lengths, frame_mask,
                                        receptive_field)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "parity")


def _load(name):
  model, params, report = from_pretrained(os.path.join(FIXTURES, name))
  ref = dict(np.load(os.path.join(FIXTURES, name, "reference.npz")))
  return model, params, report, ref


@pytest.fixture(scope="module")
def base():
  return _load("w2v2_base")


@pytest.fixture(scope="module")
def large():
  return _load("w2v2_large")


@pytest.mark.parametrize("name", ["w2v2_base", "w2v2_large"])
def test_parity_with_reference(name, base, large):
  model, params, report, ref = base if name == "w2v2_base" else large
  assert not report.missing_keys
  out = jax.jit(model.apply)({"params": params}, ref["input_values"], ref["attention_mask"])
  np.testing.assert_array_equal(np.asarray(out.mask), ref["frame_mask"])
  np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref["last_hidden_state"],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out.pooled), ref["pooled"], atol=1e-4, rtol=0)


def test_fixture_configs_cover_both_architectures(base, large):
  cb, cl = base[0].config, large[0].config
  assert (cb.feat_extract_norm, cb.do_stable_layer_norm, cb.num_conv_pos_embeddings % 2) == (
      "group", False, 0)
  assert (cl.feat_extract_norm, cl.do_stable_layer_norm, cl.num_conv_pos_embeddings % 2) == (
      "layer", True, 1)
  assert cb.layer_norm_eps == 1e-5 and cb.hidden_act == "gelu"


def test_output_lengths_match_brute_force_sliding_windows():
  kernels, strides = (10, 4, 4), (5, 4, 4)
  for n in (84, 85, 86, 164, 165, 900, 1650, 2400):
    length = n
    for k, s in zip(kernels, strides):  # count window starts explicitly
      length = len([t for t in range(0, length) if t + k <= length and t % s == 0])
    assert feat_extract_output_lengths(n, kernels, strides) == length
  assert receptive_field(Wav2Vec2Config.tiny()) == 85
  assert receptive_field(Wav2Vec2Config.base()) == 400  # 25 ms at 16 kHz
  mask = np.zeros((2, 900), np.int32)
  mask[0, :900] = 1
  mask[1, :400] = 1
  fm = np.asarray(frame_mask(mask, feat_extract_output_lengths(900, kernels, strides), kernels,
                             strides))
  np.testing.assert_array_equal(fm.sum(1), [feat_extract_output_lengths(900, kernels, strides),
                                            feat_extract_output_lengths(400, kernels, strides)])
  assert fm[1, :fm[1].sum()].all() and not fm[1, fm[1].sum():].any()


@pytest.mark.parametrize("variant", ["large", "base_masked_group_norm", "base_reference"])
def test_padding_invariance(variant, base, large):
  """A padded utterance encodes like the unpadded one when every norm ignores padding.

  Layer-norm feature encoder: always. Group-norm (base) feature encoder: only with
  ``masked_group_norm=True``; the reference takes GroupNorm statistics over the padded zeros too,
  so there the embedding depends on the padding (which is why HF advises no mask for base).
  """
  model, params, _, ref = large if variant == "large" else base
  if variant == "base_masked_group_norm":
    model = Wav2Vec2(dataclasses.replace(model.config, masked_group_norm=True))
  x, m = ref["input_values"], ref["attention_mask"]
  n = int(m[2].sum())
  apply = jax.jit(model.apply)
  alone = apply({"params": params}, x[2:3, :n])
  padded = apply({"params": params}, x[2:3], m[2:3])
  t = alone.last_hidden_state.shape[1]
  assert int(padded.mask.sum()) == t
  err = np.abs(np.asarray(padded.pooled) - np.asarray(alone.pooled)).max()
  if variant == "base_reference":
    assert err > 1e-3
    return
  np.testing.assert_allclose(np.asarray(padded.last_hidden_state[:, :t]),
                             np.asarray(alone.last_hidden_state), atol=1e-5)
  assert err < 1e-5


def test_pooled_is_masked_mean(base):
  model, params, _, ref = base
  out = jax.jit(model.apply)({"params": params}, ref["input_values"], ref["attention_mask"])
  h, fm = np.asarray(out.last_hidden_state), np.asarray(out.mask)
  for i in range(h.shape[0]):
    np.testing.assert_allclose(np.asarray(out.pooled[i]), h[i, fm[i] == 1].mean(0), atol=1e-6)


def test_dropout_train_mode_and_layerdrop(large):
  _, params, _, ref = large
  x, m = ref["input_values"][:2], ref["attention_mask"][:2]
  cfg = large[0].config
  model = Wav2Vec2(cfg)
  apply = jax.jit(model.apply, static_argnames="train")
  ev = apply({"params": params}, x, m)
  k = jax.random.key(3)
  t1 = apply({"params": params}, x, m, train=True, rngs={"dropout": k})
  t2 = apply({"params": params}, x, m, train=True, rngs={"dropout": k})
  np.testing.assert_array_equal(np.asarray(t1.pooled), np.asarray(t2.pooled))
  assert np.abs(np.asarray(t1.pooled) - np.asarray(ev.pooled)).max() > 1e-3
  # With every dropout off and layerdrop ~1, training skips all layers: equal to a 0-layer model.
  no_drop = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                 feat_proj_dropout=0.0, apply_spec_augment=False)
  skip_all = Wav2Vec2(cfg.__class__(**{**cfg.__dict__, **no_drop, "layerdrop": 0.999}))
  zero = Wav2Vec2(cfg.__class__(**{**cfg.__dict__, **no_drop, "num_hidden_layers": 0}))
  p0 = {**params, "encoder": {k_: v for k_, v in params["encoder"].items()
                              if not k_.startswith("layers_")}}
  a = jax.jit(skip_all.apply, static_argnames="train")(
      {"params": params}, x, m, train=True, rngs={"dropout": jax.random.key(0)})
  b = jax.jit(zero.apply)({"params": p0}, x, m)
  np.testing.assert_allclose(np.asarray(a.last_hidden_state), np.asarray(b.last_hidden_state),
                             atol=1e-6)


@pytest.mark.slow
def test_remat_same_values_and_grads_and_frozen_encoder_stop_gradient():
  cfg = Wav2Vec2Config.tiny(hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0)
  x = jax.random.normal(jax.random.key(0), (2, 400))
  params = jax.jit(Wav2Vec2(cfg).init)(jax.random.key(1), x)["params"]

  def grads(c):
    loss = lambda p: jnp.sum(Wav2Vec2(c).apply({"params": p}, x, train=True).pooled ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  # remat changes memory/recompute, not values; stop_gradient only zeroes the conv encoder grads.
  (l0, g0) = grads(cfg.__class__(**{**cfg.__dict__, "stop_gradient_feature_encoder": True}))
  (l1, g1) = grads(cfg.__class__(**{**cfg.__dict__, "remat": True}))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(g0["feature_extractor"]))
  assert all(float(jnp.abs(v).max()) > 0.0 for v in jax.tree.leaves(g1["feature_extractor"]))
  g0.pop("feature_extractor"), g1.pop("feature_extractor")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g0, g1)


def test_bfloat16_compute_close_to_float32(base):
  _, params, _, ref = base
  cfg = base[0].config
  bf = Wav2Vec2(cfg.__class__(**{**cfg.__dict__, "dtype": jnp.bfloat16}))
  out = jax.jit(bf.apply)({"params": params}, ref["input_values"], ref["attention_mask"])
  assert out.last_hidden_state.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out.pooled, np.float32) - ref["pooled"]).max()
  assert err < 0.1 * np.abs(ref["pooled"]).max()


@pytest.mark.parametrize("kwargs, match", [
    (dict(feat_extract_norm="batch"), "feat_extract_norm"),
    (dict(conv_kernel=(10, 3)), "same length"),
    (dict(num_attention_heads=5), "num_attention_heads"),
    (dict(hidden_act="mish"), "hidden_act"),
    (dict(layerdrop=1.0), "layerdrop"),
])
def test_bad_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Wav2Vec2Config.tiny(**kwargs)


def test_bad_input_errors():
  model = Wav2Vec2(Wav2Vec2Config.tiny())
  with pytest.raises(ValueError, match="input_values must be"):
    model.init(jax.random.key(0), jnp.zeros((400,)))
  with pytest.raises(ValueError, match="at least 85"):
    model.init(jax.random.key(0), jnp.zeros((1, 50)))
  with pytest.raises(ValueError, match="attention_mask shape"):
    model.init(jax.random.key(0), jnp.zeros((1, 400)), jnp.ones((1, 399)))
  with pytest.raises(ValueError, match="adapters"):
    Wav2Vec2Config.from_hf_dict({"add_adapter": True})


def _reference_span_mask(rng, lengths, size, prob, span, min_spans):
  """NumPy transcription of the reference's _compute_mask_indices (np.random.choice)."""
  eps = rng.random()
  out = np.zeros((len(lengths), size), bool)
  for i, length in enumerate(lengths):
    n = max(int(prob * length / span + eps), min_spans)
    if n * span > size:
      n = size // span
    if length - (span - 1) < n:
      n = max(length - (span - 1), 0)
    for s in rng.choice(np.arange(length - (span - 1)), n, replace=False):
      out[i, s:s + span] = True
  return out


def test_spec_augment_span_mask_matches_reference_statistics():
  lengths, size, prob, span, min_spans = np.array([40, 25, 12]), 40, 0.3, 4, 2
  keys = jax.random.split(jax.random.key(0), 2000)
  ours = np.asarray(jax.jit(jax.vmap(
      lambda k: compute_span_mask(k, jnp.asarray(lengths), size, prob, span, min_spans)))(keys))
  rng = np.random.default_rng(0)
  ref = np.stack([_reference_span_mask(rng, lengths, size, prob, span, min_spans)
                  for _ in range(2000)])
  for i, n in enumerate(lengths):
    assert not ours[:, i, n:].any()  # never inside padding
    # every maximal run of masked frames is at least one span long
    for row in ours[:50, i]:
      runs = np.diff(np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0])))[::2]
      assert (runs >= span).all()
  # same per-position masking frequency as the reference (sampling sd ~0.015 for 2000 draws)
  np.testing.assert_allclose(ours.mean(0), ref.mean(0), atol=0.09)
  np.testing.assert_allclose(ours.mean((0, 2)), ref.mean((0, 2)), atol=0.02)


def test_spec_augment_only_in_training_and_switchable(large):
  _, params, _, ref = large
  cfg = dataclasses.replace(large[0].config, hidden_dropout=0.0, attention_dropout=0.0,
                            activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
                            mask_time_prob=0.5, mask_time_length=3)
  x, m = ref["input_values"][:1], ref["attention_mask"][:1]
  ev = jax.jit(Wav2Vec2(cfg).apply)({"params": params}, x, m)
  rngs = {"dropout": jax.random.key(1)}
  on = jax.jit(Wav2Vec2(cfg).apply, static_argnames="train")(
      {"params": params}, x, m, train=True, rngs=rngs)
  off = jax.jit(Wav2Vec2(dataclasses.replace(cfg, apply_spec_augment=False)).apply,
                static_argnames="train")({"params": params}, x, m, train=True, rngs=rngs)
  np.testing.assert_allclose(np.asarray(off.pooled), np.asarray(ev.pooled), atol=1e-6)
  assert np.abs(np.asarray(on.pooled) - np.asarray(ev.pooled)).max() > 1e-3
  with pytest.raises(ValueError, match="mask length 10"):
    compute_span_mask(jax.random.key(0), jnp.array([5]), 5, 0.1, 10, 2)
