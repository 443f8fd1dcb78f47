"""Reader for pre-trained GloVe vectors in the standard ``glove.*.txt`` format (MBAF §4.1 TE).

MBAF §4.1 sets the text encoder's embedding to "Glove-300d". Each line of ``glove.6B.300d.txt``
(and of ``glove.840B.300d.txt``) is a word followed by ``dim`` floats, separated by single spaces.
A few 840B entries contain spaces inside the word, so the vector is always the *last* ``dim``
fields and the word is everything before them. An optional word2vec-style header line
``"<count> <dim>"`` is accepted and checked.

Nothing is downloaded: the file must be given by the user. Training sets it with
``config.model.text.glove`` (configs/iemocap_mbaf.py;
``mbaf_jax.models.mbaf_iemocap.glove_embedding`` calls :func:`load_glove` for the run's
vocabulary and the matrix replaces the text encoder's embedding after init); the default "" keeps a random, trainable embedding and the encoder warns.
"""
import os
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import jax
import numpy as np


class GloveTable(NamedTuple):
  """Result of :func:`load_glove`.

  Attributes:
    matrix: (V, dim) float32 embedding matrix, row ``i`` = vector of the word with id ``i``; row 0
      (padding) is zeros; words not in the file are drawn from N(0, σ²).
    hits: number of vocabulary words (padding excluded) found in the file.
    misses: number of vocabulary words (padding excluded) not found.
    missing: the missing words (in id order), for the run's report.
  """
  matrix: np.ndarray
  hits: int
  misses: int
  missing: tuple


def _vocab_words(vocab) -> list:
  """id-ordered word list from a ``{word: id}`` mapping (ids 0..V-1) or a sequence of words."""
  if isinstance(vocab, Mapping):
    ids = sorted(vocab.values())
    if ids != list(range(len(vocab))):
      raise ValueError("vocab must map words to the ids 0..V-1 with no gaps or repeats "
                       f"(got {len(vocab)} words with ids from {ids[:1]} to {ids[-1:]}); "
                       "build it with text_cnn_rnn.build_vocab.")
    words = [None] * len(vocab)
    for w, i in vocab.items():
      words[i] = w
    return words
  if isinstance(vocab, (list, tuple)):
    return list(vocab)
  raise TypeError(f"vocab must be a dict {{word: id}} or a list of words, got "
                  f"{type(vocab).__name__}.")


def _all_numbers(fields) -> bool:
  try:
    [float(x) for x in fields]
  except ValueError:
    return False
  return True


def load_glove(path: Union[str, os.PathLike], vocab: Union[Mapping[str, int], Sequence[str]],
               dim: int = 300, key: Optional[jax.Array] = None, unk_std: Optional[float] = None,
               padding_id: Optional[int] = 0, lowercase_fallback: bool = True) -> GloveTable:
  """Builds the embedding matrix of ``vocab`` from a GloVe text file.

  Args:
    path: a ``glove.*.txt`` file (word, then ``dim`` space-separated floats per line).
    vocab: ``{word: id}`` with ids 0..V-1 (``build_vocab``), or a list of words (index = id).
    dim: expected vector size (GloVe-300d: 300); a file with another size is an error.
    key: PRNG key for the vectors of words missing from the file (default ``jax.random.key(0)``,
      so the result is deterministic either way).
    unk_std: standard deviation of those random vectors; None = the standard deviation of the
      vectors found (0.1 if none was found), so they have the scale of the real ones.
    padding_id: the id whose row is all zeros (the padding token), or None.
    lowercase_fallback: look a word up lowercased when the exact spelling is not in the file.

  Returns:
    :class:`GloveTable` ``(matrix (V, dim) float32, hits, misses, missing)``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: a malformed line (wrong number of fields or a non-number; the message gives the
      line number) or vectors whose size is not ``dim``.
  """
  if not isinstance(dim, int) or dim < 1:
    raise ValueError(f"dim must be a positive int, got {dim!r}.")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GloVe file {path!r} does not exist; download glove.6B.zip from "
                            "https://nlp.stanford.edu/projects/glove/ and pass the path of "
                            "glove.6B.300d.txt, or pass glove=None to train the embedding.")
  words = _vocab_words(vocab)
  wanted = set(w for w in words if isinstance(w, str))
  if lowercase_fallback:
    wanted |= {w.lower() for w in wanted}
  found = {}
  first = True  # first non-empty line: detects a header or vectors of another size
  with open(path, "r", encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      parts = line.rstrip("\r\n").rstrip(" ").split(" ")
      if parts == [""]:
        continue
      if first:
        first = False
        if len(parts) == 2 and all(p.isdigit() for p in parts):  # word2vec-style header
          if int(parts[1]) != dim:
            raise ValueError(f"{path}: header says vectors have dimension {parts[1]}, expected "
                             f"dim={dim}; pass dim={parts[1]} or use a {dim}-d GloVe file.")
          continue
        if len(parts) != dim + 1 and len(parts) >= 2 and _all_numbers(parts[1:]):
          raise ValueError(f"{path}: vectors have dimension {len(parts) - 1} (line {lineno}), "
                           f"expected dim={dim}; pass dim={len(parts) - 1} or use a {dim}-d "
                           "GloVe file.")
      if len(parts) < dim + 1:
        raise ValueError(f"{path}:{lineno}: malformed line with {len(parts)} fields, expected "
                         f"a word followed by {dim} numbers.")
      word = " ".join(parts[:-dim])
      if word not in wanted or word in found:
        continue  # only the vocabulary's words are parsed (a 300d file has 400k+ lines)
      try:
        found[word] = np.asarray(parts[-dim:], dtype=np.float32)
      except ValueError:
        raise ValueError(f"{path}:{lineno}: malformed line, a vector field is not a number "
                         f"(word {word!r}); expected a word followed by {dim} numbers.") from None
  table_rows = len(words)
  matrix = np.zeros((table_rows, dim), np.float32)
  hit = np.zeros(table_rows, bool)
  for i, w in enumerate(words):
    if i == padding_id:
      continue
    vec = found.get(w)
    if vec is None and lowercase_fallback and isinstance(w, str):
      vec = found.get(w.lower())
    if vec is not None:
      matrix[i] = vec
      hit[i] = True
  real = np.ones(table_rows, bool)
  if padding_id is not None and 0 <= padding_id < table_rows:
    real[padding_id] = False
  miss_ids = np.flatnonzero(real & ~hit)
  if unk_std is None:
    unk_std = float(matrix[hit].std()) if hit.any() else 0.1
  key = jax.random.key(0) if key is None else key
  noise = np.asarray(jax.random.normal(key, (table_rows, dim)), np.float32) * unk_std
  matrix[miss_ids] = noise[miss_ids]
  return GloveTable(matrix, int(hit.sum()), int(len(miss_ids)),
                    tuple(words[i] for i in miss_ids))
