r"""Bring your own data: a CSV / JSONL manifest of (audio, text, label, group) rows.

  audio,text,label,group
  clips/a001.wav,"I can't believe it",angry,spk01
  /abs/path/a002.flac,fine thanks,neutral,spk02

or one JSON object per line (``.jsonl``)::

  {"audio": "clips/a001.wav", "text": "I can't believe it", "label": "angry", "group": "spk01"}

Columns (other columns are ignored; names are case-insensitive):
  audio  path of an audio file soundfile can read (wav/flac/ogg); a relative path is resolved
         against the manifest's folder. Decoded to mono at ``config.data.sample_rate``, cut to
         ``config.data.max_seconds`` and cached (``mbaf_jax.data.audio.load_waveforms``).
  text   the transcript (may be empty).
  label  the class; ``config.data.class_names`` ("a,b,c") fixes the class order, else the sorted
         distinct labels are the classes. ``config.model.num_classes`` must equal their number.
  group  who/what must not be split between training and test (speaker, subject, session):
         ``config.data.num_groups``-fold grouped cross-validation (``group_kfold``) over it.

Rows with a missing field, an unreadable audio file or (with ``class_names``) an unknown label
are skipped and counted in the printed summary; with ``config.data.strict = True`` (if the
config has that field) the first one raises instead.
"""
import csv
import json
import os

import numpy as np

from train.errors import UserError

COLUMNS = ("audio", "text", "label", "group")
REASON_MISSING_FIELD = "row with a missing field"
REASON_UNKNOWN_LABEL = "label not in config.data.class_names"
REASON_BAD_LINE = "manifest line is not a JSON object"


def _read_rows(path: str, summary) -> list:
  """Rows of a CSV/TSV or JSONL manifest as dicts with lower-cased keys; checks the columns.

  Returns:
    list of (line number, row dict).
  """
  ext = os.path.splitext(path)[1].lower()
  rows = []
  if ext in (".jsonl", ".ndjson", ".json"):
    with open(path, encoding="utf-8-sig") as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except ValueError as e:
          summary.skip(REASON_BAD_LINE, f"{path}:{i} ({e})")
          continue
        if not isinstance(obj, dict):
          summary.skip(REASON_BAD_LINE, f"{path}:{i}")
          continue
        rows.append((i, {str(k).strip().lower(): v for k, v in obj.items()}))
    keys = set().union(*(r.keys() for _, r in rows)) if rows else set()
  elif ext in (".csv", ".tsv"):
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
      keys = {str(k).strip().lower() for k in (reader.fieldnames or []) if k is not None}
      for i, row in enumerate(reader, 2):
        rows.append((i, {str(k).strip().lower(): v for k, v in row.items() if k is not None}))
  else:
    raise UserError(f"manifest {path!r} has extension {ext!r}; use .csv (or .tsv) with a header "
                    "line audio,text,label,group, or .jsonl with one JSON object per line.")
  missing = [c for c in COLUMNS if c not in keys]
  if missing:
    raise UserError(f"manifest {path!r} has no column(s) {missing} (found {sorted(keys)}). "
                    f"Every manifest needs the columns {list(COLUMNS)}: audio path (relative to "
                    "the manifest's folder or absolute), transcript, class label, and the group "
                    "(speaker/subject) used for grouped cross-validation.")
  return rows


def read_manifest(path: str, class_names=(), summary=None):
  """Parses a manifest (see module doc) into parallel lists, skipping and counting bad rows.

  Args:
    path: the manifest file (.csv/.tsv/.jsonl).
    class_names: the class order; () = the sorted distinct labels.
    summary: a ``mbaf_jax.data.report.LoadSummary`` (strict raises at the first skip).

  Returns:
    ``(paths, texts, labels, groups, class_names)``: absolute audio paths, transcripts, (N,)
    int64 class indices, (N,) group ids as strings, and the class names.

  Raises:
    UserError: the manifest is missing, of an unknown type, or lacks a column.
  """
  from mbaf_jax.data.report import LoadSummary  # pylint: disable=g-import-not-at-top
  summary = summary if summary is not None else LoadSummary(name="manifest")
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
  base = os.path.dirname(os.path.abspath(path))
  rows = _read_rows(path, summary)

  def value(row, key):
    v = row.get(key)
    if v is None:
      return None
    return v if isinstance(v, str) else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))

  kept = []
  for i, row in rows:
    audio, text, label, group = (value(row, k) for k in COLUMNS)
    absent = [k for k, v in zip(COLUMNS, (audio, text, label, group))
              if v is None or (k != "text" and not v.strip())]
    if absent:
      summary.skip(REASON_MISSING_FIELD, f"{path}:{i} (no {', '.join(absent)})")
      continue
    audio = os.path.expanduser(audio.strip())
    kept.append((i, os.path.normpath(os.path.join(base, audio)), text, label.strip(),
                 group.strip()))
  names = tuple(class_names) if class_names else tuple(sorted({r[3] for r in kept}))
  index = {n: j for j, n in enumerate(names)}
  out = []
  for i, audio, text, label, group in kept:
    if label not in index:
      summary.skip(REASON_UNKNOWN_LABEL, f"{path}:{i} (label {label!r}; classes {list(names)})")
      continue
    out.append((audio, text, index[label], group))
  paths = [r[0] for r in out]
  texts = [r[1] for r in out]
  labels = np.array([r[2] for r in out], np.int64)
  groups = np.array([r[3] for r in out], dtype=object).astype(str)
  return paths, texts, labels, groups, names


