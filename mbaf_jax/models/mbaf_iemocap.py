"""MBAF IEMOCAP model (MBAF §4.1, Fig. 2): SincNet/DCNN audio (2048) + CNN-RNN text (4800) →
MBAF-I/II/III or NF-I/II/III (``mbaf_jax.fusion.mbaf_blocks.FusionBlock``) → head."""
from typing import Any, Mapping, Sequence

import flax.linen as nn

from mbaf_jax.models.heads import ClassifierHead, ModelOutput


class MBAFIemocapModel(nn.Module):
  """Audio + text encoders of MBAF ref. [47] → fusion block → head.

  The fusion is a :class:`~mbaf_jax.fusion.mbaf_blocks.FusionBlock`: its ``placement`` selects
  the paper's three networks (MBAF §4.1, Fig. 2): "I" = MBAF-I / NF-I (fusion on the encoder
  outputs), "II" = self-attention after fusion, "III" = self-attention on each mode before
  fusion; the self-attention is one d×d Dense gate (what Table 3's parameter deltas imply,
  docs/PAPER_NOTES.md).

  Batch: ``waves`` (B, S) f32, ``lengths`` (B,) int, ``token_ids`` (B, L) int32, ``text_mask``
  (B, L). Parameter tree: ``audio``, ``text``, ``fusion`` (the block: ``fusion`` = MBAF or
  nothing for NF, ``attention`` / ``attention_{0,1}``), ``head``. MBAF's memory lives at
  ``variables['memory']['fusion']['fusion']['memory']``.
  """
  fusion: nn.Module  # FusionBlock (unbound; named 'fusion')
  audio_kwargs: Mapping[str, Any]  # SincNetAudioEncoder fields (dense_features[-1] = 2048)
  text_kwargs: Mapping[str, Any]  # CnnRnnTextEncoder fields (output 4800)
  head_features: Sequence[int] = (1024,)  # not stated for IEMOCAP; the CEBS head's width
  head_dropout: float = 0.5  # not stated for IEMOCAP; the CEBS head's rate
  head_activation: str = "relu"  # not stated
  num_classes: int = 4  # ang, hap(+exc), neu, sad
  dtype: Any = None  # head compute dtype (None: flax promotion, float32 with float32 params)

  @nn.compact
  def __call__(self, batch, mask=None, train: bool = False) -> ModelOutput:
    """Args: batch dict (see class doc); mask (B,) 1 = real row; train (dropout, memory write).

    Returns: ``ModelOutput(log_probs (B, 4), aux)``.
    """
    from mbaf_jax import encoders  # pylint: disable=g-import-not-at-top
    a = encoders.SincNetAudioEncoder(**self.audio_kwargs, name="audio")(
        batch["waves"], batch["lengths"], train=train)
    t = encoders.CnnRnnTextEncoder(**self.text_kwargs, name="text")(
        batch["token_ids"], batch["text_mask"], train=train)
    t = getattr(t, "pooled", t)
    out = self.fusion(a, t, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))
