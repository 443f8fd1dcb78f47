"""Full models: the output equals the composition encoders → fusion → head computed piece by
piece with the same parameters (independent path), and bad options fail clearly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax import encoders
from mbaf_jax.fusion import NaiveFusion
from mbaf_jax.models import factory
from mbaf_jax.models.cebs import CebsModel
from mbaf_jax.models.dmf import DMFModel
from mbaf_jax.models.heads import ClassifierHead


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
  model = DMFModel(acfg, tcfg, NaiveFusion(), head_features=(16, 8), num_classes=4)
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
  model = CebsModel(NaiveFusion(), hidden=4, head_features=(8,), head_dropout=0.5,
                    num_classes=3)
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
  from configs import iemocap
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
