"""PyTorch reference of the fusion layers, from the papers' equations (DMF Eqs. 1–4, MBAF Eqs. 1–13).

Two uses: an independent correctness oracle for ``mbaf_jax.fusion`` (forward, new memory and
every gradient, ``tests/test_torch_reference.py``) and the speed peer of
``benchmarks/bench_vs_torch.py``. The code is plain ``torch.nn`` as a PyTorch user would write it
(``nn.Linear``, ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, a Python loop for
MBAF's sequential write); only the *values* come from the Flax variables::

    ref = torch_reference.from_flax(variables, layer)      # same params, memory, count sketch
    noise = torch_reference.dmf_gumbel_noise(layer, key, batch)   # the layer's own draw
    out = ref(x_a, x_t, mask=mask, train=True, noise=noise)
    out.fused, out.aux, out.memory, out.batch_stats
    torch_reference.flax_grads(ref)                          # .grad in the Flax params layout

The layer's options are read from the Flax module's fields; a field this file does not mirror,
or a value of it that it does not, raises ``NotImplementedError`` naming it. Float32 only.
PyTorch is an optional dependency (``pip install -e '.[bench]'``); nothing else in the
project imports this module.

    python -m benchmarks.torch_reference     # self-check: one JSON line per layer, max deviation
"""
import argparse
import dataclasses
import json
from typing import Any, Callable, NamedTuple

if __name__ == "__main__":  # parse first: --help works without PyTorch
  argparse.ArgumentParser(description="PyTorch reference of the fusion layers: self-check (max "
                          "deviation from the Flax layers at small sizes, one JSON line each)."
                          ).parse_args()

import flax.linen as fnn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mbaf_jax import ops  # noqa: E402
from mbaf_jax.fusion.dual_memory import DualMemoryFusion  # noqa: E402
from mbaf_jax.fusion.mbaf import MBAF  # noqa: E402
from mbaf_jax.fusion.naive import NaiveFusion  # noqa: E402



def _is_f32(v) -> bool:
  """True for ``None`` or any spelling of float32 (the only mirrored dtype)."""
  return v is None or np.dtype(v) == np.float32


# Every field of each Flax layer -> a predicate on its value: True = mirrored here.
DMF_OPTIONS: dict[str, Callable[[Any], bool]] = {
    "slots": lambda v: True,
    "memory_dim": lambda v: True,
    "cbp_dim": lambda v: True,
    "tau_max": lambda v: True,
    "tau_min": lambda v: True,
    "num_heads": lambda v: True,
    "writer_ff_dim": lambda v: True,
    "dropout_rate": lambda v: True,  # > 0 only without training (checked in forward)
    "attention_tokens": lambda v: True,
    "composer_attention": lambda v: v in ("tokens", "none"),
    "similarity_reduction": lambda v: v in ("paper", "mean"),
    "gumbel_noise_in_eval": lambda v: True,
    "reader_logits": lambda v: v in ("log_softmax", "log_clamp", "log_softplus"),
    "writer_in_eval": lambda v: True,
    "similarity_grad": lambda v: v in ("writer", "all"),
    "similarity_weight": lambda v: True,
    "read_mode": lambda v: v in ("gumbel", "uniform"),
    "bn_momentum": lambda v: True,
    "axis_name": lambda v: v is None,
    "dtype": _is_f32,
    "param_dtype": _is_f32,
}
MBAF_OPTIONS: dict[str, Callable[[Any], bool]] = {
    "slots": lambda v: True,
    "hidden": lambda v: True,
    "mlp_dims": lambda v: True,
    "compose_dim": lambda v: True,
    "read_projection": lambda v: True,
    "attention": lambda v: v in ("feature", "keys", "none"),
    "attention_keys": lambda v: True,
    "write_bias": lambda v: True,
    "write_max": lambda v: True,
    "write": lambda v: v in ("scan", "batched"),
    "read": lambda v: v in ("naive", "cross"),
    "memory_modes": lambda v: True,
    "axis_name": lambda v: v is None,
    "dtype": _is_f32,
    "param_dtype": _is_f32,
}
NAIVE_OPTIONS: dict[str, Callable[[Any], bool]] = {"dtype": _is_f32,
                                                   "absent": lambda v: v in ("zeros", "learned")}


