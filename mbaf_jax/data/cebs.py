"""PhysioNet CEBS (``cebsdb``) loader: 3 states, 1.2 s windows of 6 × 200 ms chunks (MBAF §4.2).

The database (DATA_FORMATS "CEBS") holds, per subject ``NN`` = 01..20, WFDB
records ``b0NN`` (basal, 5 min), ``m0NN`` (music, ≈ 50 min) and ``p0NN``
(post-music, 5 min) at 5,000 Hz with channels ``I``, ``II`` (ECG leads),
``RESP`` and ``SCG``. :func:`load_cebs` reads them with ``wfdb`` (local files
only: ``rdheader`` / ``rdrecord``, never ``pn_dir``) and returns
non-overlapping windows:

* **Classes** (MBAF §4.2: "annotate the data according to the acquired
  state"): 0 basal (``b``), 1 music (``m``), 2 post-music (``p``).
* **5 minutes per state**: the first ``seconds_per_state`` (300 s) of every
  record — for the music record its first 5 minutes (MBAF §4.2: "a single
  5min segment from the second state (first 5 mins)").
* **Windows**: 200 ms chunks of 1,000 samples; 6 consecutive chunks make one
  example, windows do not overlap (MBAF §4.2: "6 consecutive chunks from each
  modality as a single input"). ``signals[mode]`` is ``(N, 6, 1000)`` float32.
  A full 300 s record gives ``300 * 5000 // 6000 = 250`` windows, so 20
  subjects give 5,000 per class and 15,000 in all. The paper reports 14,977 =
  4,977 / 5,000 / 5,000: its basal class is 23 windows (27.6 s) short, i.e.
  some basal recordings it used were shorter than 5 min (a record shorter
  than ``seconds_per_state`` is used with fewer windows here too, and counted
  in ``summary.info["short_records"]``); the windowing is otherwise identical.
* **Channels by name**, never by position: ECG = lead ``I`` (the paper's
  "ECG-I" channel 1; lead ``II`` is available with ``ecg_lead="II"``),
  ``RESP``, ``SCG``.
* **Normalisation** (not stated in the paper; documented choice): every
  channel of every record is z-scored over the segment used (its first
  ``seconds_per_state``), ignoring NaNs: ``(x - mean) / std``. This removes
  electrode/gain differences between recordings; it uses no statistics of
  other records, so it cannot leak across folds. ``normalize="none"`` keeps mV.

Bad input is reported, never dropped silently (:class:`LoadSummary`; with
``strict=True`` every skip raises :class:`DataError`): a missing expected
record (named in ``summary.info["missing_records"]``), a ``.dat`` without its
``.hea``, a truncated ``.dat`` (fewer bytes than the header promises), an
unreadable header, a missing channel name, a wrong sampling rate, a flat
channel, windows with NaN samples (skipped one by one, counted) and the windows
a header hides when it claims fewer samples than its signal file holds
(counted per window; a header that leaves less than one window makes the record
one "record shorter than one window"). Every skipped item names its file.
``summary.format()`` is the report to print on every run: windows and records
read, per class, skips, short records.
"""
import dataclasses
import os
import re
from typing import Optional, Sequence

import numpy as np

from mbaf_jax.data.folds import group_kfold
from mbaf_jax.data.report import DataError, LoadSummary

