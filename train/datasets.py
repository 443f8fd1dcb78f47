"""Config → in-memory, fixed-shape model inputs + folds, through the real loaders.

``load_dataset(data, model, family, seed, workdir)`` (the config's ``data`` and ``model``
sections, the model family module and the seed: parts of ``train.validate.RunPlan``) finds (or,
for the demo, generates) the corpus, loads it with ``mbaf_jax.data``, preprocesses every example
once into arrays of N rows (the model inputs of the family: its ``preprocessor`` and
``make_inputs``, the same ones inference uses) and builds the folds of the paper's protocol. Batches are then gathered by index on the
host.
"""
import dataclasses
import os
from typing import Optional

import jax
import numpy as np

from mbaf_jax.data import audio as audio_lib
from mbaf_jax.data import cebs
from mbaf_jax.data import folds as folds_lib
from mbaf_jax.data import iemocap
from mbaf_jax.data import manifest as manifest_lib
from mbaf_jax.data import synthetic
from mbaf_jax.data import synthetic_cebs
from mbaf_jax.data.report import LoadSummary
from mbaf_jax.errors import UserError
from train import workdir as workdir_lib
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
      ``config.model.text.glove`` for the run's vocabulary (the family's ``text_embedding``),
      substituted for the text encoder's random init; None when no GloVe file is configured.
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


def resolve_iemocap_root(data, workdir: str) -> str:
  """The ``IEMOCAP_full_release`` directory of ``data.data_dir`` (generated for the demo).

  Raises:
    UserError: data_dir missing / not an IEMOCAP release.
  """
  data_dir = data.data_dir or (workdir_lib.data_dir(workdir) if data.synthetic else "")
  if not data_dir:
    raise UserError("config.data.data_dir is empty. Set --config.data.data_dir to the "
                    "IEMOCAP_full_release directory (or its parent), or use a :demo config, "
                    "which generates a synthetic corpus.")
  candidates = [data_dir, os.path.join(data_dir, "IEMOCAP_full_release")]
  for c in candidates:  # a synthetic corpus whose write was killed is written again
    if _is_iemocap_root(c) and not (data.synthetic and synthetic.is_partial(c)):
      return c
  if data.synthetic:
    with phase(f"Generating the synthetic IEMOCAP-format corpus in {data_dir}"):
      return synthetic.write_iemocap(data_dir, size=data.synthetic_size, seed=0)
  if not os.path.exists(data_dir):
    raise UserError(f"config.data.data_dir={data_dir!r} does not exist. Point it at the "
                    "IEMOCAP_full_release directory (the one holding Session1..Session5).")
  raise UserError(f"config.data.data_dir={data_dir!r} is not the IEMOCAP data set: neither it nor "
                  f"{candidates[1]!r} holds Session1/ (expected IEMOCAP_full_release/Session1.."
                  "Session5 with dialog/EmoEvaluation, dialog/transcriptions, sentences/wav).")


def resolve_cebs_root(data, workdir: str) -> str:
  """The ``cebsdb`` directory of ``data.data_dir`` (generated for the demo)."""
  data_dir = data.data_dir or (workdir_lib.data_dir(workdir) if data.synthetic else "")
  if not data_dir:
    raise UserError("config.data.data_dir is empty. Set --config.data.data_dir to the PhysioNet "
                    "cebsdb directory (WFDB records b001.., m001.., p001..), or use :demo.")
  for c in (data_dir, os.path.join(data_dir, "cebsdb")):
    if (os.path.isdir(c) and any(f.endswith(".hea") for f in os.listdir(c)) and
        not (data.synthetic and synthetic.is_partial(c))):
      return c
  if data.synthetic:
    with phase(f"Generating the synthetic CEBS-format corpus in {data_dir}"):
      return synthetic.write_cebs(data_dir, size=data.synthetic_size, seed=0)
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


def model_inputs(data, model, family, workdir: str, raw) -> tuple:
  """The model inputs of ``family`` for the training examples ``raw``.

  The family's ``preprocessor`` is fitted on ``raw`` and saved in ``workdir`` (DMF: a
  word-level BERT vocabulary in ``workdir/tokenizer`` when no tokenizer directory is configured;
  MBAF IEMOCAP: the word → id map ``workdir/vocab.json``), read back by inference; then its
  ``make_inputs`` turns ``raw`` into the model-input arrays.

  Args:
    data: the config's ``data`` section.
    model: the config's ``model`` section.
    family: the model family module (``mbaf_jax.models.factory.family``).
    workdir: the run's workdir.
    raw: the family's raw examples (``{"waves", "lengths", "texts"}`` or ``{"modes"}``).

  Returns:
    ``(inputs, vocab_size)``: the model-input arrays (N rows each) and the text vocabulary size.
  """
  pre = family.preprocessor(data, model, workdir, raw)
  return family.make_inputs(data, model, raw, pre), pre.vocab_size


