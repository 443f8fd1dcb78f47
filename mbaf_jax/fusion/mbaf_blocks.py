"""Placements of the fusion layer in the IEMOCAP network (MBAF §4.1, Fig. 2; its ref. [47]).

* ``I``   — fusion directly on the encoder outputs: ``F(x_a, x_t)``                (MBAF-I / NF-I)
* ``II``  — self-attention *after* fusion: ``SA(F(x_a, x_t))``                      (MBAF-II / NF-II)
* ``III`` — self-attention *before* fusion, one per mode: ``F(SA_a(x_a), SA_t(x_t))`` (MBAF-III / NF-III)

``F`` is :class:`~mbaf_jax.fusion.mbaf.MBAF` or :class:`~mbaf_jax.fusion.naive.NaiveFusion`.
The self-attention on a dense vector is the feature attention of [47]'s Keras networks,
``SA(x) = x ⊙ softmax(x W + b)`` (:class:`VectorSelfAttention`), one ``d×d`` Dense: this
is what Table 3's parameter counts imply (NF-II − NF-I = l² + l + (4l + 4) and
NF-III − NF-I = Σ d_i² + Σ d_i + (4l + 4) for l = 6848 = 2048 + 4800; the extra
``4l + 4`` is a second 4-way head the paper's NF-II/III models carry).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbaf_jax.fusion.common import FusionOutput, batch_mask, check_modes, modality_presence
from mbaf_jax.fusion.mbaf import MBAF
from mbaf_jax.fusion.naive import NaiveFusion
from mbaf_jax.ops import validation

PLACEMENTS = ("I", "II", "III")
FUSIONS = ("mbaf", "naive")
GATES = ("softmax", "sigmoid")


class VectorSelfAttention(nn.Module):
  """Feature self-attention on a vector (MBAF §4.1 via [47]): ``x ⊙ gate(x W + b)``.

  ``gate="softmax"`` normalises over the features (the Keras ``Dense(d, softmax)``
  + ``multiply`` pattern); ``"sigmoid"`` gates each feature independently.
  Scale: the softmax weights sum to 1 over the d features, so ``"softmax"`` shrinks the
  features by about 1/d on average (≈ 1.5e-4 at MBAF's IEMOCAP width d = 6,848); nothing
  rescales them (docs/PAPER_NOTES.md). ``"sigmoid"`` keeps them within a factor of 1.
  Parameters: ``Dense_0/{kernel (d, d), bias (d,)}`` (Glorot uniform, zeros).
  """
  gate: str = "softmax"  # "softmax" over features | "sigmoid" per feature
  dtype: Any = None  # computation dtype (None: input/param promotion)
  param_dtype: Any = jnp.float32  # dtype of the Dense parameters

  @nn.compact
  def __call__(self, x):
    """Args: x ``(B, d)``. Returns: ``(B, d)`` attended features."""
    validation.option(self.gate, GATES, "gate")
    x = validation.floating_array(x, "x", min_rank=2)
    scores = nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype)(x)
    weights = jax.nn.softmax(scores, axis=-1) if self.gate == "softmax" else jax.nn.sigmoid(scores)
    return x.astype(weights.dtype) * weights


class FusionBlock(nn.Module):
  """Fusion with its self-attention placement: MBAF-I/II/III and NF-I/II/III (Fig. 2).

  Call: ``block(*modes, mask=None, modality_mask=None, train=False)`` →
  ``FusionOutput(fused (B, Σ d_i), aux)``. ``modality_mask`` (``(B, M)`` bool, True = present)
  goes to the fusion layer; with placement III an absent mode enters its self-attention as
  zeros, so its values reach nothing.
  Submodules: ``fusion`` (MBAF or NaiveFusion), ``attention`` (II) or
  ``attention_{i}`` per mode (III). MBAF's memory lives at
  ``variables['memory']['fusion']['memory']``.
  """
  placement: str = "III"  # "I" | "II" | "III" (self-attention none / after / before fusion)
  fusion: str = "mbaf"  # "mbaf" | "naive"
  mbaf_kwargs: Any = None  # dict of MBAF fields (slots, write, read, ...) when fusion="mbaf"
  gate: str = "softmax"  # VectorSelfAttention gate
  axis_name: str | None = None  # pmap/shard_map batch axis, passed to MBAF (global writer batch)
  dtype: Any = None  # computation dtype passed to the submodules
  param_dtype: Any = jnp.float32  # parameter dtype passed to the submodules

  def _fusion(self):
    if self.fusion == "naive":
      if self.mbaf_kwargs:
        raise ValueError(f"mbaf_kwargs={self.mbaf_kwargs!r} given with fusion='naive'; "
                         f"NaiveFusion has no MBAF options, drop them or use fusion='mbaf'.")
      return NaiveFusion(dtype=self.dtype, name="fusion")
    kw = dict(self.mbaf_kwargs or {})
    kw.setdefault("dtype", self.dtype)
    kw.setdefault("param_dtype", self.param_dtype)
    if self.axis_name is not None:
      kw["axis_name"] = self.axis_name
    return MBAF(name="fusion", **kw)

  def output_dim(self, *in_dims: int) -> int:
    """``Σ d_i``: every placement keeps the width of concatenation."""
    if not in_dims:
      raise ValueError("output_dim needs the width of every mode, e.g. output_dim(2048, 4800).")
    return int(sum(int(d) for d in in_dims))

  @nn.compact
  def __call__(self, *modes, mask=None, modality_mask=None,
               train: bool = False) -> FusionOutput:
    """Applies the placement (MBAF Fig. 2).

    Args:
      *modes: ``(B, d_i)`` encoder outputs.
      mask: optional ``(B,)`` mask, 1 = real row.
      modality_mask: optional ``(B, M)`` bool, True = mode present (None: all present); a row
        with no mode present is padding.
      train: passed to the fusion layer (MBAF writes its memory).

    Returns:
      ``FusionOutput``; padded rows are zeros.
    """
    validation.option(self.placement, PLACEMENTS, "placement")
    validation.option(self.fusion, FUSIONS, "fusion")
    modes = check_modes(modes, f"FusionBlock({self.fusion}-{self.placement})")
    m = batch_mask(mask, modes[0].shape[0])
    present, m = modality_presence(modality_mask, modes[0].shape[0], len(modes), m)
    attn = lambda name: VectorSelfAttention(gate=self.gate, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    if self.placement == "III":
      if present is not None:  # SA(0) = 0: an absent mode's values never reach the attention
        modes = tuple(jnp.where(present[:, i:i + 1], x, jnp.zeros((), x.dtype))
                      for i, x in enumerate(modes))
      modes = tuple(attn(f"attention_{i}")(x) for i, x in enumerate(modes))
    if present is None:
      out = self._fusion()(*modes, mask=m, train=train)
    else:
      out = self._fusion()(*modes, mask=m, modality_mask=present, train=train)
    fused = out.fused
    if self.placement == "II":
      fused = attn("attention")(fused)
    fused = jnp.where(m[:, None] > 0, fused, jnp.zeros((), fused.dtype))
    return FusionOutput(fused=fused, aux=out.aux)


def fusion_block(name: str, **mbaf_kwargs) -> FusionBlock:
  """Builds a block from the paper's name: ``"MBAF-I"``, ``"MBAF-II"``, ``"MBAF-III"``,
  ``"NF-I"``, ``"NF-II"``, ``"NF-III"`` (Table 1).

  Args:
    name: the paper's name (case-insensitive).
    **mbaf_kwargs: MBAF fields (only for MBAF-*), e.g. ``slots=30``.

  Returns:
    The :class:`FusionBlock`.
  """
  names = {f"{f}-{p}": (f, p) for f in ("MBAF", "NF") for p in PLACEMENTS}
  key = str(name).upper()
  if key not in names:
    raise ValueError(f"fusion block name must be one of {sorted(names)}, got {name!r}.")
  kind, placement = names[key]
  if kind == "NF":
    if mbaf_kwargs:
      raise ValueError(f"{name} is naive fusion and takes no MBAF options, got "
                       f"{sorted(mbaf_kwargs)}.")
    return FusionBlock(placement=placement, fusion="naive")
  return FusionBlock(placement=placement, fusion="mbaf", mbaf_kwargs=mbaf_kwargs)
