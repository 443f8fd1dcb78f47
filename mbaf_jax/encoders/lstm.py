"""Masked recurrent layers (LSTM / GRU) and the CEBS per-mode encoder ``LSTMEncoder``.

MBAF §4.2 (PhysioNet CEBS, Fig. 3): "the inputs are passed through LSTM-1 with 512 hidden units
which returns sequences, followed by LSTM-2 with 512 hidden units which returns a single dense
output." The input of one mode is a window of 6 consecutive 200 ms chunks of 1,000 samples
(``data.cebs``: ``(N, 6, 1000)``). We read this as a sequence of **6 time steps, each a 1,000-d
feature vector** (a Keras ``LSTM`` on an input of shape ``(6, 1000)``), not 6,000 scalar steps.

The recurrences are written out (one fused input projection for all steps outside the scan, one
``(H, 4H)`` recurrent matmul per step inside ``lax.scan``) so that the gate equations are explicit
and a padded step is exactly a no-op: where ``mask[t] == 0`` the carry is left unchanged. Padding
may therefore sit anywhere (left or right), and the backward direction of a bidirectional layer
skips the same steps, which is the same as running it on the un-padded sequence.

LSTM (Hochreiter & Schmidhuber 1997, with forget gate; Keras gate order i, f, g, o)::

  i = σ(x W_i + h U_i + b_i)    f = σ(x W_f + h U_f + b_f)
  g = tanh(x W_g + h U_g + b_g) o = σ(x W_o + h U_o + b_o)
  c' = f ⊙ c + i ⊙ g            h' = o ⊙ tanh(c')

GRU (Cho et al. 2014, gate order r, z, n; the "reset after" form of cuDNN / Keras 2)::

  r = σ(x W_r + h U_r + b_r)    z = σ(x W_z + h U_z + b_z)
  n = tanh(x W_n + b_n + r ⊙ (h U_n + b'_n))      h' = (1 − z) ⊙ n + z ⊙ h
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbaf_jax.ops import sharding

Dtype = Any

CELLS = ("lstm", "gru")


def _check_mask(mask, x, name="mask"):
  """Returns a (B, T) float mask for ``x`` (B, T, F); all ones when ``mask`` is None."""
  if mask is None:
    return jnp.ones(x.shape[:2], jnp.float32)
  mask = jnp.asarray(mask)
  if mask.shape != x.shape[:2]:
    raise ValueError(f"{name} must have shape (batch, time) = {tuple(x.shape[:2])} matching the "
                     f"inputs {tuple(x.shape)}, got {tuple(mask.shape)}; 1 marks a real step.")
  return mask.astype(jnp.float32)


def _check_sequence(x, name="inputs"):
  x = jnp.asarray(x)
  if x.ndim != 3:
    raise ValueError(f"{name} must have shape (batch, time, features), got {tuple(x.shape)}; "
                     f"for CEBS pass the (N, 6, 1000) chunk windows of one mode.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}.")
  return x


def _lstm_step(carry, xw_t, m_t, u):
  """One masked LSTM step; ``xw_t`` = x_t W + b precomputed, ``u`` (H, 4H)."""
  h, c = carry
  z = xw_t + h @ u
  i, f, g, o = jnp.split(z, 4, axis=-1)
  i, f, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o)
  c_new = f * c + i * jnp.tanh(g)
  h_new = o * jnp.tanh(c_new)
  m = m_t[:, None].astype(h.dtype)
  h_new = m * h_new + (1 - m) * h
  c_new = m * c_new + (1 - m) * c
  return (h_new, c_new), h_new


def _gru_step(carry, xw_t, m_t, u, b_rec):
  """One masked GRU step ("reset after"); ``xw_t`` = x_t W + b, ``u`` (H, 3H), ``b_rec`` (3H,)."""
  (h,) = carry
  xr, xz, xn = jnp.split(xw_t, 3, axis=-1)
  hr, hz, hn = jnp.split(h @ u + b_rec, 3, axis=-1)
  r = jax.nn.sigmoid(xr + hr)
  z = jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  h_new = (1 - z) * n + z * h
  m = m_t[:, None].astype(h.dtype)
  h_new = m * h_new + (1 - m) * h
  return (h_new,), h_new


def _forget_bias_init(hidden: int, cell: str):
  """Zero bias, except 1 on the LSTM forget gate (Keras ``unit_forget_bias=True``)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    b = jnp.zeros(shape, dtype)
    if cell == "lstm":
      b = b.at[hidden:2 * hidden].set(1.0)
    return b
  return init