def options(layer: fnn.Module, mirrored: dict[str, Callable[[Any], bool]]) -> dict:
  """The Flax layer's fields as a dict, checked against what the reference mirrors.

  Args:
    layer: a Flax fusion module.
    mirrored: field name -> predicate on the value (True = mirrored).

  Returns:
    ``{field: value}`` for every field but flax's ``parent``/``name``.

  Raises:
    NotImplementedError: naming a field (or a field's value) the reference does not mirror.
  """
  out = {}
  for f in dataclasses.fields(layer):
    if f.name in ("parent", "name"):
      continue
    value = getattr(layer, f.name)
    if f.name not in mirrored:
      raise NotImplementedError(f"{type(layer).__name__}.{f.name} is not mirrored by the "
                                f"PyTorch reference (benchmarks/torch_reference.py).")
    if not mirrored[f.name](value):
      raise NotImplementedError(f"{type(layer).__name__}.{f.name}={value!r} is not mirrored by "
                                f"the PyTorch reference (benchmarks/torch_reference.py).")
    out[f.name] = value
  return out


# ----------------------------------------------------------------------------- parameter maps


class Leaf(NamedTuple):
  """One Flax parameter and where it lives in the PyTorch module."""
  path: tuple  # path in the Flax 'params' tree
  param: torch.Tensor  # the PyTorch parameter holding it
  rows: slice | None  # rows of ``param`` it occupies (MHA's packed in_proj), None = all
  to_torch: Callable  # Flax array (numpy) -> PyTorch layout
  to_flax: Callable  # PyTorch layout (numpy) -> Flax array


def _same(a):
  return a


def _linear(path, lin: nn.Linear) -> list[Leaf]:
  """Flax ``Dense`` (kernel (in, out), bias) <-> ``nn.Linear`` (weight (out, in), bias)."""
  leaves = [Leaf(path + ("kernel",), lin.weight, None, lambda k: k.T, lambda w: w.T)]
  if lin.bias is not None:
    leaves.append(Leaf(path + ("bias",), lin.bias, None, _same, _same))
  return leaves


def _mha(path, mha: nn.MultiheadAttention) -> list[Leaf]:
  """Flax attention (``query/key/value`` kernels (d, h, dh), ``out`` (h, dh, d)) <->
  ``nn.MultiheadAttention`` (packed ``in_proj_weight`` (3d, d), ``out_proj``)."""
  d = mha.embed_dim
  leaves = []
  for i, name in enumerate(("query", "key", "value")):
    rows = slice(i * d, (i + 1) * d)
    leaves.append(Leaf(path + (name, "kernel"), mha.in_proj_weight, rows,
                       lambda k: k.reshape(d, d).T, lambda w: w.T))
    leaves.append(Leaf(path + (name, "bias"), mha.in_proj_bias, rows, lambda b: b.reshape(d),
                       _same))
  leaves.append(Leaf(path + ("out", "kernel"), mha.out_proj.weight, None,
                     lambda k: k.reshape(d, d).T, lambda w: w.T))
  leaves.append(Leaf(path + ("out", "bias"), mha.out_proj.bias, None, _same, _same))
  return leaves


def _layer_norm(path, ln: nn.LayerNorm) -> list[Leaf]:
  return [Leaf(path + ("scale",), ln.weight, None, _same, _same),
          Leaf(path + ("bias",), ln.bias, None, _same, _same)]


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return np.asarray(tree)


def _set(tree: dict, path, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def load_params(leaves: list[Leaf], params) -> dict:
  """Copies the Flax ``params`` into the PyTorch parameters of ``leaves``.

  Returns:
    ``{path: shape}`` of the Flax arrays (:func:`flax_grads` gives gradients these shapes).
  """
  shapes = {}
  with torch.no_grad():
    for leaf in leaves:
      array = _get(params, leaf.path)
      shapes[leaf.path] = array.shape
      value = torch.from_numpy(np.array(leaf.to_torch(array), np.float32))
      target = leaf.param if leaf.rows is None else leaf.param[leaf.rows]
      target.copy_(value.reshape(target.shape))
  return shapes


def _tensor(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a))


# ----------------------------------------------------------------------------- shared pieces


def count_sketch(x, hashes, signs, dim: int):
  """``Ψ(x)[c] = Σ_{i: h[i] = c} s[i] x[i]`` (Gao et al. 2016) as an ``index_add``."""
  out = x.new_zeros(x.shape[:-1] + (dim,))
  return out.index_add(x.dim() - 1, hashes, x * signs)


def compact_bilinear_pooling(x, y, sketch: dict, dim: int):
  """DMF Eq. 3's CBP: ``irfft(rfft(Ψ_x x) · rfft(Ψ_y y), D)``."""
  px = count_sketch(x, sketch["hashes_x"], sketch["signs_x"], dim)
  py = count_sketch(y, sketch["hashes_y"], sketch["signs_y"], dim)
  return torch.fft.irfft(torch.fft.rfft(px, n=dim) * torch.fft.rfft(py, n=dim), n=dim)


