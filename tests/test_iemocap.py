"""IEMOCAP loader: parsing, speakers, every bad-input case, strict mode, the published-count check."""
import os
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf

from mbaf_jax.data import iemocap
from mbaf_jax.data import synthetic
from mbaf_jax.data.report import DataError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """A tiny synthetic corpus (16 4-class turns per session, 0.3 s clips), written once."""
  out = tmp_path_factory.mktemp("iemocap_src")
  root, manifest = synthetic.write_iemocap(out, size="tiny", seed=3, seconds=(0.3, 0.3),
                                           return_manifest=True)
  return root, manifest


@pytest.fixture
def root(corpus_dir, tmp_path):
  """A private copy that a test may damage."""
  dst = tmp_path / "IEMOCAP_full_release"
  shutil.copytree(corpus_dir[0], dst)
  return str(dst)


def _first_labelled(manifest, session=1):
  return next(u for u in manifest["utterances"] if u["label"] is not None and u["session"] == session)


def _emo_path(root, u):
  return os.path.join(root, f"Session{u['session']}", "dialog", "EmoEvaluation", u["dialog"] + ".txt")


def _tr_path(root, u):
  return os.path.join(root, f"Session{u['session']}", "dialog", "transcriptions", u["dialog"] + ".txt")


def _wav_path(root, u):
  return os.path.join(root, f"Session{u['session']}", "sentences", "wav", u["dialog"], u["id"] + ".wav")


def _edit(path, fn):
  with open(path) as f:
    lines = f.read().split("\n")
  with open(path, "w") as f:
    f.write("\n".join(fn(lines)))


def test_speaker_and_dialog_from_ids():
  assert iemocap.speaker_of("Ses01F_impro01_M000") == "Ses01M"
  assert iemocap.speaker_of("Ses05M_script01_1b_F003") == "Ses05F"
  assert iemocap.dialog_of("Ses05M_script01_1b_F003") == "Ses05M_script01_1b"
  assert iemocap.dialog_of("Ses03M_impro05a_M012") == "Ses03M_impro05a"
  assert iemocap.strip_nonspeech("[LAUGHTER] Oh, really? [garbage]") == "Oh, really?"