class RecurrentLayer(nn.Module):
  """One masked, unidirectional LSTM or GRU layer over ``(B, T, F)`` (equations in the module doc).

  Returns ``(outputs (B, T, H), final_h (B, H))``; at a padded step the output repeats the carried
  state, and the final state is the state after the last real step.
  """
  hidden: int  # hidden units H
  cell: str = "lstm"  # "lstm" or "gru"
  reverse: bool = False  # run from the last step to the first (backward direction)
  dtype: Optional[Dtype] = None  # compute dtype (None: from the inputs); gates accumulate in it
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, mask=None):
    """Runs the recurrence.

    Args:
      x: (B, T, F) floating inputs.
      mask: optional (B, T) bool/{0,1}; 0 = padded step (the carry is left unchanged).

    Returns:
      (outputs (B, T, H), final hidden state (B, H)).
    """
    if self.cell not in CELLS:
      raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}.")
    x = _check_sequence(x)
    m = _check_mask(mask, x)
    gates = 4 if self.cell == "lstm" else 3
    dtype = self.dtype or x.dtype
    w = self.param("input_kernel", nn.initializers.glorot_uniform(),
                   (x.shape[-1], gates * self.hidden), self.param_dtype)
    u = self.param("recurrent_kernel", nn.initializers.orthogonal(),
                   (self.hidden, gates * self.hidden), self.param_dtype)
    b = self.param("bias", _forget_bias_init(self.hidden, self.cell), (gates * self.hidden,),
                   self.param_dtype)
    w, u, b = (p.astype(dtype) for p in (w, u, b))
    xw = jnp.einsum("btf,fg->btg", x.astype(dtype), w) + b  # hot path: one matmul for all steps
    xw, m = jnp.swapaxes(xw, 0, 1), jnp.swapaxes(m, 0, 1)   # time-major for scan
    batch = x.shape[0]
    h0 = sharding.zeros_like_rows(x, (batch, self.hidden), dtype)  # sharded like x's rows
    if self.cell == "lstm":
      step = lambda c, inp: _lstm_step(c, inp[0], inp[1], u)
      carry0 = (h0, h0)
    else:
      b_rec = self.param("recurrent_bias", nn.initializers.zeros, (gates * self.hidden,),
                         self.param_dtype).astype(dtype)
      step = lambda c, inp: _gru_step(c, inp[0], inp[1], u, b_rec)
      carry0 = (h0,)
    carry, ys = jax.lax.scan(step, carry0, (xw, m), reverse=self.reverse)
    return jnp.swapaxes(ys, 0, 1), carry[0]


class BidirectionalRNN(nn.Module):
  """Masked bidirectional LSTM/GRU: forward and backward outputs concatenated → (B, T, 2H).

  Padded steps are skipped by both directions (see module doc), so the backward direction of a
  right-padded sequence starts at its last real step.
  """
  hidden: int  # hidden units per direction
  cell: str = "lstm"  # "lstm" or "gru"
  dtype: Optional[Dtype] = None  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, mask=None):
    """Returns ``(outputs (B, T, 2H), final states (B, 2H))``; outputs at padded steps are 0."""
    kw = dict(hidden=self.hidden, cell=self.cell, dtype=self.dtype, param_dtype=self.param_dtype)
    fw, hf = RecurrentLayer(**kw, name="forward")(x, mask)
    bw, hb = RecurrentLayer(**kw, reverse=True, name="backward")(x, mask)
    out = jnp.concatenate([fw, bw], axis=-1)
    if mask is not None:
      out = out * jnp.asarray(mask)[..., None].astype(out.dtype)
    return out, jnp.concatenate([hf, hb], axis=-1)


class LSTMEncoder(nn.Module):
  """CEBS per-mode encoder (MBAF §4.2, Fig. 3): LSTM(512, return sequences) → LSTM(512) → (B, 512).

  The input is a window of 6 chunks × 1,000 samples of one mode, read as 6 time steps of 1,000-d
  feature vectors (module doc). The embedding is the final hidden state of the last layer, i.e.
  the state after the last real (unmasked) step.
  """
  hidden: int = 512  # LSTM units of every layer (paper: 512)
  num_layers: int = 2  # stacked LSTMs; all but the last return sequences (paper: 2)
  cell: str = "lstm"  # "lstm" (paper) or "gru"
  dropout: float = 0.0  # dropout between stacked layers in training (rng 'dropout'); paper: none
  dtype: Optional[Dtype] = None  # compute dtype (None: from the inputs), e.g. jnp.bfloat16
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    """Encodes one mode.

    Args:
      x: (B, T, F) floats; for CEBS (B, 6, 1000).
      mask: optional (B, T) bool/{0,1}, 0 = padded step (does not change the result).
      train: enables dropout between layers (needs the 'dropout' rng when ``dropout > 0``).

    Returns:
      (B, hidden) final hidden state of the last layer.
    """
    if not isinstance(self.num_layers, int) or self.num_layers < 1:
      raise ValueError(f"num_layers must be an int >= 1, got {self.num_layers!r}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
    x = _check_sequence(x)
    h = x
    final = None
    for layer in range(self.num_layers):
      if layer > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h, final = RecurrentLayer(self.hidden, cell=self.cell, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=f"lstm_{layer}")(h, mask)
    return final
