"""EncoderOutput and the small numerical helpers shared by the Flax Wav2Vec2 and BERT.

The helpers follow the reference (Hugging Face PyTorch) implementations exactly where that
matters for weight compatibility: exact erf GELU for ``"gelu"`` (``jax.nn.gelu`` defaults to the
tanh approximation), additive ``finfo.min`` attention bias on padded keys, softmax in float32.
"""
from typing import Callable

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class EncoderOutput:
  """Output of a sequence encoder (ARCHITECTURE.md, "Encoders").

  Attributes:
    last_hidden_state: (B, T, H) hidden states of the last layer.
    mask: (B, T) int32, 1 = valid frame/token.
    pooled: (B, H) utterance embedding: Wav2Vec2 masked mean of ``last_hidden_state`` (DMF §2.1),
      BERT pooler output (tanh Dense of [CLS]).
  """
  last_hidden_state: jax.Array
  mask: jax.Array
  pooled: jax.Array


def _gelu_exact(x):
  return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


_ACTIVATIONS = {
    "gelu": _gelu_exact,  # Hugging Face "gelu" is the exact erf form.
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": jax.nn.relu,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation called ``name`` in a Hugging Face config (``hidden_act``).

  Args:
    name: one of "gelu" (exact erf), "gelu_new"/"gelu_pytorch_tanh" (tanh approximation),
      "relu", "swish"/"silu", "tanh".

  Returns:
    The elementwise function.
  """
  if name not in _ACTIVATIONS:
    raise ValueError(f"hidden_act/feat_extract_activation={name!r} is not supported; expected one "
                     f"of {sorted(_ACTIVATIONS)}. Edit config.json or pick a supported activation.")
  return _ACTIVATIONS[name]


def attention_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Additive attention bias from a key mask, as in the reference ``(1 - mask) * finfo.min``.

  Args:
    mask: (B, T) {0,1} or bool, 1 = valid key.
    dtype: dtype of the bias.

  Returns:
    (B, 1, 1, T) bias: 0 on valid keys, the most negative finite value on padded keys.
  """
  mask = jnp.asarray(mask).astype(bool)
  return jnp.where(mask, 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None, None, :]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``x`` over axis 1 counting only rows where ``mask`` is 1.

  Args:
    x: (B, T, H).
    mask: (B, T) {0,1} or bool.

  Returns:
    (B, H) masked mean in float32-or-wider accumulation, cast back to ``x.dtype``; a sequence
    with no valid row gives zeros (the count is clamped to 1).
  """
  m = jnp.asarray(mask).astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  count = jnp.maximum(jnp.sum(m, axis=1), 1.0)
  return (total / count).astype(x.dtype)


def dot_product_attention(q, k, v, bias, dropout_rate, deterministic, dropout_rng_module):
  """Scaled dot-product attention over heads (Vaswani et al. 2017, Eq. 1).

  ``softmax(q kᵀ / sqrt(d_head) + bias) v`` with the softmax in float32 (stable in bf16) and
  dropout on the probabilities in training.

  Args:
    q, k, v: (B, T, heads, d_head).
    bias: (B, 1, 1, T) additive key bias.
    dropout_rate: dropout on attention probabilities.
    deterministic: True disables dropout.
    dropout_rng_module: the calling module, used for ``make_rng('dropout')``.

  Returns:
    (B, T, heads, d_head) in ``q.dtype``.
  """
  # Heads-major (B, heads, T, d_head) before the score matmuls: they then run as plain batched
  # matmuls. Contracting the (B, T, heads, d_head) layout directly made XLA's CPU backend run the
  # attention core ~3x slower (benchmarks/RESULTS.md §10); the arithmetic is the same.
  q, k, v = (jnp.swapaxes(t, -3, -2) for t in (q, k, v))
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * scale
  scores = scores + bias.astype(jnp.float32)
  probs = jax.nn.softmax(scores, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng_module.make_rng("dropout"), 1.0 - dropout_rate,
                                probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v), -3, -2)
