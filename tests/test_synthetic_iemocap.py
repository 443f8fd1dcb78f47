"""Synthetic IEMOCAP: exact layout and quirks, read back by the real loader, learnable in each mode."""
import glob
import hashlib
import os
import re

import numpy as np
import pytest
import soundfile as sf

from mbaf_jax.data import audio
from mbaf_jax.data import folds
from mbaf_jax.data import iemocap
from mbaf_jax.data import synthetic
from mbaf_jax.data import synthetic_cebs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = tmp_path_factory.mktemp("syn")
  root, manifest = synthetic.write_iemocap(out, size=40, seed=0, seconds=(0.3, 0.3), return_manifest=True)
  return root, manifest, iemocap.load_iemocap(root, strict=True, verbose=False)


def test_loader_reads_what_the_generator_intended(corpus):
  root, manifest, c = corpus
  want = sorted((u for u in manifest["utterances"] if u["label"] is not None), key=lambda u: u["id"])
  assert len(c.utterances) == len(want) == 200
  for got, w in zip(c.utterances, want):
    assert (got.id, got.dialog, got.session, got.speaker, got.label, got.label_name, got.text) == (
        w["id"], w["dialog"], w["session"], w["speaker"], w["label"], w["label_name"], w["text"])
    assert (got.start, got.end) == (w["start"], w["end"])
    assert got.wav_path == os.path.join(root, f"Session{w['session']}", "sentences", "wav", w["dialog"],
                                        w["id"] + ".wav")
  assert dict(c.excluded) == manifest["excluded"]
  assert set(c.excluded) == set(iemocap.EXCLUDED_LABELS)
  assert c.summary.info["transcript XX ids"] == manifest["xx_ids"]
  assert c.summary.info["transcript noise lines"] == manifest["noise_lines"]
  assert {u["raw_label"] for u in want} == {"ang", "hap", "exc", "neu", "sad"}


def test_every_speaker_has_every_class(corpus):
  _, _, c = corpus
  speakers = {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
  for spk in speakers:
    got = sorted({u.label for u in c.utterances if u.speaker == spk})
    assert got == [0, 1, 2, 3], spk
  # Speaker letter after the last underscore differs from the dialog prefix for some turns.
  assert any(u.speaker[-1] != u.dialog[5] for u in c.utterances)
  assert any(u.speaker[-1] == u.dialog[5] for u in c.utterances)


def test_layout_and_quirks(corpus):
  root, _, c = corpus
  dialogs = {u.dialog for u in c.utterances}
  assert {"Ses03M_impro05a", "Ses03M_impro05b", "Ses05M_script01_1b"} <= dialogs
  assert os.path.isfile(os.path.join(root, "README.txt"))
  for s in range(1, 6):
    emo = os.path.join(root, f"Session{s}", "dialog", "EmoEvaluation")
    assert {"Attribute", "Categorical", "Self-evaluation"} <= set(os.listdir(emo))
    assert glob.glob(os.path.join(emo, "._*.txt"))
    wav_root = os.path.join(root, f"Session{s}", "sentences", "wav")
    assert glob.glob(os.path.join(wav_root, "*", ".DS_Store"))
    assert glob.glob(os.path.join(wav_root, "*", "._*.wav"))
    assert glob.glob(os.path.join(wav_root, "*", "*.pk"))
  info = sf.info(c.utterances[0].wav_path)
  assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 4800)


