"""DualMemoryFusion: DMF's dual-memory fusion layer (DMF §2.2–2.3, Eqs. 1–4).

Two explicit memories ``M_a (n_a, d)`` (audio) and ``M_t (n_t, d)`` (text) live in the
``'memory'`` collection. One call runs three sub-modules:

* **reader** (Eqs. 1–2), cross-modal: the audio embedding reads the *text* memory
  (``x_{a,t}``) and the text embedding reads the *audio* memory (``x_{t,a}``);
* **composer** (Eq. 3): one shared compact bilinear pooling layer,
  ``x_p1 = CBP(x_a, x_{a,t})``, ``x_p2 = CBP(x_{t,a}, x_t)``, each through its own
  self-attention and batch norm; ``x_f`` = their mean;
* **writer**: per memory, ``concat(M, batch)`` → one transformer encoder layer →
  gPool top-k back to ``n`` slots → the new memory ``M'``.

Write-then-carry (docs/ARCHITECTURE.md): with ``train=True`` the new memories are
written to ``'memory'`` (when it is mutable) and ``aux["memory_similarity"]`` is
DMF Eq. 4's similarity term on the *new* memories; the caller carries
``stop_gradient(new_vars["memory"])`` into the next step ("we assign it back to the
memory variable only at the beginning of the next iteration", DMF §2.2). With
``train=False`` memory is only read, never written (DMF §2.2, "the memory update
process is not carried out during inference").
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbaf_jax import ops
from mbaf_jax.fusion.common import (CompactBilinearPooling, FusionOutput, MaskedBatchNorm,
                                    batch_mask, check_modes, gather_batch, local_slice,
                                    modality_presence, xavier_normal)
from mbaf_jax.ops import validation

READER_LOGITS = ("log_softmax", "log_clamp", "log_softplus")
COMPOSER_ATTENTION = ("tokens", "none")
SIMILARITY_GRAD = ("writer", "all")
READ_MODES = ("gumbel", "uniform")
DIAGNOSTICS = "diagnostics"  # variable collection of the training-dynamics scalars (sow)


def reader_logits(scores, mode: str = "log_softmax", eps: float = 1e-6):
  """``log π`` of DMF Eq. 2 from the read scores ``x_tmp``; the paper writes ``log(x_tmp)``.

  ``x_tmp = x M^T`` takes negative values, where ``log`` is undefined. Readings:

  * ``"log_softmax"`` (default): ``π = softmax(x_tmp)``, ``log π = x_tmp − logsumexp(x_tmp)``;
    Eq. 2 then equals ``softmax((x_tmp + g) / τ)`` (the constant cancels), i.e. the
    standard Gumbel-softmax attention over dot-product scores.
  * ``"log_clamp"``: ``log(max(x_tmp, eps))`` — the literal formula, negative scores
    clamped to ``eps`` (those slots get almost no weight; zero gradient there).
  * ``"log_softplus"``: ``log(softplus(x_tmp))`` — a smooth positive ``π``.

  Args:
    scores: ``(..., n)`` read scores ``x_tmp``.
    mode: one of :data:`READER_LOGITS`.
    eps: clamp of ``"log_clamp"`` / floor of ``"log_softplus"``.

  Returns:
    ``(..., n)`` logits ``log π``.
  """
  validation.option(mode, READER_LOGITS, "reader_logits")
  if mode == "log_softmax":
    return jax.nn.log_softmax(scores, axis=-1)
  if mode == "log_clamp":
    return jnp.log(jnp.maximum(scores, eps))
  return jnp.log(jax.nn.softplus(scores) + eps)


class MemoryReader(nn.Module):
  """Cross-modal memory read, DMF Eqs. 1–2.

  ``x_tmp = x Mᵀ`` (B, n); ``τ = min(max(|x_tmp W + b|, τ_min), τ_max)`` per sample
  (Eq. 1, ``W ∈ R^{1×n}``: the Dense maps the n scores to one temperature);
  ``w = softmax((log π + g) / τ)`` (Eq. 2, ``log π`` from :func:`reader_logits`,
  ``g`` Gumbel noise or 0); output ``wᵀ M`` (B, d).
  """
  tau_min: float = 1e-4  # lower clamp of τ (Eq. 1)
  tau_max: float = 10.0  # upper clamp τ_max (Eq. 1)
  logits: str = "log_softmax"  # reading of log(x_tmp), see reader_logits
  dtype: Any = None  # computation dtype of the temperature Dense
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, memory, noise=None):
    """Reads ``memory`` with queries ``x``.

    Args:
      x: ``(B, d)`` embeddings of one modality.
      memory: ``(n, d)`` memory of the *other* modality.
      noise: ``(B, n)`` Gumbel noise ``g`` or ``None`` (no noise).

    Returns:
      ``(read (B, d), weights (B, n), tau (B, 1))``.
    """
    scores = jnp.einsum("bd,nd->bn", x, memory.astype(x.dtype))
    raw = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="temperature")(scores)
    tau = ops.clip_temperature(raw, self.tau_min, self.tau_max)
    logits = reader_logits(scores, self.logits)
    if noise is not None:
      logits = logits + noise.astype(logits.dtype)
    weights = ops.gumbel_softmax(logits, tau.astype(logits.dtype))
    read = jnp.einsum("bn,nd->bd", weights, memory.astype(weights.dtype))
    return read, weights, tau


def read_diagnostics(weights, tau, read, mask) -> dict:
  """Scalars that say whether a read depends on the sample (training-dynamics logs).

  Args:
    weights: ``(B, n)`` read weights of Eq. 2.
    tau: ``(B, 1)`` temperatures of Eq. 1.
    read: ``(B, d)`` the reads ``wᵀ M``.
    mask: ``(B,)`` 1 = real row.

  Returns:
    ``read_entropy``: mean entropy of the weights over real rows, divided by ``log n``
    (1 = uniform, 0 = one-hot); ``read_spread``: RMS distance of the reads from their
    batch mean, divided by the mean's norm (0 = every sample reads the same vector);
    ``tau``: mean temperature. All stop-gradient, float32.
  """
  f32 = jnp.float32
  w = jax.lax.stop_gradient(weights).astype(f32)
  r = jax.lax.stop_gradient(read).astype(f32)
  m = mask.astype(f32)
  count = jnp.maximum(jnp.sum(m), 1.0)
  n = w.shape[-1]
  entropy = -jnp.sum(w * jnp.log(jnp.maximum(w, 1e-30)), axis=-1) / np.log(n)
  mean = jnp.sum(r * m[:, None], axis=0) / count
  dev = jnp.sum(jnp.sum(jnp.square(r - mean), axis=-1) * m) / count
  return {"read_entropy": jnp.sum(entropy * m) / count,
          "read_spread": jnp.sqrt(dev) / jnp.maximum(jnp.linalg.norm(mean), 1e-12),
          "tau": jnp.sum(jax.lax.stop_gradient(tau).astype(f32)[:, 0] * m) / count}


def memory_diagnostics(old, new) -> dict:
  """Scalars that say whether a memory collapses or churns (training-dynamics logs).

  Args:
    old: ``(n, d)`` memory before the write.
    new: ``(n, d)`` memory after it.

  Returns:
    ``slot_similarity``: the mean pairwise cosine of the new slots (Eq. 4's true mean; 1 = all
    slots parallel); ``slot_norm``: their mean norm; ``mean_shift``: how far the slots' mean
    moved, ``‖mean(new) − mean(old)‖ / ‖mean(old)‖`` (what a read that ignores the sample
    changes by in one step). All stop-gradient, float32.
  """
  old = jax.lax.stop_gradient(old).astype(jnp.float32)
  new = jax.lax.stop_gradient(new).astype(jnp.float32)
  shift = jnp.linalg.norm(new.mean(0) - old.mean(0)) / jnp.maximum(
      jnp.linalg.norm(old.mean(0)), 1e-12)
  return {"slot_similarity": ops.memory_similarity_loss(new, "mean"),
          "slot_norm": jnp.mean(jnp.linalg.norm(new, axis=-1)), "mean_shift": shift}


def _flat_lecun_normal(in_axes: int):
  """Flax ``DenseGeneral``'s kernel init: LeCun normal on the (fan_in, fan_out) flattening."""
  def init(key, shape, dtype=jnp.float32):
    flat = (int(np.prod(shape[:in_axes])), int(np.prod(shape[in_axes:])))
    return nn.initializers.lecun_normal()(key, flat, dtype).reshape(shape)
  return init


