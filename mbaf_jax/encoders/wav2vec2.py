"""Native Flax Wav2Vec2 (Baevski et al. 2020), weight-compatible with Hugging Face checkpoints.

DMF §2.1 uses Wav2Vec2-*base* (SUPERB speaker id) as its audio encoder and the masked mean of the
last hidden state as the 768-d utterance embedding. Both architectures of the reference
implementation are supported (Hugging Face's own Flax port rejects the first):

* base: ``feat_extract_norm="group"`` (GroupNorm on the first conv only), post-LN encoder
  (``do_stable_layer_norm=False``): pos-conv added, ``encoder.layer_norm``, then layers of
  attention → residual → ``layer_norm`` → feed-forward residual → ``final_layer_norm``.
* large/"stable": ``feat_extract_norm="layer"`` (LayerNorm after every conv), pre-LN layers and a
  final ``encoder.layer_norm`` (``do_stable_layer_norm=True``).

Parameter paths mirror the Hugging Face module paths (``encoder/layers_0/attention/q_proj``), so
``hf_loading`` is a path mapping plus leaf rules.

Padding: the frame mask comes from the sample mask through the conv length formula; padded frames
are zeroed before the positional conv, masked out of attention and of the pooled mean, as in the
reference. The reference's first-layer GroupNorm (base) takes statistics over padded samples too;
``masked_group_norm=True`` restricts them to real samples (then padding changes nothing).
Options beyond the reference: ``dtype``/``param_dtype``, ``remat``, ``layerdrop`` (computed with
``jnp.where`` so shapes stay static), ``stop_gradient_feature_encoder`` (skip the backward pass of
the frozen conv stack, DMF §2.1), ``pos_conv_impl`` (how the grouped positional conv is
differentiated: ``ops.conv.grouped_conv1d``, a fast weight gradient on CPU). SpecAugment in
training follows the reference (``apply_spec_augment``, ``mask_time_*`` spans →
``masked_spec_embed``, ``mask_feature_*`` → 0), drawn from the 'dropout' stream. Not
implemented: adapters.
"""
import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbaf_jax.encoders.outputs import (EncoderOutput, attention_bias, dot_product_attention,
                                       get_activation, masked_mean)
