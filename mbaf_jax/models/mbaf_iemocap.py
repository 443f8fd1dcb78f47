"""MBAF IEMOCAP model (MBAF §4.1, Fig. 2): SincNet/DCNN audio (2048) + CNN-RNN text (4800) →
MBAF-I/II/III or NF-I/II/III → head."""
from typing import Any, Mapping, Sequence

import flax.linen as nn

from mbaf_jax.models.heads import ClassifierHead, ModelOutput, VectorSelfAttention


class MBAFIemocapModel(nn.Module):
  """Audio + text encoders of MBAF ref. [47] → fusion → head.

  ``attention`` selects the paper's three networks (MBAF §4.1, Fig. 2): "none" = MBAF-I / NF-I
  (fusion on the encoder outputs), "after" = MBAF-II / NF-II (self-attention after fusion),
  "before" = MBAF-III / NF-III (self-attention on each mode before fusion).

  Batch: ``waves`` (B, S) f32, ``lengths`` (B,) int, ``token_ids`` (B, L) int32, ``text_mask``
  (B, L). Parameter tree: ``audio``, ``text``, ``attention_*``, ``fusion``, ``head``.
  """
  fusion: nn.Module  # MBAF | NaiveFusion (unbound; named 'fusion')
  audio_kwargs: Mapping[str, Any]  # SincNetAudioEncoder fields (dense_features[-1] = 2048)
  text_kwargs: Mapping[str, Any]  # CnnRnnTextEncoder fields (output 4800)
  attention: str = "before"  # "none" (I), "after" (II), "before" (III)
  attention_tokens: int = 16  # VectorSelfAttention chunks (not stated in MBAF)
  attention_heads: int = 4  # VectorSelfAttention heads (not stated in MBAF)
  head_features: Sequence[int] = (1024,)  # not stated for IEMOCAP; the CEBS head's width
  head_dropout: float = 0.5  # not stated for IEMOCAP; the CEBS head's rate
  head_activation: str = "relu"  # not stated
  num_classes: int = 4  # ang, hap(+exc), neu, sad

  @nn.compact
  def __call__(self, batch, mask=None, train: bool = False) -> ModelOutput:
    """Returns ``ModelOutput(log_probs (B, 4), aux)``."""
    from mbaf_jax import encoders  # pylint: disable=g-import-not-at-top
    if self.attention not in ("none", "after", "before"):
      raise ValueError(f"attention={self.attention!r}; expected 'none' (MBAF-I), 'after' "
                       "(MBAF-II) or 'before' (MBAF-III).")
    a = encoders.SincNetAudioEncoder(**self.audio_kwargs, name="audio")(
        batch["waves"], batch["lengths"], train=train)
    t = encoders.CnnRnnTextEncoder(**self.text_kwargs, name="text")(
        batch["token_ids"], batch["text_mask"], train=train)
    t = getattr(t, "pooled", t)
    att = dict(tokens=self.attention_tokens, num_heads=self.attention_heads)
    if self.attention == "before":
      a = VectorSelfAttention(**att, name="attention_audio")(a)
      t = VectorSelfAttention(**att, name="attention_text")(t)
    out = self.fusion(a, t, mask=mask, train=train)
    fused = out.fused
    if self.attention == "after":
      fused = VectorSelfAttention(**att, name="attention_fused")(fused)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, name="head")(fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))