def test_parses_hand_written_files(tmp_path):
  """Real line formats written out by hand, independent of the synthetic writer."""
  s = tmp_path / "IEMOCAP_full_release" / "Session1"
  (s / "dialog" / "EmoEvaluation" / "Categorical").mkdir(parents=True)
  (s / "dialog" / "transcriptions").mkdir(parents=True)
  wav_dir = s / "sentences" / "wav" / "Ses01F_impro01"
  wav_dir.mkdir(parents=True)
  (s / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").write_text(
      "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
      "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
      "C-E2:\tNeutral;\t()\nC-E3:\tFrustration; Anger;\t()\n"
      "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 2; dom  ;\t()\n\n"
      "[10.0100 - 11.3925]\tSes01F_impro01_M000\texc\t[3.5000, 3.0000, 2.5000]\n\n"
      "[12.0000 - 13.5000]\tSes01F_impro01_M001\tfru\t[2.0000, 3.5000, 3.0000]\n\n"
      "[14.0000 - 15.5000]\tSes01F_impro01_F001\txxx\t[2.0000, 3.5000, 3.0000]\n")
  (s / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07junk")
  (s / "dialog" / "EmoEvaluation" / "Categorical" / "Ses01F_impro01_e1_cat.txt").write_text("x :Anger; ()\n")
  (s / "dialog" / "transcriptions" / "Ses01F_impro01.txt").write_text(
      "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
      "M: sorry\n"
      "Ses01F_impro01_MXX0 [009.0000-009.5000]: Hmm.\n"
      "Ses01F_impro01_M000 [010.0100-011.3925]: Do you have your forms? [LAUGHTER]\n")
  for uid in ("Ses01F_impro01_F000", "Ses01F_impro01_M000"):
    sf.write(wav_dir / f"{uid}.wav", np.zeros(160, np.int16), 16000, subtype="PCM_16")
  c = iemocap.load_iemocap(tmp_path / "IEMOCAP_full_release", verbose=False)
  assert [(u.id, u.label_name, u.label, u.speaker, u.session) for u in c.utterances] == [
      ("Ses01F_impro01_F000", "neu", 2, "Ses01F", 1), ("Ses01F_impro01_M000", "hap", 1, "Ses01M", 1)]
  assert c.utterances[1].text == "Do you have your forms? [LAUGHTER]"
  assert (c.utterances[0].start, c.utterances[0].end) == (6.2901, 8.2357)
  assert c.utterances[0].wav_path == str(wav_dir / "Ses01F_impro01_F000.wav")
  assert dict(c.excluded) == {"fru": 1, "xxx": 1}
  assert c.summary.total_skipped == 0
  assert c.summary.info["transcript noise lines"] == 1 and c.summary.info["transcript XX ids"] == 1
  clean = iemocap.load_iemocap(tmp_path / "IEMOCAP_full_release", verbose=False, remove_nonspeech=True)
  assert clean.utterances[1].text == "Do you have your forms?"


def test_counts_printed_and_no_warning_for_small_corpus(corpus_dir, capsys):
  root, manifest = corpus_dir
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    c = iemocap.load_iemocap(root)
  out = capsys.readouterr().out
  assert "class_counts: {'ang': 20, 'hap': 20, 'neu': 20, 'sad': 20}" in out
  assert "1: (16, 4, 4, 4, 4)" in out
  assert "not compared with the published counts" in out
  assert c.summary.info["class_counts"] == manifest["class_counts"]


def test_published_count_check_warns_on_full_size_mismatch(corpus_dir, monkeypatch):
  root, _ = corpus_dir
  monkeypatch.setattr(iemocap, "FULL_SIZE_MIN_LABELLED", 1)
  with pytest.warns(UserWarning, match=r"class ang: 20 \(published 1103\)"):
    iemocap.load_iemocap(root, verbose=False)
  # Counts equal to the published ones: no warning.
  monkeypatch.setattr(iemocap, "PUBLISHED_CLASS_COUNTS", {k: 20 for k in iemocap.CLASSES})
  monkeypatch.setattr(iemocap, "PUBLISHED_SESSION_COUNTS", {s: (16, 4, 4, 4, 4) for s in range(1, 6)})
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.info["published_check"] == "matches the published counts"
  compared, diffs = iemocap.compare_with_published({}, {}, [1, 2, 3, 4], 10**5)
  assert not compared and "not all 5 sessions" in diffs[0]


def test_sessions_argument(corpus_dir):
  root, _ = corpus_dir
  c = iemocap.load_iemocap(root, sessions=[2, 4], verbose=False)
  assert {u.session for u in c.utterances} == {2, 4} and len(c.utterances) == 32
  with pytest.raises(ValueError, match="1..5"):
    iemocap.load_iemocap(root, sessions=[6], verbose=False)


def test_missing_session_requested(root):
  shutil.rmtree(os.path.join(root, "Session4"))
  with pytest.raises(DataError, match="Session4 requested but not found"):
    iemocap.load_iemocap(root, sessions=[4], verbose=False)
  assert {u.session for u in iemocap.load_iemocap(root, verbose=False).utterances} == {1, 2, 3, 5}


def test_root_missing(tmp_path):
  with pytest.raises(DataError, match="does not exist") as e:
    iemocap.load_iemocap(tmp_path / "nope")
  assert "IEMOCAP_full_release" in str(e.value)


def test_not_iemocap_directory(tmp_path):
  (tmp_path / "stuff").mkdir()
  (tmp_path / "README.txt").write_text("hello")
  with pytest.raises(DataError, match="is not an IEMOCAP release") as e:
    iemocap.load_iemocap(tmp_path)
  assert "Session" in str(e.value) and "EmoEvaluation" in str(e.value)


def test_parent_of_root_gets_a_hint(corpus_dir):
  with pytest.raises(DataError, match="did you mean"):
    iemocap.load_iemocap(os.path.dirname(corpus_dir[0]))


def test_missing_dialog_dirs(root, corpus_dir):
  """A session folder without dialog/transcriptions or sentences/wav is reported, its turns counted."""
  shutil.rmtree(os.path.join(root, "Session2", "dialog", "transcriptions"))
  shutil.rmtree(os.path.join(root, "Session3", "sentences", "wav"))
  with pytest.warns(UserWarning, match="Session2, Session3"):
    c = iemocap.load_iemocap(root, verbose=False)
  n = {s: sum(1 for u in corpus_dir[1]["utterances"] if u["session"] == s and u["label"] is not None)
       for s in (2, 3)}
  assert c.summary.counts == {"session folder without dialog/transcriptions": 1,
                              "session folder without sentences/wav": 1,
                              "missing transcript line": n[2], "missing wav": n[3]}
  assert {u.session for u in c.utterances} == {1, 4, 5}
  with pytest.raises(DataError, match="transcriptions"):
    iemocap.load_iemocap(root, strict=True, verbose=False)


def test_missing_transcript_line(root, corpus_dir):
  u = _first_labelled(corpus_dir[1])
  _edit(_tr_path(root, u), lambda lines: [l for l in lines if not l.startswith(u["id"] + " ")])
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts == {"missing transcript line": 1}
  assert u["id"] in c.summary.examples["missing transcript line"][0]
  assert u["id"] not in {x.id for x in c.utterances} and len(c.utterances) == 79
  with pytest.raises(DataError, match=f"missing transcript line.*{u['id']}"):
    iemocap.load_iemocap(root, strict=True, verbose=False)


def test_missing_transcription_file(root, corpus_dir):
  u = _first_labelled(corpus_dir[1])
  os.remove(_tr_path(root, u))
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts["missing transcription file"] == 1
  n_dialog = sum(1 for x in corpus_dir[1]["utterances"] if x["dialog"] == u["dialog"] and x["label"] is not None)
  assert c.summary.counts["missing transcript line"] == n_dialog


def test_missing_wav(root, corpus_dir):
  u = _first_labelled(corpus_dir[1], session=3)
  os.remove(_wav_path(root, u))
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts == {"missing wav": 1}
  assert _wav_path(root, u) in c.summary.examples["missing wav"][0]
  with pytest.raises(DataError, match="missing wav"):
    iemocap.load_iemocap(root, strict=True, verbose=False)
  assert len(iemocap.load_iemocap(root, check_wav=False, verbose=False).utterances) == 80


def test_malformed_emo_evaluation_line(root, corpus_dir):
  u = _first_labelled(corpus_dir[1], session=2)
  # Spaces instead of the TAB separators, as a hand-edited file might have.
  _edit(_emo_path(root, u), lambda lines: [l.replace("\t", " ") if u["id"] in l else l for l in lines])
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts == {"malformed EmoEvaluation line": 1}
  example = c.summary.examples["malformed EmoEvaluation line"][0]
  assert _emo_path(root, u) in example and u["id"] in example
  with pytest.raises(DataError, match="malformed EmoEvaluation line"):
    iemocap.load_iemocap(root, strict=True, verbose=False)


def test_unknown_label(root, corpus_dir):
  u = _first_labelled(corpus_dir[1], session=5)
  _edit(_emo_path(root, u), lambda lines: [l.replace(f"\t{u['raw_label']}\t", "\tjoy\t") if u["id"] in l else l
                                           for l in lines])
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts == {"unknown label": 1}
  assert "'joy'" in c.summary.examples["unknown label"][0]
  with pytest.raises(DataError, match="unknown label"):
    iemocap.load_iemocap(root, strict=True, verbose=False)


def test_malformed_utterance_id_and_duplicate(root, corpus_dir):
  u = _first_labelled(corpus_dir[1], session=4)
  path = _emo_path(root, u)
  with open(path) as f:
    line = next(l for l in f if u["id"] in l and l.startswith("["))
  with open(path, "a") as f:
    f.write(line)  # the same turn twice
    f.write(line.replace(u["id"], "Ses01F_impro01_F999"))  # a Session1 id inside Session4
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts == {"duplicate utterance id": 1, "malformed utterance id": 1}


def test_bad_audio_is_counted_and_dropped(root, corpus_dir):
  labelled = [u for u in corpus_dir[1]["utterances"] if u["label"] is not None]
  empty, nan, garbage, stereo8k = labelled[0], labelled[1], labelled[2], labelled[3]
  sf.write(_wav_path(root, empty), np.zeros(0, np.int16), 16000, subtype="PCM_16")
  bad = np.full(400, 0.1, np.float32)
  bad[7] = np.inf
  sf.write(_wav_path(root, nan), bad, 16000, subtype="FLOAT")
  with open(_wav_path(root, garbage), "wb") as f:
    f.write(b"not a wav")
  sf.write(_wav_path(root, stereo8k), np.full((2400, 2), 0.25, np.float32), 8000, subtype="PCM_16")
  c = iemocap.load_iemocap(root, verbose=False)
  kept, waves, lengths = iemocap.load_corpus_audio(c, max_seconds=0.3, workers=2)
  assert c.summary.counts == {"empty wav": 1, "non-finite (NaN/inf) samples": 1, "unreadable wav": 1}
  assert len(kept.utterances) == 77 and waves.shape == (77, 4800)
  dropped = {empty["id"], nan["id"], garbage["id"]}
  assert dropped.isdisjoint(u.id for u in kept.utterances)
  i = [u.id for u in kept.utterances].index(stereo8k["id"])
  assert abs(lengths[i] - 4800) <= 1 and abs(float(np.median(waves[i, 100:4000])) - 0.25) < 0.01
  strict = iemocap.load_iemocap(root, strict=True, verbose=False)
  with pytest.raises(DataError, match="strict"):
    iemocap.load_corpus_audio(strict, max_seconds=0.3)


def test_strict_ignores_expected_quirks(corpus_dir):
  """Noise lines, XX ids, dotfiles, subfolders and non-4-class labels are not errors."""
  c = iemocap.load_iemocap(corpus_dir[0], strict=True, verbose=False)
  assert len(c.utterances) == 80 and sum(c.excluded.values()) == 15


def test_undecodable_text_file_and_crlf(root, corpus_dir):
  u = _first_labelled(corpus_dir[1], session=2)
  with open(_emo_path(root, u), "rb") as f:
    raw = f.read()
  with open(_emo_path(root, u), "wb") as f:
    f.write(raw.replace(b"\n", b"\r\n"))  # CRLF line ends are fine
  assert iemocap.load_iemocap(root, verbose=False).summary.total_skipped == 0
  with open(_emo_path(root, u), "wb") as f:
    f.write(b"\xff\xfe\x00binary junk\x80\x81")
  c = iemocap.load_iemocap(root, verbose=False)
  # Its one line is not UTF-8: a malformed line. The dialog's turns lose their labels: its wavs
  # and transcript lines are counted as unmatched.
  n_dialog = sum(1 for x in corpus_dir[1]["utterances"] if x["dialog"] == u["dialog"])
  assert c.summary.counts == {"malformed EmoEvaluation line": 1, "wav without label": n_dialog,
                              "transcript line without label": n_dialog}
  assert c.summary.examples["malformed EmoEvaluation line"][0].startswith(_emo_path(root, u) + ":1: ")
  assert "not UTF-8" in c.summary.examples["malformed EmoEvaluation line"][0]
  with pytest.raises(ValueError, match="sessions"):
    iemocap.load_iemocap(root, sessions="one", verbose=False)