from mbaf_jax.ops import conv as conv_ops


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """Wav2Vec2 hyper-parameters; field names and meanings follow Hugging Face's ``config.json``."""
  hidden_size: int = 768  # transformer width (768 base)
  num_hidden_layers: int = 12  # transformer layers
  num_attention_heads: int = 12  # attention heads
  intermediate_size: int = 3072  # feed-forward width
  hidden_act: str = "gelu"  # feed-forward activation ("gelu" = exact erf)
  conv_dim: Sequence[int] = (512,) * 7  # channels of each feature-encoder conv
  conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2)  # kernel of each conv
  conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2)  # stride of each conv
  conv_bias: bool = False  # bias in the feature-encoder convs
  feat_extract_norm: str = "group"  # "group" (first conv only) or "layer" (every conv)
  feat_extract_activation: str = "gelu"  # conv + positional-conv activation
  num_conv_pos_embeddings: int = 128  # positional conv kernel size K
  num_conv_pos_embedding_groups: int = 16  # positional conv groups
  do_stable_layer_norm: bool = False  # False: post-LN (base); True: pre-LN (large)
  layer_norm_eps: float = 1e-5  # epsilon of the transformer/projection LayerNorms
  hidden_dropout: float = 0.1  # dropout on residual branches and after the pos-conv sum
  attention_dropout: float = 0.1  # dropout on attention probabilities
  activation_dropout: float = 0.0  # dropout after the feed-forward activation
  feat_proj_dropout: float = 0.0  # dropout after the feature projection
  layerdrop: float = 0.1  # probability of skipping a whole layer in training
  apply_spec_augment: bool = True  # SpecAugment on the projected features in training
  mask_time_prob: float = 0.05  # ≈ fraction of frames in masked time spans (0 = off)
  mask_time_length: int = 10  # frames per time span
  mask_time_min_masks: int = 2  # minimum number of time spans
  mask_feature_prob: float = 0.0  # ≈ fraction of channels zeroed (0 = off)
  mask_feature_length: int = 10  # channels per feature span
  mask_feature_min_masks: int = 0  # minimum number of feature spans
  dtype: Any = jnp.float32  # compute dtype (bf16 on accelerators)
  param_dtype: Any = jnp.float32  # parameter dtype
  remat: bool = False  # nn.remat (gradient checkpointing) on each transformer layer
  stop_gradient_feature_encoder: bool = False  # no backprop through the frozen conv encoder
  masked_group_norm: bool = False  # GroupNorm stats over real samples only (reference: all)
  pos_conv_impl: str = "auto"  # positional conv: "auto", "xla", "per_group" (ops.conv)

  def __post_init__(self):
    for name in ("conv_dim", "conv_kernel", "conv_stride"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
      raise ValueError(f"Wav2Vec2Config: conv_dim, conv_kernel and conv_stride must have the same "
                       f"length, got {len(self.conv_dim)}, {len(self.conv_kernel)}, "
                       f"{len(self.conv_stride)}.")
    if self.feat_extract_norm not in ("group", "layer"):
      raise ValueError(f"Wav2Vec2Config: feat_extract_norm={self.feat_extract_norm!r}; expected "
                       "'group' or 'layer'.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"Wav2Vec2Config: hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}.")
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f"Wav2Vec2Config: hidden_size={self.hidden_size} is not divisible by "
                       f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}.")
    for name in ("hidden_dropout", "attention_dropout", "activation_dropout",
                 "feat_proj_dropout", "layerdrop", "mask_time_prob", "mask_feature_prob"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"Wav2Vec2Config: {name}={getattr(self, name)} must be in [0, 1).")
    get_activation(self.hidden_act)
    get_activation(self.feat_extract_activation)
    if self.pos_conv_impl not in conv_ops.IMPLS:
      raise ValueError(f"Wav2Vec2Config: pos_conv_impl={self.pos_conv_impl!r}; expected one of "
                       f"{conv_ops.IMPLS}.")

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "Wav2Vec2Config":
    """Builds a config from a Hugging Face ``config.json`` dict (unknown keys are ignored).

    Raises ValueError for features this port does not implement (adapters).
    """
    if d.get("add_adapter") or d.get("adapter_attn_dim") is not None:
      raise ValueError("config.json: add_adapter/adapter_attn_dim are set; Wav2Vec2 adapters are "
                       "not supported by mbaf_jax. Use a checkpoint without adapters.")
    names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "param_dtype", "remat",
                                                        "stop_gradient_feature_encoder",
                                                        "masked_group_norm", "pos_conv_impl"}
    kwargs = {k: d[k] for k in names if k in d}
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def base(cls, **overrides) -> "Wav2Vec2Config":
    """wav2vec2-base (95M parameters): group norm, post-LN, 12 × 768."""
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides) -> "Wav2Vec2Config":
    """A small config for tests and the demo (hop 80 samples, receptive field 85 samples)."""
    kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4),
                  conv_stride=(5, 4, 4), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=4, mask_time_prob=0.0)
    kwargs.update(overrides)
    return cls(**kwargs)


