"""MBAF §4.1 text encoder (TE, from its ref. [47]): embedding → Bi-RNN + CNN branches with
cross-attention → 4,800-d; plus a small word tokenizer / vocabulary for transcripts.

MBAF §4.1: "the input vector is passed through an embedding layer followed by two parallel
branches (Left: bi-RNN + DCNN; Right: DCNN) ... The output vector from the Bi-RNN is passed through
three parallel convolutional layers with a filter sizes of 1, 3 and 5; and convolutional layers
with the same filter sizes are used in the right branch. Cross-attention is applied on convolution
layers with the same filter size from the right branch as the attention for the left branch. The
corresponding convolution layers from two branches are concatenated together and passed through a
dense layer to obtain 4800-D feature vector", with at most 100 tokens and GloVe-300d.

Our reading (the paper gives no sizes or attention formula; each choice is a field):

* embedding (V, 300), GloVe-initialised when a matrix is given (``load_glove``), else random
  N(0, 1) with a warning; padded positions are zeroed so they never reach a conv.
* left: Bi-LSTM (``rnn_hidden`` = 128 per direction, masked) → Conv1D(F, k) for k ∈ {1, 3, 5};
  right: Conv1D(F, k) on the embeddings; ReLU, SAME padding. F = ``conv_features`` = 800.
* cross-attention per k (:func:`cross_attention_pool`): the right conv map is the query, the left
  conv map the keys and values, ``softmax(R Lᵀ / √F) L`` over the real tokens; the attended left
  map and the right map are each pooled over the real tokens (masked max by default).
* 4,800 = 3 kernel sizes × 2 branches × F = 800 pooled features, concatenated (6F) → dropout →
  Dense(``output_dim`` = 4,800) → ReLU.
"""
import collections
import re
import warnings
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbaf_jax.encoders.lstm import BidirectionalRNN
from mbaf_jax.ops import sharding

Dtype = Any

PAD, UNK = "<pad>", "<unk>"
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> list:
  """Lowercased words (with inner apostrophes, "don't") and single punctuation marks, as in GloVe.

  IEMOCAP transcripts carry markers such as ``[LAUGHTER]``; they become ``[``, ``laughter``, ``]``.
  """
  if not isinstance(text, str):
    raise TypeError(f"text must be a str, got {type(text).__name__}.")
  return _TOKEN_RE.findall(text.lower())


def build_vocab(texts: Iterable[str], min_count: int = 1, max_size: Optional[int] = None) -> dict:
  """Word → id map from training transcripts: ``<pad>`` = 0, ``<unk>`` = 1, then by frequency.

  Args:
    texts: transcripts (build from the training split only, to keep test words unseen).
    min_count: drop words seen fewer times.
    max_size: keep at most this many ids in all (specials included); None = no limit.

  Returns:
    dict word → id with ids 0..V-1 (ties in frequency broken alphabetically, so it is
    deterministic).
  """
  if not isinstance(min_count, int) or min_count < 1:
    raise ValueError(f"min_count must be an int >= 1, got {min_count!r}.")
  if max_size is not None and (not isinstance(max_size, int) or max_size < 2):
    raise ValueError(f"max_size must be None or an int >= 2 (room for <pad> and <unk>), "
                     f"got {max_size!r}.")
  counts = collections.Counter(tok for t in texts for tok in tokenize(t))
  words = sorted((w for w, c in counts.items() if c >= min_count and w not in (PAD, UNK)),
                 key=lambda w: (-counts[w], w))
  vocab = {PAD: 0, UNK: 1}
  for w in words[:None if max_size is None else max_size - 2]:
    vocab[w] = len(vocab)
  return vocab


