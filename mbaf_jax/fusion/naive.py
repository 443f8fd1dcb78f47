"""NaiveFusion: concatenation of the modes, the papers' baseline (DMF §4, "naive fusion")."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbaf_jax.fusion.common import FusionOutput, batch_mask, check_modes, modality_presence
from mbaf_jax.ops import validation

ABSENT = ("zeros", "learned")


class NaiveFusion(nn.Module):
  """Concatenates ``n >= 1`` modes: ``x_f = x_1 ⊕ … ⊕ x_n`` (DMF §4; MBAF's NF baseline).

  "In naive fusion, we simply concatenate the feature embeddings, x_a and x_t,
  while keeping the same downstream model and classification head" (DMF §4). No
  parameters (unless ``absent="learned"``), no memory; ``aux`` is empty. Rows are
  independent, so padded rows cannot affect real rows; padded rows of the output are zeroed.

  Absent modes (``modality_mask``, beyond both papers; docs/PAPER_NOTES.md): an absent mode's
  slice of the concatenation is zeros (``absent="zeros"``, the default) or a learned "absent"
  embedding ``e_i`` per mode (``absent="learned"``: ``params/absent_{i}`` of shape ``(d_i,)``,
  initialised to zeros). A row with no mode present is padding.

  Call: ``layer(*modes, mask=None, modality_mask=None, train=False)`` with ``modes[i]`` of
  shape ``(B, d_i)``.
  """
  dtype: Any = None  # output dtype (None: the promoted dtype of the modes)
  absent: str = "zeros"  # an absent mode's slice: "zeros" | "learned" (one embedding per mode)

  def output_dim(self, *in_dims: int) -> int:
    """Width of the fused output for modes of widths ``in_dims``: ``Σ d_i``."""
    if not in_dims:
      raise ValueError("output_dim needs the width of every mode, e.g. output_dim(768, 768).")
    return int(sum(int(d) for d in in_dims))

  @nn.compact
  def __call__(self, *modes, mask=None, modality_mask=None, train: bool = False) -> FusionOutput:
    """Concatenates the modes along the feature axis.

    Args:
      *modes: ``(B, d_i)`` floating arrays, one per modality.
      mask: optional ``(B,)`` mask, 1 = real row; padded rows are returned as zeros.
      modality_mask: optional ``(B, M)`` bool, True = mode present (None: all present). An
        absent mode's values are never read: its slice is zeros or the learned embedding.
      train: unused (accepted for the shared fusion-layer signature).

    Returns:
      ``FusionOutput(fused (B, Σ d_i), aux={})``.
    """
    del train
    validation.option(self.absent, ABSENT, "absent")
    modes = check_modes(modes, "NaiveFusion")
    m = batch_mask(mask, modes[0].shape[0])
    present, m = modality_presence(modality_mask, modes[0].shape[0], len(modes), m)
    dtype = self.dtype or jnp.result_type(*modes)
    if self.absent == "learned":
      fills = [self.param(f"absent_{i}", nn.initializers.zeros, (x.shape[1],), jnp.float32)
               for i, x in enumerate(modes)]
    else:
      fills = [jnp.zeros((), dtype)] * len(modes)
    if present is None:
      fused = jnp.concatenate([x.astype(dtype) for x in modes], axis=-1)
    else:  # where, not multiply: an absent value (even Inf/NaN) never reaches the output
      fused = jnp.concatenate([jnp.where(present[:, i:i + 1], x.astype(dtype),
                                         jnp.asarray(fill, dtype))
                               for i, (x, fill) in enumerate(zip(modes, fills))], axis=-1)
    fused = jnp.where(m[:, None] > 0, fused, jnp.zeros((), dtype))
    return FusionOutput(fused=fused, aux={})
