"""Loader reports (LoadSummary.format) and the atomic synthetic writers: nothing is dropped without a word."""
import glob
import json
import os
import shutil
import warnings

import pytest

from mbaf_jax.data import iemocap
from mbaf_jax.data import synthetic
from mbaf_jax.data import synthetic_cebs
from mbaf_jax.data.report import DataError, LoadSummary

TINY = {"size": "tiny", "seed": 3, "seconds": (0.2, 0.2)}  # 16 4-class turns per session, 0.2 s clips


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("reports")
  return synthetic.write_iemocap(out, return_manifest=True, **TINY)


@pytest.fixture
def root(corpus_dir, tmp_path):
  """A private copy that a test may damage."""
  dst = tmp_path / "IEMOCAP_full_release"
  shutil.copytree(corpus_dir[0], dst)
  return str(dst)


def _emo_files(root, session):
  return sorted(glob.glob(os.path.join(root, f"Session{session}", "dialog", "EmoEvaluation", "Ses*.txt")))


def test_format_reports_counts_read_per_session_and_class(corpus_dir):
  c = iemocap.load_iemocap(corpus_dir[0], verbose=False)
  lines = c.summary.format().split("\n")
  assert lines == [
      "iemocap: read 80 utterances (4-class), 5 sessions, 15 other labels excluded",
      "  per session  Session1 16  Session2 16  Session3 16  Session4 16  Session5 16",
      "  per class    ang 20  hap 20  neu 20  sad 20",
      "  skipped 0 item(s)",
  ]
  assert not c.summary.warnings
  # The details (every info entry) only when asked.
  assert "speaker_counts" in c.summary.format(details=True)
  assert c.summary.to_dict()["read"]["utterances (4-class)"] == 80


def test_deleted_emo_evaluation_shows_as_wavs_without_label(root, corpus_dir):
  path = _emo_files(root, 1)[0]
  dialog = os.path.splitext(os.path.basename(path))[0]
  os.remove(path)
  in_dialog = [u for u in corpus_dir[1]["utterances"] if u["dialog"] == dialog]
  n_4class = sum(u["label"] is not None for u in in_dialog)
  c = iemocap.load_iemocap(root, verbose=False)
  assert len(c.utterances) == 80 - n_4class
  assert c.summary.counts == {"wav without label": len(in_dialog),
                              "transcript line without label": len(in_dialog)}
  report = c.summary.format()
  assert f"  {len(in_dialog):6d}  wav without label  (e.g. " in report
  assert f"Session1 {16 - n_4class}" in report and f"read {80 - n_4class} utterances" in report
  with pytest.raises(DataError, match="transcript line without label|wav without label"):
    iemocap.load_iemocap(root, strict=True, verbose=False)


def test_missing_session_warns_for_loso_and_strict_raises(root):
  shutil.rmtree(os.path.join(root, "Session5"))
  with pytest.warns(UserWarning, match=r"Session5 .*LOSO.* needs Session1-5"):
    c = iemocap.load_iemocap(root, verbose=False)
  assert len(c.utterances) == 64 and c.summary.total_skipped == 0
  assert "warning: Session5 missing" in c.summary.format()
  with pytest.raises(DataError, match=r"Session5 .*needs Session1-5"):
    iemocap.load_iemocap(root, strict=True, verbose=False)
  # A subset chosen with sessions= is noted in the report, without a warning or a strict error.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    c = iemocap.load_iemocap(root, sessions=[1, 2], strict=True, verbose=False)
  assert "Session3, Session4, Session5 not requested" in c.summary.warnings[0]


def test_transcription_without_emo_evaluation_and_wav_without_folder(root):
  s2 = os.path.join(root, "Session2")
  shutil.copy(os.path.join(s2, "dialog", "transcriptions", os.path.basename(_emo_files(root, 2)[0])),
              os.path.join(s2, "dialog", "transcriptions", "Ses02F_impro99.txt"))
  with open(os.path.join(s2, "dialog", "transcriptions", "Ses02F_impro99.txt"), "a") as f:
    f.write("Ses02F_impro99_F000 [001.0000-002.0000]: A line no label names.\n")
  extra = os.path.join(s2, "sentences", "wav", "Ses02F_impro99")
  os.makedirs(extra)
  shutil.copy(glob.glob(os.path.join(s2, "sentences", "wav", "*", "Ses*.wav"))[0],
              os.path.join(extra, "Ses02F_impro99_F000.wav"))
  c = iemocap.load_iemocap(root, verbose=False)
  assert c.summary.counts == {"transcript line without label": 1, "wav without label": 1}
  assert "Ses02F_impro99_F000" in c.summary.examples["transcript line without label"][0]
  assert c.summary.examples["wav without label"] == [os.path.join(extra, "Ses02F_impro99_F000.wav")]
  assert len(c.utterances) == 80


