"""Full models: the output equals the composition encoders → fusion → head computed piece by
piece with the same parameters (independent path), and bad options fail clearly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import iemocap
from configs import iemocap_mbaf
from mbaf_jax import encoders
from mbaf_jax.fusion import NaiveFusion
from mbaf_jax.fusion.mbaf_blocks import FusionBlock
from mbaf_jax.models import dmf
from mbaf_jax.models import factory
from mbaf_jax.models.cebs import CebsModel
from mbaf_jax.models.dmf import DMFModel
from mbaf_jax.models.heads import ClassifierHead
from mbaf_jax.models.mbaf_iemocap import MBAFIemocapModel


def _dmf_batch(b=3, s=800, l=6):
  rng = np.random.default_rng(0)
  am = np.ones((b, s), np.int32)
  am[0, 500:] = 0
  tm = np.ones((b, l), np.int32)
  tm[1, 4:] = 0
  return {"input_values": rng.normal(size=(b, s)).astype(np.float32), "audio_mask": am,
          "input_ids": rng.integers(5, 100, size=(b, l)).astype(np.int32), "text_mask": tm,
          "token_type_ids": np.zeros((b, l), np.int32)}


def test_dmf_model_is_encoders_then_fusion_then_head():
  acfg, tcfg = encoders.Wav2Vec2Config.tiny(), encoders.BertConfig.tiny()
  model = DMFModel(audio=encoders.Wav2Vec2(acfg), text=encoders.Bert(tcfg), fusion=NaiveFusion(),
                   head_features=(16, 8), num_classes=4)
  batch = _dmf_batch()
  mask = np.array([1, 1, 0], bool)
  variables = model.init(jax.random.key(0), batch, mask=mask)
  out = model.apply(variables, batch, mask=mask)
  p = variables["params"]
  a = encoders.Wav2Vec2(acfg).apply({"params": p["audio"]}, batch["input_values"],
                                    batch["audio_mask"])
  t = encoders.Bert(tcfg).apply({"params": p["text"]}, batch["input_ids"], batch["text_mask"],
                                batch["token_type_ids"])
  fused = jnp.concatenate([a.pooled, t.pooled], -1) * mask[:, None]
  ref = ClassifierHead((16, 8), 4).apply({"params": p["head"]}, fused)
  np.testing.assert_allclose(out.log_probs, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(out.log_probs).sum(-1), 1.0, rtol=1e-5)
  assert out.aux == {}
  assert p["head"]["dense_0"]["kernel"].shape == (64, 16)  # 32 + 32 → 16


def test_classifier_head_matches_numpy():
  head = ClassifierHead((5,), 3, activation="relu")
  x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
  v = head.init(jax.random.key(1), x)["params"]
  h = np.maximum(x @ np.asarray(v["dense_0"]["kernel"]) + np.asarray(v["dense_0"]["bias"]), 0)
  z = h @ np.asarray(v["logits"]["kernel"]) + np.asarray(v["logits"]["bias"])
  ref = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
      -1, keepdims=True)
  np.testing.assert_allclose(head.apply({"params": v}, x), ref, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="activation"):
    ClassifierHead((5,), 3, activation="swishy").init(jax.random.key(1), x)


def test_cebs_model_structure_and_dropout():
  model = CebsModel(encoder=(encoders.LSTMEncoder(4), encoders.LSTMEncoder(4)),
                    fusion=NaiveFusion(), head_features=(8,), head_dropout=0.5, num_classes=3)
  rng = np.random.default_rng(2)
  batch = {"modes": tuple(rng.normal(size=(2, 6, 10)).astype(np.float32) for _ in range(2))}
  v = model.init(jax.random.key(0), batch)
  assert set(v["params"]) == {"encoder_0", "encoder_1", "head"}
  assert v["params"]["head"]["dense_0"]["kernel"].shape == (8, 8)  # 4 + 4 → 1024-analogue
  ev1 = model.apply(v, batch).log_probs
  ev2 = model.apply(v, batch).log_probs
  np.testing.assert_array_equal(ev1, ev2)
  tr = model.apply(v, batch, train=True, rngs={"dropout": jax.random.key(3)}).log_probs
  assert not np.allclose(ev1, tr)  # dropout 0.5 active only in training


def test_factory_errors_name_the_option():
  c = iemocap.get_config()
  with pytest.raises(ValueError, match="fusion kind"):
    factory.build_model(c.model, "concat")
  c.model.fusion.dmf.slots = 10
  c2 = iemocap.get_config()
  c2.model.fusion.dmf["no_such_option"] = 1
  with pytest.raises(ValueError, match="config.model.fusion.dmf"):
    factory.build_model(c2.model, "dmf")
  c3 = iemocap.get_config()
  c3.model.audio.size = "huge"
  with pytest.raises(ValueError, match="'base' or 'tiny'"):
    factory.build_model(c3.model, "dmf")
  c4 = iemocap.get_config()
  c4.model.text.pretrained = "/nonexistent/bert"
  with pytest.raises(ValueError, match="pretrained"):
    factory.build_model(c4.model, "dmf")


# --------------------------------------------------------------------------- MBAF IEMOCAP model
_AUDIO = dict(window=400, shift=200, sinc_filters=4, sinc_kernel=31, conv_features=(4,),
              conv_kernels=(3,), dense_features=(6,))
_TEXT = dict(vocab_size=20, embed_dim=4, rnn_hidden=3, conv_features=2, output_dim=10,
             max_tokens=5)


def _mbaf_batch(b=3):
  rng = np.random.default_rng(4)
  tm = np.ones((b, 5), np.int32)
  tm[1, 3:] = 0
  return {"waves": rng.normal(size=(b, 1200)).astype(np.float32),
          "lengths": np.array([1200, 700, 1000], np.int32)[:b],
          "token_ids": rng.integers(2, 20, size=(b, 5)).astype(np.int32) * tm, "text_mask": tm}


def _sa(p, x):
  """Reference SA(x) = x ⊙ softmax(x W + b) (MBAF ref. [47]) in NumPy."""
  z = x @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
  e = np.exp(z - z.max(-1, keepdims=True))
  return x * e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("placement", [pytest.param("I", marks=pytest.mark.slow),
                                       pytest.param("II", marks=pytest.mark.slow), "III"])
def test_mbaf_iemocap_naive_is_encoders_attention_concat_head(placement):
  model = MBAFIemocapModel(audio=encoders.SincNetAudioEncoder(**_AUDIO),
                           text=encoders.CnnRnnTextEncoder(**_TEXT),
                           fusion=FusionBlock(placement=placement, fusion="naive"),
                           head_features=(7,), head_dropout=0.0)
  batch, mask = _mbaf_batch(), np.array([1, 1, 0], bool)
  v = jax.jit(model.init)(jax.random.key(0), batch, mask=mask)
  p = v["params"]
  a = np.asarray(jax.jit(encoders.SincNetAudioEncoder(**_AUDIO).apply)(
      {"params": p["audio"]}, batch["waves"], batch["lengths"]))
  t = jax.jit(encoders.CnnRnnTextEncoder(**_TEXT).apply)(
      {"params": p["text"]}, batch["token_ids"], batch["text_mask"])
  t = np.asarray(getattr(t, "pooled", t))
  f = p.get("fusion", {})  # NF-I has no parameters in the block
  if placement == "III":
    a, t = _sa(f["attention_0"], a), _sa(f["attention_1"], t)
  fused = np.concatenate([a, t], -1)
  if placement == "II":
    fused = _sa(f["attention"], fused)
  fused = fused * mask[:, None]
  ref = ClassifierHead((7,), 4).apply({"params": p["head"]}, fused)
  out = jax.jit(model.apply)(v, batch, mask=mask)
  np.testing.assert_allclose(out.log_probs, ref, rtol=2e-5, atol=2e-5)
  # Table 3's deltas: one d×d Dense (+ bias) per self-attention.
  sa = {k: sum(x.size for x in jax.tree.leaves(f[k])) for k in f}
  assert sa == {"I": {}, "II": {"attention": 16 * 16 + 16},
                "III": {"attention_0": 6 * 6 + 6, "attention_1": 10 * 10 + 10}}[placement]


def test_mbaf_iemocap_memory_written_in_training_only():
  c = _mbaf_config("I,smoke")
  model, _ = factory.build_model(c.model, "mbaf", vocab_size=30, max_tokens=c.data.max_tokens)
  batch = {k: v[:4] for k, v in factory.dummy_batch(c.data, c.model, 4).items()}
  batch["waves"] = np.random.default_rng(0).normal(size=batch["waves"].shape).astype(np.float32)
  v = jax.jit(model.init)({"params": jax.random.key(0), "memory": jax.random.key(1)}, batch)
  mem = v["memory"]["fusion"]["fusion"]["memory"]
  assert mem.shape == (c.model.fusion.mbaf.slots, 32 + 32)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  _, ev = apply(v, batch, train=False, mutable=("memory",))
  np.testing.assert_array_equal(ev["memory"]["fusion"]["fusion"]["memory"], mem)
  _, tr = apply(v, batch, train=True, mutable=("memory",), rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(tr["memory"]["fusion"]["fusion"]["memory"], mem)


def _mbaf_config(arg):
  return iemocap_mbaf.get_config(arg)


def test_mbaf_iemocap_factory_errors():
  c = _mbaf_config("smoke")
  with pytest.raises(ValueError, match="does not apply to model 'mbaf_iemocap'"):
    factory.build_model(c.model, "dmf", vocab_size=10)
  c.model.placement = "IV"
  with pytest.raises(ValueError, match="config.model.placement='IV'"):
    factory.build_model(c.model, "mbaf", vocab_size=10)
  c = _mbaf_config("smoke")
  c.model.fusion.mbaf["no_such_option"] = 1
  with pytest.raises(ValueError, match="config.model.fusion.mbaf"):
    factory.build_model(c.model, "mbaf", vocab_size=10)
  c = _mbaf_config("smoke")
  with pytest.raises(ValueError, match="vocabulary size"):
    factory.build_model(c.model, "naive")


# --------------------------------------------------------------------------- pretrained weights
def test_merge_pretrained_substitutes_or_names_the_mismatch():
  params = {"audio": {"proj": {"kernel": np.zeros((3, 4)), "bias": np.zeros((4,))}},
            "head": {"kernel": np.ones((4, 2))}}
  loaded = {"proj": {"kernel": np.arange(12.0).reshape(3, 4), "bias": np.full((4,), 7.0)}}
  out = factory.merge_pretrained(params, {"audio": loaded})
  np.testing.assert_array_equal(out["audio"]["proj"]["kernel"], loaded["proj"]["kernel"])
  np.testing.assert_array_equal(out["audio"]["proj"]["bias"], 7.0)
  np.testing.assert_array_equal(out["head"]["kernel"], 1.0)  # untouched
  np.testing.assert_array_equal(params["audio"]["proj"]["kernel"], 0.0)  # input not mutated
  bad = {"proj": {"kernel": np.zeros((3, 5)), "bias": np.zeros((4,))}}
  with pytest.raises(ValueError, match=r"'audio/proj/kernel' is \(3, 5\).*\(3, 4\)"):
    factory.merge_pretrained(params, {"audio": bad})
  with pytest.raises(ValueError, match=r"'audio/proj/bias' is missing"):
    factory.merge_pretrained(params, {"audio": {"proj": {"kernel": np.zeros((3, 4))}}})
  with pytest.raises(ValueError, match="no 'text' parameters"):
    factory.merge_pretrained(params, {"text": loaded})


def test_pretrained_import_error_becomes_value_error(monkeypatch):

  def needs_torch(path):
    raise ImportError("No module named 'torch'")

  monkeypatch.setattr(encoders, "from_pretrained", needs_torch)
  with pytest.raises(ValueError, match=r"config.model.audio.pretrained='/m'.*needs torch"):
    dmf.load_pretrained("/m", "audio")