class _Projection(nn.Module):
  """The ``kernel``/``bias`` of one ``nn.MultiHeadDotProductAttention`` projection."""
  shape: tuple  # kernel shape: (d, heads, head_dim) for q/k/v, (heads, head_dim, d) for out
  in_axes: int  # leading kernel axes that are contracted (1 for q/k/v, 2 for out)
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self):
    """Returns: ``(kernel, bias)`` flattened to ``(fan_in, fan_out)`` and ``(fan_out,)``."""
    kernel = self.param("kernel", _flat_lecun_normal(self.in_axes), self.shape, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, self.shape[self.in_axes:], self.param_dtype)
    fan_in = int(np.prod(self.shape[:self.in_axes]))
    return kernel.reshape(fan_in, -1), bias.reshape(-1)


class SelfAttention(nn.Module):
  """Multi-head self-attention, the same function and parameters as Flax's
  ``nn.MultiHeadDotProductAttention(num_heads)(x, x, mask=...)`` without dropout.

  The projections run as flat ``(…, d) @ (d, d)`` matmuls (Flax contracts a
  ``(d, heads, head_dim)`` kernel, whose backward pass is slower on CPU), and an optional
  key mask is applied to the scores directly. Parameter tree (``query``/``key``/``value``/
  ``out``, ``kernel``/``bias``) and initialisation are identical, so checkpoints are
  interchangeable with the Flax module.
  """
  num_heads: int  # attention heads (must divide d)
  dtype: Any = None  # computation dtype (None: promote input and parameters)
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, key_valid=None):
    """Args: x ``(..., N, d)``; key_valid optional ``(N,)`` bool, False = key masked out.

    Returns: ``(..., N, d)``.
    """
    d = x.shape[-1]
    h = self.num_heads
    dh = d // h
    qkv = [_Projection((d, h, dh), 1, self.param_dtype, name=n)()
           for n in ("query", "key", "value")]
    w_o, b_o = _Projection((h, dh, d), 2, self.param_dtype, name="out")()
    dtype = self.dtype or jnp.result_type(x, w_o)
    x = x.astype(dtype)
    split = lambda t: t.reshape(t.shape[:-1] + (h, dh))
    q, k, v = (split(x @ w.astype(dtype) + b.astype(dtype)) for w, b in qkv)
    scores = jnp.einsum("...qhd,...khd->...hqk", q / jnp.sqrt(dh).astype(dtype), k)
    if key_valid is not None:
      scores = jnp.where(key_valid, scores, jnp.finfo(dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    o = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return o.reshape(o.shape[:-2] + (d,)) @ w_o.astype(dtype) + b_o.astype(dtype)


class TokenSelfAttention(nn.Module):
  """Self-attention on a pooled vector (DMF §2.2 composer: "a separate self-attention layer").

  A CBP output is one vector per example, so "self-attention" needs tokens: the
  ``(B, D)`` vector is split into ``tokens`` chunks of ``D / tokens`` features, which
  attend to each other (multi-head dot-product attention), with a residual
  connection; the result is flattened back to ``(B, D)``. Rows (examples) never mix.
  """
  tokens: int = 16  # number of chunks the D-vector is split into
  num_heads: int = 8  # attention heads (must divide D / tokens)
  dtype: Any = None  # computation dtype
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, z):
    """Args: z ``(B, D)``. Returns: ``(B, D)`` = ``z + MHA(z as tokens)`` flattened."""
    b, dim = z.shape
    width = dim // self.tokens
    s = z.reshape(b, self.tokens, width)
    h = SelfAttention(self.num_heads, self.dtype, self.param_dtype, name="attention")(s)
    return (s + h.astype(s.dtype)).reshape(b, dim)


class WriterEncoderLayer(nn.Module):
  """One transformer encoder layer over the expanded memory (DMF §2.2 writer).

  PyTorch ``nn.TransformerEncoderLayer`` defaults (post-LN, ReLU, LayerNorm ε = 1e-5):
  ``x ← LN(x + MHA(x)); x ← LN(x + W₂ ReLU(W₁ x))``. Rows whose ``valid`` flag is 0
  (padded batch rows) are masked out as keys, so they influence no other row.
  """
  num_heads: int = 8  # attention heads (must divide d)
  ff_dim: int = 2048  # feed-forward width
  dropout_rate: float = 0.0  # dropout on attention weights and residual branches
  dtype: Any = None  # computation dtype
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, valid, train: bool = False):
    """Args: x ``(N, d)``, valid ``(N,)`` {0,1}, train (dropout on). Returns ``(N, d)``."""
    d = x.shape[-1]
    det = not train or self.dropout_rate == 0.0
    if det:  # no attention dropout: the faster, equal SelfAttention
      h = SelfAttention(self.num_heads, self.dtype, self.param_dtype,
                        name="attention")(x, valid > 0)
    else:
      mask = nn.make_attention_mask(jnp.ones(valid.shape, bool), valid > 0)  # (1, N, N)
      h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                          param_dtype=self.param_dtype,
                                          dropout_rate=self.dropout_rate, deterministic=det,
                                          name="attention")(x, x, mask=mask)
    h = nn.Dropout(self.dropout_rate, deterministic=det)(h)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm1")(x + h)
    f = nn.Dense(self.ff_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="ff1")(x)
    f = nn.Dropout(self.dropout_rate, deterministic=det)(nn.relu(f))
    f = nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name="ff2")(f)
    f = nn.Dropout(self.dropout_rate, deterministic=det)(f)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="norm2")(x + f)


