"""DMF family (DMF §2): Wav2Vec2 + BERT → fusion (dual memory or naive) → head, with its input
schema, its preprocessing (the encoders' feature extractor and tokenizer) and its pretrained
loading (local Hugging Face directories). The family contract is in ``models.factory``."""
import dataclasses
import os
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from mbaf_jax import encoders
from mbaf_jax.encoders.preprocessing import quiet_transformers
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory
from mbaf_jax.models.heads import ClassifierHead, ModelOutput

DATA_FIELDS = ("max_seconds", "sample_rate", "max_tokens")  # config.data fields of the shapes
# What a run's header calls the model (optional: the family's name otherwise).
ENCODERS = "Wav2Vec2 + BERT encoders"
TOKENIZER_DIR = "tokenizer"  # the word-level vocabulary training builds, in the workdir


class DMFModel(nn.Module):
  """Wav2Vec2 (masked-mean pooled, 768) + BERT (pooler, 768) → fusion → Dense 1024 → 512 → 4.

  DMF §2.1: audio = first 5 s at 16 kHz, text = 30 tokens; §2.2: ``DualMemoryFusion``; the naive
  baseline swaps in ``NaiveFusion`` and keeps everything else. Parameter tree: ``audio`` (Wav2Vec2),
  ``text`` (Bert), ``fusion`` (the memory module, own learning rate), ``head``.

  Batch: ``input_values`` (B, S) f32, ``audio_mask`` (B, S), ``input_ids`` / ``text_mask`` /
  ``token_type_ids`` (B, L) int32.
  """
  audio: nn.Module  # encoders.Wav2Vec2 (unbound; named 'audio')
  text: nn.Module  # encoders.Bert (unbound; named 'text')
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
    a = self.audio(batch["input_values"], batch["audio_mask"], train=train)
    t = self.text(batch["input_ids"], batch["text_mask"], batch["token_type_ids"], train=train)
    out = self.fusion(a.pooled, t.pooled, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))


# --------------------------------------------------------------------------- build
def encoder_config(cls, enc_cfg):
  """``cls.base()`` / ``cls.tiny()`` with ``enc_cfg.overrides`` (``config.model.audio|text``).

  Raises:
    ValueError: a size other than "base" / "tiny".
  """
  size = enc_cfg.get("size", "base")
  overrides = factory.as_dict(enc_cfg.get("overrides", None))
  if size not in ("base", "tiny"):
    raise ValueError(f"encoder size={size!r}; expected 'base' or 'tiny' (or set pretrained to a "
                     "local Hugging Face directory).")
  return getattr(cls, size)(**overrides)


def load_pretrained(path: str, what: str):
  """Loads a local Hugging Face encoder directory → ``(config, params, report)``.

  Raises:
    ValueError: any failure, saying which config field to fix (a ``pytorch_model.bin`` needs
      torch installed).
  """
  try:
    model, params, report = encoders.from_pretrained(path)
  except ImportError as e:
    raise ValueError(f"config.model.{what}.pretrained={path!r} could not be loaded: a package it "
                     f"needs is missing ({e}); a pytorch_model.bin checkpoint needs torch — "
                     "install torch, or convert the directory to model.safetensors.") from e
  except (OSError, ValueError) as e:
    raise ValueError(f"config.model.{what}.pretrained={path!r} could not be loaded: {e}") from e
  return model.config, params, report


def build(model_config, fusion_kind: str, *, vocab_size: int | None = None,
          max_tokens: int | None = None, text_embedding=None):
  """The DMF model of ``config.model`` and its pretrained encoders (``factory.build_model``).

  ``model_config.audio|text.pretrained`` (a local Hugging Face directory) gives the encoder's
  config and weights (returned in ``pretrained`` as "audio" / "text"); else
  ``size`` + ``overrides`` give a random-init encoder, the text one with ``vocab_size`` words.
  ``max_tokens`` and ``text_embedding`` do not apply (the text length is the batch's).

  Raises:
    ValueError: unknown fusion / dtype / size, bad options, an unloadable directory.
  """
  del max_tokens, text_embedding  # BERT takes any length up to its positions; no GloVe
  dtype = factory.compute_dtype(model_config)
  fusion = factory.make_fusion(fusion_kind, model_config.fusion, dtype)
  head = factory.head_kwargs(model_config, dtype)
  pretrained, cfgs = {}, {}
  for part, cls in (("audio", encoders.Wav2Vec2Config), ("text", encoders.BertConfig)):
    enc = model_config[part]
    if enc.pretrained:
      cfgs[part], pretrained[part], _ = load_pretrained(enc.pretrained, part)
    else:
      cfgs[part] = encoder_config(cls, enc)
      if part == "text" and vocab_size:
        cfgs[part] = dataclasses.replace(cfgs[part], vocab_size=int(vocab_size))
    if dtype is not None:  # also over a pretrained config and overrides.dtype
      cfgs[part] = dataclasses.replace(cfgs[part], dtype=dtype)
  model = DMFModel(audio=encoders.Wav2Vec2(cfgs["audio"]), text=encoders.Bert(cfgs["text"]),
                   fusion=fusion, **head)
  return model, pretrained