def feat_extract_output_lengths(lengths, conv_kernel, conv_stride):
  """Number of frames after the conv stack: ``L ← floor((L − k) / s) + 1`` per conv (≥ 0).

  Args:
    lengths: int array (any shape) or int of input sample counts.
    conv_kernel: kernel sizes; conv_stride: strides.

  Returns:
    Frame counts, same shape as ``lengths``.
  """
  xp = jnp if isinstance(lengths, jax.Array) else np
  out = lengths
  for k, s in zip(conv_kernel, conv_stride):
    out = xp.maximum((out - k) // s + 1, 0)
  return out


def frame_mask(attention_mask, num_frames, conv_kernel, conv_stride):
  """Frame-level mask from a sample-level mask through the conv length formula.

  A frame is valid when its index is below the conv output length of ``sum(attention_mask)``
  (the reference's ``_get_feature_vector_attention_mask``; padding is assumed at the end).

  Args:
    attention_mask: (B, S) {0,1} sample mask.
    num_frames: T, the number of frames the conv stack produced.
    conv_kernel, conv_stride: the conv stack.

  Returns:
    (B, T) int32 mask.
  """
  lengths = jnp.sum(jnp.asarray(attention_mask).astype(jnp.int32), axis=-1)
  out_lengths = feat_extract_output_lengths(lengths, conv_kernel, conv_stride)
  return (jnp.arange(num_frames)[None, :] < out_lengths[:, None]).astype(jnp.int32)


def compute_span_mask(key, lengths, size, prob, span, min_spans):
  """Random SpecAugment span mask (Park et al. 2019), the reference's ``_compute_mask_indices``.

  Per row: ``n = int(prob · length / span + ε)`` spans (ε ~ U[0, 1) shared by the batch, at least
  ``min_spans``, at most ``size // span`` and ``length − span + 1``), with distinct starts drawn
  uniformly from ``[0, length − span]``; the mask is the union of the spans ``[start, start+span)``.
  Fixed shapes: starts are the top-``n_max`` of uniform scores, kept by rank ``< n``.

  Args:
    key: PRNG key.
    lengths: (B,) int valid lengths (≤ size).
    size: axis length (static).
    prob, span, min_spans: as in the config (``mask_time_*`` / ``mask_feature_*``).

  Returns:
    (B, size) bool mask, True = masked.
  """
  if span < 1 or span > size:
    raise ValueError(f"Wav2Vec2 SpecAugment: mask length {span} must be in [1, {size}] (the "
                     "number of frames/channels); lower mask_time_length/mask_feature_length, set "
                     "apply_spec_augment=False, or use longer inputs.")
  n_max = min(max(int(prob * size / span + 1.0), min_spans), size // span)
  if n_max == 0:
    return jnp.zeros((lengths.shape[0], size), bool)
  k_eps, k_pick = jax.random.split(key)
  eps = jax.random.uniform(k_eps, ())
  n = jnp.floor(prob * lengths / span + eps).astype(jnp.int32)
  n = jnp.maximum(n, min_spans)
  n = jnp.where(n * span > size, size // span, n)
  n = jnp.where(lengths - (span - 1) < n, jnp.maximum(lengths - (span - 1), 0), n)
  positions = jnp.arange(size)
  valid_start = positions[None, :] <= (lengths[:, None] - span)
  scores = jnp.where(valid_start, jax.random.uniform(k_pick, (lengths.shape[0], size)), -1.0)
  _, starts = jax.lax.top_k(scores, n_max)
  keep = jnp.arange(n_max)[None, :] < n[:, None]
  onehot = jnp.zeros((lengths.shape[0], size), jnp.int32).at[
      jnp.arange(lengths.shape[0])[:, None], starts].add(keep.astype(jnp.int32))
  c = jnp.cumsum(onehot, axis=1)
  c_shift = jnp.pad(c, ((0, 0), (span, 0)))[:, :size]
  return (c - c_shift) > 0


def spec_augment(key, hidden, mask, spec_embed, config):
  """SpecAugment of the projected features in training (reference ``_mask_hidden_states``):
  time spans replaced by the learned ``masked_spec_embed``, feature spans set to 0.

  Args:
    key: PRNG key (the 'dropout' stream).
    hidden: (B, T, H).
    mask: (B, T) frame mask (time spans are drawn inside the real frames).
    spec_embed: (H,) learned vector written over masked time steps.
    config: Wav2Vec2Config.

  Returns:
    (B, T, H).
  """
  b, t, h = hidden.shape
  k_time, k_feat = jax.random.split(key)
  if config.mask_time_prob > 0:
    tm = compute_span_mask(k_time, jnp.sum(mask, axis=1), t,
                           config.mask_time_prob, config.mask_time_length,
                           config.mask_time_min_masks)
    hidden = jnp.where(tm[..., None], spec_embed.astype(hidden.dtype), hidden)
  if config.mask_feature_prob > 0:
    fm = compute_span_mask(k_feat, jnp.full((b,), h), h,
                           config.mask_feature_prob, config.mask_feature_length,
                           config.mask_feature_min_masks)
    hidden = jnp.where(fm[:, None, :], jnp.zeros((), hidden.dtype), hidden)
  return hidden


def _layer_norm(eps, dtype, param_dtype, name):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                      name=name)


class FeatureEncoder(nn.Module):
  """Convolutional feature encoder (raw samples → frames at hop ∏ strides)."""
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, input_values, attention_mask=None):
    """Feature encoder.

    Args:
      input_values: (B, S) waveforms.
      attention_mask: (B, S) sample mask, used only when ``config.masked_group_norm``.

    Returns:
      (B, T, conv_dim[-1]).
    """
    cfg = self.config
    act = get_activation(cfg.feat_extract_activation)
    h = input_values[..., None].astype(cfg.dtype)
    for i, (dim, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
      norm = _conv_norm(cfg.feat_extract_norm, i)
      mask = None
      if norm == "group" and cfg.masked_group_norm and attention_mask is not None:
        out_len = (input_values.shape[1] - k) // s + 1
        mask = frame_mask(attention_mask, out_len, (k,), (s,))
      layer = ConvLayer(dim, k, s, cfg.conv_bias, norm, cfg.dtype, cfg.param_dtype,
                        name=f"conv_layers_{i}")
      h = act(layer(h, mask))
    return h


def _conv_norm(feat_extract_norm, i):
  if feat_extract_norm == "layer":
    return "layer"
  return "group" if i == 0 else None


class ConvLayer(nn.Module):
  """One feature-encoder conv with its optional norm (torch eps 1e-5 for both norms)."""
  features: int  # output channels
  kernel: int  # kernel size
  stride: int  # stride
  use_bias: bool  # conv bias
  norm: Optional[str]  # None, "group" (one group per channel, over time) or "layer" (channels)
  dtype: Any  # compute dtype
  param_dtype: Any  # parameter dtype

  @nn.compact
  def __call__(self, x, mask=None):
    """Conv then norm.

    Args:
      x: (B, S, C).
      mask: optional (B, T') output-frame mask; the group norm then takes its per-channel
        statistics over valid frames only.

    Returns:
      (B, T' = floor((S − k)/s) + 1, features), before the activation.
    """
    x = nn.Conv(self.features, (self.kernel,), strides=(self.stride,), padding="VALID",
                use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.initializers.he_normal(), name="conv")(x)
    if self.norm == "group":
      x = ChannelGroupNorm(1e-5, self.dtype, self.param_dtype, name="layer_norm")(x, mask)
    elif self.norm == "layer":
      x = _layer_norm(1e-5, self.dtype, self.param_dtype, "layer_norm")(x)
    return x


class ChannelGroupNorm(nn.Module):
  """GroupNorm with one group per channel: per-channel mean/variance over time (torch
  ``GroupNorm(C, C)``), optionally over the frames where ``mask`` is 1 only."""
  epsilon: float  # variance epsilon (torch default 1e-5)
  dtype: Any  # compute dtype
  param_dtype: Any  # parameter dtype

  @nn.compact
  def __call__(self, x, mask=None):
    """Args: x (B, T, C); mask optional (B, T). Returns: normalised x, (B, T, C)."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    if mask is None:
      mean = jnp.mean(x32, axis=1, keepdims=True)
      var = jnp.mean(jnp.square(x32 - mean), axis=1, keepdims=True)
    else:
      m = mask.astype(jnp.float32)[..., None]
      count = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
      mean = jnp.sum(x32 * m, axis=1, keepdims=True) / count
      var = jnp.sum(jnp.square(x32 - mean) * m, axis=1, keepdims=True) / count
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class FeatureProjection(nn.Module):
  """LayerNorm → Dense(hidden) → dropout on the conv features."""
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, x, train: bool):
    cfg = self.config
    x = _layer_norm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, "layer_norm")(x)
    x = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 name="projection")(x)
    return nn.Dropout(cfg.feat_proj_dropout)(x, deterministic=not train)


class WeightNormConv(nn.Module):
  """Grouped 1-D conv with weight norm over all axes but the kernel axis (torch ``dim=2``).

  ``kernel[k] = weight_g[k] · weight_v[k] / ‖weight_v[k]‖`` with ``weight_v`` stored as
  (K, in/groups, out); ``weight_g`` (K,) is initialised to ``‖weight_v[k]‖``. The convolution is
  ``ops.conv.grouped_conv1d``: on the CPU backend its weight gradient runs as one plain
  convolution per group (XLA's own grouped weight gradient is ≈ 40× slower there); elsewhere
  XLA's convolution (``impl``).
  """
  features: int  # output channels (= input channels)
  kernel: int  # kernel size K
  groups: int  # feature groups
  dtype: Any  # compute dtype
  param_dtype: Any  # parameter dtype
  impl: str = "auto"  # ops.conv.grouped_conv1d implementation ("auto": per_group on CPU)

  @nn.compact
  def __call__(self, x):
    """Args: x (B, T, C). Returns: (B, T + 1 − K mod 2, features): padded K//2 on each side."""
    in_per_group = x.shape[-1] // self.groups
    std = (2.0 / (self.kernel * in_per_group)) ** 0.5
    v = self.param("weight_v", nn.initializers.normal(std), (self.kernel, in_per_group,
                                                             self.features), self.param_dtype)
    g = self.param("weight_g", lambda _k, _s, dt: jnp.sqrt(jnp.sum(jnp.square(v), (1, 2))).astype(dt),
                   (self.kernel,), self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    v32 = v.astype(jnp.float32)
    w = g.astype(jnp.float32)[:, None, None] * v32 / jnp.sqrt(
        jnp.sum(jnp.square(v32), axis=(1, 2), keepdims=True))
    pad = self.kernel // 2
    y = conv_ops.grouped_conv1d(x.astype(self.dtype), w.astype(self.dtype), (pad, pad),
                                self.groups, self.impl)
    return y + b.astype(self.dtype)


class PositionalConvEmbedding(nn.Module):
  """Convolutional relative positional embedding: weight-norm conv, same-pad, activation.

  Pads K//2 on each side; when K is even the output has one extra frame and the last is dropped
  (the reference's ``Wav2Vec2SamePadLayer``).
  """
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    k = cfg.num_conv_pos_embeddings
    y = WeightNormConv(cfg.hidden_size, k, cfg.num_conv_pos_embedding_groups, cfg.dtype,
                       cfg.param_dtype, cfg.pos_conv_impl, name="conv")(x)
    if k % 2 == 0:
      y = y[:, :-1]
    return get_activation(cfg.feat_extract_activation)(y)


class Attention(nn.Module):
  """Multi-head self-attention with q/k/v/out projections (names as ``Wav2Vec2Attention``)."""
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, x, bias, train: bool):
    cfg = self.config
    heads = cfg.num_attention_heads
    dense = lambda name: nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                  name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (heads, cfg.hidden_size // heads))
    q, k, v = (split(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
    o = dot_product_attention(q, k, v, bias, cfg.attention_dropout, not train, self)
    return dense("out_proj")(o.reshape(x.shape[:-1] + (cfg.hidden_size,)))


class FeedForward(nn.Module):
  """Dense → activation → dropout → Dense → dropout."""
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, x, train: bool):
    cfg = self.config
    x = nn.Dense(cfg.intermediate_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 name="intermediate_dense")(x)
    x = get_activation(cfg.hidden_act)(x)
    x = nn.Dropout(cfg.activation_dropout)(x, deterministic=not train)
    x = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 name="output_dense")(x)
    return nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)


class EncoderLayer(nn.Module):
  """One transformer layer; post-LN (base) or pre-LN (``do_stable_layer_norm``)."""
  config: Wav2Vec2Config  # model hyper-parameters
  train: bool = False  # dropout on (static, so nn.remat needs no static_argnums)

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    ln = lambda name: _layer_norm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name)
    attention = Attention(cfg, name="attention")
    feed_forward = FeedForward(cfg, name="feed_forward")
    dropout = nn.Dropout(cfg.hidden_dropout)
    if cfg.do_stable_layer_norm:
      x = x + dropout(attention(ln("layer_norm")(x), bias, self.train), deterministic=not self.train)
      return x + feed_forward(ln("final_layer_norm")(x), self.train)
    x = x + dropout(attention(x, bias, self.train), deterministic=not self.train)
    x = ln("layer_norm")(x)
    x = x + feed_forward(x, self.train)
    return ln("final_layer_norm")(x)


class Encoder(nn.Module):
  """Positional conv + transformer stack with layerdrop (``Wav2Vec2Encoder[StableLayerNorm]``)."""
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, x, mask, train: bool):
    """Args: x (B, T, H); mask (B, T) frame mask; train. Returns (B, T, H)."""
    cfg = self.config
    x = x * mask[..., None].astype(x.dtype)  # padded frames are zero before the pos-conv
    x = x + PositionalConvEmbedding(cfg, name="pos_conv_embed")(x)
    if not cfg.do_stable_layer_norm:
      x = _layer_norm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, "layer_norm")(x)
    x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)
    bias = attention_bias(mask, jnp.float32)
    layer_cls = nn.remat(EncoderLayer) if cfg.remat else EncoderLayer
    for i in range(cfg.num_hidden_layers):
      y = layer_cls(cfg, train, name=f"layers_{i}")(x, bias)
      if train and cfg.layerdrop > 0.0:
        skip = jax.random.uniform(self.make_rng("dropout"), ()) < cfg.layerdrop
        y = jnp.where(skip, x, y)
      x = y
    if cfg.do_stable_layer_norm:
      x = _layer_norm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, "layer_norm")(x)
    return x