def _iemocap(d, model, family, seed: int, workdir: str) -> Dataset:
  root = resolve_iemocap_root(d, workdir)
  corpus = iemocap.load_iemocap(root, strict=bool(d.strict), verbose=False)
  if not corpus.utterances:
    raise UserError(f"no 4-class utterances found under {root!r}; is it the IEMOCAP release? "
                    f"{corpus.summary.format()}")
  keep = _subset(len(corpus.utterances), corpus.labels, d.max_examples, seed)
  corpus = corpus.subset(keep)
  cache = d.cache_dir or workdir_lib.cache_dir(workdir)
  with phase(f"Loading {len(corpus.utterances)} utterances (audio and text) from {root}"):
    corpus, waves, lengths = iemocap.load_corpus_audio(corpus, sr=d.sample_rate,
                                                       max_seconds=d.max_seconds, cache_dir=cache)
    labels = corpus.labels.astype(np.int32)
    inputs, vocab_size = model_inputs(d, model, family, workdir, {"waves": waves, "lengths": lengths,
                                                      "texts": corpus.texts})
  if d.protocol == "loso":
    folds = folds_lib.loso_folds(corpus.utterances, validation=d.validation, seed=seed)
  else:  # "8:1:1" (train.validate.data_problems allows no other)
    folds = [folds_lib.stratified_split(labels, (8, 1, 1), seed=seed)]
  return Dataset(inputs, labels, folds, IEMOCAP_CLASSES, vocab_size, corpus.summary)


def _cebs(d, model, family, seed: int, workdir: str) -> Dataset:
  root = resolve_cebs_root(d, workdir)
  # Real CEBS: the first 5 minutes of every record (MBAF §4.2); a synthetic corpus states its own
  # (shorter) record length in its manifest.
  manifest = synthetic_cebs.read_synthetic_manifest(root)
  seconds = float(manifest["seconds_per_state"]) if manifest else cebs.SECONDS_PER_STATE
  try:
    with phase(f"Loading the CEBS records of {d.mode_pair} from {root}"):
      corpus = cebs.load_cebs(root, strict=bool(d.strict), modes=cebs.MODE_PAIRS[d.mode_pair],
                              seconds_per_state=seconds, chunks=d.chunks,
                              chunk_samples=d.chunk_samples)
  except ValueError as e:
    raise UserError(f"cannot load CEBS from {root!r}: {e}") from e
  labels = np.asarray(corpus.labels, np.int32)
  if labels.size == 0:
    raise UserError(f"no CEBS windows could be read from {root!r}. {corpus.summary.format()}")
  keep = _subset(labels.size, labels, d.max_examples, seed)
  modes = tuple(np.asarray(x, np.float32)[keep] for x in corpus.pair(d.mode_pair))
  labels, subjects = labels[keep], np.asarray(corpus.subjects)[keep]
  folds = cebs.logo_folds(subjects, n_groups=4, seed=seed, val_fraction=0.1)
  inputs, vocab_size = model_inputs(d, model, family, workdir, {"modes": modes})
  return Dataset(inputs, labels, folds, CEBS_CLASSES, vocab_size, corpus.summary)


def manifest_class_names(data) -> tuple:
  """``data.class_names`` ("a,b,c" or a list) as a tuple; () = the manifest's sorted labels."""
  raw = data.class_names
  if isinstance(raw, (list, tuple)):
    return tuple(str(x).strip() for x in raw if str(x).strip())
  return tuple(x.strip() for x in str(raw or "").split(",") if x.strip())


def val_fraction(validation: str) -> float:
  """"none" → 0, "random<NN>" → NN / 100, anything else (e.g. the LOSO "speaker") → 0.1."""
  v = str(validation)
  if v == "none":
    return 0.0
  if v.startswith("random") and v[6:].isdigit() and 0 <= int(v[6:]) < 100:
    return int(v[6:]) / 100
  return 0.1  # not in paper


def manifest_path(data) -> str:
  """The manifest file ``data.data_dir`` names (``data.dataset == "manifest"``).

  Raises:
    UserError: data_dir is empty, a directory or missing.
  """
  path = os.path.expanduser(data.data_dir)
  if not path:
    raise UserError("config.data.data_dir is empty; for dataset='manifest' set "
                    "--config.data.data_dir=/path/to/manifest.csv (or .jsonl) with the columns "
                    "audio,text,label,group.")
  if os.path.isdir(path):
    raise UserError(f"config.data.data_dir={path!r} is a directory; for dataset='manifest' it "
                    "must be the manifest file itself (.csv or .jsonl).")
  if not os.path.isfile(path):
    raise UserError(f"manifest {path!r} does not exist; set --config.data.data_dir to a .csv or "
                    ".jsonl file with the columns audio,text,label,group.")
  return path


