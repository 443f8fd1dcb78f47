r"""Manifests: your own data as a CSV / TSV or JSONL file of rows, read by one reader.

  audio,text,label,group
  clips/a001.wav,"I can't believe it",angry,spk01
  /abs/path/a002.flac,fine thanks,neutral,spk02

or one JSON object per line (``.jsonl``)::

  {"audio": "clips/a001.wav", "text": "I can't believe it", "label": "angry", "group": "spk01"}

:func:`read_manifest` reads any manifest's rows: ``.csv`` / ``.tsv`` with a header line, or
``.jsonl`` / ``.ndjson`` / ``.json`` with one JSON object per line; UTF-8, with or without a byte
order mark, or UTF-16 with its byte order mark; column names are case-insensitive and other
columns are ignored; a path column is resolved against the manifest's folder. A row is one line:
blank lines are skipped, and every other line comes back as a row with its line number and, when
it cannot be used, the reason (a line that is not UTF-8, not a JSON object, not one CSV row — a
quote left open — or with more fields than the header has columns; an empty or missing value);
a :class:`~mbaf_jax.data.report.LoadSummary` counts those rows as skipped.

:func:`load_manifest` reads a training manifest (columns ``audio,text,label,group``) into a
labelled data set:

  audio  path of an audio file soundfile can read (wav/flac/ogg), absolute or relative to the
         manifest's folder.
  text   the transcript (may be empty).
  label  the class; ``class_names`` fixes the class order, else the sorted distinct labels are
         the classes.
  group  who/what must not be split between training and test (speaker, subject, session).

Rows with a missing field or (with ``class_names``) an unknown label are skipped and counted,
and so is a repeated row (same audio file, label and group: the first is kept, so no recording
is on both sides of a split); the same audio file with another label or group is an error. With
a strict summary the first skip raises instead.
"""
import codecs
import csv
import json
import os
from typing import NamedTuple, Sequence

import numpy as np

from mbaf_jax.data.report import DataError, LoadSummary

JSON_LINES = (".jsonl", ".ndjson", ".json")  # one JSON object per line
DELIMITERS = {".csv": ",", ".tsv": "\t"}  # a header line, then one row per line
COLUMNS = ("audio", "text", "label", "group")  # a training manifest's columns
REASON_BAD_LINE = "manifest line is not a JSON object"
REASON_BAD_ROW = "manifest line is not one row of the header's columns"
REASON_NOT_UTF8 = "manifest line is not UTF-8 text"
REASON_MISSING_FIELD = "row with a missing field"
REASON_UNKNOWN_LABEL = "label not in config.data.class_names"
REASON_DUPLICATE = "duplicate of an earlier row (same audio file, label and group; first kept)"
TRAINING_HINT = ("Every manifest needs the columns audio,text,label,group: audio path (relative "
                 "to the manifest's folder or absolute), transcript, class label, and the group "
                 "(speaker/subject) used for grouped cross-validation.")


class Row(NamedTuple):
  """One data row of a manifest."""
  line: int  # 1-based line in the file (a CSV's header is line 1)
  values: dict  # column asked for → its value as text ("" where it is missing or empty)
  problem: str = ""  # why the row cannot be used ("" when it can)


class Manifest(NamedTuple):
  """A training manifest's usable rows (:func:`load_manifest`), in file order."""
  paths: list  # absolute audio paths
  texts: list  # transcripts
  labels: np.ndarray  # (N,) int64 class indices
  groups: np.ndarray  # (N,) group ids as strings
  class_names: tuple  # the classes, in label order


def resolve_path(manifest_path: str, value: str) -> str:
  """A path of a manifest row: ``~`` expanded, relative to the manifest's folder, normalised."""
  base = os.path.dirname(os.path.abspath(manifest_path))
  return os.path.normpath(os.path.join(base, os.path.expanduser(value.strip())))