def similarity_loss(memory, reduction: str, eps: float = 1e-8):
  """DMF Eq. 4 (one memory): upper-triangle sum of slot cosine similarities / ``n(n−1)``
  (``"paper"``) or ``/ n(n−1)/2`` (``"mean"``)."""
  n = memory.shape[0]
  unit = memory * torch.rsqrt(torch.clamp_min((memory * memory).sum(-1), eps * eps))[:, None]
  total = torch.triu(unit @ unit.T, diagonal=1).sum()
  return total / (n * (n - 1) if reduction == "paper" else n * (n - 1) / 2)


def masked_batch_norm(x, mask, scale, bias, stats: dict, momentum: float, train: bool,
                      eps: float = 1e-5):
  """Batch norm over the real rows (mask > 0); running stats ``r ← mom·r + (1 − mom)·stat``.

  Returns:
    ``(y, new_stats)`` (``new_stats`` is ``stats`` in evaluation or for an all-padded batch).
  """
  real = (mask > 0)[:, None]
  xf = torch.where(real, x, torch.zeros((), dtype=x.dtype))
  if not train:
    mean, var, new = stats["mean"], stats["var"], stats
  else:
    count = real.sum().to(x.dtype)
    safe = torch.clamp_min(count, 1.0)
    mean = xf.sum(0) / safe
    var = torch.where(real, (xf - mean) ** 2, torch.zeros((), dtype=x.dtype)).sum(0) / safe
    with torch.no_grad():
      upd = {"mean": momentum * stats["mean"] + (1 - momentum) * mean,
             "var": momentum * stats["var"] + (1 - momentum) * var}
      new = {k: torch.where(count > 0, upd[k], stats[k]) for k in upd}
  return (xf - mean) * torch.rsqrt(var + eps) * scale + bias, new


def presence(modality_mask, mask, b: int):
  """``(present (B, M) bool or None, row mask (B,))``: rows with no mode present are padding."""
  m = torch.ones(b) if mask is None else mask.to(torch.float32)
  if modality_mask is None:
    return None, m
  present = modality_mask > 0
  m = torch.where(present.any(1), m, torch.zeros(()))
  return present | (m <= 0)[:, None], m  # a padded row is computed as without the argument


# ----------------------------------------------------------------------------- DMF


class Output(NamedTuple):
  """What a reference layer returns (the Flax layer's ``out`` and mutated collections)."""
  fused: torch.Tensor  # (B, F)
  aux: dict  # extra loss terms, e.g. {"memory_similarity": scalar}
  memory: dict  # the 'memory' collection after the call (new when written)
  batch_stats: dict  # the 'batch_stats' collection after the call


class DMFReader(nn.Module):
  """DMF Eqs. 1–2: ``x_tmp = x Mᵀ``; ``τ = clip(|Dense(x_tmp)|, τ_min, τ_max)``;
  ``w = softmax((log π + g) / τ)``; read ``wᵀ M``."""

  def __init__(self, slots: int, opts: dict):
    super().__init__()
    self.temperature = nn.Linear(slots, 1)
    self.opts = opts

  def forward(self, x, memory, noise=None):
    """Args: x (B, d), memory (n, d) of the other modality, noise (B, n) or None."""
    scores = x @ memory.T
    tau = torch.clamp(self.temperature(scores).abs(), self.opts["tau_min"], self.opts["tau_max"])
    mode = self.opts["reader_logits"]
    if mode == "log_softmax":
      logits = F.log_softmax(scores, dim=-1)
    elif mode == "log_clamp":
      logits = torch.log(torch.clamp_min(scores, 1e-6))
    else:
      logits = torch.log(F.softplus(scores) + 1e-6)
    if noise is not None:
      logits = logits + noise
    return F.softmax(logits / tau, dim=-1) @ memory


