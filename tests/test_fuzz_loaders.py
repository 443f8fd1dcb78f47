"""Property-based fuzzing of the data loaders (IEMOCAP, CEBS, manifests) and of train.predict's
input readers: damaged real-format inputs end as data read, an item skipped and counted in the
loader's report (a bad row named by its line, for predict), or one DataError naming the file —
never another exception, never a silent drop.

Each property test copies a small synthetic corpus written once per module (hard links; a mutated
file is rewritten as a new file), damages one or a few files with hypothesis-drawn mutations
(truncation, byte flips, deleted / duplicated / inserted lines, BOMs, CRLF, UTF-16, Latin-1) and
checks the loader's counts against what the damaged tree holds, counted here independently of the
loader. Example counts come from the hypothesis profiles in tests/conftest.py ("ci" under CI=true,
"dev" otherwise, "thorough" or MBAF_FUZZ_EXAMPLES=N for more). Every bug these tests found has a
plain regression test below the property test that found it.
"""
import codecs
import contextlib
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import pytest
import soundfile as sf
import wfdb
from hypothesis import given, strategies as st

from mbaf_jax.data import audio, cebs, iemocap, synthetic, synthetic_cebs
from mbaf_jax.data import manifest as manifest_lib
from mbaf_jax.data.report import DataError, LoadSummary

# ------------------------------------------------------------------ mutations of a file's bytes

_ENCODINGS = ("bom", "crlf", "utf16", "latin1", "nul")


class Mutated(bytes):
  """Mutated bytes whose repr (in hypothesis's report of a failing example) is the edits made."""
  how = ""

  def __repr__(self):
    return f"<{len(self)} bytes: {self.how}>"


@st.composite
def byte_mutations(draw, data: bytes, max_ops: int = 3):
  """:class:`Mutated` bytes: 1..max_ops edits of ``data``, applied in turn."""
  ops = []
  for _ in range(draw(st.integers(1, max_ops))):
    op = draw(st.sampled_from(("truncate", "flip", "delete_line", "duplicate_line", "insert_bytes",
                               "swap_lines", "encoding")))
    lines = data.split(b"\n")
    if op == "truncate":
      k = draw(st.integers(0, len(data)))
      data = data[:k]
      ops.append(f"truncate at {k}")
    elif op == "flip":
      for _ in range(draw(st.integers(1, 3))):
        if not data:
          break
        k = draw(st.integers(0, len(data) - 1))
        x = draw(st.integers(1, 255))
        data = data[:k] + bytes([data[k] ^ x]) + data[k + 1:]
        ops.append(f"xor byte {k} with {x:#x}")
    elif op == "delete_line":
      i = draw(st.integers(0, len(lines) - 1))
      data = b"\n".join(lines[:i] + lines[i + 1:])
      ops.append(f"delete line {i + 1}")
    elif op == "duplicate_line":
      i = draw(st.integers(0, len(lines) - 1))
      j = draw(st.integers(0, len(lines)))
      data = b"\n".join(lines[:j] + [lines[i]] + lines[j:])
      ops.append(f"copy line {i + 1} before line {j + 1}")
    elif op == "swap_lines":
      i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
      lines[i], lines[j] = lines[j], lines[i]
      data = b"\n".join(lines)
      ops.append(f"swap lines {i + 1} and {j + 1}")
    elif op == "insert_bytes":
      k = draw(st.integers(0, len(data)))
      junk = draw(st.binary(min_size=1, max_size=12))
      data = data[:k] + junk + data[k:]
      ops.append(f"insert {junk!r} at {k}")
    else:
      enc = draw(st.sampled_from(_ENCODINGS))
      if enc == "bom":
        data = codecs.BOM_UTF8 + data
      elif enc == "crlf":
        data = data.replace(b"\n", b"\r\n")
      elif enc == "utf16":
        data = data.decode("utf-8", "replace").encode("utf-16")
      elif enc == "latin1":  # a Latin-1 byte (not UTF-8) in place of one character
        k = draw(st.integers(0, max(len(data) - 1, 0)))
        data = data[:k] + draw(st.sampled_from((b"\xe9", b"\xfc", b"\xa0", b"\x85"))) + data[k + 1:]
      else:
        k = draw(st.integers(0, len(data)))
        data = data[:k] + b"\x00" + data[k:]
      ops.append(f"encoding {enc}")
  out = Mutated(data)
  out.how = "; ".join(ops)
  return out


def _rewrite(path, data: bytes):
  """Replaces ``path`` by a new file (the copy's files are hard links to the template's)."""
  os.remove(path)
  with open(path, "wb") as f:
    f.write(data)


def _read(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


@contextlib.contextmanager
def _linked_copy(src_root, parts):
  """A temporary copy of ``parts`` of ``src_root`` made of hard links; yields its root."""
  tmp = tempfile.mkdtemp(prefix="mbaf_fuzz_")
  try:
    root = os.path.join(tmp, os.path.basename(src_root))
    os.makedirs(root)
    for part in parts:
      src = os.path.join(src_root, part)
      if os.path.isdir(src):
        shutil.copytree(src, os.path.join(root, part), copy_function=os.link)
      else:
        os.link(src, os.path.join(root, part))
    yield root
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _assert_names_file(err: DataError, root: str):
  assert root in str(err), f"the DataError does not name a file under {root}: {err}"


# ------------------------------------------------------------------ IEMOCAP

IEMO_SESSIONS = (1, 2)
IEMO_PARTS = ("README.txt",) + tuple(f"Session{s}" for s in IEMO_SESSIONS)
# Skip reasons that stand for one EmoEvaluation summary line each.
LABEL_LINE_REASONS = ("malformed EmoEvaluation line", "malformed utterance id", "duplicate utterance id",
                      "unknown label", "missing transcript line", "missing wav")
AUDIO_REASONS = (audio.REASON_UNREADABLE, audio.REASON_EMPTY, audio.REASON_NONFINITE)
_MENTIONED = re.compile(r"\bSes0[1-5][FM]_\w+")


@pytest.fixture(scope="module")
def iemo(tmp_path_factory):
  """A tiny synthetic IEMOCAP tree (sessions 1-2 are fuzzed), written once: (root, manifest)."""
  out = tmp_path_factory.mktemp("fuzz_iemocap")
  return synthetic.write_iemocap(out, size="tiny", seed=11, seconds=(0.1, 0.15), return_manifest=True)


def _visible(directory, ext):
  if not os.path.isdir(directory):
    return []
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if f.endswith(ext) and not f.startswith(".") and os.path.isfile(os.path.join(directory, f)))


