"""IEMOCAP loader over the real ``IEMOCAP_full_release/`` layout (DMF §3.1, MBAF §4.1).

Labels come from the summary lines of ``Session*/dialog/EmoEvaluation/*.txt``,
text from ``Session*/dialog/transcriptions/*.txt`` and audio paths are
``Session*/sentences/wav/<dialog>/<utterance>.wav`` (DATA_FORMATS "IEMOCAP").
The 4-class set is ang, hap (with exc merged into it), neu, sad; every other
label (xxx, fru, sur, fea, oth, dis) is excluded and counted by label. Labels
outside the known set, malformed lines, utterances without a transcript line or
without a wav are skipped and counted in the corpus :class:`LoadSummary`
(``strict=True`` raises instead); text files are split at LF (a UTF-8 BOM and CRs
ignored) and decoded line by line, so a line that is not UTF-8 is one malformed
line, and a second transcript line for an id is counted as a duplicate (the
first is kept). So is what no label matches: a sentence
wav or a transcript line without an EmoEvaluation line, and a session folder
without its ``dialog/EmoEvaluation``, ``dialog/transcriptions`` or
``sentences/wav`` folder. A corpus whose utterances do not cover all five
sessions gets a warning (leave-one-session-out needs Session1-5; an error with
``strict=True``). The speaker is the session plus the letter after the *last*
underscore of the utterance id (``Ses01F_impro01_M000`` is spoken by
``Ses01M``), not the dialog prefix.

The summary's ``format()`` is the report to print on every run: utterances read,
per session and per class, skips by reason with examples, warnings
(``verbose=True`` prints it with its details). When the corpus looks like the
full release (all 5 sessions present and at least 90 % of the 10,039 labelled
turns), its counts are compared with the published 5,531 = 1,103 / 1,636 /
1,708 / 1,084 and the per-session table; a difference raises one warning.
Smaller corpora (the synthetic ones, a subset) are reported once as "not
compared", without warnings.
"""
import codecs
import collections
import dataclasses
import glob
import os
import re
import warnings

import numpy as np

from mbaf_jax.data import audio
from mbaf_jax.data import folds as _folds
from mbaf_jax.data.report import DataError, LoadSummary

Fold = _folds.Fold
loso_folds = _folds.loso_folds
stratified_split = _folds.stratified_split

CLASSES = ("ang", "hap", "neu", "sad")
# Raw EmoEvaluation label -> 4-class index (exc is merged into hap, as every public loader does).
LABEL_TO_CLASS = {"ang": 0, "hap": 1, "exc": 1, "neu": 2, "sad": 3}
# Labels that occur in the release but are not in the 4-class set.
EXCLUDED_LABELS = ("xxx", "fru", "sur", "fea", "oth", "dis")

PUBLISHED_TOTAL_LABELLED = 10039
PUBLISHED_CLASS_COUNTS = {"ang": 1103, "hap": 1636, "neu": 1708, "sad": 1084}
# session -> (total, ang, hap, neu, sad) of the 4-class set.
PUBLISHED_SESSION_COUNTS = {
    1: (1085, 229, 278, 384, 194),
    2: (1023, 137, 327, 362, 197),
    3: (1151, 240, 286, 320, 305),
    4: (1031, 327, 303, 258, 143),
    5: (1241, 170, 442, 384, 245),
}
# A corpus is compared with the published counts only from this many labelled turns on.
FULL_SIZE_MIN_LABELLED = int(0.9 * PUBLISHED_TOTAL_LABELLED)

