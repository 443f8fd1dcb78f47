"""Pieces shared by the fusion layers."""
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class FusionOutput:
  """What every fusion layer returns.

  Attributes:
    fused: (B, F) fused features for the downstream head.
    aux: extra loss terms (scalars) the caller adds to its objective, e.g.
      ``{"memory_similarity": loss}`` for DMF (Eq. 4). Empty for NaiveFusion.
  """
  fused: jax.Array
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)


def batch_mask(mask, batch_size, name="mask"):
  """Returns a (B,) float32 mask of ones when ``mask`` is None, else checks it."""
  if mask is None:
    return jnp.ones((batch_size,), jnp.float32)
  mask = jnp.asarray(mask)
  if mask.shape != (batch_size,):
    raise ValueError(f"{name} must have shape ({batch_size},) to match the batch, "
                     f"got {mask.shape}")
  return mask.astype(jnp.float32)
