"""The whole DMF model (DMF §2) in PyTorch, holding this library's weights: the peer of
``bench_vs_torch.py``'s ``dmf_model`` rows.

PyTorch side: transformers' ``Wav2Vec2Model`` (masked mean of the last hidden state) and
``BertModel`` (pooler output), random-init from configs equal to the Flax ones (nothing is
downloaded), ``torch_reference.py``'s DMF layer (or naive concatenation) and the same head
(Dense 1024 → ReLU → Dense 512 → ReLU → Dense 4 → log-softmax). Every weight is the Flax model's:
the encoders' through ``hf_loading.convert_state_dict`` (every Flax leaf loaded, checked), the
fusion layer's through ``torch_reference.from_flax``, the head's kernels transposed.

The train step is the trainer's (``train/steps.py``) written out on both sides: loss =
cross-entropy + the fusion's aux (DMF Eq. 4's similarity term); SGD at 0.01 for the network and
0.001 for the memory module (DMF §3); the conv feature encoder (Wav2Vec2) and the embeddings (BERT)
frozen (DMF §2.1): in JAX by ``optax.set_to_zero`` on ``encoders.frozen_mask`` as the trainer
does (XLA then drops their gradients as dead code: ``roofline_dmf.py``'s
``frozen_backward_dropped``), in PyTorch by ``requires_grad=False`` (autograd then skips them);
the new memories are carried into the next step without gradient. Layerdrop is 0 on both sides (JAX runs a dropped layer and
discards it, PyTorch skips it: equal work needs 0); dropout and SpecAugment as configured.

:func:`step0_loss_deviation` is the correctness check: both models with dropout and SpecAugment
off, the same batch and the same Gumbel noise; the losses of step 0 must agree.

    python -m benchmarks.dmf_model_torch          # the check at tiny sizes, one JSON line
    python -m benchmarks.dmf_model_torch --base   # the check at the paper's sizes (≈ 1 min)
"""
import argparse
import dataclasses

if __name__ == "__main__":  # parse first: --help works without PyTorch
  _P = argparse.ArgumentParser(description="The whole DMF model in PyTorch with this library's "
                               "weights: step-0 loss check (one JSON line).")
  _P.add_argument("--base", action="store_true", help="paper sizes (default: tiny encoders)")
  _P.add_argument("--kind", default="dmf", choices=["dmf", "naive"])
  _P.add_argument("--batch", type=int, default=2)
  _ARGS = _P.parse_args()

import json  # noqa: E402

import flax  # noqa: E402
import flax.linen as fnn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import transformers  # noqa: E402

from benchmarks import torch_reference as tr  # noqa: E402
from configs import iemocap  # noqa: E402
from mbaf_jax import encoders, ops  # noqa: E402
from mbaf_jax.encoders import hf_loading  # noqa: E402
from mbaf_jax.fusion.dual_memory import DualMemoryFusion  # noqa: E402
from mbaf_jax.models import factory  # noqa: E402

NETWORK_LR, MEMORY_LR = 0.01, 0.001  # DMF §3
QUICK_FUSION = dict(slots=8, cbp_dim=64, attention_tokens=4, num_heads=2, writer_ff_dim=64)
_LIBRARY_FIELDS = ("dtype", "param_dtype", "remat", "stop_gradient_feature_encoder",
                   "masked_group_norm", "pos_conv_impl", "layerdrop", "add_pooling_layer")


def model_config(quick: bool, stop_gradient_feature_encoder: bool = False):
  """``configs/iemocap.py``'s model (Wav2Vec2-base + BERT-base + DMF, 5 s / 30 tokens) with
  layerdrop 0; ``quick``: tiny encoders, 0.1 s of audio, 8 tokens and a small DMF layer."""
  c = iemocap.get_config()
  c.model.audio.overrides = dict(layerdrop=0.0,
                                 stop_gradient_feature_encoder=stop_gradient_feature_encoder)
  if quick:
    c.model.audio.size = c.model.text.size = "tiny"
    c.data.max_seconds, c.data.max_tokens = 0.1, 8
    c.model.fusion.dmf.update(QUICK_FUSION)
  return c


