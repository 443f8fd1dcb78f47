"""DMF full model (DMF §2): Wav2Vec2 + BERT → fusion (dual memory or naive) → head."""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mbaf_jax.models.heads import ClassifierHead, ModelOutput


class DMFModel(nn.Module):
  """Wav2Vec2 (masked-mean pooled, 768) + BERT (pooler, 768) → fusion → Dense 1024 → 512 → 4.

  DMF §2.1: audio = first 5 s at 16 kHz, text = 30 tokens; §2.2: ``DualMemoryFusion``; the naive
  baseline swaps in ``NaiveFusion`` and keeps everything else. Parameter tree: ``audio`` (Wav2Vec2),
  ``text`` (Bert), ``fusion`` (the memory module, own learning rate), ``head``.

  Batch: ``input_values`` (B, S) f32, ``audio_mask`` (B, S), ``input_ids`` / ``text_mask`` /
  ``token_type_ids`` (B, L) int32.
  """
  audio_config: Any  # encoders.Wav2Vec2Config
  text_config: Any  # encoders.BertConfig
  fusion: nn.Module  # DualMemoryFusion | NaiveFusion (unbound; named 'fusion')
  head_features: Sequence[int] = (1024, 512)  # DMF §2.3
  num_classes: int = 4  # ang, hap(+exc), neu, sad
  head_dropout: float = 0.0  # not stated in DMF
  head_activation: str = "relu"  # not stated in DMF
  dtype: Any = None  # head compute dtype (None: flax promotion, float32 with float32 params)

  @nn.compact
  def __call__(self, batch, mask=None, train: bool = False) -> ModelOutput:
    """Args: batch dict (see class doc); mask (B,) 1 = real row; train.

    Returns: ``ModelOutput(log_probs (B, 4), aux)`` (aux: DMF Eq. 4 similarity term in training).
    """
    from mbaf_jax.encoders import Bert, Wav2Vec2  # pylint: disable=g-import-not-at-top
    a = Wav2Vec2(self.audio_config, name="audio")(batch["input_values"], batch["audio_mask"],
                                                  train=train)
    t = Bert(self.text_config, name="text")(batch["input_ids"], batch["text_mask"],
                                            batch["token_type_ids"], train=train)
    out = self.fusion(a.pooled, t.pooled, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))