def test_line_formats(corpus):
  root, _, _ = corpus
  emo_text = "".join(open(p).read() for p in glob.glob(os.path.join(root, "Session*", "dialog",
                                                                       "EmoEvaluation", "Ses*.txt")))
  tr_text = "".join(open(p).read() for p in glob.glob(os.path.join(root, "Session*", "dialog",
                                                                      "transcriptions", "*.txt")))
  assert emo_text.startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n")
  summary_lines = [l for l in emo_text.splitlines() if l.startswith("[")]
  assert summary_lines and all(iemocap.SUMMARY_LINE.match(l) for l in summary_lines)
  assert re.search(r"^\[\d+\.\d{4} - \d+\.\d{4}\]\tSes\w+\t\w{3}\t\[\d\.\d{4}, \d\.\d{4}, \d\.\d{4}\]$",
                   emo_text, re.M)
  assert re.search(r"^C-\w+:\t\w+; \w+;\t\(.*\)$", emo_text, re.M)  # multi-category
  assert re.search(r"^A-\w+:\tval \d; act \d; dom  \d;\t\(\)$", emo_text, re.M)  # two spaces before dom
  assert re.search(r"^A-\w+:\tval \d; act \d; dom  ;\t\(\)$", emo_text, re.M)  # a missing dom value
  ses_lines = [l for l in tr_text.splitlines() if l.startswith("Ses")]
  assert all(re.match(r"^Ses\w+ \[\d{3}\.\d{4}-\d{3}\.\d{4}\]: ", l) for l in ses_lines)
  assert re.search(r"^Ses\w+_[FM]XX0 ", tr_text, re.M)
  assert re.search(r"^[FM]: ", tr_text, re.M)
  assert re.search(r"\[(LAUGHTER|BREATHING|GARBAGE|garbage|LIPSMACK)\]", tr_text)