def _emo_files(root, s):
  return _visible(os.path.join(root, f"Session{s}", "dialog", "EmoEvaluation"), ".txt")


def _tr_files(root, s):
  return _visible(os.path.join(root, f"Session{s}", "dialog", "transcriptions"), ".txt")


def _wav_files(root, s):
  wav_root = os.path.join(root, f"Session{s}", "sentences", "wav")
  found = []
  if os.path.isdir(wav_root):
    for d in sorted(os.listdir(wav_root)):
      if not d.startswith("."):
        found += _visible(os.path.join(wav_root, d), ".wav")
  return found


def _disk_lines(path):
  """The lines of a text file as the release defines them: split at LF, a UTF-8 BOM ignored, CR
  and trailing blanks stripped, bytes that are not UTF-8 replaced by U+FFFD (such a line is still
  a line)."""
  raw = _read(path)
  if raw.startswith(codecs.BOM_UTF8):
    raw = raw[len(codecs.BOM_UTF8):]
  return [b.decode("utf-8", "replace").rstrip() for b in raw.split(b"\n")]


def _label_lines(root, s):
  """The EmoEvaluation summary lines of session ``s`` on disk: every line but blanks, the header
  (``%``) and the evaluator lines (``C-``, ``A-``)."""
  return [ln for p in _emo_files(root, s) for ln in _disk_lines(p)
          if ln and not ln.startswith(("%", "C-", "A-"))]


def _check_iemocap(root, corpus, excluded=None):
  """The loader's counts against the tree on disk (counted here, not by the loader)."""
  s = corpus.summary
  label_lines = [ln for k in IEMO_SESSIONS for ln in _label_lines(root, k)]
  n_excluded = sum(corpus.excluded.values())
  accounted = len(corpus.utterances) + n_excluded + sum(s.counts[r] for r in LABEL_LINE_REASONS)
  assert accounted == len(label_lines), (
      f"{len(label_lines)} label lines on disk, but {len(corpus.utterances)} read + {n_excluded} "
      f"excluded + label-line skips {dict(s.counts)}")
  assert s.read["utterances (4-class)"] == len(corpus.utterances)
  # Every wav no label line names is counted as a wav without label.
  n_unlabelled = sum(
      1 for k in IEMO_SESSIONS for w in _wav_files(root, k)
      if os.path.basename(w)[:-4] not in {m for ln in _label_lines(root, k) for m in _MENTIONED.findall(ln)})
  assert s.counts["wav without label"] == n_unlabelled
  # Transcript noise lines (not starting with "Ses") are counted, each one.
  noise = sum(1 for k in IEMO_SESSIONS for p in _tr_files(root, k) for ln in _disk_lines(p)
              if ln.strip() and not ln.startswith("Ses"))
  assert corpus.summary.info.get("transcript noise lines", 0) == noise
  # What was read is what the files say: its label line, its wav, the first transcript line of its id.
  for u in corpus.utterances:
    assert os.path.isfile(u.wav_path)
    emo = os.path.join(root, f"Session{u.session}", "dialog", "EmoEvaluation", u.dialog + ".txt")
    assert any(ln.startswith("[") and f"\t{u.id}\t" in ln for ln in _disk_lines(emo))
    tr = os.path.join(root, f"Session{u.session}", "dialog", "transcriptions", u.dialog + ".txt")
    first = next(ln for ln in _disk_lines(tr) if "\ufffd" not in ln  # (a line that is not UTF-8 is malformed)
                 and re.fullmatch(re.escape(u.id) + r" \[\d+\.\d+-\d+\.\d+\]:.*", ln))
    assert first.split("]:", 1)[1].strip() == u.text
  if excluded is not None:
    assert n_excluded == excluded


