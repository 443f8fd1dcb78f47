"""Fixed-shape preprocessing for the encoders with transformers' own feature extractor/tokenizer.

DMF §2.1: "we preprocess each audio sample and its corresponding text sample using the feature
extractor and tokenizer associated with each encoder ... 5s long audio segments sampled at 16000 Hz
from the beginning of the audio sample, and 30 tokens from each text sample". Both preprocessors
load only from a LOCAL directory (no downloads) and return batched NumPy arrays of fixed shape, so
the jitted model never recompiles.
"""
import logging
import os
from typing import Optional, Sequence

import numpy as np

# transformers' notice at import time when PyTorch is absent: this project never needs PyTorch at
# run time (native Flax encoders; transformers only for configs, tokenizers, feature extractors).
TORCH_NOTICE = "PyTorch was not found"


class _DropTorchNotice(logging.Filter):
  """Drops transformers' "PyTorch was not found" record; every other record passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith(TORCH_NOTICE)


def quiet_transformers() -> None:
  """Silences transformers' PyTorch-not-found notice (and nothing else) before it is imported.

  The notice is logged on the ``transformers`` logger itself when the package is first imported;
  a filter on that logger drops it, while its real warnings still reach the user. Call before
  every ``import transformers`` of the project (idempotent).
  """
  logger = logging.getLogger("transformers")
  if not any(isinstance(f, _DropTorchNotice) for f in logger.filters):
    logger.addFilter(_DropTorchNotice())


def _check_dir(path, what):
  if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
    raise FileNotFoundError(
        f"{what}: path={path!r} is not a directory. Expected a local Hugging Face model directory "
        "(e.g. the one holding config.json); nothing is downloaded.")


class AudioPreprocessor:
  """First ``max_seconds`` of each waveform → fixed-length ``input_values`` + ``attention_mask``.

  Uses ``transformers.Wav2Vec2FeatureExtractor`` (``preprocessor_config.json`` of ``path``, or its
  defaults when ``path`` is None): zero-mean/unit-variance normalisation over the real samples when
  ``do_normalize`` (``(x − mean) / sqrt(var + 1e-7)``), padding with ``padding_value`` to exactly
  ``round(max_seconds · sampling_rate)`` samples. The attention mask is always returned (1 = real
  sample) so padded frames are masked out of the encoder and the pooled embedding.
  """

  def __init__(self, path: Optional[str] = None, max_seconds: float = 5.0,
               sampling_rate: int = 16000):
    """Args:
      path: local directory with ``preprocessor_config.json``; None = default extractor settings.
      max_seconds: audio kept from the beginning of each utterance (DMF: 5 s).
      sampling_rate: expected sampling rate of the waveforms (DMF: 16 kHz).
    """
    quiet_transformers()
    from transformers import Wav2Vec2FeatureExtractor  # pylint: disable=g-import-not-at-top

    if not max_seconds > 0:
      raise ValueError(f"AudioPreprocessor: max_seconds={max_seconds} must be > 0.")
    if path is None:
      self.extractor = Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate)
    else:
      _check_dir(path, "AudioPreprocessor")
      if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        raise FileNotFoundError(
            f"AudioPreprocessor: {os.path.join(path, 'preprocessor_config.json')!r} not found. "
            "Pass the checkpoint directory that holds it, or path=None for default settings.")
      self.extractor = Wav2Vec2FeatureExtractor.from_pretrained(path, local_files_only=True)
    if self.extractor.sampling_rate != sampling_rate:
      raise ValueError(
          f"AudioPreprocessor: sampling_rate={sampling_rate} but the feature extractor in {path!r} "
          f"expects {self.extractor.sampling_rate} Hz. Resample the audio (mbaf_jax.data.audio "
          "does it with librosa) and pass the matching sampling_rate.")
    self.sampling_rate = int(sampling_rate)
    self.max_samples = int(round(max_seconds * sampling_rate))

  def __call__(self, waveforms: Sequence[np.ndarray]) -> dict:
    """Preprocesses a batch.

    Args:
      waveforms: list of 1-D float arrays (mono, at ``sampling_rate``), any lengths ≥ 1.

    Returns:
      ``{"input_values": (B, max_samples) float32, "attention_mask": (B, max_samples) int32}``.
    """
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
      raise ValueError("AudioPreprocessor: waveforms must be a batch (list of 1-D arrays or a 2-D "
                       "array); wrap a single waveform in a list.")
    if len(waveforms) == 0:
      raise ValueError("AudioPreprocessor: waveforms is empty; expected at least one waveform.")
    clipped = []
    for i, w in enumerate(waveforms):
      w = np.asarray(w, dtype=np.float32)
      if w.ndim != 1:
        raise ValueError(f"AudioPreprocessor: waveforms[{i}] has shape {w.shape}; expected a 1-D "
                         "mono waveform (average the channels first).")
      if w.size == 0:
        raise ValueError(f"AudioPreprocessor: waveforms[{i}] is empty; drop the utterance or "
                         "check the audio file.")
      if not np.all(np.isfinite(w)):
        raise ValueError(f"AudioPreprocessor: waveforms[{i}] contains NaN or inf samples.")
      clipped.append(w[: self.max_samples])
    out = self.extractor(clipped, sampling_rate=self.sampling_rate, padding="max_length",
                         max_length=self.max_samples, truncation=True,
                         return_attention_mask=True, return_tensors="np")
    return {"input_values": np.asarray(out["input_values"], np.float32),
            "attention_mask": np.asarray(out["attention_mask"], np.int32)}


class TextPreprocessor:
  """Texts → fixed-length token ids with ``transformers.AutoTokenizer`` from a local directory.

  Pads every text to exactly ``max_length`` tokens (DMF: 30) and truncates longer ones
  (keeping [CLS] … [SEP]).
  """

  def __init__(self, path: str, max_length: int = 30):
    """Args:
      path: local directory with the tokenizer files (``tokenizer.json`` / ``vocab.txt``).
      max_length: tokens per text, including special tokens.
    """
    quiet_transformers()
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

    _check_dir(path, "TextPreprocessor")
    if not isinstance(max_length, int) or max_length < 2:
      raise ValueError(f"TextPreprocessor: max_length={max_length!r} must be an int >= 2.")
    try:
      self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
      raise FileNotFoundError(
          f"TextPreprocessor: no usable tokenizer in {path!r} ({type(e).__name__}: {e}). Expected "
          "tokenizer.json or vocab.txt (+ tokenizer_config.json) from the same checkpoint.") from e
    self.max_length = max_length

  def __call__(self, texts: Sequence[str]) -> dict:
    """Tokenizes a batch.

    Args:
      texts: list of strings.

    Returns:
      ``{"input_ids", "attention_mask", "token_type_ids"}``, each (B, max_length) int32.
    """
    if isinstance(texts, str):
      raise ValueError("TextPreprocessor: texts must be a list of strings; wrap a single text in "
                       "a list.")
    texts = list(texts)
    if not texts:
      raise ValueError("TextPreprocessor: texts is empty; expected at least one string.")
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"TextPreprocessor: texts[{i}] is {type(t).__name__}; expected str.")
    enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                         return_token_type_ids=True, return_attention_mask=True,
                         return_tensors="np")
    return {k: np.asarray(enc[k], np.int32)
            for k in ("input_ids", "attention_mask", "token_type_ids")}