CLASSES = ("basal", "music", "post_music")  # label 0, 1, 2 (record prefixes b, m, p)
PREFIXES = ("b", "m", "p")
MODES = ("ECG", "RESP", "SCG")
# Channel name per mode in cebsdb headers (DATA_FORMATS "CEBS"); ECG lead is a load_cebs option.
CHANNELS = {"ECG": "I", "RESP": "RESP", "SCG": "SCG"}
MODE_PAIRS = {"F-IV": ("ECG", "RESP"), "F-V": ("ECG", "SCG"), "F-VI": ("RESP", "SCG")}  # MBAF Table 2
FS = 5000  # Hz
NUM_SUBJECTS = 20
SECONDS_PER_STATE = 300.0  # MBAF §4.2: 5 min per state
# MBAF §4.2 class counts on the real data (basal, music, post-music).
PAPER_COUNTS = (4977, 5000, 5000)
# Skip reason of the windows a header hides: it claims fewer samples than the signal file holds.
HEADER_SHORT = "windows lost: header claims fewer samples than the signal file holds"
_FMT_BYTES = {"16": 2, "80": 1, "8": 1, "24": 3, "32": 4, "61": 2, "160": 2, "212": 1.5, "310": 4 / 3,
              "311": 4 / 3}


@dataclasses.dataclass
class CebsCorpus:
  """Windows of the CEBS records.

  Attributes:
    signals: mode name -> (N, chunks, chunk_samples) float32.
    labels: (N,) int32 state: 0 basal, 1 music, 2 post-music.
    subjects: (N,) int32 subject number 1..20.
    records: (N,) record name per window (e.g. ``"m007"``).
    starts: (N,) int64 first sample of each window in its record.
    summary: what was skipped / short / missing.
  """
  signals: dict
  labels: np.ndarray
  subjects: np.ndarray
  records: np.ndarray
  starts: np.ndarray
  summary: LoadSummary

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def pair(self, name: str) -> tuple:
    """The two ``(N, 6, 1000)`` arrays of a mode pair (``"F-IV"``, ``"F-V"``, ``"F-VI"``)."""
    if name not in MODE_PAIRS:
      raise ValueError(f"CebsCorpus.pair: unknown mode pair {name!r}; expected one of {sorted(MODE_PAIRS)}")
    missing = [m for m in MODE_PAIRS[name] if m not in self.signals]
    if missing:
      raise ValueError(f"CebsCorpus.pair: {name} needs modes {MODE_PAIRS[name]} but {missing} were not "
                       f"loaded (loaded: {sorted(self.signals)}); call load_cebs with modes including them")
    return tuple(self.signals[m] for m in MODE_PAIRS[name])

  def class_counts(self) -> tuple:
    return tuple(int(np.sum(self.labels == c)) for c in range(len(CLASSES)))


def expected_records(subjects: Optional[Sequence[int]] = None) -> list:
  """Record names ``b001..b020, m001..m020, p001..p020`` (or of the given subjects)."""
  subjects = range(1, NUM_SUBJECTS + 1) if subjects is None else subjects
  return [f"{p}{s:03d}" for p in PREFIXES for s in subjects]


def _find_root(root) -> str:
  """``root`` itself or a ``cebsdb`` folder inside it that holds CEBS headers."""
  if root is None or not isinstance(root, (str, os.PathLike)):
    raise DataError(f"load_cebs: root must be a directory path, got {root!r}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"load_cebs: root {root!r} does not exist or is not a directory; expected the PhysioNet "
                    "cebsdb folder holding b001.hea/.dat ... p020.hea/.dat (or write a synthetic one with "
                    "`python -m mbaf_jax.data.synthetic cebs --out DIR`)")
  pattern = re.compile(r"^[bmp]0[0-2]\d\.(hea|dat)$")
  for cand in (root, os.path.join(root, "cebsdb")):
    if os.path.isdir(cand) and any(pattern.match(f) for f in os.listdir(cand)):
      return cand
  raise DataError(f"load_cebs: {root!r} is not a CEBS directory: it holds no WFDB record named b0NN/m0NN/p0NN "
                  "(.hea/.dat). Expected the PhysioNet cebsdb folder (records b001-b020 basal, m001-m020 "
                  "music, p001-p020 post-music)")


