r"""Bring your own data: a CSV / JSONL manifest of (audio, text, label, group) rows, read into
parallel lists (``read_manifest``); ``train.datasets.manifest_dataset`` turns them into a Dataset.

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
are skipped and counted in the printed summary, and so is a repeated row (same audio file,
label and group: the first is kept, so no recording is on both sides of a split); the same
audio file with another label or group is an error. With ``config.data.strict = True`` the
first skip raises instead.
"""
import csv
import json
import os

import numpy as np

from mbaf_jax.data.report import LoadSummary
from mbaf_jax.errors import UserError

COLUMNS = ("audio", "text", "label", "group")
REASON_MISSING_FIELD = "row with a missing field"
REASON_UNKNOWN_LABEL = "label not in config.data.class_names"
REASON_BAD_LINE = "manifest line is not a JSON object"
REASON_DUPLICATE = "duplicate of an earlier row (same audio file, label and group; first kept)"


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
    UserError: the manifest is missing, of an unknown type, or lacks a column; an audio file
      appears twice with another label or group.
  """
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
  out, first, conflicts = [], {}, []  # first: audio path → (line, label, group) of its first row
  for i, audio, text, label, group in kept:
    if label not in index:
      summary.skip(REASON_UNKNOWN_LABEL, f"{path}:{i} (label {label!r}; classes {list(names)})")
      continue
    if audio in first:
      j, label0, group0 = first[audio]
      if (label0, group0) != (label, group):
        differs = [f"{k} {a!r} vs {b!r}" for k, a, b in (("label", label0, label),
                                                           ("group", group0, group)) if a != b]
        conflicts.append(f"line {i} repeats the audio of line {j} with another "
                         f"{' and '.join(differs)}")
      else:  # kept once: two copies would land on both sides of a train/validation split
        summary.skip(REASON_DUPLICATE, f"{path}:{i} (= line {j})")
      continue
    first[audio] = (i, label, group)
    out.append((audio, text, index[label], group))
  if conflicts:
    raise UserError(f"manifest {path!r}: {len(conflicts)} row(s) repeat an audio file with "
                    f"another label or group ({'; '.join(conflicts[:5])}"
                    f"{'; ...' if len(conflicts) > 5 else ''}); the same recording would be "
                    "trained on and tested on, or carry two labels. Remove the repeated rows or "
                    "fix their label/group.")
  paths = [r[0] for r in out]
  texts = [r[1] for r in out]
  labels = np.array([r[2] for r in out], np.int64)
  groups = np.array([r[3] for r in out], dtype=object).astype(str)
  return paths, texts, labels, groups, names


def class_names(config) -> tuple:
  """``config.data.class_names`` ("a,b,c" or a list) as a tuple; () = the sorted labels."""
  raw = config.data.class_names
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