def deterministic(model):
  """The same Flax model with every dropout, SpecAugment and layerdrop off (same parameters)."""
  a, t = model.audio.config, model.text.config
  a = dataclasses.replace(a, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                          feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False)
  t = dataclasses.replace(t, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  return model.clone(audio=encoders.Wav2Vec2(a), text=encoders.Bert(t))


def random_batch(c, batch: int, vocab_size: int, seed: int = 0) -> dict:
  """A batch of ``batch`` full-length utterances: N(0, 1) audio, random token ids, labels."""
  s = int(round(c.data.max_seconds * c.data.sample_rate))
  n = int(c.data.max_tokens)
  k_a, k_t, k_l = jax.random.split(jax.random.key(seed), 3)
  return {"input_values": jax.random.normal(k_a, (batch, s), jnp.float32),
          "audio_mask": jnp.ones((batch, s), jnp.int32),
          "input_ids": jax.random.randint(k_t, (batch, n), 1, vocab_size, jnp.int32),
          "text_mask": jnp.ones((batch, n), jnp.int32),
          "token_type_ids": jnp.zeros((batch, n), jnp.int32),
          "label": jax.random.randint(k_l, (batch,), 0, 4, jnp.int32),
          "mask": jnp.ones((batch,), jnp.float32)}


def inputs_of(batch: dict) -> dict:
  return {k: v for k, v in batch.items() if k not in ("label", "mask")}


# ----------------------------------------------------------------------------- JAX


def build_jax(c, kind: str, batch: dict, seed: int = 0):
  """``(model, variables)``: the library's DMF model of ``c`` (``factory.build_model``), random
  init under jit."""
  model, _ = factory.build_model(c.model, kind)
  ks = jax.random.split(jax.random.key(seed), 4)
  init = jax.jit(lambda b, m: model.init(
      {"params": ks[0], "memory": ks[1], "dropout": ks[2], "gumbel": ks[3]}, b, mask=m,
      train=False))
  return model, flax.core.unfreeze(init(inputs_of(batch), batch["mask"]))


def optimizer(params, memory) -> optax.GradientTransformation:
  """SGD 0.01 (network) / 0.001 (memory module: the subtree owning a ``'memory'`` variable),
  the DMF §2.1 frozen parts zeroed (``encoders.frozen_mask``), as ``train.optimizers``."""
  frozen = encoders.frozen_mask(params)
  owners = {tuple(getattr(k, "key", k) for k in path[:-1])
            for path, _ in jax.tree_util.tree_leaves_with_path(memory)}

  def label(path, is_frozen):
    keys = tuple(getattr(k, "key", k) for k in path)
    if is_frozen:
      return "frozen"
    return "memory" if any(keys[:len(o)] == o for o in owners) else "network"

  labels = jax.tree_util.tree_map_with_path(label, frozen)
  return optax.multi_transform({"network": optax.sgd(NETWORK_LR), "memory": optax.sgd(MEMORY_LR),
                                "frozen": optax.set_to_zero()}, labels)


def jax_loss(model, variables, params, batch, rngs):
  """``(loss, (new_memory, new_batch_stats))``: cross-entropy + the fusion's aux terms."""
  out, new = model.apply({**variables, "params": params}, inputs_of(batch), mask=batch["mask"],
                         train=True, rngs=rngs, mutable=["memory", "batch_stats"])
  picked = jnp.take_along_axis(out.log_probs, batch["label"][:, None], axis=-1)[:, 0]
  m = batch["mask"]
  ce = -jnp.sum(picked * m) / jnp.maximum(jnp.sum(m), 1.0)
  aux = sum((jnp.asarray(v, jnp.float32) for v in out.aux.values()), jnp.zeros((), jnp.float32))
  return ce + aux, (new.get("memory", {}), new.get("batch_stats", {}))


def make_jax_train_step(model, tx):
  """``step(params, state, opt_state, batch, key) -> (params, state, opt_state, loss)``; ``state``
  holds the non-parameter collections (memory carried with stop_gradient, batch stats)."""
  def step(params, state, opt_state, batch, key):
    k_drop, k_gum = jax.random.split(key)
    (loss, (memory, stats)), grads = jax.value_and_grad(
        lambda p: jax_loss(model, state, p, batch, {"dropout": k_drop, "gumbel": k_gum}),
        has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    new = {"memory": jax.lax.stop_gradient(memory), "batch_stats": stats}
    state = {k: new[k] if k in new and new[k] else v for k, v in state.items()}  # same tree
    return optax.apply_updates(params, updates), state, opt_state, loss
  return step


def gumbel_noise(model, rng, batch: int):
  """The Gumbel noise the model's fusion layer (named ``fusion``) draws for
  ``rngs={'gumbel': rng}``: its first ``make_rng('gumbel')`` split into the audio and text
  readers' keys (``DualMemoryFusion._noise``). Returns ``(g_a, g_t)`` torch tensors (B, n)."""
  class _Key(fnn.Module):
    @fnn.compact
    def __call__(self):
      return self.make_rng("gumbel")

  class _Parent(fnn.Module):
    @fnn.compact
    def __call__(self):
      return _Key(name="fusion")()

  k_a, k_t = jax.random.split(_Parent().apply({}, rngs={"gumbel": rng}))
  shape = (batch, model.fusion.slots)
  return tuple(torch.as_tensor(np.array(ops.sample_gumbel(k, shape))) for k in (k_a, k_t))


# ----------------------------------------------------------------------------- PyTorch


def _hf_config(cls, cfg):
  fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _LIBRARY_FIELDS}
  return cls(**fields, layerdrop=0.0)


class TorchDMFModel(nn.Module):
  """Wav2Vec2 (masked mean) + BERT (pooler) → fusion → head, in PyTorch (see module doc)."""

  def __init__(self, model, variables):
    super().__init__()
    self.wav2vec2 = transformers.Wav2Vec2Model(_hf_config(transformers.Wav2Vec2Config,
                                                          model.audio.config))
    self.bert = transformers.BertModel(_hf_config(transformers.BertConfig, model.text.config))
    params = variables["params"]
    fusion_vars = {k: v["fusion"] for k, v in variables.items() if "fusion" in v}
    self.fusion = tr.from_flax(fusion_vars, model.fusion)
    head = params["head"]
    names = [f"dense_{i}" for i in range(len(model.head_features))] + ["logits"]
    self.head = nn.ModuleList()
    for name in names:
      k = np.asarray(head[name]["kernel"])
      lin = nn.Linear(k.shape[0], k.shape[1])
      with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(k.T.copy()))
        lin.bias.copy_(torch.as_tensor(np.array(head[name]["bias"])))
      self.head.append(lin)
    self.wav2vec2.freeze_feature_encoder()  # DMF §2.1: conv feature encoder frozen
    for p in self.bert.embeddings.parameters():  # DMF §2.1: embeddings frozen
      p.requires_grad_(False)

  def encoders_train(self, mode: bool):
    self.wav2vec2.train(mode)
    self.bert.train(mode)

  def forward(self, b: dict, mask, train: bool, noise=None):
    """Returns ``(log_probs (B, 4), aux dict, new memory dict, new batch stats)``."""
    audio = self.wav2vec2(b["input_values"], attention_mask=b["audio_mask"]).last_hidden_state
    fm = self.wav2vec2._get_feature_vector_attention_mask(  # pylint: disable=protected-access
        audio.shape[1], b["audio_mask"]).to(audio.dtype)[..., None]
    x_a = (audio * fm).sum(1) / fm.sum(1).clamp_min(1.0)
    x_t = self.bert(b["input_ids"], attention_mask=b["text_mask"],
                    token_type_ids=b["token_type_ids"]).pooler_output
    if isinstance(self.fusion, tr.TorchNaive):
      out = self.fusion(x_a, x_t, mask=mask, train=train)
    else:
      out = self.fusion(x_a, x_t, mask=mask, train=train, noise=noise)
    h = out.fused
    for lin in self.head[:-1]:
      h = torch.relu(lin(h))
    return torch.log_softmax(self.head[-1](h), dim=-1), out.aux, out.memory, out.batch_stats