def _class_names(config) -> tuple:
  raw = config.data.class_names
  if isinstance(raw, (list, tuple)):
    return tuple(str(x).strip() for x in raw if str(x).strip())
  return tuple(x.strip() for x in str(raw or "").split(",") if x.strip())


def _val_fraction(validation: str) -> float:
  """"none" → 0, "random<NN>" → NN / 100, anything else (e.g. the LOSO "speaker") → 0.1."""
  v = str(validation)
  if v == "none":
    return 0.0
  if v.startswith("random") and v[6:].isdigit() and 0 <= int(v[6:]) < 100:
    return int(v[6:]) / 100
  return 0.1  # not in paper


def load_manifest_dataset(config, workdir: str):
  """The ``train.datasets.Dataset`` of a manifest (``config.data.dataset == "manifest"``).

  Args:
    config: the run's config: ``data.data_dir`` (the manifest), ``data.class_names``,
      ``data.num_groups``, ``data.protocol`` ("group"), ``data.validation`` ("random<NN>": NN % of
      each fold's training rows validate, "none": no validation, else 10 %), audio/text sizes.
    workdir: the run's workdir (audio cache and tokenizer when not configured).

  Returns:
    ``train.datasets.Dataset`` with grouped k-fold folds named ``group0..``.

  Raises:
    UserError: bad manifest, too few groups or classes, class count ≠ config.model.num_classes.
  """
  from mbaf_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from mbaf_jax.data import folds as folds_lib  # pylint: disable=g-import-not-at-top
  from mbaf_jax.data.report import LoadSummary  # pylint: disable=g-import-not-at-top
  from train import datasets  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.protocol != "group":
    raise UserError(f"config.data.protocol={d.protocol!r} does not apply to a manifest; use "
                    "'group' (grouped k-fold over the manifest's group column).")
  strict = bool(d.get("strict", False)) if hasattr(d, "get") else False
  summary = LoadSummary(name="manifest", strict=strict)
  path = os.path.expanduser(d.data_dir)
  paths, texts, labels, groups, names = read_manifest(path, _class_names(config), summary)
  if not paths:
    raise UserError(f"manifest {path!r}: no usable rows. {summary.format()}")
  keep = datasets._subset(len(paths), labels, d.max_examples, config.seed)  # pylint: disable=protected-access
  paths = [paths[i] for i in keep]
  texts = [texts[i] for i in keep]
  labels, groups = labels[keep], groups[keep]
  cache = d.cache_dir or os.path.join(workdir, "cache")
  waves, lengths = audio_lib.load_waveforms(paths, sr=d.sample_rate, max_seconds=d.max_seconds,
                                            cache_dir=cache, workers=2, summary=summary)
  ok = np.flatnonzero(lengths > 0)
  if ok.size == 0:
    raise UserError(f"manifest {path!r}: none of the audio files could be read. "
                    f"{summary.format()}")
  waves, lengths = waves[ok], lengths[ok]
  texts = [texts[i] for i in ok]
  labels, groups = labels[ok].astype(np.int32), groups[ok]
  if len(names) != config.model.num_classes:
    raise UserError(f"manifest {path!r} has {len(names)} classes {list(names)} but "
                    f"config.model.num_classes={config.model.num_classes}; pass "
                    f"--config.model.num_classes={len(names)} (or fix the labels / set "
                    "--config.data.class_names).")
  n_ids = np.unique(groups).size
  if not 2 <= d.num_groups <= n_ids:
    raise UserError(f"config.data.num_groups={d.num_groups} but the manifest has {n_ids} distinct "
                    "group value(s); grouped cross-validation needs 2 <= num_groups <= that "
                    "number (set --config.data.num_groups, or use finer groups).")
  val_fraction = _val_fraction(d.validation)
  folds = folds_lib.group_kfold(groups, n_groups=d.num_groups, seed=config.seed,
                                val_fraction=val_fraction, name="group")
  summary.info.update(rows=len(labels), groups=int(n_ids),
                      classes=", ".join(f"{n}: {int((labels == j).sum())}"
                                        for j, n in enumerate(names)))
  inputs, vocab_size = datasets.audio_text_inputs(config, workdir, waves, lengths, texts)
  return datasets.Dataset(inputs, labels, folds, tuple(names), vocab_size, summary)
