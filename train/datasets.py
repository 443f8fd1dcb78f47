"""Config → in-memory, fixed-shape model inputs + folds, through the real loaders.

``load_dataset(config, workdir)`` finds (or, for the demo, generates) the corpus, loads it with
``mbaf_jax.data``, preprocesses every example once into arrays of N rows (the model inputs) and
builds the folds of the paper's protocol. Batches are then gathered by index on the host.
"""
import dataclasses
import os
from typing import Optional

import numpy as np

from train.errors import UserError
from train.progress import phase

IEMOCAP_CLASSES = ("ang", "hap", "neu", "sad")
CEBS_CLASSES = ("basal", "music", "post-music")


@dataclasses.dataclass
class Dataset:
  """Preprocessed examples and folds.

  Attributes:
    inputs: model-input arrays, each with N rows (keys as the model's batch dict).
    labels: (N,) int32.
    folds: list of ``mbaf_jax.data.folds.Fold``.
    class_names: names of the K classes.
    vocab_size: text vocabulary size (None when the model has no random-init text encoder).
    summary: the loader's skip summary (printed by the run).
    text_embedding: (vocab_size, embed_dim) word embedding loaded from
      ``config.model.text.glove`` for the run's vocabulary (``glove_embedding``), substituted
      for the MBAF text encoder's random init; None when no GloVe file is configured.
  """
  inputs: dict
  labels: np.ndarray
  folds: list
  class_names: tuple
  vocab_size: Optional[int] = None
  summary: object = None
  text_embedding: Optional[np.ndarray] = None


def _is_iemocap_root(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "Session1")) or os.path.isdir(
      os.path.join(path, "Session1", "dialog"))


def resolve_iemocap_root(config, workdir: str) -> str:
  """The ``IEMOCAP_full_release`` directory of ``config.data.data_dir`` (generated for the demo).

  Raises:
    UserError: data_dir missing / not an IEMOCAP release.
  """
  data_dir = config.data.data_dir or (os.path.join(workdir, "data") if config.data.synthetic
                                      else "")
  if not data_dir:
    raise UserError("config.data.data_dir is empty. Set --config.data.data_dir to the "
                    "IEMOCAP_full_release directory (or its parent), or use a :demo config, "
                    "which generates a synthetic corpus.")
  candidates = [data_dir, os.path.join(data_dir, "IEMOCAP_full_release")]
  for c in candidates:
    if _is_iemocap_root(c):
      return c
  if config.data.synthetic:
    from mbaf_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    with phase(f"Generating the synthetic IEMOCAP-format corpus in {data_dir}"):
      return synthetic.write_iemocap(data_dir, size=config.data.synthetic_size, seed=0)
  if not os.path.exists(data_dir):
    raise UserError(f"config.data.data_dir={data_dir!r} does not exist. Point it at the "
                    "IEMOCAP_full_release directory (the one holding Session1..Session5).")
  raise UserError(f"config.data.data_dir={data_dir!r} is not the IEMOCAP data set: neither it nor "
                  f"{candidates[1]!r} holds Session1/ (expected IEMOCAP_full_release/Session1.."
                  "Session5 with dialog/EmoEvaluation, dialog/transcriptions, sentences/wav).")


def resolve_cebs_root(config, workdir: str) -> str:
  """The ``cebsdb`` directory of ``config.data.data_dir`` (generated for the demo)."""
  data_dir = config.data.data_dir or (os.path.join(workdir, "data") if config.data.synthetic
                                      else "")
  if not data_dir:
    raise UserError("config.data.data_dir is empty. Set --config.data.data_dir to the PhysioNet "
                    "cebsdb directory (WFDB records b001.., m001.., p001..), or use :demo.")
  for c in (data_dir, os.path.join(data_dir, "cebsdb")):
    if os.path.isdir(c) and any(f.endswith(".hea") for f in os.listdir(c)):
      return c
  if config.data.synthetic:
    from mbaf_jax.data import synthetic_cebs  # pylint: disable=g-import-not-at-top
    with phase(f"Generating the synthetic CEBS-format corpus in {data_dir}"):
      return synthetic_cebs.write_cebs(data_dir, size=config.data.synthetic_size, seed=0)
  if not os.path.exists(data_dir):
    raise UserError(f"config.data.data_dir={data_dir!r} does not exist. Point it at the cebsdb "
                    "directory with the WFDB records.")
  raise UserError(f"config.data.data_dir={data_dir!r} is not the CEBS data set: no WFDB header "
                  "(.hea) files in it or in its cebsdb/ subdirectory.")