def _load_both(root):
  """Non-strict load (checked by the caller) and strict load: the strict one raises one DataError
  naming a file under ``root`` exactly when the non-strict one skipped something."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    corpus = iemocap.load_iemocap(root, sessions=IEMO_SESSIONS, verbose=False)
    if corpus.summary.total_skipped:
      with pytest.raises(DataError) as e:
        iemocap.load_iemocap(root, sessions=IEMO_SESSIONS, strict=True, verbose=False)
      _assert_names_file(e.value, root)
      first = next(iter(corpus.summary.counts))  # strict stops at the first item skipped
      if first in ("malformed EmoEvaluation line", "malformed transcription line",
                   "duplicate transcription line"):
        assert re.search(r"\.txt:\d+: ", str(e.value)), f"no file:line in {e.value}"
    else:
      iemocap.load_iemocap(root, sessions=IEMO_SESSIONS, strict=True, verbose=False)
  return corpus


@given(data=st.data())
def test_fuzz_iemocap_text_files(iemo, data):
  """EmoEvaluation and transcription files damaged: every label line is read, excluded or counted."""
  src, _ = iemo
  with _linked_copy(src, IEMO_PARTS) as root:
    files = [os.path.relpath(p, root) for s in IEMO_SESSIONS for p in _emo_files(root, s) + _tr_files(root, s)]
    for name in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2, unique=True),
                          label="files"):
      path = os.path.join(root, name)
      _rewrite(path, data.draw(byte_mutations(_read(path)), label=name))
    corpus = _load_both(root)
    _check_iemocap(root, corpus)


_DIALOG = "Ses01F_impro01"
_LINE = "[1.0000 - 2.0000]\t{uid}\t{label}\t[2.5000, 2.5000, 2.5000]"


def _one_dialog(tmp_path, emo: bytes, transcript: bytes, ids=("F000", "M000", "F001")):
  """A Session1 with one dialog: the given EmoEvaluation and transcription bytes, a wav per id."""
  root = tmp_path / "IEMOCAP_full_release"
  s = root / "Session1"
  (s / "dialog" / "EmoEvaluation").mkdir(parents=True)
  (s / "dialog" / "transcriptions").mkdir(parents=True)
  (s / "sentences" / "wav" / _DIALOG).mkdir(parents=True)
  (s / "dialog" / "EmoEvaluation" / f"{_DIALOG}.txt").write_bytes(emo)
  (s / "dialog" / "transcriptions" / f"{_DIALOG}.txt").write_bytes(transcript)
  for i in ids:
    sf.write(str(s / "sentences" / "wav" / _DIALOG / f"{_DIALOG}_{i}.wav"), np.full(800, 0.1, np.float32),
             16000, subtype="PCM_16")
  return str(root), str(s / "dialog" / "EmoEvaluation" / f"{_DIALOG}.txt"), str(
      s / "dialog" / "transcriptions" / f"{_DIALOG}.txt")


def _emo_bytes(*lines):
  return ("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "\n\n".join(lines) + "\n").encode()


_TRANSCRIPT = (f"{_DIALOG}_F000 [001.0000-002.0000]: Hello there.\n"
               f"{_DIALOG}_M000 [001.0000-002.0000]: Hi.\n"
               f"{_DIALOG}_F001 [001.0000-002.0000]: Bye.\n").encode()


def _load1(root, **kw):
  return iemocap.load_iemocap(root, sessions=[1], verbose=False, **kw)


def test_regression_one_bad_byte_costs_one_label_line_not_the_file(tmp_path):
  """A byte that is not UTF-8 in one summary line made the whole EmoEvaluation file unreadable
  (one 'unreadable text file' for all its labels, every wav then 'without label')."""
  emo = _emo_bytes(_LINE.format(uid=f"{_DIALOG}_F000", label="neu"),
                   _LINE.format(uid=f"{_DIALOG}_M000", label="sad").replace("2.0000]", "2.00\xe9]"),
                   _LINE.format(uid=f"{_DIALOG}_F001", label="ang"))
  emo = emo.replace("\xe9".encode(), b"\xe9")  # a Latin-1 byte, not UTF-8
  root, emo_path, _ = _one_dialog(tmp_path, emo, _TRANSCRIPT)
  c = _load1(root)
  assert [u.id for u in c.utterances] == [f"{_DIALOG}_F000", f"{_DIALOG}_F001"]
  assert c.summary.counts == {"malformed EmoEvaluation line": 1}
  (example,) = c.summary.examples["malformed EmoEvaluation line"]
  assert example.startswith(f"{emo_path}:5: ") and example.endswith("(not UTF-8 text)")
  with pytest.raises(DataError, match=re.escape(f"{emo_path}:5: ")):
    _load1(root, strict=True)


def test_regression_line_numbers_split_at_lf_only(tmp_path):
  """A form feed (or another Unicode line break: VT, FS, GS, RS, NEL) inside a line split it in
  two: two malformed lines were counted for one, and later lines were named by wrong numbers."""
  bad = _LINE.format(uid=f"{_DIALOG}_M000", label="sad").replace("\t[2.5", "\x0c\t[2.5")
  emo = _emo_bytes(_LINE.format(uid=f"{_DIALOG}_F000", label="neu"), bad,
                   "[1.0 - 2.0]\tSes01F_impro01_F001\tang")
  root, emo_path, _ = _one_dialog(tmp_path, emo, _TRANSCRIPT)
  c = _load1(root)
  assert [u.id for u in c.utterances] == [f"{_DIALOG}_F000"]
  assert c.summary.counts == {"malformed EmoEvaluation line": 2}
  assert [e.split(": ")[0] for e in c.summary.examples["malformed EmoEvaluation line"]] == [
      f"{emo_path}:5", f"{emo_path}:7"]


def test_regression_utf8_bom_is_ignored(tmp_path):
  """A UTF-8 BOM (Windows editors) made the header line of an EmoEvaluation file a malformed label
  line and the first transcript line a noise line (its turn then 'missing transcript line')."""
  emo = codecs.BOM_UTF8 + _emo_bytes(_LINE.format(uid=f"{_DIALOG}_F000", label="neu"))
  root, _, _ = _one_dialog(tmp_path, emo, codecs.BOM_UTF8 + _TRANSCRIPT, ids=("F000",))
  c = _load1(root, strict=False)
  assert c.summary.counts == {"transcript line without label": 2}
  assert [(u.id, u.text) for u in c.utterances] == [(f"{_DIALOG}_F000", "Hello there.")]


def test_regression_second_transcript_line_of_an_id_is_counted(tmp_path):
  """A second transcription line for the same id silently replaced the first one's text."""
  transcript = _TRANSCRIPT + f"{_DIALOG}_F000 [003.0000-004.0000]: Another text.\n".encode()
  emo = _emo_bytes(*(_LINE.format(uid=f"{_DIALOG}_{i}", label="neu") for i in ("F000", "M000", "F001")))
  root, _, tr_path = _one_dialog(tmp_path, emo, transcript)
  c = _load1(root)
  assert [u.text for u in c.utterances] == ["Hello there.", "Bye.", "Hi."]
  assert c.summary.counts == {"duplicate transcription line": 1}
  assert c.summary.examples["duplicate transcription line"] == [
      f"{tr_path}:4: {_DIALOG}_F000 (its line 1 is kept)"]