class DMFWriter(nn.Module):
  """DMF §2.2 writer: ``concat(M, X)`` → one ``nn.TransformerEncoderLayer`` (post-LN, ReLU)
  → gPool top-n (score ``Y p / ‖p‖``, kept rows gated by ``sigmoid(score)``)."""

  def __init__(self, d: int, heads: int, ff: int, dropout: float):
    super().__init__()
    self.encoder = nn.TransformerEncoderLayer(d, heads, ff, dropout=dropout, batch_first=True)
    self.projection = nn.Parameter(torch.zeros(d))

  def leaves(self, path) -> list[Leaf]:
    e = self.encoder
    return (_mha(path + ("encoder", "attention"), e.self_attn)
            + _layer_norm(path + ("encoder", "norm1"), e.norm1)
            + _linear(path + ("encoder", "ff1"), e.linear1)
            + _linear(path + ("encoder", "ff2"), e.linear2)
            + _layer_norm(path + ("encoder", "norm2"), e.norm2)
            + [Leaf(path + ("projection",), self.projection, None, _same, _same)])

  def forward(self, memory, x, mask):
    """Args: memory (n, d), x (m, d), mask (m,). Returns the new memory (n, d)."""
    n = memory.shape[0]
    valid = torch.cat([torch.ones(n, dtype=torch.bool), mask > 0])
    y = self.encoder(torch.cat([memory, x])[None], src_key_padding_mask=~valid[None])[0]
    score = y @ self.projection / self.projection.norm()
    # Valid rows first, then higher score, then lower index (a stable sort).
    key = torch.where(valid, -score.detach(), torch.full_like(score, float("inf")))
    idx = torch.sort(key, stable=True).indices[:n]
    return y[idx] * torch.sigmoid(score[idx])[:, None]