class MemoryWriter(nn.Module):
  """DMF §2.2 writer for one memory: ``concat(M, X)`` → encoder layer → gPool top-k.

  ``E = concat(M, X)`` (n + m rows, "along the zeroth axis"); ``Y = Enc(E)``;
  scores ``y = Y p / ‖p‖`` (gPool, Gao & Ji 2019); ``M' = Y[idx] ⊙ sigmoid(y[idx])``
  with ``idx`` the ``k = n`` best *valid* rows (padded batch rows are never kept).
  """
  num_heads: int = 8  # encoder attention heads
  ff_dim: int = 2048  # encoder feed-forward width
  dropout_rate: float = 0.0  # encoder dropout
  dtype: Any = None  # computation dtype
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, memory, x, mask, train: bool = False):
    """Args: memory ``(n, d)``, x ``(m, d)`` (the global batch), mask ``(m,)``.

    Returns: the new memory ``(n, d)``.
    """
    n, d = memory.shape
    dtype = x.dtype
    expanded = jnp.concatenate([memory.astype(dtype), x], axis=0)
    valid = jnp.concatenate([jnp.ones((n,), mask.dtype), mask], axis=0)
    y = WriterEncoderLayer(self.num_heads, self.ff_dim, self.dropout_rate, self.dtype,
                           self.param_dtype, name="encoder")(expanded, valid, train)
    p = self.param("projection", nn.initializers.normal(1.0), (d,), self.param_dtype)
    scores = (y @ p.astype(y.dtype)) * jax.lax.rsqrt(jnp.sum(jnp.square(p)).astype(y.dtype))
    new, idx = ops.top_k_pool(y, scores, n, mask=valid > 0)
    if not self.is_initializing():
      self.sow(DIAGNOSTICS, "from_batch", jnp.mean((idx >= n).astype(jnp.float32)))
    return new