SUMMARY_LINE = re.compile(
    r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(\w+)\t(\w+)\t\[(\d+\.\d+), (\d+\.\d+), (\d+\.\d+)\]$")
TRANSCRIPT_LINE = re.compile(r"^(Ses\w+) \[(\d+\.\d+)-(\d+\.\d+)\]:\s?(.*)$")
UTTERANCE_ID = re.compile(r"^Ses0([1-5])[FM]_\w+_([FM])(\d{3})$")
MENTIONED_ID = re.compile(r"\bSes0[1-5][FM]_\w+")  # an utterance id anywhere in a line
XX_ID = re.compile(r"^Ses\w+_[FM]XX\w*$")
NONSPEECH_TOKEN = re.compile(r"\[[A-Za-z]+\]")


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One labelled IEMOCAP turn of the 4-class set."""
  id: str            # e.g. "Ses01F_impro01_M000"
  dialog: str        # the id without its last "_..." part, e.g. "Ses01F_impro01"
  session: int       # 1..5
  speaker: str       # session + letter after the last underscore, e.g. "Ses01M"
  label: int         # index into CLASSES
  label_name: str    # CLASSES[label] (exc already mapped to "hap")
  text: str          # transcript text
  wav_path: str      # absolute path of sentences/wav/<dialog>/<id>.wav
  start: float       # start time in the dialog (s), from the EmoEvaluation line
  end: float         # end time (s)


@dataclasses.dataclass
class IemocapCorpus:
  """What :func:`load_iemocap` returns."""
  root: str                     # the IEMOCAP_full_release directory
  utterances: list              # list[Utterance], sorted by id
  summary: LoadSummary          # skips by reason; info holds the counts printed
  excluded: collections.Counter  # non-4-class raw label -> count

  @property
  def labels(self) -> np.ndarray:
    return np.array([u.label for u in self.utterances], dtype=np.int64)

  @property
  def texts(self) -> list:
    return [u.text for u in self.utterances]

  @property
  def wav_paths(self) -> list:
    return [u.wav_path for u in self.utterances]

  def subset(self, indices) -> "IemocapCorpus":
    """The corpus restricted to ``indices`` (same summary object)."""
    return dataclasses.replace(self, utterances=[self.utterances[int(i)] for i in indices])


def speaker_of(utterance_id: str) -> str:
  """Speaker of an utterance id: session prefix + letter after the last underscore.

  >>> speaker_of("Ses01F_impro01_M000")
  'Ses01M'
  """
  return utterance_id[:5] + utterance_id.rsplit("_", 1)[1][0]


def dialog_of(utterance_id: str) -> str:
  """``Ses05M_script01_1b_F003`` -> ``Ses05M_script01_1b``."""
  return utterance_id.rsplit("_", 1)[0]


def strip_nonspeech(text: str) -> str:
  """Removes bracketed non-speech tokens such as ``[LAUGHTER]`` and ``[garbage]``."""
  return " ".join(NONSPEECH_TOKEN.sub(" ", text).split())


def _visible_txt(directory):
  """Sorted ``*.txt`` files of ``directory`` (not subfolders, no dotfiles)."""
  return sorted(p for p in glob.glob(os.path.join(directory, "*.txt"))
                if os.path.isfile(p) and not os.path.basename(p).startswith("."))


def _read_lines(path, summary):
  """``(line number, text, is UTF-8)`` for every line of a text file.

  Lines are split at LF only (a CR before it is stripped by the parsers; a form feed or other
  Unicode line break inside a line stays in it, so line numbers are those of an editor). A UTF-8
  BOM is ignored. Each line is decoded on its own: a line that is not UTF-8 comes back with
  U+FFFD in place of its bad bytes and ``False``, so one damaged byte costs one line, not the file.
  A file that cannot be opened is counted as "unreadable text file" and gives no lines.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    summary.skip("unreadable text file", f"{path} ({e.__class__.__name__}: {e})")
    return []
  if raw.startswith(codecs.BOM_UTF8):
    raw = raw[len(codecs.BOM_UTF8):]
  lines = []
  for lineno, chunk in enumerate(raw.split(b"\n"), 1):
    try:
      lines.append((lineno, chunk.decode("utf-8"), True))
    except UnicodeDecodeError:
      lines.append((lineno, chunk.decode("utf-8", "replace"), False))
  return lines


def parse_emo_evaluation(path, summary: LoadSummary, malformed_ids=None):
  """Parses the summary lines of one EmoEvaluation file.

  Args:
    path: ``<dialog>.txt`` under ``dialog/EmoEvaluation``.
    summary: malformed ``[`` lines and unrecognised lines are counted here.
    malformed_ids: a set that receives the utterance ids named by malformed
      lines (already counted, so their wav and transcript line are not
      counted again as unmatched); None: not collected.

  Returns:
    list of ``(utterance_id, raw_label, start, end, (v, a, d))``.
  """
  rows = []
  for lineno, line, utf8 in _read_lines(path, summary):
    line = line.rstrip()  # CR of CRLF files, trailing blanks
    if not line or line.startswith(("%", "C-", "A-")):
      continue  # header, blank, per-evaluator category (C-) and attribute (A-) lines
    m = SUMMARY_LINE.match(line) if utf8 else None
    if m is None:
      if malformed_ids is not None:
        malformed_ids.update(MENTIONED_ID.findall(line))
      summary.skip("malformed EmoEvaluation line", f"{path}:{lineno}: {line[:80]!r} (" + (
          "expected '[START - END]<TAB>ID<TAB>LABEL<TAB>[V, A, D]' with 4-decimal numbers)"
          if utf8 else "not UTF-8 text)"))
      continue
    start, end, uid, label = float(m[1]), float(m[2]), m[3], m[4]
    rows.append((uid, label, start, end, (float(m[5]), float(m[6]), float(m[7]))))
  return rows


def parse_transcription(path, summary: LoadSummary, counters: collections.Counter):
  """Parses one transcription file into ``{utterance_id: text}``.

  Lines not starting with ``Ses`` (noise such as ``M: sorry``) and ``XX`` ids
  (no label, no wav) are counted in ``counters``; ``Ses`` lines that do not
  match the format or are not UTF-8, and a second line for the same id (the
  first is kept), are counted in ``summary``.
  """
  texts, first_line = {}, {}
  for lineno, line, utf8 in _read_lines(path, summary):
    line = line.rstrip("\r")
    if not line.strip():
      continue
    if not line.startswith("Ses"):
      counters["transcript noise lines"] += 1
      continue
    m = TRANSCRIPT_LINE.match(line) if utf8 else None
    if m is None:
      summary.skip("malformed transcription line", f"{path}:{lineno}: {line[:80]!r} (" + (
          "expected 'ID [SSS.SSSS-EEE.EEEE]: text')" if utf8 else "not UTF-8 text)"))
      continue
    if XX_ID.match(m[1]):
      counters["transcript XX ids"] += 1
      continue
    if m[1] in texts:
      summary.skip("duplicate transcription line", f"{path}:{lineno}: {m[1]} (its line "
                   f"{first_line[m[1]]} is kept)")
      continue
    texts[m[1]] = m[4].strip()
    first_line[m[1]] = lineno
  return texts


def _session_dirs(root):
  if not os.path.isdir(root):
    raise DataError(f"load_iemocap: root {root!r} does not exist or is not a directory; pass the "
                    "IEMOCAP_full_release directory (it holds Session1 ... Session5)")
  found = {}
  for name in os.listdir(root):
    m = re.fullmatch(r"Session([1-5])", name)
    if m and os.path.isdir(os.path.join(root, name)):
      found[int(m[1])] = os.path.join(root, name)
  if not found:
    hint = ""
    inner = os.path.join(root, "IEMOCAP_full_release")
    if os.path.isdir(inner):
      hint = f" (did you mean {inner!r}?)"
    raise DataError(f"load_iemocap: {root!r} is not an IEMOCAP release: no Session1..Session5 "
                    f"directories{hint}. Expected IEMOCAP_full_release/SessionN/dialog/EmoEvaluation/*.txt, "
                    "SessionN/dialog/transcriptions/*.txt and SessionN/sentences/wav/<dialog>/<utt>.wav")
  return found


def _counts(utterances):
  by_class = collections.Counter(u.label_name for u in utterances)
  by_session = {}
  for s in sorted({u.session for u in utterances}):
    c = collections.Counter(u.label_name for u in utterances if u.session == s)
    by_session[s] = (sum(c.values()),) + tuple(c.get(k, 0) for k in CLASSES)
  by_speaker = dict(sorted(collections.Counter(u.speaker for u in utterances).items()))
  return {k: by_class.get(k, 0) for k in CLASSES}, by_session, by_speaker


def compare_with_published(class_counts, session_counts, sessions_present, n_labelled):
  """Differences from the published 4-class counts, or why they were not compared.

  Returns:
    ``(compared, differences)``: ``compared`` is False (with a one-item reason
    list) unless all 5 sessions are present and ``n_labelled`` (turns with any
    label, 4-class or not) is at least FULL_SIZE_MIN_LABELLED.
  """
  if sorted(sessions_present) != [1, 2, 3, 4, 5] or n_labelled < FULL_SIZE_MIN_LABELLED:
    return False, [f"not compared with the published counts: sessions {sorted(sessions_present)}, "
                   f"{n_labelled} labelled turns (< {FULL_SIZE_MIN_LABELLED}, or not all 5 sessions): "
                   "a subset or a synthetic corpus"]
  diffs = []
  for k in CLASSES:
    if class_counts.get(k, 0) != PUBLISHED_CLASS_COUNTS[k]:
      diffs.append(f"class {k}: {class_counts.get(k, 0)} (published {PUBLISHED_CLASS_COUNTS[k]})")
  for s, want in PUBLISHED_SESSION_COUNTS.items():
    got = session_counts.get(s, (0,) * 5)
    if tuple(got) != want:
      diffs.append(f"session {s}: total/ang/hap/neu/sad {got} (published {want})")
  return True, diffs


def loso_warning(missing, explicit: bool = False) -> str:
  """The report's sentence for sessions without utterances (LOSO needs all five).

  Args:
    missing: session numbers (1..5) that gave no utterance.
    explicit: the sessions were chosen by the caller (``sessions=``).

  Returns:
    One sentence naming the missing sessions.
  """
  names = ", ".join(f"Session{k}" for k in missing)
  why = "not requested" if explicit else "missing or without usable utterances"
  return (f"{names} {why}: leave-one-session-out (LOSO) over IEMOCAP needs Session1-5; "
          f"these folds cover {5 - len(missing)} session(s)")


def _wav_ids(wav_root):
  """``{utterance_id: path}`` of the sentence wavs under ``sentences/wav/<dialog>/`` (no dotfiles)."""
  found = {}
  if not os.path.isdir(wav_root):
    return found
  for dialog in sorted(os.listdir(wav_root)):
    ddir = os.path.join(wav_root, dialog)
    if dialog.startswith(".") or not os.path.isdir(ddir):
      continue
    for name in sorted(os.listdir(ddir)):
      if name.endswith(".wav") and not name.startswith(".") and os.path.isfile(os.path.join(ddir, name)):
        found[name[:-4]] = os.path.join(ddir, name)
  return found


def _cross_check_session(emo_dir, tr_dir, wav_root, session_ids, transcript_ids, summary, counters):
  """Counts what no EmoEvaluation line labels: wavs, transcript lines, transcription files.

  Args:
    emo_dir: the session's ``dialog/EmoEvaluation``.
    tr_dir: the session's ``dialog/transcriptions``.
    wav_root: the session's ``sentences/wav``.
    session_ids: every id with an EmoEvaluation line in the session (any label).
    transcript_ids: ``{id: transcription file}`` of the transcription files already read.
    summary: where the unmatched items are counted (strict raises).
    counters: transcript noise / XX counts of the files read here.
  """
  labelled_dialogs = {os.path.splitext(os.path.basename(p))[0] for p in _visible_txt(emo_dir)}
  for tr_path in _visible_txt(tr_dir):
    if os.path.splitext(os.path.basename(tr_path))[0] not in labelled_dialogs:
      texts = parse_transcription(tr_path, summary, counters)
      transcript_ids.update(dict.fromkeys(texts, tr_path))
  for uid, tr_path in sorted(transcript_ids.items()):
    if uid not in session_ids:
      summary.skip("transcript line without label", f"{uid} in {tr_path}")
  for uid, wav in _wav_ids(wav_root).items():
    if uid not in session_ids:
      summary.skip("wav without label", wav)


def load_iemocap(root, strict: bool = False, sessions=None, check_wav: bool = True,
                 remove_nonspeech: bool = False, verbose: bool = True) -> IemocapCorpus:
  """Loads the 4-class IEMOCAP set (DMF §3.1 / MBAF §4.1: ang, hap+exc, neu, sad).

  Args:
    root: the ``IEMOCAP_full_release`` directory.
    strict: raise DataError on the first skipped item instead of counting it.
    sessions: iterable of session numbers (1..5) to load; None: all present.
    check_wav: skip (count) labelled utterances whose wav file does not exist.
    remove_nonspeech: drop bracketed non-speech tokens (``[LAUGHTER]``) from the
      text; by default the transcript is kept verbatim, as public loaders do.
    verbose: print the report with its details (class/session/speaker counts).

  Returns:
    An :class:`IemocapCorpus`; ``summary.read`` / ``summary.breakdown`` hold the
    counts read, per session and per class, ``summary.warnings`` the missing
    sessions, ``summary.counts`` the skips (a label without wav is
    "missing wav", without transcript "missing transcript line"; "wav without
    label", "transcript line without label", "session folder without ...");
    ``summary.info`` holds ``class_counts``,
    ``session_counts`` (total, ang, hap, neu, sad), ``speaker_counts``,
    ``excluded_by_label``, ``published_check`` and the transcript noise counts.

  Raises:
    DataError: ``root`` missing or not an IEMOCAP release, a requested session
      missing, or (strict) any skip or fewer than five sessions.
  """
  root = os.path.abspath(os.fspath(root))
  found = _session_dirs(root)
  if sessions is None:
    wanted = sorted(found)
  else:
    try:
      wanted = sorted({int(s) for s in sessions})
    except (TypeError, ValueError):
      raise ValueError(f"load_iemocap: sessions must be an iterable of numbers in 1..5, got {sessions!r}") from None
    bad = [s for s in wanted if s not in range(1, 6)]
    if bad:
      raise ValueError(f"load_iemocap: sessions must be numbers in 1..5, got {bad}")
    missing = [s for s in wanted if s not in found]
    if missing:
      raise DataError(f"load_iemocap: Session{missing[0]} requested but not found under {root!r} "
                      f"(present: {sorted(found)})")
  summary = LoadSummary(name="iemocap", strict=strict)
  counters = collections.Counter()
  excluded = collections.Counter()
  utterances, seen = [], set()
  n_labelled = 0
  for s in wanted:
    sdir = found[s]
    emo_dir = os.path.join(sdir, "dialog", "EmoEvaluation")
    tr_dir = os.path.join(sdir, "dialog", "transcriptions")
    wav_root = os.path.join(sdir, "sentences", "wav")
    for d, sub in ((emo_dir, "dialog/EmoEvaluation"), (tr_dir, "dialog/transcriptions"),
                   (wav_root, "sentences/wav")):
      if not os.path.isdir(d):
        summary.skip(f"session folder without {sub}", f"{d} is missing (is the release complete?)")
    emo_files = _visible_txt(emo_dir)
    if not emo_files and os.path.isdir(emo_dir):
      summary.skip("session without EmoEvaluation files", emo_dir)
    session_ids = set()  # every id an EmoEvaluation line of this session names (any label, or malformed)
    transcript_ids = {}  # id -> transcription file, every non-XX transcript line of this session
    for emo_path in emo_files:
      dialog = os.path.splitext(os.path.basename(emo_path))[0]
      tr_path = os.path.join(tr_dir, dialog + ".txt")
      texts = parse_transcription(tr_path, summary, counters) if os.path.isfile(tr_path) else None
      if texts is None:
        if os.path.isdir(tr_dir):
          summary.skip("missing transcription file", f"{tr_path} (for {emo_path})")
        texts = {}
      transcript_ids.update(dict.fromkeys(texts, tr_path))
      for uid, raw, start, end, _ in parse_emo_evaluation(emo_path, summary, session_ids):
        session_ids.add(uid)
        where = f"{uid} in {emo_path}"
        m = UTTERANCE_ID.match(uid)
        if m is None or int(m[1]) != s:
          summary.skip("malformed utterance id", f"{where} (expected Ses0{s}{{F|M}}_<dialog>_{{F|M}}NNN)")
          continue
        if uid in seen:
          summary.skip("duplicate utterance id", where)
          continue
        seen.add(uid)
        if raw not in LABEL_TO_CLASS and raw not in EXCLUDED_LABELS:
          summary.skip("unknown label", f"{where}: {raw!r} (known: {sorted(LABEL_TO_CLASS)} + "
                       f"{list(EXCLUDED_LABELS)})")
          continue
        n_labelled += 1
        if raw in EXCLUDED_LABELS:
          excluded[raw] += 1
          continue
        if uid not in texts:
          summary.skip("missing transcript line", f"{where} (no line for it in {tr_path})")
          continue
        wav = os.path.join(wav_root, dialog_of(uid), uid + ".wav")
        if check_wav and not os.path.isfile(wav):
          summary.skip("missing wav", f"{wav} (labelled in {emo_path})")
          continue
        text = strip_nonspeech(texts[uid]) if remove_nonspeech else texts[uid]
        label = LABEL_TO_CLASS[raw]
        utterances.append(Utterance(uid, dialog_of(uid), s, speaker_of(uid), label, CLASSES[label],
                                    text, wav, start, end))
    _cross_check_session(emo_dir, tr_dir, wav_root, session_ids, transcript_ids, summary, counters)
  utterances.sort(key=lambda u: u.id)
  class_counts, session_counts, speaker_counts = _counts(utterances)
  compared, diffs = compare_with_published(class_counts, session_counts, wanted, n_labelled)
  summary.info.update({
      "utterances (4-class)": len(utterances),
      "class_counts": class_counts,
      "session_counts (total, ang, hap, neu, sad)": session_counts,
      "speaker_counts": speaker_counts,
      "excluded_by_label": dict(sorted(excluded.items())),
      "labelled turns (any label)": n_labelled,
      **dict(counters),
      "published_check": ("matches the published counts" if compared and not diffs else "; ".join(diffs)),
  })
  summary.read.update({"utterances (4-class)": len(utterances), "sessions": len(session_counts),
                       "other labels excluded": sum(excluded.values())})
  summary.breakdown.update({
      "per session": {f"Session{k}": v[0] for k, v in session_counts.items()},
      "per class": class_counts,
  })
  missing = [k for k in range(1, 6) if k not in session_counts]
  if missing:
    message = loso_warning(missing, explicit=sessions is not None)
    summary.warn(message)
    if sessions is None:
      if strict:
        raise DataError(f"load_iemocap: {message} (strict mode: load all five sessions, or pass "
                        "sessions= to choose a subset)")
      warnings.warn(f"load_iemocap: {message}", stacklevel=2)
  if compared and diffs:
    warnings.warn("load_iemocap: 4-class counts differ from the published ones (5,531 = 1,103/1,636/1,708/"
                  "1,084): " + "; ".join(diffs) + f". Check the release under {root!r}.", stacklevel=2)
  if verbose:
    print(summary.format(details=True))
  return IemocapCorpus(root, utterances, summary, excluded)


def load_corpus_audio(corpus: IemocapCorpus, sr: int = 16000, max_seconds: float = 5.0, cache_dir=None,
                      workers: int = 2):
  """Decodes a corpus's wavs and drops the utterances whose audio is unusable.

  Unusable files (unreadable, empty, NaN) are counted in ``corpus.summary``
  (raising in strict mode).

  Returns:
    ``(corpus_kept, waves (N, S) float32, lengths (N,) int64)``.
  """
  waves, lengths = audio.load_waveforms(corpus.wav_paths, sr=sr, max_seconds=max_seconds,
                                        cache_dir=cache_dir, workers=workers, summary=corpus.summary)
  keep = np.flatnonzero(lengths > 0)
  return corpus.subset(keep), waves[keep], lengths[keep]