class TorchDMF(nn.Module):
  """DualMemoryFusion (DMF §2.2–2.3) in PyTorch; see :func:`from_flax`."""

  def __init__(self, opts: dict, d: int):
    super().__init__()
    self.opts = opts
    n, dim = opts["slots"], opts["cbp_dim"]
    heads = opts["num_heads"]
    self.reader_a = DMFReader(n, opts)
    self.reader_t = DMFReader(n, opts)
    self.tokens = opts["attention_tokens"] if opts["composer_attention"] == "tokens" else None
    if self.tokens:
      width = dim // self.tokens
      self.attention_1 = nn.MultiheadAttention(width, heads, batch_first=True)
      self.attention_2 = nn.MultiheadAttention(width, heads, batch_first=True)
    self.norm_scale = nn.ParameterList([nn.Parameter(torch.ones(dim)) for _ in range(2)])
    self.norm_bias = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(2)])
    # No dropout module: the Flax writer drops out only in training, which forward refuses for
    # dropout_rate > 0 (its random masks cannot be mirrored); evaluation is deterministic.
    ff = opts["writer_ff_dim"]
    self.writer_a = DMFWriter(d, heads, ff, 0.0)
    self.writer_t = DMFWriter(d, heads, ff, 0.0)
    self.memory = {"M_a": torch.zeros(n, d), "M_t": torch.zeros(n, d)}
    self.sketch: dict = {}
    self.batch_stats = {f"norm_{i}": {"mean": torch.zeros(dim), "var": torch.ones(dim)}
                        for i in (1, 2)}

  def leaves(self) -> list[Leaf]:
    """The Flax <-> PyTorch parameter map."""
    out = (_linear(("reader_a", "temperature"), self.reader_a.temperature)
           + _linear(("reader_t", "temperature"), self.reader_t.temperature))
    if self.tokens:
      out += _mha(("attention_1", "attention"), self.attention_1)
      out += _mha(("attention_2", "attention"), self.attention_2)
    for i in range(2):
      out += [Leaf((f"norm_{i + 1}", "scale"), self.norm_scale[i], None, _same, _same),
              Leaf((f"norm_{i + 1}", "bias"), self.norm_bias[i], None, _same, _same)]
    return out + self.writer_a.leaves(("writer_a",)) + self.writer_t.leaves(("writer_t",))

  def _attend(self, mha, p):
    b, dim = p.shape
    s = p.reshape(b, self.tokens, dim // self.tokens)
    return (s + mha(s, s, s, need_weights=False)[0]).reshape(b, dim)

  def forward(self, x_a, x_t, mask=None, modality_mask=None, train: bool = False,
              noise=None) -> Output:
    """DMF Eqs. 1–4 on ``(B, d)`` embeddings.

    Args:
      x_a, x_t: audio and text embeddings.
      mask: ``(B,)`` 1 = real row (None: all real).
      modality_mask: ``(B, 2)`` bool, True = present (None: both). An absent embedding is the
        present mode's read of the absent mode's memory (audio absent: ``x_a ← x_{t,a}``,
        text absent: ``x_t ← x_{a,t}``), both readers read again with the completed pair, and
        a memory is written only from the rows that have its mode.
      train: batch statistics, Gumbel noise, write the memories, similarity loss.
      noise: ``(g_a (B, n), g_t (B, n))`` Gumbel noise of the audio and text readers
        (:func:`dmf_gumbel_noise`); required when training or ``gumbel_noise_in_eval``.

    Returns:
      :class:`Output`.
    """
    o = self.opts
    if train and o["dropout_rate"] > 0:
      raise NotImplementedError("DualMemoryFusion.dropout_rate > 0 in training is not mirrored "
                                "by the PyTorch reference (random dropout masks).")
    b = x_a.shape[0]
    present, m = presence(modality_mask, mask, b)
    keep = (m > 0)[:, None]
    zero = torch.zeros((), dtype=x_a.dtype)
    if present is not None:
      p_a, p_t = present[:, :1], present[:, 1:]
    else:
      p_a = p_t = torch.ones(b, 1, dtype=torch.bool)
    x_a, x_t = torch.where(keep & p_a, x_a, zero), torch.where(keep & p_t, x_t, zero)
    m_a, m_t = self.memory["M_a"], self.memory["M_t"]
    if train or o["gumbel_noise_in_eval"]:
      if noise is None:
        raise ValueError("noise=(g_a, g_t) is required when training (or gumbel_noise_in_eval).")
      g_a, g_t = noise
    else:
      g_a = g_t = None
    def read(q_a, q_t):
      x_at = self.reader_a(q_a, m_t, g_a)  # audio reads the text memory
      x_ta = self.reader_t(q_t, m_a, g_t)  # text reads the audio memory
      if o.get("read_mode", "gumbel") == "uniform":  # ablation: every sample reads the slot mean
        x_at, x_ta = m_t.mean(0).expand_as(x_at), m_a.mean(0).expand_as(x_ta)
      return x_at, x_ta

    x_at, x_ta = read(x_a, x_t)
    c_a, c_t = x_a, x_t
    if present is not None:  # complete the pair with the reads, then read again
      c_a, c_t = torch.where(p_a, x_a, x_ta), torch.where(p_t, x_t, x_at)
      x_at, x_ta = read(c_a, c_t)
    dim = o["cbp_dim"]
    pooled = (compact_bilinear_pooling(c_a, x_at, self.sketch, dim),
              compact_bilinear_pooling(x_ta, c_t, self.sketch, dim))
    outs, stats = [], {}
    for i, p in enumerate(pooled):
      if self.tokens:
        p = self._attend(self.attention_1 if i == 0 else self.attention_2, p)
      name = f"norm_{i + 1}"
      p, stats[name] = masked_batch_norm(p, m, self.norm_scale[i], self.norm_bias[i],
                                         self.batch_stats[name], o["bn_momentum"], train)
      outs.append(p)
    fused = 0.5 * (outs[0] + outs[1])
    aux, memory = {}, self.memory
    if train or o["writer_in_eval"]:
      # Eq. 4's gradient reaches the writer's batch rows only with similarity_grad="all".
      detach = o.get("similarity_grad", "all") == "writer"
      wa, wt = (x_a.detach(), x_t.detach()) if detach else (x_a, x_t)
      new_a = self.writer_a(m_a, wa, m * p_a[:, 0])  # rows with audio write M_a
      new_t = self.writer_t(m_t, wt, m * p_t[:, 0])  # rows with text write M_t
      red = o["similarity_reduction"]
      aux["memory_similarity"] = o.get("similarity_weight", 1.0) * (
          similarity_loss(new_a, red) + similarity_loss(new_t, red))
      if train:
        memory = {"M_a": new_a.detach(), "M_t": new_t.detach()}
    return Output(fused, aux, memory, stats)


# ----------------------------------------------------------------------------- MBAF


class TorchMBAF(nn.Module):
  """MBAF (MBAF §3, Eqs. 1–13) in PyTorch; the sequential write is a Python loop."""

  def __init__(self, opts: dict, sizes: dict):
    super().__init__()
    self.opts, self.sizes = opts, sizes
    l, h, c = sizes["l"], sizes["H"], sizes["C"]
    self.read = nn.Linear(l, h, bias=False) if opts["read_projection"] else None
    widths, fan_in = sizes["mlp"], l + h
    self.compose = nn.ModuleList()
    for w in widths:
      self.compose.append(nn.Linear(fan_in, w))
      fan_in = w
    if opts["attention"] == "feature":
      self.attention_context = nn.Parameter(torch.zeros(c))
    elif opts["attention"] == "keys":
      self.attention_keys = nn.Parameter(torch.zeros(opts["attention_keys"], c))
    self.write = nn.Linear(c, h, bias=opts["write_bias"])
    self.output = nn.Linear(h, l, bias=False) if h != l else None
    self.memory = {"memory": torch.zeros(opts["slots"], h)}

  def leaves(self) -> list[Leaf]:
    """The Flax <-> PyTorch parameter map."""
    out = []
    if self.read is not None:
      out.append(Leaf(("read_kernel",), self.read.weight, None, lambda k: k.T, lambda w: w.T))
    for i, lin in enumerate(self.compose):
      out += [Leaf((f"compose_kernel_{i}",), lin.weight, None, lambda k: k.T, lambda w: w.T),
              Leaf((f"compose_bias_{i}",), lin.bias, None, _same, _same)]
    if self.opts["attention"] == "feature":
      out.append(Leaf(("attention_context",), self.attention_context, None, _same, _same))
    elif self.opts["attention"] == "keys":
      out.append(Leaf(("attention_keys",), self.attention_keys, None, _same, _same))
    out.append(Leaf(("write_kernel",), self.write.weight, None, lambda k: k.T, lambda w: w.T))
    if self.write.bias is not None:
      out.append(Leaf(("write_bias",), self.write.bias, None, _same, _same))
    if self.output is not None:
      out.append(Leaf(("output_kernel",), self.output.weight, None, lambda k: k.T,
                      lambda w: w.T))
    return out

  def head(self, x_t, x_c, memory):
    """Eqs. 2–7 for rows ``x_t`` (key input) and ``x_c`` (composer input).

    Returns:
      ``(z (..., k), h (..., H))``.
    """
    q = self.read(x_t) if self.read is not None else x_t
    z = F.softmax(q @ memory.T, dim=-1)  # Eq. 2
    b = torch.cat([x_c, z @ memory], dim=-1)  # Eq. 3 read, Eq. 4 input
    for i, lin in enumerate(self.compose):  # Eq. 4
      b = lin(b if i == 0 else F.relu(b))
    att = self.opts["attention"]
    if att == "feature":  # Eqs. 5–6
      c = b.shape[-1] * F.softmax(b * self.attention_context, dim=-1) * b
    elif att == "keys":
      keys = self.attention_keys
      c = F.softmax(b @ keys.T / b.shape[-1] ** 0.5, dim=-1) @ keys
    else:
      c = b
    h = F.relu(self.write(c))  # Eq. 7
    if self.opts["write_max"] is not None:
      h = torch.clamp_max(h, self.opts["write_max"])
    return z, h

  def complete(self, x_t, present, memory):
    """Absent modes: the absent columns of ``x_t`` (zeros there) take the read ``m_r`` of
    Eqs. 2–3 keyed by it (mapped to width l by the output layer when ``H ≠ l``)."""
    q = self.read(x_t) if self.read is not None else x_t
    m_r = F.softmax(q @ memory.T, dim=-1) @ memory
    if self.output is not None:
      m_r = self.output(m_r)
    return torch.where(present, x_t, m_r)

  def forward(self, *modes, mask=None, modality_mask=None, train: bool = False) -> Output:
    """MBAF on ``(B, d_i)`` modes; writes the memory when ``train`` (``write`` option).

    ``modality_mask`` ``(B, M)`` bool (None: all present): absent slices of ``x_t`` come from a
    first read (:meth:`complete`), rows with a memory mode absent do not write, an absent
    pass-through mode's output slice is zeros; a row with no mode present is padding.

    Returns:
      :class:`Output` (``aux`` and ``batch_stats`` empty).
    """
    b = modes[0].shape[0]
    present, m = presence(modality_mask, mask, b)
    sel = self.opts["memory_modes"]
    sel = tuple(range(len(modes))) if sel is None else tuple(sel)
    cross = self.opts["read"] == "cross"
    m_write = m
    if present is not None:
      zero = torch.zeros((), dtype=modes[0].dtype)
      modes = [torch.where(present[:, i:i + 1], x, zero) for i, x in enumerate(modes)]
      cols = torch.cat([present[:, i:i + 1].expand(b, modes[i].shape[1]) for i in sel], -1)
      m_write = torch.where(present[:, list(sel)].all(1), m, torch.zeros(()))
    x_t = torch.cat([modes[i] for i in sel], dim=-1)  # Eq. 1 / Eq. 13
    widths = [modes[i].shape[1] for i in sel]

    def composer_input(x):  # Eq. 11: the modes of x_t in reversed order
      return torch.cat(list(reversed(torch.split(x, widths, dim=-1))), -1) if cross else x

    memory = self.memory["memory"]
    if train and self.opts["write"] == "scan":  # faithful: sample t reads M_{t−1}
      hs, xs = [], []
      for t in range(b):
        x = x_t[t] if present is None else self.complete(x_t[t], cols[t], memory)
        z, h = self.head(x, composer_input(x), memory)
        new = memory * (1 - z[:, None]) + z[:, None] * h[None, :]  # Eq. 8
        memory = torch.where(m_write[t] > 0, new, memory)
        hs.append(h)
        xs.append(x)
      h, x_t = torch.stack(hs), torch.stack(xs)
    else:
      if present is not None:
        x_t = self.complete(x_t, cols, memory)
      z, h = self.head(x_t, composer_input(x_t), memory)
      if train:  # "batched": every sample read M_0; the B writes of Eq. 8 applied in order
        for t in range(b):
          new = memory * (1 - z[t][:, None]) + z[t][:, None] * h[t][None, :]
          memory = torch.where(m_write[t] > 0, new, memory)
    if self.output is not None:
      h = self.output(h)
    o = x_t + h  # Eq. 9
    pieces, start = {}, 0
    for i in sel:
      pieces[i] = o[:, start:start + modes[i].shape[1]]
      start += modes[i].shape[1]
    fused = torch.cat([pieces.get(i, x) for i, x in enumerate(modes)], dim=-1)
    fused = torch.where((m > 0)[:, None], fused, torch.zeros((), dtype=fused.dtype))
    return Output(fused, {}, {"memory": memory}, {})


# ----------------------------------------------------------------------------- Naive


class TorchNaive(nn.Module):
  """NaiveFusion: ``x_1 ⊕ … ⊕ x_n``, padded rows zeroed; an absent mode's slice is zeros or
  its learned embedding ``absent_{i}``."""

  def __init__(self, absent_dims: tuple = ()):
    super().__init__()
    self.absent = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in absent_dims])

  def leaves(self) -> list[Leaf]:
    return [Leaf((f"absent_{i}",), e, None, _same, _same) for i, e in enumerate(self.absent)]

  def forward(self, *modes, mask=None, modality_mask=None, train: bool = False) -> Output:
    del train
    present, m = presence(modality_mask, mask, modes[0].shape[0])
    if present is not None:
      modes = [torch.where(present[:, i:i + 1], x,
                           self.absent[i] if len(self.absent) else torch.zeros((), dtype=x.dtype))
               for i, x in enumerate(modes)]
    fused = torch.cat(modes, dim=-1)
    if mask is not None or present is not None:
      fused = torch.where((m > 0)[:, None], fused, torch.zeros((), dtype=fused.dtype))
    return Output(fused, {}, {}, {})