def encoder_params(hf, flax_params, prefix: str) -> dict:
  """The Flax encoder parameters holding ``hf``'s weights (``hf_loading.convert_state_dict``);
  every leaf of ``flax_params`` must be loaded."""
  state = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}
  loaded, _, _, _ = hf_loading.convert_state_dict(state, flax_params, prefix)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(flax_params))
  missing = sorted("/".join(p) for p in flat if p not in loaded)
  if missing:
    raise ValueError(f"{type(hf).__name__}: no PyTorch parameter for {missing[:5]}")
  return flax.traverse_util.unflatten_dict({p: jnp.asarray(loaded[p]) for p in flat})


def build_pair(c, kind: str, batch: dict, seed: int = 0, device: str = "cpu"):
  """The library's model and its PyTorch twin with the same weights.

  The encoders are initialised by transformers (``torch.manual_seed(seed)``) and loaded into the
  Flax parameters; the fusion layer and the head are initialised by Flax and loaded into PyTorch.

  Returns:
    ``(model, variables, torch_model)``.
  """
  model, variables = build_jax(c, kind, batch, seed)
  torch.manual_seed(seed)
  tm = TorchDMFModel(model, variables)
  params = dict(variables["params"])
  params["audio"] = encoder_params(tm.wav2vec2, params["audio"], "wav2vec2.")
  params["text"] = encoder_params(tm.bert, params["text"], "bert.")
  variables = {**variables, "params": params}
  return model, variables, to_device(tm, device)


def to_device(tm: "TorchDMFModel", device: str) -> "TorchDMFModel":
  tm = tm.to(device)
  if not isinstance(tm.fusion, tr.TorchNaive):
    tm.fusion = tr.to_device(tm.fusion, device)
  return tm


def torch_batch(batch: dict, device: str = "cpu") -> dict:
  """The batch as torch tensors (ids and masks as int64)."""
  out = {}
  for k, v in batch.items():
    t = torch.as_tensor(np.array(v), device=device)
    out[k] = t.long() if k != "input_values" and k != "mask" else t
  return out