def encode_texts(texts: Sequence[str], vocab: dict, max_tokens: int = 100):
  """Token ids and mask of fixed shape (B, max_tokens); unknown words → ``<unk>``, tail truncated.

  Returns:
    (ids (B, max_tokens) int32 with 0 = ``<pad>``, mask (B, max_tokens) int32, 1 = real token).
  """
  if isinstance(texts, str):
    raise TypeError("texts must be a list of strings, got a single str; wrap it in a list.")
  if not isinstance(max_tokens, int) or max_tokens < 1:
    raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}.")
  if vocab.get(PAD) != 0 or UNK not in vocab:
    raise ValueError(f"vocab must map {PAD!r} to 0 and contain {UNK!r}; build it with build_vocab.")
  ids = np.zeros((len(texts), max_tokens), np.int32)
  mask = np.zeros((len(texts), max_tokens), np.int32)
  unk = vocab[UNK]
  for b, text in enumerate(texts):
    toks = [vocab.get(t, unk) for t in tokenize(text)][:max_tokens]
    ids[b, :len(toks)] = toks
    mask[b, :len(toks)] = 1
  return ids, mask


def _masked_pool(x, mask, pool: str):
  """Pools (B, T, F) over the real steps of ``mask`` (B, T); rows with no real step give 0."""
  m = mask.astype(bool)[..., None]
  if pool == "mean":
    return jnp.where(m, x, 0).sum(1) / jnp.maximum(m.sum(1), 1).astype(x.dtype)
  out = jnp.where(m, x, jnp.finfo(x.dtype).min).max(1)
  return jnp.where(m.any(1), out, 0)


