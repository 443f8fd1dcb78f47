"""Offline Hugging Face checkpoint loading: path mapping, leaf rules, both weight-norm namings,
head checkpoints, the load report and every user-caused error."""
import json
import os
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mbaf_jax.encoders import LoadReport, from_pretrained
from mbaf_jax.encoders.hf_loading import LEAF_RULES, hf_key_to_flax

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "parity")


def _copy(name, tmp_path, edit=None, rename=None):
  """Copies a fixture checkpoint; ``edit(state)`` mutates the weights dict before saving."""
  dst = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), dst)
  state = load_file(str(dst / "model.safetensors"))
  if rename:
    state = {rename(k): v for k, v in state.items()}
  if edit:
    edit(state)
  save_file(state, str(dst / "model.safetensors"))
  return str(dst)


@pytest.mark.parametrize("key, expected", [
    ("wav2vec2.encoder.layers.1.attention.q_proj.weight",
     (("encoder", "layers_1", "attention", "q_proj"), "weight")),
    ("feature_extractor.conv_layers.0.layer_norm.bias",
     (("feature_extractor", "conv_layers_0", "layer_norm"), "bias")),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
     (("encoder", "pos_conv_embed", "conv"), "weight_g")),
    ("wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1",
     (("encoder", "pos_conv_embed", "conv"), "weight_v")),
    ("bert.encoder.layer.11.attention.self.query.weight",
     (("encoder", "layer_11", "attention", "self", "query"), "weight")),
])
def test_key_mapping(key, expected):
  prefix = "bert." if key.startswith("bert") else "wav2vec2."
  assert hf_key_to_flax(key, prefix) == expected


def test_leaf_rules_transpose_linear_and_conv_and_reshape_weight_g():
  lin = np.arange(6.0).reshape(2, 3)  # torch Linear (out=2, in=3)
  np.testing.assert_array_equal(LEAF_RULES[("weight", "kernel")](lin), lin.T)
  conv = np.arange(24.0).reshape(4, 3, 2)  # torch Conv1d (out, in, k)
  kern = LEAF_RULES[("weight", "kernel")](conv)
  assert kern.shape == (2, 3, 4) and kern[1, 2, 3] == conv[3, 2, 1]
  assert LEAF_RULES[("weight_g", "weight_g")](np.ones((1, 1, 5))).shape == (5,)


def test_head_checkpoint_report_and_params(tmp_path):
  model, params, report = from_pretrained(os.path.join(FIXTURES, "w2v2_base"))
  assert isinstance(report, LoadReport)
  assert report.unused_keys == ["classifier.bias", "classifier.weight", "projector.bias",
                                "projector.weight"]
  assert not report.ignored_keys and not report.missing_keys
  np.testing.assert_array_equal(params["masked_spec_embed"],
                                load_file(os.path.join(FIXTURES, "w2v2_base", "model.safetensors"))[
                                    "wav2vec2.masked_spec_embed"])
  text = report.format()
  assert "classifier.weight" in text and "Wav2Vec2ForSequenceClassification" in text
  state = load_file(os.path.join(FIXTURES, "w2v2_base", "model.safetensors"))
  q = state["wav2vec2.encoder.layers.0.attention.q_proj.weight"]
  np.testing.assert_array_equal(params["encoder"]["layers_0"]["attention"]["q_proj"]["kernel"], q.T)
  gn = state["wav2vec2.feature_extractor.conv_layers.0.layer_norm.weight"]
  np.testing.assert_array_equal(params["feature_extractor"]["conv_layers_0"]["layer_norm"]["scale"],
                                gn)


def test_old_and_new_weight_norm_namings_load_identically(tmp_path):
  def to_new(k):
    return (k.replace("conv.weight_g", "conv.parametrizations.weight.original0")
            .replace("conv.weight_v", "conv.parametrizations.weight.original1"))

  _, old, _ = from_pretrained(os.path.join(FIXTURES, "w2v2_base"))
  _, new, rep = from_pretrained(_copy("w2v2_base", tmp_path, rename=to_new))
  assert not rep.missing_keys
  a, b = old["encoder"]["pos_conv_embed"]["conv"], new["encoder"]["pos_conv_embed"]["conv"]
  for leaf in ("weight_g", "weight_v", "bias"):
    np.testing.assert_array_equal(a[leaf], b[leaf])


def test_missing_tensor_is_reported_and_strict_raises(tmp_path):
  path = _copy("bert", tmp_path, edit=lambda s: s.pop("bert.pooler.dense.weight"))
  _, params, report = from_pretrained(path, seed=3)
  assert report.missing_keys == ["pooler/dense/kernel"]
  kernel = np.asarray(params["pooler"]["dense"]["kernel"])
  assert kernel.shape == (32, 32) and 0.005 < kernel.std() < 0.05  # N(0, 0.02) init
  assert "pooler/dense/kernel" in report.format()
  with pytest.raises(ValueError, match="strict=True.*pooler/dense/kernel"):
    from_pretrained(path, strict=True)


def test_shape_mismatch_names_parameter_and_both_shapes(tmp_path):
  def edit(s):
    s["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros((65, 32), np.float32)

  with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.1\.intermediate\.dense\.weight.*"
                     r"encoder/layer_1/intermediate/dense/kernel.*\(32, 65\).*\(32, 64\)"):
    from_pretrained(_copy("bert", tmp_path, edit=edit))


def test_dtype_options():
  model, params, _ = from_pretrained(os.path.join(FIXTURES, "bert"), dtype=jnp.bfloat16,
                                     param_dtype=jnp.bfloat16, remat=True)
  assert model.config.dtype == jnp.bfloat16 and model.config.remat
  assert params["embeddings"]["word_embeddings"]["embedding"].dtype == jnp.bfloat16


def test_directory_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    from_pretrained(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match="model_type='gpt2'.*bert.*wav2vec2"):
    from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(BERT_TINY))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    from_pretrained(str(tmp_path))
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
  monkeypatch.setitem(sys.modules, "torch", None)  # simulate PyTorch not installed
  with pytest.raises(ImportError, match="PyTorch is not installed.*safetensors"):
    from_pretrained(str(tmp_path))
  (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
  with pytest.raises(ValueError, match="could not read the safetensors"):
    from_pretrained(str(tmp_path))


BERT_TINY = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 40}


def test_sharded_safetensors_index(tmp_path):
  state = load_file(os.path.join(FIXTURES, "bert", "model.safetensors"))
  keys = sorted(state)
  shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
  for fname, ks in shards.items():
    save_file({k: state[k] for k in ks}, str(tmp_path / fname))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
  shutil.copy(os.path.join(FIXTURES, "bert", "config.json"), tmp_path / "config.json")
  _, params, report = from_pretrained(str(tmp_path))
  _, ref_params, _ = from_pretrained(os.path.join(FIXTURES, "bert"))
  assert not report.missing_keys and len(report.loaded_keys) == 39
  np.testing.assert_array_equal(params["pooler"]["dense"]["kernel"],
                                ref_params["pooler"]["dense"]["kernel"])