def _wav_mutation(draw, root, path, folders=None):
  """Damages, deletes or duplicates (into one of ``folders``, default the IEMOCAP tree's) a wav."""
  op = draw(st.sampled_from(("truncate", "flip_header", "flip_body", "delete", "duplicate", "empty",
                             "junk", "sample_rate")))
  raw = _read(path)
  if op == "truncate":
    _rewrite(path, raw[:draw(st.integers(0, len(raw) - 1))])
  elif op in ("flip_header", "flip_body"):
    lo, hi = (0, 44) if op == "flip_header" else (44, len(raw))
    for _ in range(draw(st.integers(1, 4))):
      k = draw(st.integers(lo, hi - 1))
      raw = raw[:k] + bytes([raw[k] ^ draw(st.integers(1, 255))]) + raw[k + 1:]
    _rewrite(path, raw)
  elif op == "delete":
    os.remove(path)
  elif op == "duplicate":  # a copy under another name, in its own or another dialog's folder
    folders = folders or sorted({os.path.dirname(w) for s in IEMO_SESSIONS for w in _wav_files(root, s)})
    folder = draw(st.sampled_from(folders))
    name = os.path.basename(folder) + draw(st.sampled_from(("_F900", "_M901", "_X000", "")))
    shutil.copyfile(path, os.path.join(folder, name + ".wav"))
  elif op == "empty":
    _rewrite(path, b"")
  elif op == "junk":
    _rewrite(path, draw(st.binary(min_size=1, max_size=64)))
  else:  # the header's sample rate field set to a drawn value
    rate = draw(st.sampled_from((1, 8, 100, 8000, 44100, 2 ** 31 - 1, 0)))
    _rewrite(path, raw[:24] + int(rate).to_bytes(4, "little") + raw[28:])
  return op


@given(data=st.data())
def test_fuzz_iemocap_wavs(iemo, data):
  """Sentence wavs damaged, deleted or duplicated: every wav is read, counted as unusable, counted
  as without label, or belongs to a label outside the 4-class set."""
  src, manifest = iemo
  with _linked_copy(src, IEMO_PARTS) as root:
    wavs = [os.path.relpath(w, root) for s in IEMO_SESSIONS for w in _wav_files(root, s)]
    for name in data.draw(st.lists(st.sampled_from(wavs), min_size=1, max_size=3, unique=True),
                          label="wavs"):
      _wav_mutation(data.draw, root, os.path.join(root, name))
    ours = [u for u in manifest["utterances"] if u["session"] in IEMO_SESSIONS]
    corpus = _load_both(root)
    _check_iemocap(root, corpus, excluded=sum(u["label"] is None for u in ours))
    # Every wav on disk: a 4-class utterance read, an excluded label's, or one without label.
    on_disk = [w for s in IEMO_SESSIONS for w in _wav_files(root, s)]
    excluded_ids = {u["id"] for u in ours if u["label"] is None}
    n_excluded_wavs = sum(os.path.basename(w)[:-4] in excluded_ids for w in on_disk)
    assert len(on_disk) == len(corpus.utterances) + n_excluded_wavs + corpus.summary.counts["wav without label"]
    # Decoding: every utterance read is kept or counted as unusable audio, naming its file.
    n = len(corpus.utterances)
    kept, waves, lengths = iemocap.load_corpus_audio(corpus, max_seconds=0.2, workers=1)
    skipped = sum(corpus.summary.counts[r] for r in AUDIO_REASONS)
    assert len(kept.utterances) + skipped == n
    assert waves.shape == (len(kept.utterances), 3200) and (lengths > 0).all()
    assert np.isfinite(waves).all()
    for r in AUDIO_REASONS:
      for example in corpus.summary.examples.get(r, []):
        assert example.startswith(root), example


def test_regression_header_sample_rate_cannot_blow_up_the_decode(tmp_path):
  """A wav header whose sample rate field says 1 Hz was resampled to 16 kHz in full before the
  cut to max_seconds: a 0.15 s clip became 38 million samples (a real 5 s clip, gigabytes)."""
  path = str(tmp_path / "a.wav")
  sf.write(path, np.full(2400, 0.1, np.float32), 16000, subtype="PCM_16")
  raw = _read(path)
  _rewrite(path, raw[:24] + (1).to_bytes(4, "little") + raw[28:])
  waves, lengths = audio.load_waveforms([path], max_seconds=0.2, workers=1,
                                        summary=(summary := LoadSummary(name="audio")))
  assert lengths.tolist() == [0] and waves.shape == (1, 3200)
  assert summary.counts == {audio.REASON_UNREADABLE: 1}
  assert summary.examples[audio.REASON_UNREADABLE] == [
      f"{path} (its header gives a sample rate of 1 Hz (below 1000 Hz: a damaged header, not audio))"]
  # Another rate is still resampled, and only the part kept is read: the same samples as the whole
  # file resampled and then cut.
  long = str(tmp_path / "b.wav")
  sf.write(long, np.random.default_rng(0).uniform(-0.5, 0.5, 44100 * 3).astype(np.float32), 44100,
           subtype="PCM_16")
  np.testing.assert_array_equal(audio.read_wav(long, max_seconds=1.0), audio.read_wav(long)[:16000])


# ------------------------------------------------------------------ CEBS (WFDB headers and signal files)

CEBS_SECONDS = 3.6  # 3 windows of 1.2 s per record (music records hold twice as much)
CEBS_SUBJECTS = (1, 2)
CEBS_WINDOW = 6 * 1000
# Skip reasons that stand for one whole record each.
RECORD_REASONS = ("missing record", "signal file without its header (.hea missing)", "unreadable header",
                  "wrong sampling rate", "missing channel", "empty record", "signal file missing",
                  "truncated signal file", "unreadable signal file", "flat or all-NaN channel",
                  "record shorter than one window")
WINDOW_REASONS = ("window with NaN samples", cebs.HEADER_SHORT)


@pytest.fixture(scope="module")
def cebs_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("fuzz_cebs")
  return synthetic_cebs.write_cebs(str(out), subjects=len(CEBS_SUBJECTS), seconds=CEBS_SECONDS, seed=4)


def _load_cebs(root, **kw):
  return cebs.load_cebs(root, subjects=CEBS_SUBJECTS, seconds_per_state=CEBS_SECONDS, **kw)