# --------------------------------------------------------------------------- inputs
def input_spec(data, model) -> dict:
  """The batch schema: S = round(max_seconds · sample_rate) samples, L = max_tokens tokens."""
  del model  # the shapes are the data's
  d = data
  s, n = int(round(d.max_seconds * d.sample_rate)), int(d.max_tokens)
  return {"input_values": factory.Field((s,), np.float32),
          "audio_mask": factory.Field((s,), np.int32, 1),
          "input_ids": factory.Field((n,), np.int32),
          "text_mask": factory.Field((n,), np.int32, 1),
          "token_type_ids": factory.Field((n,), np.int32)}


def build_word_vocab(texts, out_dir: str) -> str:
  """Writes a word-level BERT vocab (specials + every lower-cased word of ``texts``) and a
  ``BertTokenizerFast`` saved from it into ``out_dir``; returns ``out_dir``. No network."""
  from tokenizers.pre_tokenizers import BertPreTokenizer  # pylint: disable=g-import-not-at-top
  quiet_transformers()
  from transformers import BertTokenizerFast  # pylint: disable=g-import-not-at-top
  pre = BertPreTokenizer()
  words = sorted({w.lower() for t in texts for w, _ in pre.pre_tokenize_str(t)})
  os.makedirs(out_dir, exist_ok=True)
  vocab_file = os.path.join(out_dir, "vocab.txt")
  with open(vocab_file, "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
  BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True).save_pretrained(out_dir)
  return out_dir


def preprocessor(data, model, workdir: str, raw=None) -> factory.Preprocessing:
  """The audio feature extractor and the tokenizer (DMF §2.1: "the feature extractor and
  tokenizer associated with each encoder").

  The tokenizer is ``data.tokenizer``, else ``model.text.pretrained``, else the word-level
  vocabulary of ``workdir/tokenizer``: built from ``raw["texts"]`` in training, loaded (never
  rebuilt) for inference (``raw`` None).

  Args:
    data: ``config.data`` (``tokenizer``, ``max_seconds``, ``sample_rate``, ``max_tokens``).
    model: ``config.model`` (``audio.pretrained``, ``text.pretrained``).
    workdir: the run's workdir.
    raw: the training examples (``{"texts", ...}``), or None for inference.

  Returns:
    ``Preprocessing(len(tokenizer), (AudioPreprocessor, TextPreprocessor))``.

  Raises:
    UserError: (inference) the workdir's tokenizer is missing.
  """
  d, m = data, model
  tok_dir = d.tokenizer or m.text.pretrained
  audio = encoders.AudioPreprocessor(m.audio.pretrained or None, max_seconds=d.max_seconds,
                                     sampling_rate=d.sample_rate)
  if not tok_dir and raw is not None:
    tok_dir = build_word_vocab(raw["texts"], os.path.join(workdir, TOKENIZER_DIR))
  tok_dir = tok_dir or os.path.join(workdir, TOKENIZER_DIR)
  if raw is None and not os.path.isdir(tok_dir):
    raise UserError(f"the text tokenizer {tok_dir!r} is missing (the training run writes "
                    f"<workdir>/tokenizer when it builds its own vocabulary); restore it or set "
                    f"config.data.tokenizer in {os.path.join(workdir, 'config.json')}.")
  text = encoders.TextPreprocessor(tok_dir, max_length=d.max_tokens)
  return factory.Preprocessing(len(text.tokenizer), (audio, text))


def make_inputs(data, model, raw, pre: factory.Preprocessing) -> dict:
  """Raw audio + text examples (``factory`` module doc) → the DMF batch (``input_spec``): the
  feature extractor's audio (first ``max_seconds``), the tokenizer's ids; ``pre`` is
  ``preprocessor(data, model, workdir, ...)``. Returns the batch dict of N rows."""
  audio, text = pre.state
  waves, lengths = raw["waves"], raw.get("lengths")
  if lengths is not None:
    waves = [w[:max(int(n), 1)] for w, n in zip(waves, lengths)]
  a = audio(list(waves))
  t = text([str(x) for x in raw["texts"]])
  return factory.conform(input_spec(data, model), {
      "input_values": a["input_values"], "audio_mask": a["attention_mask"],
      "input_ids": t["input_ids"], "text_mask": t["attention_mask"],
      "token_type_ids": t["token_type_ids"]})


def text_embedding(data, model, workdir: str, *, seed: int, verbose: bool = True):
  """None: BERT's embedding comes with its pretrained directory (``build``)."""
  del data, model, workdir, seed, verbose
  return None


raw_inputs = factory.audio_text_inputs  # (waves, texts) per example
raw_examples = factory.audio_text_examples  # (waves, texts) columns → {"waves", "texts"}