# ----------------------------------------------------------------------------- entry points


def from_flax(variables, layer: fnn.Module) -> nn.Module:
  """A PyTorch module holding the same parameters, memory, count sketch and batch stats.

  Args:
    variables: the Flax layer's variables (``init``'s output, or a later state).
    layer: the Flax module (``DualMemoryFusion``, ``MBAF`` or ``NaiveFusion``); its fields
      choose the options.

  Returns:
    :class:`TorchDMF`, :class:`TorchMBAF` or :class:`TorchNaive` (float32, on the CPU;
    ``.to(device)`` moves only the parameters — use :func:`to_device`).

  Raises:
    NotImplementedError: a layer, field or field value the reference does not mirror.
  """
  if isinstance(layer, DualMemoryFusion):
    opts = options(layer, DMF_OPTIONS)
    mem = {k: np.asarray(v) for k, v in variables["memory"].items()}
    d = mem["M_a"].shape[1]
    ref = TorchDMF(opts, d)
    ref.memory = {k: _tensor(v) for k, v in mem.items()}
    sk = variables["constants"]["cbp"]
    ref.sketch = {k: _tensor(v).long() if k.startswith("hashes") else _tensor(v)
                  for k, v in sk.items()}
    ref.batch_stats = {n: {k: _tensor(v) for k, v in s.items()}
                       for n, s in variables["batch_stats"].items()}
  elif isinstance(layer, MBAF):
    opts = options(layer, MBAF_OPTIONS)
    params = variables["params"]
    h = np.asarray(variables["memory"]["memory"]).shape[1]
    in_width = np.asarray(params["compose_kernel_0"]).shape[0] - h
    ref = TorchMBAF(opts, _mbaf_sizes(opts, in_width))
    ref.memory = {"memory": _tensor(variables["memory"]["memory"])}
  elif isinstance(layer, NaiveFusion):
    opts = options(layer, NAIVE_OPTIONS)
    params = variables.get("params", {})
    if opts["absent"] == "zeros":
      return TorchNaive()
    ref = TorchNaive(tuple(np.asarray(params[f"absent_{i}"]).shape[0]
                           for i in range(len(params))))
  else:
    raise NotImplementedError(f"{type(layer).__name__} has no PyTorch reference.")
  ref.flax_shapes = load_params(ref.leaves(), variables["params"])
  return ref