def _plain_layout(root, name):
  """The record's header still describes the written layout (4 int16 signals in <name>.dat)."""
  try:
    h = wfdb.rdheader(os.path.join(root, name))
  except Exception:  # pylint: disable=broad-except
    return False
  return (h.n_sig == 4 and list(h.fmt) == ["16"] * 4 and set(h.file_name) == {name + ".dat"}
          and not any(h.byte_offset or []))


def _dat_mutation(draw, path):
  op = draw(st.sampled_from(("truncate", "flip", "append", "nan_sample", "delete")))
  raw = _read(path)
  if op == "truncate":
    _rewrite(path, raw[:draw(st.integers(0, len(raw) - 1))])
  elif op == "flip":
    for _ in range(draw(st.integers(1, 4))):
      k = draw(st.integers(0, len(raw) - 1))
      raw = raw[:k] + bytes([raw[k] ^ draw(st.integers(1, 255))]) + raw[k + 1:]
    _rewrite(path, raw)
  elif op == "append":
    _rewrite(path, raw + draw(st.binary(min_size=1, max_size=20000)))
  elif op == "nan_sample":  # -32768 is WFDB's missing-sample value in format 16
    frame = draw(st.integers(0, len(raw) // 8 - 1))
    k = 8 * frame + 2 * draw(st.integers(0, 3))
    _rewrite(path, raw[:k] + (-32768).to_bytes(2, "little", signed=True) + raw[k + 2:])
  else:
    os.remove(path)


@given(data=st.data())
def test_fuzz_cebs(cebs_dir, data):
  """WFDB headers and signal files damaged or deleted: every expected record is read or counted,
  and a record read gives every window its signal file holds, as a window or a counted skip."""
  with _linked_copy(cebs_dir, sorted(os.listdir(cebs_dir))) as root:
    files = sorted(f for f in os.listdir(root) if f.endswith((".hea", ".dat")))
    for name in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2, unique=True),
                          label="files"):
      path = os.path.join(root, name)
      if name.endswith(".dat"):
        _dat_mutation(data.draw, path)
      elif data.draw(st.booleans(), label=f"delete {name}"):
        os.remove(path)
      else:
        _rewrite(path, data.draw(byte_mutations(_read(path)), label=name))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      c = _load_cebs(root)
    s = c.summary
    expected = cebs.expected_records(CEBS_SUBJECTS)
    read = s.info["windows_per_record"]
    assert set(read) <= set(expected)
    assert len(read) + sum(s.counts[r] for r in RECORD_REASONS) == len(expected), dict(s.counts)
    assert set(s.counts) <= set(RECORD_REASONS + WINDOW_REASONS), dict(s.counts)
    assert len(c) == sum(read.values()) == s.read["windows"]
    for m in cebs.MODES:
      assert c.signals[m].shape == (len(c), 6, 1000) and np.isfinite(c.signals[m]).all()
    for name, n in read.items():
      assert (c.records == name).sum() == n
      assert (c.labels[c.records == name] == cebs.PREFIXES.index(name[0])).all()
    # The windows of the records read: each one read or counted (computed from the .dat sizes).
    if all(_plain_layout(root, name) for name in read):
      target = int(CEBS_SECONDS * cebs.FS)
      on_disk = sum(min(os.path.getsize(os.path.join(root, name + ".dat")) // 8, target) // CEBS_WINDOW
                    for name in read)
      assert len(c) + sum(s.counts[r] for r in WINDOW_REASONS) == on_disk, dict(s.counts)
    # Strict: one DataError naming a file under root exactly when something was skipped.
    if s.total_skipped:
      with pytest.raises(DataError) as e:
        _load_cebs(root, strict=True)
      _assert_names_file(e.value, root)
    else:
      _load_cebs(root, strict=True)


def test_regression_cebs_window_and_record_skips_name_their_files(cebs_dir, tmp_path):
  """A window skipped for a NaN sample (and a missing record, a flat channel) named only the
  record ('b001 window 0'): the strict error did not say which file or folder to look at."""
  root = str(tmp_path / "cebsdb")
  shutil.copytree(cebs_dir, root)
  dat = os.path.join(root, "b001.dat")
  raw = _read(dat)
  _rewrite(dat, raw[:8 * 6500 + 4] + (-32768).to_bytes(2, "little", signed=True) + raw[8 * 6500 + 6:])
  for ext in ("hea", "dat", "atr"):
    os.remove(os.path.join(root, f"p002.{ext}"))
  c = _load_cebs(root)
  assert c.summary.counts == {"window with NaN samples": 1, "missing record": 1}
  assert c.summary.examples["window with NaN samples"] == [f"b001 window 1 (samples 6000-11999 of {dat})"]
  assert c.summary.examples["missing record"] == [f"p002 (neither p002.hea nor p002.dat in {root})"]
  assert (c.records == "b001").sum() == 2 and len(c) == 5 * 3 - 1
  with pytest.raises(DataError, match=re.escape(f"b001 window 1 (samples 6000-11999 of {dat})")):
    _load_cebs(root, strict=True)


def test_regression_header_leaving_less_than_a_window_is_one_skipped_record(cebs_dir, tmp_path):
  """A header whose length field left less than one window counted the record twice: its hidden
  windows as lost and the record as shorter than one window (4 skips for 3 windows)."""
  root = str(tmp_path / "cebsdb")
  shutil.copytree(cebs_dir, root)
  hea = os.path.join(root, "m001.hea")
  text = _read(hea).decode()
  assert text.startswith("m001 4 5000 36000\n")
  _rewrite(hea, text.replace("m001 4 5000 36000", "m001 4 5000 5", 1).encode())
  c = _load_cebs(root)
  assert c.summary.counts == {"record shorter than one window": 1}
  assert c.summary.examples["record shorter than one window"] == [
      f"m001 ({hea}: 5 samples, its signal file holds 36000; one window is 6000 samples)"]
  assert len(c) == 5 * 3 and "m001" not in c.records


# ------------------------------------------------------------------ manifests (CSV / TSV / JSONL)

MANIFEST_CLASSES = ("ang", "hap", "neu", "sad")
MANIFEST_ROWS = [  # (audio, text, label, group): quoting, Unicode, an empty transcript, a tab
    ("clips/a000.wav", "Excuse me.", "neu", "spk01"),
    ("clips/a001.wav", 'He said "no", then left.', "ang", "spk01"),
    ("clips/a002.wav", "naïve café — déjà vu", "hap", "spk02"),
    ("clips/a003.wav", "", "sad", "spk02"),
    ("/data/abs/a004.wav", "one, two, three", "neu", "spk03"),
    ("clips/a005.wav", "a\ttab", "hap", "spk03"),
    ("clips/sub dir/a006.wav", "[LAUGHTER] fine", "sad", "spk01"),
    ("clips/a007.wav", "Ünïcödé ✓ 中文", "ang", "spk02"),
]


def _manifest_bytes(fmt: str) -> bytes:
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  if fmt == "jsonl":
    return "".join(json.dumps(dict(zip(manifest_lib.COLUMNS, r)), ensure_ascii=False) + "\n"
                   for r in MANIFEST_ROWS).encode()
  buf = io.StringIO()
  w = csv.writer(buf, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
  w.writerow(manifest_lib.COLUMNS)
  w.writerows(MANIFEST_ROWS)
  return buf.getvalue().encode()


def _numbered_lines(raw: bytes) -> dict:
  """``{line number: text}`` of a manifest as its format defines lines: LF-separated, UTF-8 (a BOM
  ignored) or UTF-16 with its BOM; a CR before the LF dropped."""
  if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    lines = raw.decode("utf-16", "replace").split("\n")
  else:
    if raw.startswith(codecs.BOM_UTF8):
      raw = raw[len(codecs.BOM_UTF8):]
    lines = [b.decode("utf-8", "replace") for b in raw.split(b"\n")]
  return {i: ln[:-1] if ln.endswith("\r") else ln for i, ln in enumerate(lines, 1)}


def _manifest_lines(raw: bytes) -> list:
  """The non-blank lines of a manifest (:func:`_numbered_lines`), in order."""
  return [ln for ln in _numbered_lines(raw).values() if ln.strip()]


@st.composite
def manifest_mutations(draw, raw: bytes, fmt: str):
  """Row-level edits a person or a tool makes to a manifest, then byte-level damage."""
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  lines = raw.decode().split("\n")
  ops = []
  for _ in range(draw(st.integers(0, 2))):
    i = draw(st.integers(0 if fmt == "jsonl" else 1, len(lines) - 2))
    op = draw(st.sampled_from(("empty_field", "drop_field", "extra_field", "duplicate_row",
                               "stray_quote", "blank_line", "reorder_header")))
    if not lines[i].strip():
      op = "blank_line"  # a blank line inserted before: add another
    elif fmt == "jsonl":
      import json  # pylint: disable=g-import-not-at-top
      obj = json.loads(lines[i])
      key = draw(st.sampled_from(manifest_lib.COLUMNS))
      if op == "empty_field":
        obj[key] = draw(st.sampled_from(("", " ", None, 0, [], {})))
      elif op == "drop_field":
        obj.pop(key, None)
      elif op == "extra_field":
        obj["extra"] = "x"
      lines[i] = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    else:
      delim = "\t" if fmt == "tsv" else ","
      fields = next(csv.reader([lines[i]], delimiter=delim))
      k = draw(st.integers(0, len(fields) - 1))
      if op == "empty_field":
        fields[k] = draw(st.sampled_from(("", " ", '""')))
      elif op == "drop_field":
        del fields[k]
      elif op == "extra_field":
        fields.insert(k, draw(st.sampled_from(("x", "", " extra"))))
      elif op == "reorder_header":
        i = 0
        fields = next(csv.reader([lines[0]], delimiter=delim))
        fields = draw(st.permutations(fields))
      if op in ("empty_field", "drop_field", "extra_field", "reorder_header"):
        buf = io.StringIO()
        csv.writer(buf, delimiter=delim, lineterminator="").writerow(fields)
        lines[i] = buf.getvalue()
      elif op == "stray_quote":
        k = draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:k] + '"' + lines[i][k:]
    if op == "duplicate_row":
      lines.insert(draw(st.integers(1, len(lines) - 1)), lines[i])
    elif op == "blank_line":
      lines.insert(i, draw(st.sampled_from(("", " ", "\r", "\t"))))
    ops.append(f"{op} at line {i + 1}")
  data = "\n".join(lines).encode()
  if draw(st.booleans()):
    data = draw(byte_mutations(data, max_ops=2))
    ops.append(data.how)
  out = Mutated(data)
  out.how = "; ".join(ops) or "unchanged"
  return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@given(data=st.data())
def test_fuzz_manifest(fmt, data):
  """A damaged manifest: every data line is a row read or a row skipped and counted, a row read has
  the header's number of fields, and a refusal is one DataError naming the file."""
  raw = _manifest_bytes(fmt)
  mutated = data.draw(manifest_mutations(raw, fmt), label="manifest")
  with tempfile.TemporaryDirectory(prefix="mbaf_fuzz_") as tmp:
    path = os.path.join(tmp, "m." + fmt)
    with open(path, "wb") as f:
      f.write(mutated)
    summary = LoadSummary(name="manifest")
    try:
      m = manifest_lib.load_manifest(path, class_names=MANIFEST_CLASSES, summary=summary)
    except DataError as e:
      assert path in str(e), str(e)
      lines = _manifest_lines(bytes(mutated))
      if fmt != "jsonl" and lines and lines[0] == _manifest_lines(raw)[0]:
        assert re.search(r"line \d+", str(e)), f"the header is intact, the error names no line: {e}"
      return
    lines = _manifest_lines(bytes(mutated))
    data_lines = lines if fmt == "jsonl" else lines[1:]
    assert len(m.paths) + summary.total_skipped == len(data_lines), (len(m.paths), dict(summary.counts))
    assert set(m.labels.tolist()) <= set(range(len(MANIFEST_CLASSES)))
    assert len(m.paths) == len(m.texts) == len(m.labels) == len(m.groups)
    # Every row read: its line has exactly the header's fields (no shifted column was read).
    rows = manifest_lib.read_manifest(path, manifest_lib.COLUMNS, may_be_empty=("text",),
                                      path_columns=("audio",))
    # train.predict reads a training manifest as it is: one row per data line, bad ones named.
    from train import predict  # pylint: disable=g-import-not-at-top
    try:
      inputs = predict.read_manifest_rows(path)
    except predict.PredictError as e:
      assert path in str(e) and not data_lines, str(e)
    else:
      assert [r.line for r in inputs] == [r.line for r in rows] and len(inputs) == len(data_lines)
      for r, t in zip(inputs, rows):  # a row training can use, predict can: the same file and text
        assert r.path if not r.problem else r.problem
        if not t.problem:
          assert (r.path, r.text, r.problem) == (t.values["audio"], t.values["text"], "")
    if fmt != "jsonl":
      import csv  # pylint: disable=g-import-not-at-top
      delim = "\t" if fmt == "tsv" else ","
      by_number = _numbered_lines(bytes(mutated))
      width = len(next(csv.reader([lines[0]], delimiter=delim)))
      for r in rows:
        if not r.problem:
          fields = next(csv.reader([by_number[r.line]], delimiter=delim))
          assert len(fields) == width or not any(f.strip() for f in fields[width:]), (r, fields)


def _manifest_file(tmp_path, name, data: bytes):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


_HEADER = b"audio,text,label,group\n"


def test_regression_manifest_open_quote_does_not_swallow_the_rows_after_it(tmp_path):
  """A quote left open made the CSV reader run on to the end of the file: the rows after it
  became part of one bad row's text and were lost without a count."""
  path = _manifest_file(tmp_path, "m.csv", _HEADER + b'a.wav,"oops,ang,s1\nb.wav,fine,neu,s1\n'
                        b'c.wav,ok,sad,s2\n')
  s = LoadSummary(name="manifest")
  m = manifest_lib.load_manifest(path, class_names=MANIFEST_CLASSES, summary=s)
  assert [os.path.basename(p) for p in m.paths] == ["b.wav", "c.wav"]
  assert s.counts == {manifest_lib.REASON_BAD_ROW: 1}
  assert s.examples[manifest_lib.REASON_BAD_ROW][0].startswith(f"{path}:2 (the line is not one CSV row (")


def test_regression_manifest_unquoted_comma_is_a_bad_row_not_shifted_columns(tmp_path):
  """An unquoted comma in a transcript shifted the row's label and group by one column, and the
  row was read (label 'world', group 'ang') without a word."""
  path = _manifest_file(tmp_path, "m.csv", _HEADER + b"a.wav,hello, world,ang,s1\nb.wav,fine,neu,s1\n"
                        b"c.wav,trailing delimiter,sad,s2,\n")
  s = LoadSummary(name="manifest")
  m = manifest_lib.load_manifest(path, summary=s)
  assert [os.path.basename(p) for p in m.paths] == ["b.wav", "c.wav"] and m.class_names == ("neu", "sad")
  assert s.counts == {manifest_lib.REASON_BAD_ROW: 1}
  assert s.examples[manifest_lib.REASON_BAD_ROW] == [
      f"{path}:2 (5 fields for the 4 columns of line 1 (a comma inside an unquoted value?))"]


def test_regression_manifest_bad_byte_costs_its_row_and_line_numbers_count_blank_lines(tmp_path):
  """A byte that is not UTF-8 refused the whole manifest (a UserError without a line), and blank
  lines were not counted in the line numbers a CSV row was named by."""
  path = _manifest_file(tmp_path, "m.csv", _HEADER + b"\na.wav,caf\xe9,ang,s1\n\nb.wav,fine,neu,s1\n"
                        b",no audio,sad,s2\n")
  s = LoadSummary(name="manifest")
  m = manifest_lib.load_manifest(path, class_names=MANIFEST_CLASSES, summary=s)
  assert [os.path.basename(p) for p in m.paths] == ["b.wav"]
  assert s.counts == {manifest_lib.REASON_NOT_UTF8: 1, manifest_lib.REASON_MISSING_FIELD: 1}
  assert s.examples[manifest_lib.REASON_NOT_UTF8] == [f"{path}:3 (the line is not UTF-8 text)"]
  assert s.examples[manifest_lib.REASON_MISSING_FIELD] == [f"{path}:6 (empty 'audio' column)"]
  with pytest.raises(DataError, match=re.escape(f"{path}:3 (the line is not UTF-8 text)")):
    manifest_lib.load_manifest(path, summary=LoadSummary(name="manifest", strict=True))


def test_regression_manifest_encodings_and_refusals(tmp_path):
  """Excel's "Unicode text" (UTF-16 with a BOM, tab-separated) was refused as not UTF-8; a
  refusal was a UserError, not the DataError every other loader raises."""
  rows = "audio\ttext\tlabel\tgroup\r\na.wav\tnaïve\tang\ts1\r\nb.wav\t中文\tneu\ts2\r\n"
  path = _manifest_file(tmp_path, "m.tsv", codecs.BOM_UTF16_LE + rows.encode("utf-16-le"))
  m = manifest_lib.load_manifest(path)
  assert m.texts == ["naïve", "中文"] and m.class_names == ("ang", "neu")
  empty = _manifest_file(tmp_path, "e.csv", b"")
  with pytest.raises(DataError, match=re.escape(f"manifest {empty!r} has no column(s)")):
    manifest_lib.load_manifest(empty)
  twice = _manifest_file(tmp_path, "t.jsonl", b'{"audio": "a.wav", "text": "", "label": "ang", '
                         b'"group": "s1"}\n{"audio": "a.wav", "text": "", "label": "neu", "group": "s1"}\n')
  with pytest.raises(DataError, match="line 2 repeats the audio of line 1 with another label"):
    manifest_lib.load_manifest(twice)


# ------------------------------------------------------------------ predict's inputs (train.predict)

# Transcript texts: any characters but LF (the line break) and surrogates, control characters and
# other Unicode line breaks included; sometimes very long, sometimes empty.
_TEXTS = st.one_of(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=30),
                   st.just(""), st.builds(lambda w, n: (w + " ") * n, st.sampled_from(("word", "é", "中")),
                                          st.integers(1000, 5000)))