def _text(v):
  """A JSON or CSV value as text (None stays None)."""
  if v is None or isinstance(v, str):
    return v
  return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def read_lines(path: str, source: str) -> list:
  """``(line number, text, is decodable)`` of every line of a text file: split at LF (a CR before
  it dropped); UTF-8 with or without a BOM, or UTF-16 with its BOM (Excel's "Unicode text"); each
  line decoded on its own, so a byte that is not UTF-8 costs its line, not the file (its text has
  U+FFFD in place of the bad bytes).

  Raises:
    DataError: the file cannot be opened (``source`` names it).
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f"{source} cannot be read ({e}).") from None
  if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    chunks = [(c, "\ufffd" not in c) for c in raw.decode("utf-16", "replace").split("\n")]
  else:
    if raw.startswith(codecs.BOM_UTF8):
      raw = raw[len(codecs.BOM_UTF8):]
    chunks = []
    for b in raw.split(b"\n"):
      try:
        chunks.append((b.decode("utf-8"), True))
      except UnicodeDecodeError:
        chunks.append((b.decode("utf-8", "replace"), False))
  return [(i, c[:-1] if c.endswith("\r") else c, ok) for i, (c, ok) in enumerate(chunks, 1)]


def _records(path: str, source: str) -> tuple[list, set]:
  """``([(line, {column: value} or None, skip reason, problem)], columns)`` of the non-blank lines.

  A CSV / TSV row is one line: a line that does not parse as one CSV row (a quote left open, a
  quote inside an unquoted field) or holds more non-empty fields than the header has columns (an
  unquoted delimiter in a value) is a bad line, never merged with the next one or read shifted.
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in JSON_LINES and ext not in DELIMITERS:
    raise DataError(f"{source} has extension {ext!r}; use .csv (or .tsv) with a header line, or "
                    ".jsonl with one JSON object per line.")
  lines = [(i, text, ok) for i, text, ok in read_lines(path, source) if text.strip()]
  records = []
  if ext in JSON_LINES:
    for i, line, ok in lines:
      if not ok:
        records.append((i, None, REASON_NOT_UTF8, "the line is not UTF-8 text"))
        continue
      try:
        obj = json.loads(line)
        detail = ""
      except ValueError as e:
        obj, detail = None, f" ({e})"
      if isinstance(obj, dict):
        records.append((i, {str(k).strip().lower(): _text(v) for k, v in obj.items()}, "", ""))
      else:
        records.append((i, None, REASON_BAD_LINE, f"the line is not a JSON object{detail}"))
    return records, set().union(*(r for _, r, _, _ in records if r is not None))
  delimiter = DELIMITERS[ext]
  if not lines:
    return [], set()
  header_line, header, ok = lines[0]
  try:
    header = next(csv.reader([header], delimiter=delimiter, strict=True)) if ok else []
  except csv.Error:
    header = []
  keys = [str(k).strip().lower() for k in header]
  for i, line, ok in lines[1:]:
    if not ok:
      records.append((i, None, REASON_NOT_UTF8, "the line is not UTF-8 text"))
      continue
    try:
      fields = next(csv.reader([line], delimiter=delimiter, strict=True))
    except csv.Error as e:
      records.append((i, None, REASON_BAD_ROW, f"the line is not one CSV row ({e}; a quote left "
                                               "open?)"))
      continue
    if any(f.strip() for f in fields[len(keys):]):
      records.append((i, None, REASON_BAD_ROW, f"{len(fields)} fields for the {len(keys)} columns "
                      f"of line {header_line} (a {'tab' if delimiter == chr(9) else 'comma'} "
                      "inside an unquoted value?)"))
      continue
    records.append((i, dict(zip(keys, fields)), "", ""))
  return records, set(keys)