class DualMemoryFusion(nn.Module):
  """DMF's dual-memory fusion layer (DMF §2.2–2.3, Eqs. 1–4).

  Call: ``layer(x_a, x_t, mask=None, modality_mask=None, train=False)`` with audio/text embeddings
  ``(B, d)`` → ``FusionOutput(fused (B, cbp_dim), aux)``; see the module docstring for
  the reader/composer/writer and the write-then-carry contract. The classification
  head of DMF §2.3 (Dense 1024 → Dense 512 → 4 log-probabilities) is *not* part of
  this layer; it belongs to the full model (``mbaf_jax.models``), and the total loss
  is ``cross-entropy + aux["memory_similarity"]`` (Eq. 4).

  Variables: ``'params'``; ``'memory'`` {``M_a``, ``M_t``} (Xavier normal, gain 1, from
  the ``'memory'`` RNG stream if given at init, else ``'params'``); ``'batch_stats'``;
  ``'constants'`` (the shared CBP's count sketch). RNG streams: ``'gumbel'`` (training
  noise; required when ``train=True`` or ``gumbel_noise_in_eval``), ``'dropout'`` (only
  when ``dropout_rate > 0`` and training).

  Absent modes (``modality_mask``, beyond the paper; docs/PAPER_NOTES.md): an absent mode's
  embedding is replaced by the present mode's read of the absent mode's memory (audio absent:
  ``x_a ← x_{t,a}``; text absent: ``x_t ← x_{a,t}``), both readers then read again with the
  completed pair; the absent mode's writer skips the row (``M_a`` is written only from rows
  with audio, ``M_t`` only from rows with text). A row with neither mode is padding.
  """
  slots: int = 120  # n_a = n_t, memory slots (DMF: 120)
  memory_dim: int | None = None  # d_a = d_t; None: the input dim (DMF: 768); must equal it
  cbp_dim: int = 2048  # D, CBP output dim = fused width (not stated in DMF)
  tau_max: float = 10.0  # τ_max of Eq. 1
  tau_min: float = 1e-4  # lower clamp of Eq. 1
  num_heads: int = 8  # heads of the writer encoder and composer self-attention
  writer_ff_dim: int = 2048  # writer encoder feed-forward width (PyTorch default)
  dropout_rate: float = 0.0  # writer encoder dropout (DMF does not state one)
  attention_tokens: int = 16  # composer self-attention: chunks of the D-vector
  composer_attention: str = "tokens"  # "tokens" (TokenSelfAttention) or "none" (ablation)
  similarity_reduction: str = "paper"  # Eq. 4 divisor: "paper" n(n−1), "mean" n(n−1)/2
  gumbel_noise_in_eval: bool = False  # add Gumbel noise in evaluation too
  reader_logits: str = "log_softmax"  # reading of Eq. 2's log(x_tmp), see reader_logits
  writer_in_eval: bool = False  # also compute the (unwritten) new memory + aux in eval
  # Where Eq. 4's gradient goes: "writer" (the writer's parameters only: its batch input is
  # stop-gradient, DMF §2.3 "to train the writer sub-module") or "all" (also into the encoders
  # through the writer's input rows). docs/DMF.md "Why DMF lost to concatenation".
  similarity_grad: str = "writer"
  similarity_weight: float = 1.0  # weight of Eq. 4's term in aux (DMF: 1; 0: ablation, off)
  read_mode: str = "gumbel"  # "gumbel" (Eqs. 1–2) | "uniform" (ablation: read = slot mean)
  bn_momentum: float = 0.9  # composer batch-norm running-average decay (flax convention)
  axis_name: str | None = None  # pmap/shard_map batch axis: global writer batch, synced BN
  dtype: Any = None  # computation dtype (None: the inputs' dtype)
  param_dtype: Any = jnp.float32  # parameter and memory dtype

  def output_dim(self, *in_dims: int) -> int:
    """Width of ``fused``: ``cbp_dim`` (independent of the input widths)."""
    if in_dims and len(in_dims) != 2:
      raise ValueError(f"DualMemoryFusion fuses exactly 2 modes (x_a, x_t), got in_dims={in_dims}.")
    return validation.positive_int(self.cbp_dim, "cbp_dim")

  def _check_options(self, d: int) -> None:
    n = validation.positive_int(self.slots, "slots")
    if n < 2:
      raise ValueError(f"slots must be >= 2 (Eq. 4 compares pairs of slots), got {n}.")
    dim = validation.positive_int(self.cbp_dim, "cbp_dim")
    heads = validation.positive_int(self.num_heads, "num_heads")
    validation.positive_int(self.writer_ff_dim, "writer_ff_dim")
    validation.option(self.similarity_reduction, ("paper", "mean"), "similarity_reduction")
    validation.option(self.reader_logits, READER_LOGITS, "reader_logits")
    validation.option(self.composer_attention, COMPOSER_ATTENTION, "composer_attention")
    validation.option(self.similarity_grad, SIMILARITY_GRAD, "similarity_grad")
    validation.option(self.read_mode, READ_MODES, "read_mode")
    if not 0 < self.tau_min <= self.tau_max:
      raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={self.tau_min}, "
                       f"tau_max={self.tau_max}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    if d % heads:
      raise ValueError(f"num_heads={heads} must divide the memory dim d={d} "
                       f"(writer attention).")
    if self.composer_attention == "tokens":
      tokens = validation.positive_int(self.attention_tokens, "attention_tokens")
      if dim % tokens or (dim // tokens) % heads:
        raise ValueError(f"attention_tokens={tokens} must divide cbp_dim={dim} and "
                         f"num_heads={heads} must divide cbp_dim/attention_tokens; e.g. "
                         f"cbp_dim=2048, attention_tokens=16, num_heads=8.")

  def _memory(self, name: str, n: int, d: int):
    if not self.has_variable("memory", name) and not self.is_initializing():
      raise ValueError(f"DualMemoryFusion found no memory '{name}' in the 'memory' "
                       f"collection; pass the variables from init (including "
                       f"variables['memory']) to apply.")

    def init():
      key = self.make_rng("memory") if self.has_rng("memory") else self.make_rng("params")
      return xavier_normal(1.0)(key, (n, d), self.param_dtype)

    var = self.variable("memory", name, init)
    if var.value.shape != (n, d):
      raise ValueError(f"memory '{name}' has shape {var.value.shape} but the layer needs "
                       f"(slots, d) = {(n, d)} for inputs of width d={d}; the variables "
                       f"do not belong to this configuration.")
    return var

  def _noise(self, b: int, n_a: int, n_t: int, add: bool):
    if not add:
      return None, None
    if not self.has_rng("gumbel"):
      if self.is_initializing():
        return None, None
      raise ValueError("DualMemoryFusion needs a 'gumbel' RNG when train=True (or "
                       "gumbel_noise_in_eval=True): apply(..., rngs={'gumbel': key}).")
    k_a, k_t = jax.random.split(self.make_rng("gumbel"))
    total = b if self.axis_name is None else b * jax.lax.axis_size(self.axis_name)
    # Draw the global batch's noise and keep this device's rows, so a pmap run
    # equals the single-device run.
    g_a = local_slice(ops.sample_gumbel(k_a, (total, n_t)), b, self.axis_name)
    g_t = local_slice(ops.sample_gumbel(k_t, (total, n_a)), b, self.axis_name)
    return g_a, g_t

  @nn.compact
  def __call__(self, *modes, mask=None, modality_mask=None,
               train: bool = False) -> FusionOutput:
    """Fuses audio and text embeddings through the two memories (DMF Eqs. 1–4).

    Args:
      *modes: exactly ``(x_a, x_t)``: the ``(B, d)`` audio and text embeddings.
      mask: optional ``(B,)`` mask, 1 = real row. Padded rows are zeroed on entry and
        excluded from the writer, the batch-norm statistics and the loss.
      modality_mask: optional ``(B, 2)`` bool, True = mode present (columns audio, text;
        None: both present). An absent embedding is replaced by the present mode's memory
        read and never reaches the output, the memories, Eq. 4 or the batch statistics.
      train: write the new memories and return the similarity loss; Gumbel noise on.

    Returns:
      ``FusionOutput(fused (B, cbp_dim), aux)`` with
      ``aux = {"memory_similarity": sim(M_a') + sim(M_t')}`` when training (Eq. 4,
      first term, on the new memories), else ``{}``.
    """
    x_a, x_t = check_modes(modes, "DualMemoryFusion", count=2,
                           names=("x_a", "x_t"))
    if x_a.shape[-1] != x_t.shape[-1]:
      raise ValueError(f"x_a has width {x_a.shape[-1]} but x_t has width {x_t.shape[-1]}; "
                       f"DMF's cross-modal reader multiplies x_a by M_t (and x_t by M_a), "
                       f"so both must have the memory dim d. Project them to one width first.")
    d = x_a.shape[-1]
    if self.memory_dim is not None and self.memory_dim != d:
      raise ValueError(f"memory_dim={self.memory_dim} but the inputs x_a, x_t have width {d}; "
                       f"use memory_dim=None (the input width) or project the inputs.")
    self._check_options(d)
    b, n = x_a.shape[0], self.slots
    m = batch_mask(mask, b)
    present, m = modality_presence(modality_mask, b, 2, m)  # no mode present: padding
    dtype = self.dtype or jnp.promote_types(jnp.result_type(x_a, x_t), jnp.float32)
    keep = m[:, None] > 0
    x_a = jnp.where(keep, x_a.astype(dtype), 0)  # padded rows: garbage never enters
    x_t = jnp.where(keep, x_t.astype(dtype), 0)
    if present is not None:  # absent values never enter either
      x_a = jnp.where(present[:, :1], x_a, 0)
      x_t = jnp.where(present[:, 1:], x_t, 0)

    mem_a = self._memory("M_a", n, d)
    mem_t = self._memory("M_t", n, d)
    # Memory is state, not a parameter: no gradient flows into the carried memory.
    m_a = jax.lax.stop_gradient(mem_a.value).astype(dtype)
    m_t = jax.lax.stop_gradient(mem_t.value).astype(dtype)

    # Reader (Eqs. 1–2), cross-modal.
    g_a, g_t = self._noise(b, n, n, train or self.gumbel_noise_in_eval)
    rkw = dict(tau_min=self.tau_min, tau_max=self.tau_max, logits=self.reader_logits,
               dtype=self.dtype, param_dtype=self.param_dtype)
    reader_a = MemoryReader(**rkw, name="reader_a")
    reader_t = MemoryReader(**rkw, name="reader_t")

    def read(q_a, q_t):
      x_at, w_a, tau_a = reader_a(q_a, m_t, g_a)  # audio reads text
      x_ta, w_t, tau_t = reader_t(q_t, m_a, g_t)  # text reads audio
      if self.read_mode == "uniform":  # ablation: every sample reads the slot mean
        x_at = jnp.broadcast_to(jnp.mean(m_t, axis=0), x_at.shape)
        x_ta = jnp.broadcast_to(jnp.mean(m_a, axis=0), x_ta.shape)
      return x_at, w_a, tau_a, x_ta, w_t, tau_t

    x_at, w_a, tau_a, x_ta, w_t, tau_t = read(x_a, x_t)
    c_a, c_t = x_a, x_t  # the composer's audio and text embeddings
    if present is not None:
      # An absent embedding is the present mode's read of its memory: audio absent → x_{t,a}
      # (text query, audio memory), text absent → x_{a,t}; then both read with the full pair.
      c_a = jnp.where(present[:, :1], x_a, x_ta)
      c_t = jnp.where(present[:, 1:], x_t, x_at)
      x_at, w_a, tau_a, x_ta, w_t, tau_t = read(c_a, c_t)
    diagnose = not self.is_initializing()  # scalars for training logs, never init variables
    for name, w, tau, read in (("a", w_a, tau_a, x_at), ("t", w_t, tau_t, x_ta)):
      for key, value in (read_diagnostics(w, tau, read, m).items() if diagnose else ()):
        self.sow(DIAGNOSTICS, f"{key}_{name}", value)

    # Composer (Eq. 3): one shared CBP, order kept.
    cbp = CompactBilinearPooling(self.cbp_dim, name="cbp")
    pooled = (cbp(c_a, x_at), cbp(x_ta, c_t))
    outs = []
    for i, p in enumerate(pooled, start=1):
      if self.composer_attention == "tokens":
        p = TokenSelfAttention(self.attention_tokens, self.num_heads, self.dtype,
                               self.param_dtype, name=f"attention_{i}")(p)
      p = MaskedBatchNorm(momentum=self.bn_momentum, axis_name=self.axis_name,
                          dtype=dtype, param_dtype=self.param_dtype,
                          name=f"norm_{i}")(p, m, use_running_average=not train)
      outs.append(p)
    fused = 0.5 * (outs[0] + outs[1])

    aux = {}
    if train or self.writer_in_eval or self.is_initializing():
      # Writer: the global batch (all devices under pmap/shard_map). A memory is written only
      # from the rows that have its mode (never from a substituted read).
      if present is None:
        xa_g, m_g = gather_batch(x_a, m, self.axis_name)
        xt_g, _ = gather_batch(x_t, m, self.axis_name)
        m_ga = m_gt = m_g
      else:
        zero = jnp.zeros((), m.dtype)
        xa_g, m_ga = gather_batch(x_a, jnp.where(present[:, 0], m, zero), self.axis_name)
        xt_g, m_gt = gather_batch(x_t, jnp.where(present[:, 1], m, zero), self.axis_name)
      if self.similarity_grad == "writer":  # Eq. 4 trains the writer, not the encoders
        xa_g, xt_g = jax.lax.stop_gradient(xa_g), jax.lax.stop_gradient(xt_g)
      wkw = dict(num_heads=self.num_heads, ff_dim=self.writer_ff_dim,
                 dropout_rate=self.dropout_rate, dtype=self.dtype,
                 param_dtype=self.param_dtype)
      new_a = MemoryWriter(**wkw, name="writer_a")(m_a, xa_g, m_ga, train)
      new_t = MemoryWriter(**wkw, name="writer_t")(m_t, xt_g, m_gt, train)
      f32 = jnp.float32
      aux["memory_similarity"] = self.similarity_weight * (
          ops.memory_similarity_loss(new_a.astype(f32), self.similarity_reduction)
          + ops.memory_similarity_loss(new_t.astype(f32), self.similarity_reduction))
      for name, old, mem in ((("a", m_a, new_a), ("t", m_t, new_t)) if diagnose else ()):
        for key, value in memory_diagnostics(old, mem).items():
          self.sow(DIAGNOSTICS, f"{key}_{name}", value)
      if train and not self.is_initializing() and self.is_mutable_collection("memory"):
        mem_a.value = jax.lax.stop_gradient(new_a).astype(self.param_dtype)
        mem_t.value = jax.lax.stop_gradient(new_t).astype(self.param_dtype)
      if not train:
        aux = {} if not self.writer_in_eval else aux
    return FusionOutput(fused=fused.astype(dtype), aux=aux)