def test_format_of_a_summary_without_counts_read():
  s = LoadSummary(name="audio")
  s.skip("unreadable wav", "a.wav")
  s.skip("windows lost", "b", n=3)
  s.info["rows"] = 7
  assert s.format().split("\n") == ["audio: skipped 4 item(s)", "       3  windows lost  (e.g. b)",
                                    "       1  unreadable wav  (e.g. a.wav)", "  rows: 7"]


# ------------------------------------------------------------------ atomic synthetic writers


def test_partial_corpus_is_regenerated_and_complete_one_reused(tmp_path, corpus_dir):
  out = tmp_path / "data"
  root = synthetic.write_iemocap(out, **TINY)
  assert synthetic.is_complete(root) and not synthetic.is_partial(root)
  assert sorted(os.listdir(out)) == ["IEMOCAP_full_release", synthetic.IEMOCAP_MANIFEST]
  # The same arguments: reused, nothing rewritten.
  wav = sorted(glob.glob(os.path.join(root, "Session1", "sentences", "wav", "*", "Ses*.wav")))[0]
  stamps = [os.stat(p).st_mtime_ns for p in (root, wav, os.path.join(root, synthetic.MARKER))]
  again, manifest = synthetic.write_iemocap(out, return_manifest=True, **TINY)
  assert again == root and manifest == json.loads(json.dumps(corpus_dir[1]))
  assert [os.stat(p).st_mtime_ns for p in (root, wav, os.path.join(root, synthetic.MARKER))] == stamps
  # A write killed midway: no marker, a session missing. It is regenerated in full, with one warning.
  os.remove(os.path.join(root, synthetic.MARKER))
  shutil.rmtree(os.path.join(root, "Session5"))
  assert synthetic.is_partial(root)
  with pytest.warns(UserWarning, match="no completion marker.*regenerating"):
    assert synthetic.write_iemocap(out, **TINY) == root
  assert synthetic.is_complete(root)
  assert len(iemocap.load_iemocap(root, strict=True, verbose=False).utterances) == 80
  assert sorted(os.listdir(out)) == ["IEMOCAP_full_release", synthetic.IEMOCAP_MANIFEST]


def test_writer_leaves_foreign_folders_and_dead_partials(tmp_path):
  out = tmp_path / "data"
  real = out / "IEMOCAP_full_release" / "Session1"
  real.mkdir(parents=True)
  assert not synthetic.is_partial(real.parent)  # not written here: never partial, never overwritten
  with pytest.raises(DataError, match="not a synthetic corpus"):
    synthetic.write_iemocap(out, **TINY)
  assert os.listdir(real.parent) == ["Session1"]
  # The temporary folder of a writer that died (its pid no longer runs) is removed by the next write.
  shutil.rmtree(real.parent)
  dead = out / f".IEMOCAP_full_release.partial-{synthetic.socket.gethostname()}-999999999"
  (dead / "IEMOCAP_full_release").mkdir(parents=True)
  synthetic.write_iemocap(out, **TINY)
  assert sorted(os.listdir(out)) == ["IEMOCAP_full_release", synthetic.IEMOCAP_MANIFEST]


def test_cebs_writer_is_atomic(tmp_path):
  out = tmp_path / "cebs"
  root = synthetic.write_cebs(out, subjects=1, seconds=1.2, seed=0)
  assert root == str(out / "cebsdb") and synthetic.is_complete(root)
  assert sorted(os.listdir(out)) == sorted(["cebsdb", synthetic_cebs.MANIFEST])
  stamp = os.stat(os.path.join(root, "b001.dat")).st_mtime_ns
  assert synthetic.write_cebs(out, subjects=1, seconds=1.2, seed=0) == root
  assert os.stat(os.path.join(root, "b001.dat")).st_mtime_ns == stamp
  os.remove(os.path.join(root, synthetic.MARKER))
  os.remove(os.path.join(root, "p001.hea"))
  assert synthetic.is_partial(root)
  with pytest.warns(UserWarning, match="regenerating"):
    synthetic.write_cebs(out, subjects=1, seconds=1.2, seed=0)
  assert os.path.isfile(os.path.join(root, "p001.hea")) and synthetic.is_complete(root)