def class_names(data) -> tuple:
  """The class names of the data set of ``data`` (``config.data``), in label order: IEMOCAP's,
  CEBS's, or a manifest's (``data.class_names``, else the sorted labels of its rows, by the
  rule training applies).

  Raises:
    UserError: a manifest without ``class_names`` that cannot be read.
  """
  if data.dataset == "iemocap":
    return IEMOCAP_CLASSES
  if data.dataset == "cebs":
    return CEBS_CLASSES
  return manifest_class_names(data) or manifest_lib.load_manifest(manifest_path(data)).class_names


def manifest_dataset(d, model, family, seed: int, workdir: str) -> Dataset:
  """The Dataset of a manifest (``config.data.dataset == "manifest"``,
  ``mbaf_jax.data.manifest.load_manifest``).

  Args:
    d: the config's ``data`` section: ``data_dir`` (the manifest), ``class_names``,
      ``num_groups``, ``protocol`` ("group"), ``validation`` ("random<NN>": NN % of each fold's
      training rows validate, "none": no validation, else 10 %), audio/text sizes.
    model: the config's ``model`` section (``num_classes``).
    family: the model family module.
    seed: the run's seed (subset, folds).
    workdir: the run's workdir (audio cache and tokenizer when not configured).

  Returns:
    A Dataset with grouped k-fold folds named ``group0..``.

  Raises:
    UserError: bad manifest, too few groups or classes, class count ≠ model.num_classes.
  """
  if d.protocol != "group":
    raise UserError(f"config.data.protocol={d.protocol!r} does not apply to a manifest; use "
                    "'group' (grouped k-fold over the manifest's group column).")
  summary = LoadSummary(name="manifest", strict=bool(d.strict))
  path = manifest_path(d)
  paths, texts, labels, groups, names = manifest_lib.load_manifest(
      path, manifest_class_names(d), summary)
  if not paths:
    raise UserError(f"manifest {path!r}: no usable rows. {summary.format()}")
  keep = _subset(len(paths), labels, d.max_examples, seed)
  paths = [paths[i] for i in keep]
  texts = [texts[i] for i in keep]
  labels, groups = labels[keep], groups[keep]
  cache = d.cache_dir or workdir_lib.cache_dir(workdir)
  waves, lengths = audio_lib.load_waveforms(paths, sr=d.sample_rate, max_seconds=d.max_seconds,
                                            cache_dir=cache, workers=2, summary=summary)
  ok = np.flatnonzero(lengths > 0)
  if ok.size == 0:
    raise UserError(f"manifest {path!r}: none of the audio files could be read. "
                    f"{summary.format()}")
  waves, lengths = waves[ok], lengths[ok]
  texts = [texts[i] for i in ok]
  labels, groups = labels[ok].astype(np.int32), groups[ok]
  if len(names) != model.num_classes:
    raise UserError(f"manifest {path!r} has {len(names)} classes {list(names)} but "
                    f"model.num_classes={model.num_classes}; pass "
                    f"--model.num_classes={len(names)} (or fix the labels / set "
                    "--config.data.class_names).")
  n_ids = np.unique(groups).size
  if not 2 <= d.num_groups <= n_ids:
    raise UserError(f"config.data.num_groups={d.num_groups} but the manifest has {n_ids} distinct "
                    "group value(s); grouped cross-validation needs 2 <= num_groups <= that "
                    "number (set --config.data.num_groups, or use finer groups).")
  folds = folds_lib.group_kfold(groups, n_groups=d.num_groups, seed=seed,
                                val_fraction=val_fraction(d.validation), name="group")
  summary.info.update(rows=len(labels), groups=int(n_ids),
                      classes=", ".join(f"{n}: {int((labels == j).sum())}"
                                        for j, n in enumerate(names)))
  inputs, vocab_size = model_inputs(d, model, family, workdir,
                                    {"waves": waves, "lengths": lengths, "texts": texts})
  return Dataset(inputs, labels, folds, tuple(names), vocab_size, summary)


def load_dataset(data, model, family, seed: int, workdir: str) -> Dataset:
  """Loads ``data.dataset`` for the model family (see module doc).

  Args:
    data: the config's ``data`` section, checked (``train.validate``).
    model: the config's ``model`` section.
    family: the model family module.
    seed: the run's seed (subsets, folds, word vectors).
    workdir: the run's workdir (a generated corpus, the audio cache, the fitted preprocessing).

  Raises:
    UserError: missing or wrong data directory, or no usable examples.
  """
  load = {"iemocap": _iemocap, "cebs": _cebs, "manifest": manifest_dataset}[data.dataset]
  if data.dataset == "manifest":
    with phase(f"Loading the manifest {data.data_dir}"):
      ds = load(data, model, family, seed, workdir)
  else:
    ds = load(data, model, family, seed, workdir)
  if data.max_folds:
    ds.folds = ds.folds[: data.max_folds]
  ds.text_embedding = family.text_embedding(data, model, workdir, seed=seed,
                                            verbose=jax.process_index() == 0)
  return ds
