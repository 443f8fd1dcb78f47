"""MBAF IEMOCAP family (MBAF §4.1, Fig. 2): SincNet/DCNN audio (2048) + CNN-RNN text (4800) →
MBAF-I/II/III or NF-I/II/III (``mbaf_jax.fusion.mbaf_blocks.FusionBlock``) → head, with its input
schema, its word vocabulary (``workdir/vocab.json``) and its GloVe embedding. The family
contract is in ``models.factory``."""
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from mbaf_jax import encoders
from mbaf_jax.encoders import glove
from mbaf_jax.encoders import text_cnn_rnn
from mbaf_jax.errors import UserError
from mbaf_jax.fusion import MBAF
from mbaf_jax.fusion import mbaf_blocks
from mbaf_jax.models import factory
from mbaf_jax.models.heads import ClassifierHead, ModelOutput

DATA_FIELDS = ("max_seconds", "sample_rate", "max_tokens")  # config.data fields of the shapes
# What a run's header calls the model (optional: the family's name otherwise).
ENCODERS = "SincNet/DCNN + CNN-RNN text encoders"
WORD_VOCAB_FILE = "vocab.json"  # the text encoder's word → id map, in the workdir
GLOVE_KEY_SALT = 0x610E  # fold_in salt: PRNG key of the vectors of words missing from GloVe


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
  audio: nn.Module  # encoders.SincNetAudioEncoder (unbound; named 'audio'; output 2048)
  text: nn.Module  # encoders.CnnRnnTextEncoder (unbound; named 'text'; output 4800)
  fusion: nn.Module  # FusionBlock (unbound; named 'fusion')
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
    a = self.audio(batch["waves"], batch["lengths"], train=train)
    t = self.text(batch["token_ids"], batch["text_mask"], train=train)
    t = getattr(t, "pooled", t)
    out = self.fusion(a, t, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))


# --------------------------------------------------------------------------- build
def make_fusion_block(kind: str, model_config, dtype: Any = None):
  """The MBAF IEMOCAP fusion block (MBAF Fig. 2): ``FusionBlock(placement, "mbaf"|"naive")``
  with the MBAF options of ``model_config.fusion.mbaf``; ``dtype`` (not None) sets the compute
  dtype of the block, its self-attention and its fusion layer.

  Raises:
    ValueError: a kind the block does not have (only "mbaf" and "naive"), bad options.
  """
  if kind not in ("mbaf", "naive"):
    raise ValueError(f"fusion kind {kind!r} does not apply to model 'mbaf_iemocap'; it trains "
                     "MBAF-I/II/III ('mbaf') and NF-I/II/III ('naive') (config.fusions).")
  placement = model_config.placement
  if placement not in mbaf_blocks.PLACEMENTS:
    raise ValueError(f"config.model.placement={placement!r}; expected one of "
                     f"{mbaf_blocks.PLACEMENTS} (MBAF-I/II/III, Fig. 2).")
  gate = model_config.attention_gate
  if gate not in mbaf_blocks.GATES:
    raise ValueError(f"config.model.attention_gate={gate!r}; expected one of {mbaf_blocks.GATES}.")
  options = None
  if kind == "mbaf":
    options = factory.as_dict(model_config.fusion.get("mbaf") if model_config.fusion is not None
                              else None)
    try:
      MBAF(**options)
    except TypeError as e:
      raise ValueError(f"config.model.fusion.mbaf has an option MBAF does not accept ({e}); "
                       "remove it or check the spelling.") from e
    if dtype is not None:
      options["dtype"] = dtype
  return mbaf_blocks.FusionBlock(placement=placement, fusion=kind, mbaf_kwargs=options,
                                 gate=gate, dtype=dtype)


