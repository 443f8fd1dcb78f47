"""CEBS model (MBAF §4.2, Fig. 3): per-mode LSTM(512) → LSTM(512) → fusion → Dense 1024 + dropout
0.5 → 3 classes."""
from typing import Any, Sequence

import flax.linen as nn

from mbaf_jax.models.heads import ClassifierHead, ModelOutput


class CebsModel(nn.Module):
  """Two (or more) physiological modes, each ``(B, 6, 1000)`` (6 chunks of 200 ms at 5 kHz).

  Batch: ``modes`` = tuple of ``(B, T, F)`` arrays in the order of the mode pair (F-IV ECG+RS, ...).
  Parameter tree: ``encoder_<i>``, ``fusion``, ``head``.
  """
  fusion: nn.Module  # MBAF | NaiveFusion (unbound; named 'fusion')
  hidden: int = 512  # LSTM units (MBAF §4.2)
  num_layers: int = 2  # LSTM-1 (sequences) → LSTM-2 (last state)
  head_features: Sequence[int] = (1024,)  # MBAF §4.2
  head_dropout: float = 0.5  # MBAF §4.2
  head_activation: str = "relu"  # not stated in MBAF
  num_classes: int = 3  # basal, music, post-music
  dtype: Any = None  # compute dtype of the encoders and the head (None: from the inputs)

  @nn.compact
  def __call__(self, batch, mask=None, train: bool = False) -> ModelOutput:
    """Returns ``ModelOutput(log_probs (B, 3), aux)``."""
    from mbaf_jax.encoders import LSTMEncoder  # pylint: disable=g-import-not-at-top
    feats = [LSTMEncoder(self.hidden, self.num_layers, dtype=self.dtype, name=f"encoder_{i}")(
        x, train=train) for i, x in enumerate(batch["modes"])]
    out = self.fusion(*feats, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))