def _subset(n: int, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
  """A class-stratified random subset of k of n examples (sorted), for quick runs."""
  if not k or k >= n:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  picked = []
  classes = np.unique(labels)
  for j, c in enumerate(classes):
    idx = np.flatnonzero(labels == c)
    take = k // len(classes) + (1 if j < k % len(classes) else 0)
    picked.append(rng.permutation(idx)[:take])
  return np.sort(np.concatenate(picked))


def build_word_vocab(texts, out_dir: str) -> str:
  """Writes a word-level BERT vocab (specials + every lower-cased word of ``texts``) and a
  ``BertTokenizerFast`` saved from it into ``out_dir``; returns ``out_dir``. No network."""
  from tokenizers.pre_tokenizers import BertPreTokenizer  # pylint: disable=g-import-not-at-top
  from mbaf_jax.encoders.preprocessing import quiet_transformers  # pylint: disable=g-import-not-at-top
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


WORD_VOCAB_FILE = "vocab.json"  # the MBAF text encoder's word → id map, in the workdir


def save_word_vocab(vocab: dict, workdir: str) -> str:
  """Writes the word → id map of ``text_cnn_rnn.build_vocab`` to ``workdir/vocab.json`` (read back
  by ``load_word_vocab`` for inference); returns the path."""
  import json  # pylint: disable=g-import-not-at-top
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
  import json  # pylint: disable=g-import-not-at-top
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


def audio_text_inputs(config, workdir: str, waves: np.ndarray, lengths: np.ndarray, texts):
  """Model inputs of ``config.model`` for (audio, text) examples, and the text vocabulary size.

  Args:
    config: the run's config (``data`` and ``model`` sections).
    workdir: the run's workdir (DMF: a word-level BERT vocabulary is built into
      ``workdir/tokenizer`` when no tokenizer directory is configured; MBAF: the text encoder's
      word → id map is saved as ``workdir/vocab.json``, for inference).
    waves: (N, S) float32 decoded audio at ``config.data.sample_rate``, zero-padded.
    lengths: (N,) valid samples per row.
    texts: N transcripts.

  Returns:
    ``(inputs, vocab_size)``: the model-input arrays (N rows each) and the text vocabulary size.
  """
  from mbaf_jax import encoders  # pylint: disable=g-import-not-at-top
  d, m = config.data, config.model
  vocab_size = None
  if m.name == "dmf":
    audio = encoders.AudioPreprocessor(m.audio.pretrained or None, max_seconds=d.max_seconds,
                                       sampling_rate=d.sample_rate)(
        [w[:max(int(n), 1)] for w, n in zip(waves, lengths)])
    tok_dir = d.tokenizer or m.text.pretrained
    if not tok_dir:
      tok_dir = build_word_vocab(texts, os.path.join(workdir, "tokenizer"))
    text = encoders.TextPreprocessor(tok_dir, max_length=d.max_tokens)
    vocab_size = len(text.tokenizer)
    enc = text(texts)
    inputs = {"input_values": audio["input_values"], "audio_mask": audio["attention_mask"],
              "input_ids": enc["input_ids"], "text_mask": enc["attention_mask"],
              "token_type_ids": enc["token_type_ids"]}
  else:
    from mbaf_jax.encoders import text_cnn_rnn  # pylint: disable=g-import-not-at-top
    vocab = text_cnn_rnn.build_vocab(texts)
    save_word_vocab(vocab, workdir)
    ids, mask = text_cnn_rnn.encode_texts(texts, vocab, max_tokens=d.max_tokens)
    vocab_size = len(vocab)
    s = int(round(d.max_seconds * d.sample_rate))
    inputs = {"waves": np.asarray(waves[:, :s], np.float32),
              "lengths": np.minimum(lengths, s).astype(np.int32),
              "token_ids": ids, "text_mask": mask}
  return inputs, vocab_size


GLOVE_KEY_SALT = 0x610E  # fold_in salt: PRNG key of the vectors of words missing from GloVe


def glove_embedding(config, vocab: dict, verbose: bool = True) -> np.ndarray:
  """The MBAF text encoder's initial embedding from ``config.model.text.glove`` (MBAF §4.1:
  GloVe-300d, via its ref. [47]).

  Row ``i`` is the GloVe vector of the word with id ``i`` (lowercased lookup as a fallback);
  row 0 (``<pad>``) is zeros; words not in the file (``<unk>`` among them) get
  N(0, σ²) vectors, σ = the standard deviation of the vectors found (0.1 if none), drawn from
  ``fold_in(key(config.seed), GLOVE_KEY_SALT)`` — the same matrix for every fold and process
  (not in paper).

  Args:
    config: the run's config (``model.text.glove``, ``model.text.kwargs.embed_dim``, ``seed``).
    vocab: the run's word → id map (``text_cnn_rnn.build_vocab``, saved as ``vocab.json``).
    verbose: print how many vocabulary words were found / missing.

  Returns:
    (len(vocab), embed_dim) float32 matrix.

  Raises:
    UserError: the file is missing, unreadable, malformed or of another dimension than
      ``config.model.text.kwargs.embed_dim``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from mbaf_jax.encoders import glove  # pylint: disable=g-import-not-at-top
  path = config.model.text.glove
  dim = int(config.model.text.kwargs.get("embed_dim", 300))
  key = jax.random.fold_in(jax.random.key(config.seed), GLOVE_KEY_SALT)
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


def _iemocap(config, workdir: str) -> Dataset:
  from mbaf_jax.data import folds as folds_lib  # pylint: disable=g-import-not-at-top
  from mbaf_jax.data import iemocap  # pylint: disable=g-import-not-at-top
  d = config.data
  root = resolve_iemocap_root(config, workdir)
  corpus = iemocap.load_iemocap(root, verbose=False)
  if not corpus.utterances:
    raise UserError(f"no 4-class utterances found under {root!r}; is it the IEMOCAP release? "
                    f"{corpus.summary.format()}")
  keep = _subset(len(corpus.utterances), corpus.labels, d.max_examples, config.seed)
  corpus = corpus.subset(keep)
  cache = d.cache_dir or os.path.join(workdir, "cache")
  with phase(f"Loading {len(corpus.utterances)} utterances (audio and text) from {root}"):
    corpus, waves, lengths = iemocap.load_corpus_audio(corpus, sr=d.sample_rate,
                                                       max_seconds=d.max_seconds, cache_dir=cache)
    labels = corpus.labels.astype(np.int32)
    inputs, vocab_size = audio_text_inputs(config, workdir, waves, lengths, corpus.texts)
  if d.protocol == "loso":
    folds = folds_lib.loso_folds(corpus.utterances, validation=d.validation, seed=config.seed)
  elif d.protocol == "8:1:1":
    folds = [folds_lib.stratified_split(labels, (8, 1, 1), seed=config.seed)]
  else:
    raise UserError(f"config.data.protocol={d.protocol!r} does not apply to IEMOCAP; use 'loso' "
                    "(DMF) or '8:1:1' (MBAF).")
  return Dataset(inputs, labels, folds, IEMOCAP_CLASSES, vocab_size, corpus.summary)


def _cebs(config, workdir: str) -> Dataset:
  from mbaf_jax.data import cebs  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.mode_pair not in cebs.MODE_PAIRS:
    raise UserError(f"config.data.mode_pair={d.mode_pair!r}; expected one of "
                    f"{sorted(cebs.MODE_PAIRS)}.")
  from mbaf_jax.data import synthetic_cebs  # pylint: disable=g-import-not-at-top
  root = resolve_cebs_root(config, workdir)
  # Real CEBS: the first 5 minutes of every record (MBAF §4.2); a synthetic corpus states its own
  # (shorter) record length in its manifest.
  manifest = synthetic_cebs.read_manifest(root)
  seconds = float(manifest["seconds_per_state"]) if manifest else cebs.SECONDS_PER_STATE
  try:
    with phase(f"Loading the CEBS records of {d.mode_pair} from {root}"):
      corpus = cebs.load_cebs(root, modes=cebs.MODE_PAIRS[d.mode_pair],
                              seconds_per_state=seconds, chunks=d.chunks,
                              chunk_samples=d.chunk_samples)
  except ValueError as e:
    raise UserError(f"cannot load CEBS from {root!r}: {e}") from e
  labels = np.asarray(corpus.labels, np.int32)
  if labels.size == 0:
    raise UserError(f"no CEBS windows could be read from {root!r}. {corpus.summary.format()}")
  keep = _subset(labels.size, labels, d.max_examples, config.seed)
  modes = tuple(np.asarray(x, np.float32)[keep] for x in corpus.pair(d.mode_pair))
  labels, subjects = labels[keep], np.asarray(corpus.subjects)[keep]
  if d.protocol != "logo":
    raise UserError(f"config.data.protocol={d.protocol!r} does not apply to CEBS; use 'logo'.")
  folds = cebs.logo_folds(subjects, n_groups=4, seed=config.seed, val_fraction=0.1)
  return Dataset({"modes": modes}, labels, folds, CEBS_CLASSES, None, corpus.summary)


def load_dataset(config, workdir: str) -> Dataset:
  """Loads ``config.data.dataset`` for ``config.model`` (see module doc).

  Raises:
    UserError: missing or wrong data directory, protocol or mode pair.
  """
  name = config.data.dataset
  if name == "iemocap":
    ds = _iemocap(config, workdir)
  elif name == "cebs":
    ds = _cebs(config, workdir)
  elif name == "manifest":
    from train import manifest_data  # pylint: disable=g-import-not-at-top
    with phase(f"Loading the manifest {config.data.data_dir}"):
      ds = manifest_data.load_manifest_dataset(config, workdir)
  else:
    raise UserError(f"config.data.dataset={name!r} is unknown; expected 'iemocap', 'cebs' or "
                    "'manifest' (a CSV/JSONL manifest of your own data).")
  if config.data.max_folds:
    ds.folds = ds.folds[: config.data.max_folds]
  if config.model.name == "mbaf_iemocap" and config.model.text.get("glove", ""):
    import jax  # pylint: disable=g-import-not-at-top
    ds.text_embedding = glove_embedding(config, load_word_vocab(workdir),
                                        verbose=jax.process_index() == 0)
  return ds