@st.composite
def transcript_files(draw, names):
  """``(bytes, {line number: (name, text)})`` of a --transcripts file naming ``names`` (and some
  names that are no file), with blank lines, tabs and odd separators."""
  lines, expected = [], {}
  for _ in range(draw(st.integers(1, 6))):
    if draw(st.integers(0, 5)) == 0:
      lines.append(draw(st.sampled_from(("", " ", "\t", "\r"))))
      continue
    name = draw(st.sampled_from(names + ["absent", "absent.wav"]))
    sep = draw(st.sampled_from((" ", "\t", "  ", " \t ", "\u3000")))
    text = draw(_TEXTS)
    lines.append(name + sep + text + draw(st.sampled_from(("", "\r"))))
    expected[len(lines)] = (name, text.strip())
  return ("\n".join(lines) + "\n").encode(), expected


@pytest.fixture(scope="module")
def predict_wavs(iemo):
  """Three sentence wavs of the synthetic corpus (file names)."""
  src, manifest = iemo
  u = [x for x in manifest["utterances"] if x["session"] == 1][:3]
  return [os.path.join(src, "Session1", "sentences", "wav", x["dialog"], x["id"] + ".wav") for x in u]


@given(data=st.data())
def test_fuzz_predict_wav_dir_and_transcripts(predict_wavs, data):
  """--wav_dir + --transcripts with odd texts and damaged files: every non-blank line is a row,
  a good row is the file and text its line names and is decoded and written to the output CSV
  as it is, a bad row is named by its line with the reason."""
  from train import predict  # pylint: disable=g-import-not-at-top
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="mbaf_fuzz_") as tmp:
    wav_dir = os.path.join(tmp, "wavs")
    os.makedirs(wav_dir)
    for i, w in enumerate(predict_wavs):
      shutil.copyfile(w, os.path.join(wav_dir, f"u{i}.wav"))
    names = sorted(os.listdir(wav_dir)) + ["u0", "u1"]
    if data.draw(st.booleans(), label="damage a wav"):
      _wav_mutation(data.draw, tmp, os.path.join(wav_dir, data.draw(st.sampled_from(sorted(os.listdir(wav_dir))))),
                    folders=[wav_dir])
    raw, expected = data.draw(transcript_files(names), label="transcripts")
    damaged = data.draw(st.booleans(), label="damage the transcripts")
    if damaged:
      raw = bytes(data.draw(byte_mutations(raw, max_ops=2), label="bytes"))
    tpath = os.path.join(tmp, "t.txt")
    with open(tpath, "wb") as f:
      f.write(raw)
    try:
      rows = predict.read_wav_dir_rows(wav_dir, tpath)
    except predict.PredictError as e:
      assert tpath in str(e), str(e)
      assert not _manifest_lines(raw), f"{e} for a file with lines"
      return
    assert len(rows) == len(_manifest_lines(raw))
    for r in rows:
      if not damaged:
        name, text = expected[r.line]
        assert r.text == text
        assert os.path.basename(r.path) in (name, name + ".wav") if name.startswith("u") else r.problem
    good, waves, bad = predict._decode_rows(rows, 16000, False, "--transcripts")  # pylint: disable=protected-access
    assert len(good) + len(bad) == len(rows) and all(r.problem for r in bad)
    assert all(w.ndim == 1 and w.size > 0 and np.isfinite(w).all() for w in waves)
    probs = np.full((len(good), 4), 0.25)
    written = list(csv.reader(io.StringIO(predict.format_csv([r.path for r in good], [r.text for r in good],
                                                             probs, MANIFEST_CLASSES), newline="")))
    assert written[0][:3] == ["wav", "text", "pred"]
    assert [(w[0], w[1]) for w in written[1:]] == [(r.path, r.text) for r in good]
    if bad:
      with pytest.raises(predict.PredictError, match=rf"line {bad[0].line}: "):
        predict._decode_rows(rows, 16000, True, "--transcripts")  # pylint: disable=protected-access