def build(model_config, fusion_kind: str, *, vocab_size: int | None = None,
          max_tokens: int | None = None, text_embedding=None):
  """The MBAF IEMOCAP model of ``config.model`` (``factory.build_model``).

  The encoders take the fields of ``model_config.audio.kwargs`` / ``model_config.text.kwargs``;
  ``vocab_size`` and ``max_tokens`` (the run's vocabulary and text length) override the text
  encoder's. ``text_embedding`` (``text_embedding()``: the GloVe matrix of the run's
  vocabulary) is returned in ``pretrained`` as "text/embedding". When
  ``model_config.text.glove`` is set the encoder does not warn about its random init, as the
  embedding is replaced after init (training) or restored (inference) either way.

  Raises:
    ValueError: a fusion kind other than "mbaf" / "naive", bad options, no vocabulary size, a
      ``text_embedding`` of the wrong shape.
  """
  dtype = factory.compute_dtype(model_config)
  fusion = make_fusion_block(fusion_kind, model_config, dtype)
  head = factory.head_kwargs(model_config, dtype)
  pretrained = {}
  text_kwargs = factory.as_dict(model_config.text.kwargs)
  if vocab_size:
    text_kwargs["vocab_size"] = int(vocab_size)
  if max_tokens:
    text_kwargs["max_tokens"] = int(max_tokens)
  if "vocab_size" not in text_kwargs:
    raise ValueError("the MBAF text encoder needs a vocabulary size (build_model(..., "
                     "vocab_size=len(vocab))).")
  if model_config.text.get("glove", "") or text_embedding is not None:
    text_kwargs["warn_random_embedding"] = False  # the embedding is replaced after init
  if text_embedding is not None:
    want = (text_kwargs["vocab_size"], text_kwargs.get("embed_dim", 300))
    if tuple(np.shape(text_embedding)) != want:
      raise ValueError(f"text_embedding has shape {tuple(np.shape(text_embedding))} but the "
                       f"text encoder's embedding is (vocab_size, embed_dim) = {want}; load "
                       "it for the run's vocabulary with dim=config.model.text.kwargs.embed_dim.")
    pretrained["text/embedding"] = np.asarray(text_embedding, np.float32)
  audio_kwargs = factory.as_dict(model_config.audio.kwargs)
  if dtype is not None:
    audio_kwargs["dtype"] = text_kwargs["dtype"] = dtype
  model = MBAFIemocapModel(audio=encoders.SincNetAudioEncoder(**audio_kwargs),
                           text=encoders.CnnRnnTextEncoder(**text_kwargs), fusion=fusion, **head)
  return model, pretrained


# --------------------------------------------------------------------------- inputs
def input_spec(data, model) -> dict:
  """The batch schema: S = round(max_seconds · sample_rate) samples, L = max_tokens words."""
  del model  # the shapes are the data's
  d = data
  s, n = int(round(d.max_seconds * d.sample_rate)), int(d.max_tokens)
  return {"waves": factory.Field((s,), np.float32),
          "lengths": factory.Field((), np.int32, s),
          "token_ids": factory.Field((n,), np.int32),
          "text_mask": factory.Field((n,), np.int32, 1)}


