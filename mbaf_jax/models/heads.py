"""Shared pieces of the full models: the output record and the classification head.

The self-attention of MBAF-II/III is ``mbaf_jax.fusion.mbaf_blocks.VectorSelfAttention``."""
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

_ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "none": lambda x: x}


@flax.struct.dataclass
class ModelOutput:
  """What every full model returns.

  Attributes:
    log_probs: (B, K) log-probabilities of the K classes.
    aux: extra loss terms from the fusion layer (``FusionOutput.aux``), added to the objective.
  """
  log_probs: jax.Array
  aux: dict = flax.struct.field(default_factory=dict)


def activation(name: str):
  """Activation by name ("relu", "gelu", "tanh", "none")."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"activation={name!r} is unknown; expected one of {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


class ClassifierHead(nn.Module):
  """Dense layers → K-way log-probabilities.

  DMF §2.3: "two fully connected layers with 1024 and 512 units followed by the classification
  head resulting in log-probability vector x_o ∈ R^{N×4}". MBAF §4.2 (CEBS): "a dense layer with
  1024 units and 0.5 dropout rate followed by a classification dense layer with 3 units".
  """
  features: Sequence[int] = (1024, 512)  # hidden Dense widths
  num_classes: int = 4  # K
  dropout: float = 0.0  # dropout after each hidden layer in training (rng 'dropout')
  activation: str = "relu"  # hidden activation (neither paper names it for DMF; ReLU chosen)
  dtype: Any = None  # compute dtype (None: inputs)
  param_dtype: Any = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x (B, F); train: dropout on. Returns: (B, K) float32 log-probabilities."""
    act = activation(self.activation)
    for i, f in enumerate(self.features):
      x = act(nn.Dense(f, dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="logits")(x)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