def read_manifest(path: str, columns: Sequence, *, may_be_empty: Sequence[str] = (),
                  path_columns: Sequence[str] = (), summary: LoadSummary | None = None,
                  source: str | None = None, hint: str = "") -> list[Row]:
  """Reads the rows of a manifest (module doc), bad rows included with their reason.

  Args:
    path: a .csv / .tsv (header line) or .jsonl / .ndjson / .json (JSON object per line) file.
    columns: the columns to read, in order; an entry may be a tuple of alternative names (the
      first one the file has is read; the row's value is keyed by the entry's first name).
    may_be_empty: columns (first names of ``columns`` entries) whose value may be empty (a
      transcript); their values are kept as written, the others are stripped and must be
      non-empty.
    path_columns: columns (first names) holding file paths, resolved against the manifest's
      folder (:func:`resolve_path`).
    summary: counts every bad row as skipped (``REASON_BAD_LINE``, ``REASON_MISSING_FIELD``,
      with ``path:line (reason)``); a strict summary raises at the first. None: not counted.
    source: how messages name the file (default ``manifest '<path>'``).
    hint: what the columns mean, appended to the missing-columns error.

  Returns:
    One :class:`Row` per data line, in file order.

  Raises:
    DataError: an unknown extension, an unreadable file, or a column no row has; a bad row with
      a strict ``summary``.
  """
  source = source or f"manifest {path!r}"
  records, found = _records(path, source)
  names = [(c,) if isinstance(c, str) else tuple(c) for c in columns]
  picked = [next((n for n in alternatives if n in found), None) for alternatives in names]
  missing = ["/".join(alternatives) for alternatives, p in zip(names, picked) if p is None]
  if missing:
    raise DataError(f"{source} has no column(s) {missing} (found {sorted(found)}). {hint}".strip())
  rows = []
  for line, record, reason, problem in records:
    empty = {alternatives[0]: "" for alternatives in names}
    if record is None:
      rows.append(Row(line, empty, problem))
      if summary is not None:
        summary.skip(reason, f"{path}:{line} ({problem})")
      continue
    values, problems = {}, []
    for alternatives, column in zip(names, picked):
      key, v = alternatives[0], record.get(column)
      if v is None:
        problems.append(f"no {column!r} value")
        v = ""
      elif key not in may_be_empty and not v.strip():
        problems.append(f"empty {column!r} column")
        v = ""
      elif key in path_columns:
        v = resolve_path(path, v)
      elif key not in may_be_empty:
        v = v.strip()
      values[key] = v
    if problems:
      rows.append(Row(line, values, "; ".join(problems)))
      if summary is not None:
        summary.skip(REASON_MISSING_FIELD, f"{path}:{line} ({'; '.join(problems)})")
      continue
    rows.append(Row(line, values))
  return rows


def load_manifest(path: str, class_names: Sequence[str] = (),
                  summary: LoadSummary | None = None) -> Manifest:
  """A training manifest (columns ``audio,text,label,group``, module doc) → its usable rows.

  Args:
    path: the manifest file (.csv/.tsv/.jsonl).
    class_names: the class order; () = the sorted distinct labels.
    summary: counts the skipped rows (strict raises at the first skip).

  Returns:
    A :class:`Manifest`.

  Raises:
    DataError: an unknown extension, an unreadable file, a missing column; an audio file that
      appears twice with another label or group.
  """
  summary = summary if summary is not None else LoadSummary(name="manifest")
  rows = read_manifest(path, COLUMNS, may_be_empty=("text",), path_columns=("audio",),
                       summary=summary, hint=TRAINING_HINT)
  kept = [r for r in rows if not r.problem]
  names = tuple(class_names) if class_names else tuple(sorted({r.values["label"] for r in kept}))
  index = {n: j for j, n in enumerate(names)}
  out, first, conflicts = [], {}, []  # first: audio path → (line, label, group) of its first row
  for r in kept:
    audio, text, label, group = (r.values[c] for c in COLUMNS)
    if label not in index:
      summary.skip(REASON_UNKNOWN_LABEL, f"{path}:{r.line} (label {label!r}; classes "
                                         f"{list(names)})")
      continue
    if audio in first:
      j, label0, group0 = first[audio]
      if (label0, group0) != (label, group):
        differs = [f"{k} {a!r} vs {b!r}" for k, a, b in (("label", label0, label),
                                                           ("group", group0, group)) if a != b]
        conflicts.append(f"line {r.line} repeats the audio of line {j} with another "
                         f"{' and '.join(differs)}")
      else:  # kept once: two copies would land on both sides of a train/validation split
        summary.skip(REASON_DUPLICATE, f"{path}:{r.line} (= line {j})")
      continue
    first[audio] = (r.line, label, group)
    out.append((audio, text, index[label], group))
  if conflicts:
    raise DataError(f"manifest {path!r}: {len(conflicts)} row(s) repeat an audio file with "
                    f"another label or group ({'; '.join(conflicts[:5])}"
                    f"{'; ...' if len(conflicts) > 5 else ''}); the same recording would be "
                    "trained on and tested on, or carry two labels. Remove the repeated rows or "
                    "fix their label/group.")
  return Manifest(paths=[r[0] for r in out], texts=[r[1] for r in out],
                  labels=np.array([r[2] for r in out], np.int64),
                  groups=np.array([r[3] for r in out], dtype=object).astype(str),
                  class_names=names)