def cross_attention_pool(query, key_value, mask, pool: str = "max"):
  """Cross-attention of the right-branch map over the left-branch map, then pooling (MBAF §4.1).

  ``A = softmax(Q Kᵀ / √F + bias) K`` with ``Q`` = right conv map, ``K`` = left conv map (keys and
  values), ``bias = −∞`` on padded keys; then ``[pool(A), pool(Q)]`` over the real positions.

  Args:
    query: (B, T, F) right-branch (CNN) features.
    key_value: (B, T, F) left-branch (Bi-RNN + CNN) features.
    mask: (B, T) 1 = real token.
    pool: "max" or "mean" over the real positions.

  Returns:
    (B, 2F): pooled attended left features, then pooled right features.
  """
  scale = 1.0 / np.sqrt(query.shape[-1])
  scores = jnp.einsum("bqf,bkf->bqk", query, key_value).astype(jnp.float32) * scale
  valid = mask.astype(bool)[:, None, :]
  scores = jnp.where(valid, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(key_value.dtype)
  attended = jnp.einsum("bqk,bkf->bqf", weights, key_value)
  return jnp.concatenate([_masked_pool(attended, mask, pool), _masked_pool(query, mask, pool)], -1)


def _embedding_init(glove):
  """Initialiser: the GloVe matrix when given, else N(0, 1) (the module warns at init)."""
  def init(key, shape, dtype=jnp.float32):
    if glove is None:
      return jax.random.normal(key, shape, dtype)
    return jnp.asarray(glove, dtype)
  return init


class CnnRnnTextEncoder(nn.Module):
  """MBAF §4.1 text encoder (TE): embedding → [Bi-RNN → CNN{1,3,5}] × [CNN{1,3,5}] with
  cross-attention → (B, 4800). Architecture and the composition of 4,800 in the module doc.
  """
  vocab_size: int  # number of token ids V (row 0 = padding)
  embed_dim: int = 300  # embedding size (GloVe-300d)
  glove: Optional[Any] = None  # (V, embed_dim) initial matrix from load_glove, or None (warns)
  max_tokens: int = 100  # longest token sequence accepted (MBAF §4.1: 100)
  rnn_hidden: int = 128  # Bi-RNN units per direction
  rnn_cell: str = "lstm"  # "lstm" or "gru"
  kernel_sizes: Sequence[int] = (1, 3, 5)  # conv filter sizes of both branches
  conv_features: int = 800  # filters F per conv; pooled width = len(kernel_sizes) * 2 * F
  output_dim: int = 4800  # Dense output size (MBAF §4.1: 4,800)
  pool: str = "max"  # pooling over tokens after the cross-attention: "max" or "mean"
  train_embedding: bool = True  # False: stop gradients into the embedding (frozen GloVe)
  warn_random_embedding: bool = True  # warn at init if glove is None (False: replaced after init)
  dropout: float = 0.0  # dropout on the embeddings and before the Dense (rng 'dropout')
  dtype: Optional[Dtype] = None  # compute dtype (None: float32), e.g. jnp.bfloat16
  param_dtype: Dtype = jnp.float32  # parameter dtype

  def _check(self, ids, mask):
    if self.glove is not None:
      shape = tuple(np.shape(self.glove))
      if shape != (self.vocab_size, self.embed_dim):
        raise ValueError(f"glove must have shape (vocab_size, embed_dim) = "
                         f"{(self.vocab_size, self.embed_dim)}, got {shape}; build the vocabulary "
                         "first and pass load_glove(path, vocab, dim=embed_dim).matrix.")
    if self.pool not in ("max", "mean"):
      raise ValueError(f"pool must be 'max' or 'mean', got {self.pool!r}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be (batch, tokens) integer token ids, got shape "
                       f"{tuple(ids.shape)} dtype {ids.dtype}; use encode_texts(texts, vocab).")
    if ids.shape[1] > self.max_tokens:
      raise ValueError(f"ids have {ids.shape[1]} tokens, more than max_tokens={self.max_tokens}; "
                       f"encode with encode_texts(..., max_tokens={self.max_tokens}).")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
      raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}, got "
                       f"{tuple(mask.shape)}.")

  @nn.compact
  def __call__(self, ids, mask=None, train: bool = False):
    """Encodes token ids.

    Args:
      ids: (B, T) int token ids, T <= max_tokens (``encode_texts``).
      mask: (B, T) 1 = real token; None = ``ids != 0``. Padded tokens do not change the output.
      train: enables dropout (rng 'dropout').

    Returns:
      (B, output_dim) text embedding (4,800-d with the defaults).
    """
    ids = jnp.asarray(ids)
    self._check(ids, mask)
    mask = (ids != 0) if mask is None else jnp.asarray(mask).astype(bool)
    dtype = self.dtype or jnp.float32
    if self.glove is None and self.warn_random_embedding and self.is_initializing():
      warnings.warn("CnnRnnTextEncoder: no GloVe matrix was given (glove=None), so the word "
                    "embedding starts random and is trained from scratch; MBAF §4.1 uses "
                    "GloVe-300d — pass glove=load_glove(path, vocab).matrix (training: set "
                    "config.model.text.glove to a glove.*.300d.txt file) to follow the paper.",
                    UserWarning, stacklevel=2)
    table = self.param("embedding", _embedding_init(self.glove),
                       (self.vocab_size, self.embed_dim), self.param_dtype)
    if not self.train_embedding:
      table = jax.lax.stop_gradient(table)
    emb = sharding.take_rows(table, ids).astype(dtype)
    emb = jnp.where(mask[..., None], emb, 0)
    emb = nn.Dropout(self.dropout, deterministic=not train)(emb)
    emb = jnp.where(mask[..., None], emb, 0)
    left, _ = BidirectionalRNN(self.rnn_hidden, cell=self.rnn_cell, dtype=dtype,
                               param_dtype=self.param_dtype, name="birnn")(emb, mask)
    kw = dict(padding="SAME", dtype=dtype, param_dtype=self.param_dtype)
    pooled = []
    for k in self.kernel_sizes:
      lk = nn.relu(nn.Conv(self.conv_features, (k,), name=f"left_conv_{k}", **kw)(left))
      rk = nn.relu(nn.Conv(self.conv_features, (k,), name=f"right_conv_{k}", **kw)(emb))
      pooled.append(cross_attention_pool(rk, lk, mask, self.pool))
    h = jnp.concatenate(pooled, axis=-1)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.relu(nn.Dense(self.output_dim, dtype=dtype, param_dtype=self.param_dtype,
                            name="dense")(h))