def _mbaf_sizes(opts: dict, l: int) -> dict:
  """MBAF's widths (``MBAF.sizes``) from its options and ``l``, the memory inputs' total width.

  Returns:
    ``{"l", "H", "C", "mlp"}``: memory width ``H``, composition width ``C``, MLP layer widths.
  """
  h = l if opts["hidden"] is None else opts["hidden"]
  c = h if opts["compose_dim"] is None else opts["compose_dim"]
  return {"l": l, "H": h, "C": c, "mlp": tuple(opts["mlp_dims"]) + (c,)}


def to_device(ref: nn.Module, device) -> nn.Module:
  """Moves a reference module, its memory, sketch and batch stats to ``device``."""
  ref = ref.to(device)
  ref.memory = {k: v.to(device) for k, v in ref.memory.items()}
  if isinstance(ref, TorchDMF):
    ref.sketch = {k: v.to(device) for k, v in ref.sketch.items()}
    ref.batch_stats = {n: {k: v.to(device) for k, v in s.items()}
                       for n, s in ref.batch_stats.items()}
  return ref


def flax_grads(ref: nn.Module) -> dict:
  """The ``.grad`` of every parameter, in the Flax ``params`` layout (zeros where no gradient
  reached a parameter).

  Returns:
    A nested dict of numpy arrays with the Flax parameter paths.
  """
  out: dict = {}
  for leaf in ref.leaves():
    g = leaf.param.grad
    g = torch.zeros_like(leaf.param) if g is None else g
    g = g if leaf.rows is None else g[leaf.rows]
    _set(out, leaf.path, leaf.to_flax(g.detach().cpu().numpy()).reshape(ref.flax_shapes[leaf.path]))
  return out


