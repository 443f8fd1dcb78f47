"""NaiveFusion: concatenation of the modes, the papers' baseline (DMF §4, "naive fusion")."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbaf_jax.fusion.common import FusionOutput, batch_mask, check_modes


class NaiveFusion(nn.Module):
  """Concatenates ``n >= 1`` modes: ``x_f = x_1 ⊕ … ⊕ x_n`` (DMF §4; MBAF's NF baseline).

  "In naive fusion, we simply concatenate the feature embeddings, x_a and x_t,
  while keeping the same downstream model and classification head" (DMF §4). No
  parameters, no memory; ``aux`` is empty. Rows are independent, so padded rows
  cannot affect real rows; padded rows of the output are zeroed.

  Call: ``layer(*modes, mask=None, train=False)`` with ``modes[i]`` of shape ``(B, d_i)``.
  """
  dtype: Any = None  # output dtype (None: the promoted dtype of the modes)

  def output_dim(self, *in_dims: int) -> int:
    """Width of the fused output for modes of widths ``in_dims``: ``Σ d_i``."""
    if not in_dims:
      raise ValueError("output_dim needs the width of every mode, e.g. output_dim(768, 768).")
    return int(sum(int(d) for d in in_dims))

  @nn.compact
  def __call__(self, *modes, mask=None, train: bool = False) -> FusionOutput:
    """Concatenates the modes along the feature axis.

    Args:
      *modes: ``(B, d_i)`` floating arrays, one per modality.
      mask: optional ``(B,)`` mask, 1 = real row; padded rows are returned as zeros.
      train: unused (accepted for the shared fusion-layer signature).

    Returns:
      ``FusionOutput(fused (B, Σ d_i), aux={})``.
    """
    del train
    modes = check_modes(modes, "NaiveFusion")
    m = batch_mask(mask, modes[0].shape[0])
    dtype = self.dtype or jnp.result_type(*modes)
    fused = jnp.concatenate([x.astype(dtype) for x in modes], axis=-1)
    fused = jnp.where(m[:, None] > 0, fused, jnp.zeros((), dtype))
    return FusionOutput(fused=fused, aux={})