def torch_optimizer(tm: TorchDMFModel) -> torch.optim.Optimizer:
  """SGD 0.01 on the encoders' trainable parameters and the head, 0.001 on the fusion layer."""
  network = [p for m in (tm.wav2vec2, tm.bert, tm.head) for p in m.parameters()
             if p.requires_grad]
  groups = [{"params": network, "lr": NETWORK_LR}]
  fusion = [p for p in tm.fusion.parameters() if p.requires_grad]
  if fusion:
    groups.append({"params": fusion, "lr": MEMORY_LR})
  return torch.optim.SGD(groups, lr=NETWORK_LR)


def torch_loss(tm, forward, tb: dict, noise):
  """``(loss, new memory, new batch stats)`` of the PyTorch model (``forward``: ``tm`` or its
  ``torch.compile``)."""
  log_probs, aux, memory, stats = forward(tb, tb["mask"], True, noise)
  m = tb["mask"]
  picked = log_probs.gather(1, tb["label"][:, None])[:, 0]
  ce = -(picked * m).sum() / m.sum().clamp_min(1.0)
  loss = ce + sum(aux.values(), torch.zeros((), dtype=ce.dtype, device=ce.device))
  return loss, memory, stats


def torch_train_step(tm, forward, opt, tb: dict, noise):
  """One optimizer step of the PyTorch model; carries the new memory and batch stats."""
  opt.zero_grad(set_to_none=True)
  loss, memory, stats = torch_loss(tm, forward, tb, noise)
  loss.backward()
  opt.step()
  if not isinstance(tm.fusion, tr.TorchNaive):
    tm.fusion.memory = {k: v.detach() for k, v in memory.items()}
    tm.fusion.batch_stats = {n: {k: v.detach() for k, v in s.items()} for n, s in stats.items()}
  return loss


def snapshot(tm: TorchDMFModel) -> tuple:
  """Copies of the PyTorch model's weights, memory and batch statistics (:func:`restore`)."""
  state = {k: v.detach().clone() for k, v in tm.state_dict().items()}
  if isinstance(tm.fusion, tr.TorchNaive):
    return state, None, None
  return (state, {k: v.clone() for k, v in tm.fusion.memory.items()},
          {n: {k: v.clone() for k, v in s.items()} for n, s in tm.fusion.batch_stats.items()})


def restore(tm: TorchDMFModel, saved: tuple) -> None:
  """Puts back what :func:`snapshot` copied (undoing the optimizer steps and memory writes)."""
  state, memory, stats = saved
  tm.load_state_dict(state)
  if memory is not None:
    tm.fusion.memory = {k: v.clone() for k, v in memory.items()}
    tm.fusion.batch_stats = {n: {k: v.clone() for k, v in s.items()} for n, s in stats.items()}


def torch_gumbel(tm, batch: int, device: str = "cpu"):
  """Fresh Gumbel noise ``(g_a, g_t)`` (B, n) drawn by torch (None for the naive model)."""
  if isinstance(tm.fusion, tr.TorchNaive):
    return None
  n = tm.fusion.opts["slots"]
  u = torch.rand(2, batch, n, device=device).clamp_min(1e-20)
  g = -torch.log(-torch.log(u))
  return g[0], g[1]


def step0_loss_deviation(model, variables, tm, batch: dict, device: str = "cpu") -> dict:
  """Step 0's loss on both sides, dropout and SpecAugment off, the same batch and Gumbel noise.

  Returns:
    ``{"loss_jax", "loss_torch", "loss_abs_dev"}``.
  """
  key = jax.random.key(7)
  det = deterministic(model)
  state = {k: v for k, v in variables.items() if k != "params"}
  loss_j, _ = jax.jit(lambda p: jax_loss(det, state, p, batch, {"gumbel": key,
                                                                 "dropout": key}))(
      variables["params"])
  noise = None
  if isinstance(model.fusion, DualMemoryFusion):
    noise = tuple(g.to(device) for g in gumbel_noise(model, key, batch["mask"].shape[0]))
  tm.encoders_train(False)  # deterministic encoders; the fusion layer still trains
  with torch.no_grad():
    loss_t, _, _ = torch_loss(tm, tm, torch_batch(batch, device), noise)
  tm.encoders_train(True)
  lj, lt = float(loss_j), float(loss_t)
  return {"loss_jax": lj, "loss_torch": lt, "loss_abs_dev": abs(lj - lt)}


def main(args) -> None:
  c = model_config(not args.base)
  batch = random_batch(c, args.batch, encoders.BertConfig.tiny().vocab_size if not args.base
                       else encoders.BertConfig.base().vocab_size)
  model, variables, tm = build_pair(c, args.kind, batch)
  rec = {"check": "dmf_model_step0_loss", "kind": args.kind,
         "size": "base" if args.base else "tiny", "batch": args.batch}
  rec.update(step0_loss_deviation(model, variables, tm, batch))
  print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main(_ARGS)