def _data_bytes_needed(header, sampto: int) -> dict:
  """Bytes each signal file must hold to provide ``sampto`` samples: file name -> bytes."""
  per_file = {}
  for fname, fmt, offset in zip(header.file_name, header.fmt, header.byte_offset or [None] * header.n_sig):
    width = _FMT_BYTES.get(str(fmt))
    if width is None:
      continue
    rec = per_file.setdefault(fname, [0.0, offset or 0])
    rec[0] += width
  return {f: int(np.ceil(w * sampto)) + off for f, (w, off) in per_file.items()}


def _samples_in_files(path: str, header):
  """Samples per signal that the record's signal files hold (the fewest over its files); None if unknown."""
  per_file = {}
  for fname, fmt, offset in zip(header.file_name, header.fmt, header.byte_offset or [None] * header.n_sig):
    width = _FMT_BYTES.get(str(fmt))
    if width is None:
      return None
    rec = per_file.setdefault(fname, [0.0, offset or 0])
    rec[0] += width
  sizes = []
  for fname, (frame, offset) in per_file.items():
    fpath = os.path.join(path, fname)
    if not os.path.exists(fpath) or frame <= 0:
      return None
    sizes.append(int((os.path.getsize(fpath) - offset) // frame))
  return min(sizes) if sizes else None


def _read_record(path: str, name: str, channel_names: dict, seconds_per_state: float,
                 summary: LoadSummary, window: int):
  """Reads one record's first ``seconds_per_state``; returns ``{mode: (n,) float64}`` or None if skipped.

  A header that claims fewer samples than its signal files hold costs the
  windows in between; they are counted in ``summary`` (``window`` samples each).
  """
  import wfdb  # pylint: disable=g-import-not-at-top
  base = os.path.join(path, name)
  hea, default_dat = base + ".hea", base + ".dat"
  if not os.path.exists(hea):
    if os.path.exists(default_dat):
      summary.skip("signal file without its header (.hea missing)", hea)
    else:
      summary.skip("missing record", f"{name} (neither {name}.hea nor {name}.dat in {path})")
      summary.info.setdefault("missing_records", []).append(name)
    return None
  try:
    header = wfdb.rdheader(base)
  except Exception as e:  # wfdb raises assorted errors on malformed headers  # pylint: disable=broad-except
    summary.skip("unreadable header", f"{hea} ({type(e).__name__}: {e})")
    return None
  if header.fs is None or abs(float(header.fs) - FS) > 1e-6:
    summary.skip("wrong sampling rate", f"{hea}: fs={header.fs} Hz, expected {FS} Hz")
    return None
  names = list(header.sig_name or [])
  missing = [f"{mode} needs channel {ch!r}" for mode, ch in channel_names.items() if ch not in names]
  if missing:
    summary.skip("missing channel", f"{hea}: {'; '.join(missing)} (channels present: {names})")
    return None
  sig_len = int(header.sig_len or 0)
  sampto = min(sig_len, int(round(seconds_per_state * FS)))
  if sampto <= 0:
    summary.skip("empty record", f"{hea}: sig_len={sig_len}")
    return None
  for fname, needed in _data_bytes_needed(header, sampto).items():
    fpath = os.path.join(path, fname)
    if not os.path.exists(fpath):
      summary.skip("signal file missing", f"{fpath} (named by {hea})")
      return None
    size = os.path.getsize(fpath)
    if size < needed:
      summary.skip("truncated signal file",
                   f"{fpath}: {size} bytes, the header promises {needed} for the first {sampto} samples")
      return None
  target = int(round(seconds_per_state * FS))
  held = _samples_in_files(path, header)
  if sampto < window:  # the whole record is skipped, the windows its header hides with it
    summary.skip("record shorter than one window",
                 f"{name} ({hea}: {sig_len} samples" + (f", its signal file holds {held}" if held else "")
                 + f"; one window is {window} samples)")
    return None
  if held is not None and held > sig_len and sampto < target:
    lost = min(held, target) // window - sampto // window
    if lost > 0:
      summary.skip(HEADER_SHORT, f"{name} ({hea}): header {sig_len} samples, signal file {held}: {lost} window(s)",
                   n=lost)
  try:
    rec = wfdb.rdrecord(base, sampto=sampto, channels=[names.index(c) for c in channel_names.values()])
  except Exception as e:  # pylint: disable=broad-except
    summary.skip("unreadable signal file", f"{base}.dat ({type(e).__name__}: {e})")
    return None
  out = {mode: np.asarray(rec.p_signal[:, k], np.float64) for k, mode in enumerate(channel_names)}
  if sampto < int(round(seconds_per_state * FS)):
    summary.info.setdefault("short_records", {})[name] = round(sampto / FS, 3)
  return out


def _normalize(x: np.ndarray, how: str):
  """Per-record, per-channel z-score over the used segment (NaNs ignored); None if flat."""
  if how == "none":
    return x
  finite = x[np.isfinite(x)]
  if finite.size < 2:
    return None
  mu, sd = finite.mean(), finite.std()
  if not sd > 0:
    return None
  return (x - mu) / sd


def load_cebs(root, strict: bool = False, modes: Sequence[str] = MODES,
              seconds_per_state: float = SECONDS_PER_STATE, chunks: int = 6, chunk_samples: int = 1000,
              subjects: Optional[Sequence[int]] = None, ecg_lead: str = "I", normalize: str = "record",
              verbose: bool = False) -> CebsCorpus:
  """Loads CEBS windows (MBAF §4.2; see the module docstring).

  Args:
    root: the ``cebsdb`` directory (or a folder holding ``cebsdb/``).
    strict: every skip raises :class:`DataError` instead of being counted.
    modes: which of ``"ECG"``, ``"RESP"``, ``"SCG"`` to load.
    seconds_per_state: seconds read from the start of each record (300 = 5 min).
    chunks: chunks per window (6).
    chunk_samples: samples per chunk (1,000 = 200 ms at 5 kHz).
    subjects: subject numbers to load (default 1..20).
    ecg_lead: ``"I"`` (default, the paper's ECG-I) or ``"II"``.
    normalize: ``"record"`` (z-score per channel per record) or ``"none"``.
    verbose: print the report with its details.

  Returns:
    :class:`CebsCorpus` with ``signals[mode]`` of shape ``(N, chunks, chunk_samples)``.

  Raises:
    DataError: root missing / not CEBS, nothing loadable, or (strict) any skip.
    ValueError: a bad option.
  """
  modes = tuple(modes)
  bad = [m for m in modes if m not in MODES]
  if not modes or bad or len(set(modes)) != len(modes):
    raise ValueError(f"load_cebs: modes must be distinct names from {MODES}, got {modes}")
  if ecg_lead not in ("I", "II"):
    raise ValueError(f"load_cebs: ecg_lead must be 'I' or 'II' (cebsdb ECG channel names), got {ecg_lead!r}")
  if normalize not in ("record", "none"):
    raise ValueError(f"load_cebs: normalize must be 'record' or 'none', got {normalize!r}")
  for name, v in (("chunks", chunks), ("chunk_samples", chunk_samples)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"load_cebs: {name} must be a positive int, got {v!r}")
  if not float(seconds_per_state) * FS >= chunks * chunk_samples:
    raise ValueError(f"load_cebs: seconds_per_state={seconds_per_state} is shorter than one window "
                     f"({chunks} x {chunk_samples} samples at {FS} Hz = {chunks * chunk_samples / FS} s)")
  if subjects is not None:
    subjects = sorted(set(int(s) for s in subjects))
    if not subjects or subjects[0] < 1 or subjects[-1] > NUM_SUBJECTS:
      raise ValueError(f"load_cebs: subjects must be numbers in 1..{NUM_SUBJECTS}, got {subjects}")
  path = _find_root(root)
  summary = LoadSummary(name="cebs", strict=strict)
  channel_names = {m: (ecg_lead if m == "ECG" else CHANNELS[m]) for m in modes}
  win = chunks * chunk_samples
  parts = {m: [] for m in modes}
  labels, subj_ids, rec_names, starts = [], [], [], []
  per_record = {}
  for name in expected_records(subjects):
    sigs = _read_record(path, name, channel_names, float(seconds_per_state), summary, win)
    if sigs is None:
      continue
    normed = {m: _normalize(x, normalize) for m, x in sigs.items()}
    flat = [m for m, x in normed.items() if x is None]
    if flat:
      summary.skip("flat or all-NaN channel",
                   f"{name}: {', '.join(channel_names[m] for m in flat)} ({os.path.join(path, name)}.dat)")
      continue
    n_win = next(iter(normed.values())).shape[0] // win
    windows = {m: x[:n_win * win].reshape(n_win, chunks, chunk_samples) for m, x in normed.items()}
    ok = np.ones(n_win, bool)
    for x in windows.values():
      ok &= np.isfinite(x).all(axis=(1, 2))
    for w in np.flatnonzero(~ok):
      summary.skip("window with NaN samples",
                   f"{name} window {w} (samples {w * win}-{(w + 1) * win - 1} of {os.path.join(path, name)}.dat)")
    keep = np.flatnonzero(ok)
    for m in modes:
      parts[m].append(windows[m][keep].astype(np.float32))
    labels.append(np.full(keep.size, PREFIXES.index(name[0]), np.int32))
    subj_ids.append(np.full(keep.size, int(name[1:]), np.int32))
    rec_names.append(np.full(keep.size, name))
    starts.append(keep.astype(np.int64) * win)
    per_record[name] = int(keep.size)
  if not labels or sum(per_record.values()) == 0:
    raise DataError(f"load_cebs: no usable window in {path!r}:\n{summary.format()}")
  corpus = CebsCorpus(
      signals={m: np.concatenate(parts[m]) for m in modes}, labels=np.concatenate(labels),
      subjects=np.concatenate(subj_ids), records=np.concatenate(rec_names), starts=np.concatenate(starts),
      summary=summary)
  counts = corpus.class_counts()
  summary.read.update({"windows": len(corpus), "records": len(per_record)})
  summary.breakdown["per class"] = dict(zip(CLASSES, counts))
  summary.info["class_counts"] = dict(zip(CLASSES, counts))
  summary.info["windows_per_record"] = per_record
  full = int(float(seconds_per_state) * FS) // win * len(subjects or range(1, NUM_SUBJECTS + 1))
  summary.info["expected_per_class_full_length"] = full
  if len(set(counts)) > 1:
    summary.info["class_imbalance"] = (f"per-class windows {dict(zip(CLASSES, counts))} differ (short, "
                                       "missing or skipped records; see above)")
  short = summary.info.get("short_records", {})
  if short:
    listed = ", ".join(f"{k} {v} s" for k, v in list(short.items())[:3]) + (", ..." if len(short) > 3 else "")
    summary.warn(f"{len(short)} record(s) shorter than {float(seconds_per_state):g} s, fewer windows: {listed}")
  if verbose:
    print(summary.format(details=True))
  return corpus


def logo_folds(subjects, n_groups: int = 4, seed: int = 0, val_fraction: float = 0.0) -> list:
  """Leave-one-subject-group-out folds (MBAF §4.2: "4 groups of 5 subjects").

  Args:
    subjects: (N,) subject id per window (``CebsCorpus.subjects``).
    n_groups: number of groups / folds (4).
    seed: seed of the subject shuffle (and of the validation draw).
    val_fraction: fraction of each fold's training windows held out for validation (0: none).

  Returns:
    ``n_groups`` :class:`mbaf_jax.data.folds.Fold` named ``logo0..``; their test sets
    partition the windows and no subject is in both train and test.
  """
  return group_kfold(np.asarray(subjects), n_groups=n_groups, seed=seed, val_fraction=val_fraction,
                     name="logo")