class Wav2Vec2(nn.Module):
  """Wav2Vec2 audio encoder → ``EncoderOutput`` (DMF §2.1: pooled = masked mean, 768-d for base).

  Call ``model.apply({"params": p}, input_values, attention_mask, train=False)``;
  ``rngs={"dropout": k}`` when ``train=True`` (dropout and layerdrop).
  """
  config: Wav2Vec2Config  # model hyper-parameters

  @nn.compact
  def __call__(self, input_values, attention_mask=None, train: bool = False) -> EncoderOutput:
    """Encodes raw audio.

    Args:
      input_values: (B, S) float waveforms (normalised by the feature extractor).
      attention_mask: (B, S) {0,1} sample mask (1 = real sample), padding at the end; None = all.
      train: enables dropout and layerdrop.

    Returns:
      EncoderOutput(last_hidden_state (B, T, H), mask (B, T) int32, pooled (B, H) masked mean).
    """
    cfg = self.config
    input_values = jnp.asarray(input_values)
    if input_values.ndim != 2:
      raise ValueError(f"Wav2Vec2: input_values must be (batch, samples), got shape "
                       f"{input_values.shape}.")
    if attention_mask is not None and jnp.shape(attention_mask) != input_values.shape:
      raise ValueError(f"Wav2Vec2: attention_mask shape {jnp.shape(attention_mask)} must equal "
                       f"input_values shape {input_values.shape}.")
    min_len = receptive_field(cfg)
    if input_values.shape[1] < min_len:
      raise ValueError(f"Wav2Vec2: input_values has {input_values.shape[1]} samples; the conv "
                       f"feature encoder needs at least {min_len}. Pad the audio.")
    features = FeatureEncoder(cfg, name="feature_extractor")(input_values, attention_mask)
    if cfg.stop_gradient_feature_encoder:
      features = jax.lax.stop_gradient(features)
    num_frames = features.shape[1]
    if attention_mask is None:
      mask = jnp.ones(features.shape[:2], jnp.int32)
    else:
      mask = frame_mask(attention_mask, num_frames, cfg.conv_kernel, cfg.conv_stride)
    hidden = FeatureProjection(cfg, name="feature_projection")(features, train)
    if cfg.mask_time_prob > 0 or cfg.mask_feature_prob > 0:  # created as in the reference
      spec_embed = self.param("masked_spec_embed", nn.initializers.uniform(1.0),
                              (cfg.hidden_size,), cfg.param_dtype)
      if train and cfg.apply_spec_augment:
        hidden = spec_augment(self.make_rng("dropout"), hidden, mask, spec_embed, cfg)
    hidden = Encoder(cfg, name="encoder")(hidden, mask, train)
    return EncoderOutput(last_hidden_state=hidden, mask=mask, pooled=masked_mean(hidden, mask))


def receptive_field(config: Wav2Vec2Config) -> int:
  """Smallest number of samples that yields one frame from the conv feature encoder."""
  n = 1
  for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
    n = (n - 1) * s + k
  return n
