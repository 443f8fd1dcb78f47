"""Native Flax BERT (Devlin et al. 2019), weight-compatible with Hugging Face checkpoints.

DMF §2.1 uses BERT-base as its text encoder; the 768-d text embedding is the pooler output
(tanh Dense of the [CLS] hidden state). Post-LN layers, exact erf GELU, LayerNorm eps 1e-12 (all
read from ``config.json``). Parameter paths mirror the Hugging Face module paths
(``encoder/layer_0/attention/self/query``).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbaf_jax.encoders.outputs import (EncoderOutput, attention_bias, dot_product_attention,
                                       get_activation)
from mbaf_jax.ops import sharding


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters; field names and meanings follow Hugging Face's ``config.json``."""
  vocab_size: int = 30522  # word-piece vocabulary size
  hidden_size: int = 768  # transformer width
  num_hidden_layers: int = 12  # transformer layers
  num_attention_heads: int = 12  # attention heads
  intermediate_size: int = 3072  # feed-forward width
  hidden_act: str = "gelu"  # feed-forward activation ("gelu" = exact erf)
  hidden_dropout_prob: float = 0.1  # dropout on embeddings and residual branches
  attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
  max_position_embeddings: int = 512  # learned absolute positions
  type_vocab_size: int = 2  # token types (segments)
  layer_norm_eps: float = 1e-12  # LayerNorm epsilon
  pad_token_id: int = 0  # padding token id
  position_embedding_type: str = "absolute"  # only "absolute" is supported
  add_pooling_layer: bool = True  # tanh pooler on [CLS]
  layerdrop: float = 0.0  # probability of skipping a layer in training (not in the reference)
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter dtype
  remat: bool = False  # nn.remat on each transformer layer

  def __post_init__(self):
    if self.position_embedding_type != "absolute":
      raise ValueError(f"BertConfig: position_embedding_type={self.position_embedding_type!r} is "
                       "not supported; expected 'absolute'.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BertConfig: hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}.")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "layerdrop"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"BertConfig: {name}={getattr(self, name)} must be in [0, 1).")
    get_activation(self.hidden_act)

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "BertConfig":
    """Builds a config from a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "param_dtype", "remat",
                                                        "layerdrop", "add_pooling_layer"}
    kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def base(cls, **overrides) -> "BertConfig":
    """bert-base-uncased (110M parameters): 12 × 768."""
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides) -> "BertConfig":
    """A small config for tests and the demo."""
    kwargs = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    kwargs.update(overrides)
    return cls(**kwargs)


def _dense(cfg, features, name):
  return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(cfg, name):
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      use_fast_variance=False, name=name)


def _lookup(embed: nn.Embed, ids):
  """``embed(ids)``; for ids sharded over an Explicit mesh axis, the same rows gathered with
  the ids' sharding (``ops.sharding.take_rows``), which ``nn.Embed``'s ``jnp.take`` cannot infer."""
  if not sharding.is_explicitly_sharded(ids):
    return embed(ids)
  table = embed.embedding
  if embed.dtype is not None:
    table = table.astype(embed.dtype)
  return sharding.take_rows(table, ids)


class Embeddings(nn.Module):
  """word + position + token-type embeddings → LayerNorm → dropout (``BertEmbeddings``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, input_ids, token_type_ids, train: bool):
    cfg = self.config
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype,
                                     embedding_init=nn.initializers.normal(0.02), name=name)
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = (_lookup(embed(cfg.vocab_size, "word_embeddings"), input_ids)
         + _lookup(embed(cfg.type_vocab_size, "token_type_embeddings"), token_type_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings")(positions))
    x = _layer_norm(cfg, "LayerNorm")(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=not train)


class SelfAttention(nn.Module):
  """query/key/value projections and scaled dot-product attention (``BertSelfAttention``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, x, bias, train: bool):
    cfg = self.config
    heads = cfg.num_attention_heads
    split = lambda t: t.reshape(t.shape[:-1] + (heads, cfg.hidden_size // heads))
    q, k, v = (split(_dense(cfg, cfg.hidden_size, n)(x)) for n in ("query", "key", "value"))
    o = dot_product_attention(q, k, v, bias, cfg.attention_probs_dropout_prob, not train, self)
    return o.reshape(x.shape[:-1] + (cfg.hidden_size,))


class DenseResidualNorm(nn.Module):
  """Dense → dropout → residual → LayerNorm (``BertSelfOutput`` / ``BertOutput``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, x, residual, train: bool):
    cfg = self.config
    x = _dense(cfg, cfg.hidden_size, "dense")(x)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=not train)
    return _layer_norm(cfg, "LayerNorm")(x + residual)


class AttentionBlock(nn.Module):
  """Self-attention and its output sub-layer (``BertAttention``: ``self`` and ``output``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, x, bias, train: bool):
    y = SelfAttention(self.config, name="self")(x, bias, train)
    return DenseResidualNorm(self.config, name="output")(y, x, train)


class Intermediate(nn.Module):
  """Dense(intermediate) → activation (``BertIntermediate``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    return get_activation(cfg.hidden_act)(_dense(cfg, cfg.intermediate_size, "dense")(x))


class Layer(nn.Module):
  """One post-LN transformer layer (``BertLayer``)."""
  config: BertConfig  # model hyper-parameters
  train: bool = False  # dropout on (a field, so nn.remat needs no static_argnums)

  @nn.compact
  def __call__(self, x, bias):
    x = AttentionBlock(self.config, name="attention")(x, bias, self.train)
    h = Intermediate(self.config, name="intermediate")(x)
    return DenseResidualNorm(self.config, name="output")(h, x, self.train)


class Encoder(nn.Module):
  """Stack of ``num_hidden_layers`` layers (``BertEncoder``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, x, bias, train: bool):
    cfg = self.config
    layer_cls = nn.remat(Layer) if cfg.remat else Layer
    for i in range(cfg.num_hidden_layers):
      y = layer_cls(cfg, train, name=f"layer_{i}")(x, bias)
      if train and cfg.layerdrop > 0.0:
        skip = jax.random.uniform(self.make_rng("dropout"), ()) < cfg.layerdrop
        y = jnp.where(skip, x, y)
      x = y
    return x


class Pooler(nn.Module):
  """``tanh(Dense(h_[CLS]))`` (``BertPooler``)."""
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, x):
    return jnp.tanh(_dense(self.config, self.config.hidden_size, "dense")(x[:, 0]))


class Bert(nn.Module):
  """BERT text encoder → ``EncoderOutput`` (DMF §2.1: pooled = pooler output, 768-d for base).

  Call ``model.apply({"params": p}, input_ids, attention_mask, token_type_ids, train=False)``;
  ``rngs={"dropout": k}`` when ``train=True``.
  """
  config: BertConfig  # model hyper-parameters

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
               train: bool = False) -> EncoderOutput:
    """Encodes token ids.

    Args:
      input_ids: (B, L) int token ids.
      attention_mask: (B, L) {0,1}, 1 = real token; None = all ones.
      token_type_ids: (B, L) int segment ids; None = zeros.
      train: enables dropout (and layerdrop when configured).

    Returns:
      EncoderOutput(last_hidden_state (B, L, H), mask (B, L) int32, pooled (B, H) pooler output;
      without a pooling layer, the [CLS] hidden state).
    """
    cfg = self.config
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"Bert: input_ids must be (batch, tokens), got shape {input_ids.shape}.")
    if input_ids.shape[1] > cfg.max_position_embeddings:
      raise ValueError(f"Bert: input_ids has {input_ids.shape[1]} tokens, more than "
                       f"max_position_embeddings={cfg.max_position_embeddings}; truncate the text "
                       "(TextPreprocessor(max_length=...)).")
    for name, arr in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
      if arr is not None and jnp.shape(arr) != input_ids.shape:
        raise ValueError(f"Bert: {name} shape {jnp.shape(arr)} must equal input_ids shape "
                         f"{input_ids.shape}.")
    mask = (jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None
            else jnp.asarray(attention_mask).astype(jnp.int32))
    if token_type_ids is None:
      token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
    x = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, train)
    x = Encoder(cfg, name="encoder")(x, attention_bias(mask, jnp.float32), train)
    pooled = Pooler(cfg, name="pooler")(x) if cfg.add_pooling_layer else x[:, 0]
    return EncoderOutput(last_hidden_state=x, mask=mask, pooled=pooled)