def test_regression_transcripts_tab_separator_bad_byte_and_lone_cr(predict_wavs, tmp_path):
  """--transcripts: a tab after the file name lost the transcript's first word ('u0.wav<TAB>hello
  world' read as 'world'); a byte that is not UTF-8 refused the whole file; a lone CR inside a
  transcript split its line in two (a bad row 'names ...' and shifted line numbers)."""
  from train import predict  # pylint: disable=g-import-not-at-top
  wav_dir = tmp_path / "wavs"
  wav_dir.mkdir()
  shutil.copyfile(predict_wavs[0], wav_dir / "u0.wav")
  t = tmp_path / "t.txt"
  t.write_bytes(b"u0.wav\thello world\nu0 caf\xe9\nu0 one\rtwo\nu0\n")
  rows = predict.read_wav_dir_rows(str(wav_dir), str(t))
  wav = str(wav_dir / "u0.wav")
  assert rows == [predict.InputRow(1, wav, "hello world", ""),
                  predict.InputRow(2, "", "", "the line is not UTF-8 text"),
                  predict.InputRow(3, wav, "one\rtwo", ""), predict.InputRow(4, wav, "", "")]
  good, _, bad = predict._decode_rows(rows, 16000, False, "t")  # pylint: disable=protected-access
  assert [r.line for r in good] == [1, 3, 4] and [r.line for r in bad] == [2]