def _tree_digest(root):
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in sorted(os.walk(root)):
    dirnames.sort()
    for name in sorted(filenames):
      h.update(name.encode())
      with open(os.path.join(dirpath, name), "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def test_deterministic_from_seed(tmp_path):
  kw = dict(size=8, seconds=(0.05, 0.1))
  a = _tree_digest(synthetic.write_iemocap(tmp_path / "a", seed=7, **kw))
  b = _tree_digest(synthetic.write_iemocap(tmp_path / "b", seed=7, **kw))
  c = _tree_digest(synthetic.write_iemocap(tmp_path / "c", seed=8, **kw))
  assert a == b != c


def _audio_features(waves, lengths):
  """Log RMS, log spectral centroid and log spectral peak (< 1 kHz) of each clip."""
  feats = []
  for w, n in zip(waves, lengths):
    w = w[:n].astype(np.float64)
    spec = np.abs(np.fft.rfft(w))
    freqs = np.fft.rfftfreq(w.size, 1 / 16000)
    low = freqs < 1000
    feats.append([np.log(np.sqrt(np.mean(w ** 2)) + 1e-6),
                  np.log(np.sum(spec * freqs) / np.sum(spec)),
                  np.log(freqs[low][np.argmax(spec[low])] + 1)])
  return np.asarray(feats)


def _tokens(text):
  return re.sub(r"[^a-z\[\] ]", " ", text.lower()).split()


def test_each_mode_above_chance_and_both_better(corpus):
  """Leave-one-session-out naive Bayes: Gaussian on 3 audio features, Bernoulli on words."""
  _, manifest, c = corpus
  waves, lengths = audio.load_waveforms(c.wav_paths, max_seconds=0.3, workers=2)
  y = c.labels
  xa = _audio_features(waves, lengths)
  speakers = np.array([u.speaker for u in c.utterances])
  for spk in np.unique(speakers):  # per-speaker standardisation
    m = speakers == spk
    xa[m] = (xa[m] - xa[m].mean(0)) / (xa[m].std(0) + 1e-6)
  vocab = sorted({t for text in c.texts for t in _tokens(text)})
  xt = np.array([[v in _tokens(text) for v in vocab] for text in c.texts], dtype=np.float64)
  correct = np.zeros(3)
  for f in folds.loso_folds(c.utterances, validation="random20", seed=0):
    tr = np.concatenate([f.train, f.val])
    mu = np.stack([xa[tr][y[tr] == k].mean(0) for k in range(4)])
    var = np.stack([xa[tr][y[tr] == k].var(0) for k in range(4)]) + 1e-2
    log_a = -0.5 * (((xa[:, None] - mu) ** 2 / var) + np.log(var)).sum(-1)
    p = np.stack([(xt[tr][y[tr] == k].sum(0) + 1) / (np.sum(y[tr] == k) + 2) for k in range(4)])
    log_t = xt @ np.log(p).T + (1 - xt) @ np.log(1 - p).T
    for i, score in enumerate((log_a, log_t, log_a + log_t)):
      correct[i] += np.sum(score[f.test].argmax(1) == y[f.test])
  acc_audio, acc_text, acc_both = correct / y.size
  print(f"LOSO naive-Bayes accuracy: audio {acc_audio:.3f} text {acc_text:.3f} both {acc_both:.3f}")
  bayes = manifest["bayes_accuracy"]
  assert bayes == pytest.approx({"audio": 0.85, "text": 0.85, "both": 0.97})  # p = 0.8
  assert acc_audio > 0.6 and acc_text > 0.6, (acc_audio, acc_text)  # chance: 0.25
  assert acc_both > max(acc_audio, acc_text) + 0.02, (acc_audio, acc_text, acc_both)
  assert acc_both <= bayes["both"] + 0.05


def test_size_and_argument_errors(tmp_path):
  with pytest.raises(ValueError, match="size must be one of"):
    synthetic.write_iemocap(tmp_path, size="huge")
  with pytest.raises(ValueError, match=">= 8"):
    synthetic.write_iemocap(tmp_path, size=4)
  with pytest.raises(ValueError, match="seconds"):
    synthetic.write_iemocap(tmp_path, size="tiny", seconds=(1.0, 0.5))
  with pytest.raises(ValueError, match="p_audio"):
    synthetic.write_iemocap(tmp_path, size="tiny", p_audio=1.5)


def test_cli_iemocap(tmp_path, capsys):
  assert synthetic.main(["iemocap", "--out", str(tmp_path), "--size", "8", "--seed", "1",
                         "--seconds", "0.05,0.05"]) == 0
  root = capsys.readouterr().out.strip()
  assert root == str(tmp_path / "IEMOCAP_full_release")
  assert len(iemocap.load_iemocap(root, verbose=False).utterances) == 40
  with pytest.raises(SystemExit):
    synthetic.main(["iemocap", "--out", str(tmp_path), "--seconds", "fast"])
  with pytest.raises(SystemExit):
    synthetic.main(["iemocap", "--out", str(tmp_path), "--size", "huge"])
  with pytest.raises(SystemExit):
    synthetic.main(["mnist", "--out", str(tmp_path)])


def test_cli_dispatches_cebs_through_the_atomic_writer(tmp_path, capsys, monkeypatch):
  calls = []

  def fake_write_cebs(out, **kw):
    """Stands in for the record writer: one header in <out>/cebsdb and the manifest."""
    calls.append((out, kw))
    os.makedirs(os.path.join(out, "cebsdb"))
    open(os.path.join(out, "cebsdb", "b001.hea"), "w").close()
    open(os.path.join(out, synthetic_cebs.MANIFEST), "w").write("{}")

  monkeypatch.setattr(synthetic_cebs, "write_cebs", fake_write_cebs)
  assert synthetic.main(["cebs", "--out", str(tmp_path), "--seed", "3", "--size", "tiny"]) == 0
  ((out, kw),) = calls
  assert kw == {"subjects": 20, "seconds": None, "seed": 3, "size": "tiny"}
  assert os.path.dirname(out) == str(tmp_path) and os.path.basename(out).startswith(".cebsdb.partial-")
  root = os.path.join(str(tmp_path), "cebsdb")
  assert capsys.readouterr().out.strip() == root
  assert synthetic.is_complete(root)
  assert sorted(os.listdir(tmp_path)) == sorted(["cebsdb", synthetic_cebs.MANIFEST])  # no partial left
  # --out naming a file and a bad size: one sentence, exit 2.
  with pytest.raises(SystemExit) as e:
    synthetic.main(["cebs", "--out", os.path.join(root, "b001.hea")])
  assert e.value.code == 2 and "is a file" in capsys.readouterr().err
  monkeypatch.undo()  # the real writer checks its size before writing anything
  with pytest.raises(SystemExit) as e:
    synthetic.main(["cebs", "--out", str(tmp_path / "x"), "--size", "huge"])
  assert e.value.code == 2 and "size must be one of" in capsys.readouterr().err