def save_word_vocab(vocab: dict, workdir: str) -> str:
  """Writes the word → id map of ``text_cnn_rnn.build_vocab`` to ``workdir/vocab.json`` (read back
  by ``load_word_vocab`` for inference); returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, WORD_VOCAB_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  os.replace(tmp, path)
  return path


def load_word_vocab(workdir: str) -> dict:
  """The word → id map a training run saved in ``workdir``.

  Raises:
    UserError: the file is missing or unreadable.
  """
  path = os.path.join(workdir, WORD_VOCAB_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      vocab = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} is missing: the training run writes the text encoder's word "
                    "vocabulary there; rerun training into this workdir or restore the file.") \
        from None
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is not a readable word vocabulary ({e}); it should be the JSON "
                    "word → id map written by training.") from None
  if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
    raise UserError(f"{path} is not a word → id map (expected a JSON object of integers).")
  return vocab


def preprocessor(data, model, workdir: str, raw=None) -> factory.Preprocessing:
  """The text encoder's word → id map: built from ``raw["texts"]`` and saved as
  ``workdir/vocab.json`` in training; loaded from there (never rebuilt) for inference
  (``raw`` None).

  Returns:
    ``Preprocessing(len(vocab), vocab)``.

  Raises:
    UserError: (inference) the vocabulary file is missing or unreadable.
  """
  del data, model  # the vocabulary has no options
  if raw is None:
    vocab = load_word_vocab(workdir)
  else:
    vocab = text_cnn_rnn.build_vocab(raw["texts"])
    save_word_vocab(vocab, workdir)
  return factory.Preprocessing(len(vocab), vocab)


def _fixed_waves(waves, lengths, samples: int):
  """Waveforms → ((N, samples) float32 zero-padded, (N,) int32 valid samples per row)."""
  if lengths is not None:  # an (N, S) array padded by the loader, with its valid lengths
    waves = np.asarray(waves, np.float32)[:, :samples]
    x = np.zeros((len(waves), samples), np.float32)
    x[:, :waves.shape[1]] = waves
    return x, np.minimum(lengths, samples).astype(np.int32)
  x = np.zeros((len(waves), samples), np.float32)
  n = np.zeros((len(waves),), np.int32)
  for i, w in enumerate(waves):
    w = np.asarray(w, np.float32).reshape(-1)[:samples]
    x[i, :w.size], n[i] = w, w.size
  return x, n


def make_inputs(data, model, raw, pre: factory.Preprocessing) -> dict:
  """Raw audio + text examples (``factory`` module doc) → the MBAF IEMOCAP batch
  (``input_spec``): raw audio cut to ``max_seconds`` and zero-padded, word ids of the run's
  vocabulary; ``pre`` is ``preprocessor(data, model, workdir, ...)``. Returns the batch dict of
  N rows."""
  d = data
  x, lengths = _fixed_waves(raw["waves"], raw.get("lengths"),
                            int(round(d.max_seconds * d.sample_rate)))
  ids, mask = text_cnn_rnn.encode_texts(list(raw["texts"]), pre.state,
                                        max_tokens=int(d.max_tokens))
  return factory.conform(input_spec(data, model), {"waves": x, "lengths": lengths,
                                              "token_ids": ids, "text_mask": mask})


# --------------------------------------------------------------------------- GloVe
def glove_embedding(model, vocab: dict, *, seed: int, verbose: bool = True) -> np.ndarray:
  """The MBAF text encoder's initial embedding from ``model.text.glove`` (MBAF §4.1:
  GloVe-300d, via its ref. [47]).

  Row ``i`` is the GloVe vector of the word with id ``i`` (lowercased lookup as a fallback);
  row 0 (``<pad>``) is zeros; words not in the file (``<unk>`` among them) get
  N(0, σ²) vectors, σ = the standard deviation of the vectors found (0.1 if none), drawn from
  ``fold_in(key(seed), GLOVE_KEY_SALT)`` — the same matrix for every fold and process
  (not in paper).

  Args:
    model: ``config.model`` (``text.glove``, ``text.kwargs.embed_dim``).
    vocab: the run's word → id map (``text_cnn_rnn.build_vocab``, saved as ``vocab.json``).
    seed: the run's seed (``config.seed``).
    verbose: print how many vocabulary words were found / missing.

  Returns:
    (len(vocab), embed_dim) float32 matrix.

  Raises:
    UserError: the file is missing, unreadable, malformed or of another dimension than
      ``model.text.kwargs.embed_dim``.
  """
  path = model.text.glove
  dim = int(model.text.kwargs.get("embed_dim", 300))
  key = jax.random.fold_in(jax.random.key(seed), GLOVE_KEY_SALT)
  expected = (f"a GloVe text file of {dim}-d vectors (one word and {dim} numbers per line, "
              f"e.g. glove.6B.{dim}d.txt) to match config.model.text.kwargs.embed_dim={dim}")
  try:
    table = glove.load_glove(path, vocab, dim=dim, key=key, padding_id=0)
  except FileNotFoundError:
    raise UserError(f"config.model.text.glove={path!r} does not exist; expected {expected}. "
                    "Download glove.6B.zip from https://nlp.stanford.edu/projects/glove/, or "
                    "set --config.model.text.glove='' to train the embedding from a random "
                    "init.") from None
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise UserError(f"config.model.text.glove={path!r} cannot be used: {e} Expected {expected} "
                    "(or set embed_dim to the file's dimension).") from None
  if verbose:
    words = len(vocab) - 1  # <pad> excluded
    shown = ", ".join(table.missing[:8]) + (", ..." if table.misses > 8 else "")
    print(f"GloVe {path}: {table.hits}/{words} vocabulary words found, {table.misses} missing "
          f"(random N(0, sigma^2) init{': ' + shown if shown else ''})", flush=True)
  return table.matrix


def text_embedding(data, model, workdir: str, *, seed: int, verbose: bool = True):
  """The GloVe matrix of the run's vocabulary (``workdir/vocab.json``) when ``model.text.glove``
  is set (``glove_embedding`` with ``seed``), else None (random init)."""
  del data
  if not model.text.get("glove", ""):
    return None
  return glove_embedding(model, load_word_vocab(workdir), seed=seed, verbose=verbose)


raw_inputs = factory.audio_text_inputs  # (waves, texts) per example
raw_examples = factory.audio_text_examples  # (waves, texts) columns → {"waves", "texts"}