class _GumbelKey(fnn.Module):
  """The key a top-level module's first ``make_rng('gumbel')`` returns."""

  @fnn.compact
  def __call__(self):
    return self.make_rng("gumbel")


def dmf_gumbel_noise(layer: DualMemoryFusion, rng, batch: int):
  """The Gumbel noise ``DualMemoryFusion`` draws for ``rngs={'gumbel': rng}`` (single device).

  The layer splits its ``'gumbel'`` key into the audio and text readers' keys and draws
  ``sample_gumbel(k, (B, n))`` with each (``DualMemoryFusion._noise``).

  Args:
    layer: the Flax layer (its ``slots``).
    rng: the ``'gumbel'`` key passed to ``apply``.
    batch: the batch size ``B``.

  Returns:
    ``(g_a, g_t)`` as float32 torch tensors of shape ``(B, n)``.
  """
  key = _GumbelKey().apply({}, rngs={"gumbel": rng})
  k_a, k_t = jax.random.split(key)
  shape = (batch, layer.slots)
  return (_tensor(ops.sample_gumbel(k_a, shape)), _tensor(ops.sample_gumbel(k_t, shape)))


# ----------------------------------------------------------------------------- self-check


def self_check() -> list[dict]:
  """Each layer (DMF train, MBAF scan and batched, naive) in Flax and in PyTorch on the same
  small inputs with a padded row: the largest deviation of the output and the new memory.

  Returns:
    One record per layer.
  """
  rng = np.random.default_rng(0)
  mask = np.array([1, 1, 0, 1], np.float32)
  xs = [rng.normal(size=(4, 16)).astype(np.float32) for _ in range(2)]
  layers = [("dmf", DualMemoryFusion(slots=6, cbp_dim=32, attention_tokens=4, num_heads=2,
                                     writer_ff_dim=24)),
            ("mbaf_scan", MBAF(slots=4, write="scan")),
            ("mbaf_batched", MBAF(slots=4, write="batched")),
            ("naive", NaiveFusion())]
  out = []
  for name, layer in layers:
    variables = layer.init({"params": jax.random.key(0), "memory": jax.random.key(1)}, *xs)
    key = jax.random.key(2)
    train = name != "naive"
    got, new = layer.apply(variables, *xs, mask=jnp.asarray(mask), train=train,
                           rngs={"gumbel": key}, mutable=["memory", "batch_stats"])
    ref = from_flax(variables, layer)
    kw = {"noise": dmf_gumbel_noise(layer, key, 4)} if name == "dmf" else {}
    with torch.no_grad():
      t = ref(*map(torch.from_numpy, xs), mask=torch.from_numpy(mask), train=train, **kw)
    rec = {"bench": "torch_reference_check", "layer": name,
           "max_abs_dev_fused": float(np.max(np.abs(t.fused.numpy() - np.asarray(got.fused))))}
    if "memory" in new:
      rec["max_abs_dev_memory"] = max(
          float(np.max(np.abs(t.memory[k].numpy() - np.asarray(v))))
          for k, v in new["memory"].items())
    out.append(rec)
  return out


if __name__ == "__main__":
  for record in self_check():
    print(json.dumps(record), flush=True)
