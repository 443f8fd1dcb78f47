"""Tests of the CEBS loader (mbaf_jax.data.cebs) and the synthetic cebsdb writer, through real WFDB files."""
import json
import os
import shutil

import numpy as np
import pytest
import wfdb

from mbaf_jax.data import cebs, synthetic, synthetic_cebs
from mbaf_jax.data.cebs import MODE_PAIRS, load_cebs, logo_folds
from mbaf_jax.data.report import DataError

SUBJECTS, SECONDS = 8, 12.0  # 12 s = 10 windows of 1.2 s per record


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("cebs")
  root = synthetic_cebs.write_cebs(str(out), subjects=SUBJECTS, seconds=SECONDS, seed=0)
  return root


@pytest.fixture(scope="module")
def corpus(corpus_dir):
  return load_cebs(corpus_dir, seconds_per_state=SECONDS, subjects=range(1, SUBJECTS + 1))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  """2 subjects, 6 s records: the template that the bad-input tests copy and damage."""
  out = tmp_path_factory.mktemp("cebs_small")
  return synthetic_cebs.write_cebs(str(out), subjects=2, seconds=6.0, seed=3)


def _copy(small_dir, tmp_path):
  dst = str(tmp_path / "cebsdb")
  shutil.copytree(small_dir, dst)
  return dst


def _load_small(root, **kw):
  kw.setdefault("seconds_per_state", 6.0)
  return load_cebs(root, subjects=[1, 2], **kw)


def _zscore(x):
  return (x - x.mean()) / x.std()


# ---------------------------------------------------------------- synthetic writer: the real format


def test_writer_writes_real_wfdb_headers_and_annotations(corpus_dir):
  h = wfdb.rdheader(os.path.join(corpus_dir, "b001"))
  assert h.fs == 5000 and h.sig_name == ["I", "II", "RESP", "SCG"] and h.n_sig == 4
  assert h.fmt == ["16"] * 4 and h.units == ["mV"] * 4 and h.sig_len == 5000 * 12
  assert wfdb.rdheader(os.path.join(corpus_dir, "m001")).sig_len == 5000 * 24  # music is longer
  with open(os.path.join(corpus_dir, "b001.hea")) as f:
    first = f.readline().split()
  assert first == ["b001", "4", "5000", "60000"]
  names = open(os.path.join(corpus_dir, "RECORDS")).read().split()
  assert names == sorted(f"{p}{s:03d}" for p in "bmp" for s in range(1, SUBJECTS + 1))
  ann = wfdb.rdann(os.path.join(corpus_dir, "b001"), "atr")
  np.testing.assert_array_equal(ann.chan[:4], [0, 1, 0, 1])  # both leads interleaved
  np.testing.assert_array_equal(ann.sample[0::2], ann.sample[1::2])
  # Annotated R peaks sit on the ECG maxima (independent check of the annotation).
  ecg = wfdb.rdrecord(os.path.join(corpus_dir, "b001"), channels=[0]).p_signal[:, 0]
  for s in ann.sample[0::2][1:-1]:
    assert abs(int(np.argmax(ecg[s - 150:s + 150])) - 150) <= 25  # 5 ms (noise on a 10 ms wide R)
  rr = np.diff(ann.sample[0::2]) / 5000
  assert 0.5 < rr.mean() < 1.5  # 40-120 bpm
  manifest = json.load(open(os.path.join(os.path.dirname(corpus_dir), synthetic_cebs.MANIFEST)))
  assert manifest["seconds_per_state"] == SECONDS and manifest["subjects"] == SUBJECTS
  assert synthetic_cebs.read_synthetic_manifest(corpus_dir) == manifest
  assert synthetic_cebs.read_synthetic_manifest(os.path.dirname(corpus_dir)) == manifest
  assert synthetic_cebs.read_synthetic_manifest(os.path.join(corpus_dir, "nowhere")) is None


def test_writer_is_deterministic_and_validates(tmp_path):
  a = synthetic_cebs.write_cebs(str(tmp_path / "a"), subjects=1, seconds=2.4, seed=4)
  b = synthetic_cebs.write_cebs(str(tmp_path / "b"), subjects=1, seconds=2.4, seed=4)
  c = synthetic_cebs.write_cebs(str(tmp_path / "c"), subjects=1, seconds=2.4, seed=5)
  read = lambda root: open(os.path.join(root, "p001.dat"), "rb").read()
  assert read(a) == read(b) and read(a) != read(c)
  with pytest.raises(ValueError, match="size must be one of"):
    synthetic_cebs.write_cebs(str(tmp_path / "d"), size="huge")
  with pytest.raises(ValueError, match="subjects must be an int in"):
    synthetic_cebs.write_cebs(str(tmp_path / "d"), subjects=21)
  with pytest.raises(ValueError, match="seconds"):
    synthetic_cebs.write_cebs(str(tmp_path / "d"), seconds=0.5)


# ---------------------------------------------------------------- loader on well-formed data


def test_shapes_labels_subjects(corpus):
  n_per_record = int(SECONDS * 5000) // 6000
  assert n_per_record == 10
  assert len(corpus) == 3 * SUBJECTS * n_per_record
  for m in ("ECG", "RESP", "SCG"):
    assert corpus.signals[m].shape == (len(corpus), 6, 1000) and corpus.signals[m].dtype == np.float32
  assert corpus.class_counts() == (80, 80, 80)
  for name, lab, subj in zip(corpus.records, corpus.labels, corpus.subjects):
    assert lab == "bmp".index(name[0]) and subj == int(name[1:])
  assert corpus.summary.total_skipped == 0
  assert corpus.summary.info["expected_per_class_full_length"] == 80
  assert cebs.CLASSES == ("basal", "music", "post_music")


def test_windows_equal_independent_reading_of_the_record(corpus, corpus_dir):
  """Window k of a record = samples [6000k, 6000(k+1)) of the named channel, z-scored over the
  first ``seconds_per_state`` of that record (computed here from wfdb directly)."""
  for name, ch, mode in (("m003", "SCG", "SCG"), ("b005", "I", "ECG"), ("p002", "RESP", "RESP")):
    rec = wfdb.rdrecord(os.path.join(corpus_dir, name))
    raw = rec.p_signal[:int(SECONDS * 5000), rec.sig_name.index(ch)]  # music: its FIRST 12 s only
    ref = _zscore(raw).reshape(10, 6, 1000)
    sel = corpus.records == name
    np.testing.assert_array_equal(corpus.starts[sel], np.arange(10) * 6000)
    np.testing.assert_allclose(corpus.signals[mode][sel], ref, atol=2e-6, rtol=1e-5)


def test_ecg_lead_option_and_normalize_none(corpus_dir):
  c = load_cebs(corpus_dir, seconds_per_state=2.4, subjects=[1], modes=("ECG",), ecg_lead="II",
                normalize="none")
  rec = wfdb.rdrecord(os.path.join(corpus_dir, "b001"), sampto=12000)
  raw = rec.p_signal[:, rec.sig_name.index("II")].reshape(2, 6, 1000)
  np.testing.assert_allclose(c.signals["ECG"][c.records == "b001"], raw, rtol=1e-6, atol=1e-6)
  assert list(c.signals) == ["ECG"]


def test_channels_are_chosen_by_name_not_position(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  ref = _load_small(small_dir)
  rec = wfdb.rdrecord(os.path.join(root, "b001"))
  order = [3, 2, 0, 1]  # SCG, RESP, I, II
  for ext in ("hea", "dat", "atr"):
    os.remove(os.path.join(root, f"b001.{ext}"))
  wfdb.wrsamp("b001", fs=5000, units=["mV"] * 4, sig_name=[rec.sig_name[k] for k in order],
              p_signal=rec.p_signal[:, order], fmt=["16"] * 4, write_dir=root)
  got = _load_small(root)
  sel = got.records == "b001"
  for m in ("ECG", "RESP", "SCG"):
    np.testing.assert_allclose(got.signals[m][sel], ref.signals[m][ref.records == "b001"], atol=1e-3)


def test_first_minutes_only_and_short_records_counted(corpus_dir):
  c = load_cebs(corpus_dir, seconds_per_state=6.0, subjects=[1, 2])
  assert c.class_counts() == (10, 10, 10)  # 5 windows per record, music cut to its first 6 s
  assert "short_records" not in c.summary.info
  # The paper's 5 min (the default) on 12 s / 24 s records: every record is short, all of it is used,
  # each short record is counted, and the class imbalance it causes is reported.
  d = load_cebs(corpus_dir, subjects=[1, 2])
  assert d.class_counts() == (20, 40, 20)
  assert d.summary.info["short_records"] == {"b001": 12.0, "b002": 12.0, "m001": 24.0, "m002": 24.0,
                                             "p001": 12.0, "p002": 12.0}
  assert "class_imbalance" in d.summary.info
  assert d.summary.info["expected_per_class_full_length"] == 500  # 250 per 5-min record x 2 subjects


def test_windows_per_full_record():
  # MBAF §4.2: 5 min at 5 kHz cut into 6 x 1,000-sample windows.
  assert int(cebs.SECONDS_PER_STATE * cebs.FS) // 6000 == 250
  assert 250 * 20 == 5000 and sum(cebs.PAPER_COUNTS) == 14977


def test_logo_folds_group_subjects(corpus):
  folds = logo_folds(corpus.subjects, n_groups=4, seed=0)
  assert len(folds) == 4
  test_all = np.concatenate([f.test for f in folds])
  np.testing.assert_array_equal(np.sort(test_all), np.arange(len(corpus)))
  groups = []
  for f in folds:
    tr, te = set(corpus.subjects[f.train].tolist()), set(corpus.subjects[f.test].tolist())
    assert not tr & te and len(te) == SUBJECTS // 4 and len(tr | te) == SUBJECTS
    groups.append(sorted(te))
  again = logo_folds(corpus.subjects, n_groups=4, seed=0)
  assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again))
  other = [sorted(set(corpus.subjects[f.test].tolist())) for f in logo_folds(corpus.subjects, 4, seed=1)]
  assert other != groups  # the seed shuffles the subjects into groups
  assert [f.name for f in folds] == ["logo0", "logo1", "logo2", "logo3"]
  with pytest.raises(ValueError, match="n_groups"):
    logo_folds(corpus.subjects, n_groups=9)


def test_mode_pairs(corpus):
  assert MODE_PAIRS == {"F-IV": ("ECG", "RESP"), "F-V": ("ECG", "SCG"), "F-VI": ("RESP", "SCG")}
  a, b = corpus.pair("F-VI")
  assert a is corpus.signals["RESP"] and b is corpus.signals["SCG"]
  with pytest.raises(ValueError, match="unknown mode pair 'F-VII'"):
    corpus.pair("F-VII")
  ecg_only = cebs.CebsCorpus({"ECG": corpus.signals["ECG"]}, corpus.labels, corpus.subjects,
                             corpus.records, corpus.starts, corpus.summary)
  with pytest.raises(ValueError, match=r"F-IV needs modes \('ECG', 'RESP'\) but \['RESP'\]"):
    ecg_only.pair("F-IV")


def _features(x):
  """Per-window features: log slope/curvature at 100 Hz and relative band powers."""
  x = x.reshape(x.shape[0], -1).astype(np.float64)
  xs = x.reshape(x.shape[0], -1, 50).mean(2)
  d = np.diff(xs, axis=1)
  f = [np.log(np.abs(d).mean(1) + 1e-6), np.log(np.abs(np.diff(d, axis=1)).mean(1) + 1e-6)]
  sp = np.abs(np.fft.rfft(x, axis=1)) ** 2
  fr = np.fft.rfftfreq(x.shape[1], 1 / 5000)
  tot = sp[:, (fr > 0) & (fr < 100)].sum(1)
  for lo, hi in ((0.5, 4), (4, 12), (12, 24), (24, 32), (32, 40), (40, 60)):
    f.append(np.log(sp[:, (fr >= lo) & (fr < hi)].sum(1) / tot + 1e-9))
  return np.stack(f, 1)


def _lda_accuracy(feats, y, train, test):
  """Nearest class mean under the pooled within-class covariance (plain NumPy LDA)."""
  mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-9
  z = (feats - mu) / sd
  means = np.stack([z[train][y[train] == k].mean(0) for k in range(3)])
  cov = np.cov((z[train] - means[y[train]]).T) + 1e-2 * np.eye(z.shape[1])
  inv = np.linalg.inv(cov)
  dist = np.stack([np.einsum("ni,ij,nj->n", z[test] - m, inv, z[test] - m) for m in means], 1)
  return float((dist.argmin(1) == y[test]).mean())


def test_each_mode_above_chance_and_pairs_better(corpus):
  """Leave-subject-group-out LDA on hand features: the synthetic structure is learnable across
  subjects by each mode alone, and every pair beats both of its modes."""
  feats = {m: _features(corpus.signals[m]) for m in corpus.signals}
  folds = logo_folds(corpus.subjects, n_groups=4, seed=0)

  def acc(modes):
    x = np.concatenate([feats[m] for m in modes], 1)
    return np.mean([_lda_accuracy(x, corpus.labels, f.train, f.test) for f in folds])

  single = {m: acc((m,)) for m in ("ECG", "RESP", "SCG")}
  for m, a in single.items():
    assert a > 0.42, (m, a)  # chance 1/3; 240 windows -> sd about 0.03
  for name, (m1, m2) in MODE_PAIRS.items():
    assert acc((m1, m2)) > max(single[m1], single[m2]), (name, acc((m1, m2)), single)


# ---------------------------------------------------------------- bad input


def test_root_missing_or_not_cebs(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    load_cebs(str(tmp_path / "nope"))
  other = tmp_path / "other"
  other.mkdir()
  (other / "readme.txt").write_text("hello")
  (other / "x001.hea").write_text("x001 1 5000 10\n")
  with pytest.raises(DataError, match="not a CEBS directory.*b001-b020"):
    load_cebs(str(other))
  with pytest.raises(DataError, match="root must be a directory path"):
    load_cebs(None)


def test_parent_folder_with_cebsdb_inside(small_dir):
  c = _load_small(os.path.dirname(small_dir))
  assert c.class_counts() == (10, 10, 10)


def test_missing_record_is_reported_by_name(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  for ext in ("hea", "dat", "atr"):
    os.remove(os.path.join(root, f"p002.{ext}"))
  c = _load_small(root)
  assert c.class_counts() == (10, 10, 5)
  assert c.summary.info["missing_records"] == ["p002"]
  assert c.summary.counts["missing record"] == 1
  assert "p002" in c.summary.format()
  with pytest.raises(DataError, match="missing record: p002"):
    _load_small(root, strict=True)


def test_missing_header_is_counted_naming_the_file(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  os.remove(os.path.join(root, "m002.hea"))
  c = _load_small(root)
  assert c.class_counts() == (10, 5, 10)
  assert c.summary.counts["signal file without its header (.hea missing)"] == 1
  assert c.summary.examples["signal file without its header (.hea missing)"][0].endswith("m002.hea")
  with pytest.raises(DataError, match=r"m002\.hea"):
    _load_small(root, strict=True)


def test_header_shorter_than_signal_file_counts_the_windows_lost(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  hea = os.path.join(root, "b001.hea")
  lines = open(hea).read().split("\n")
  name, n_sig, fs, sig_len = lines[0].split()[:4]
  assert int(sig_len) == 30000  # 6 s: 5 windows
  lines[0] = " ".join([name, n_sig, fs, "12000"] + lines[0].split()[4:])  # claims 2 windows' worth
  open(hea, "w").write("\n".join(lines))
  c = _load_small(root)
  assert c.class_counts() == (7, 10, 10)
  assert c.summary.counts == {cebs.HEADER_SHORT: 3}
  (example,) = c.summary.examples[cebs.HEADER_SHORT]
  assert "b001" in example and "header 12000 samples" in example and "signal file 30000" in example
  report = c.summary.format()
  assert f"3  {cebs.HEADER_SHORT}" in report and "read 27 windows, 6 records" in report
  assert "basal 7  music 10  post_music 10" in report
  with pytest.raises(DataError, match="header claims fewer samples"):
    _load_small(root, strict=True)
  # Reading only what the header covers loses nothing.
  assert load_cebs(root, subjects=[1], seconds_per_state=2.4).summary.total_skipped == 0


def test_truncated_dat_is_counted_naming_the_file(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  path = os.path.join(root, "b001.dat")
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 3])
  c = _load_small(root)
  assert c.class_counts() == (5, 10, 10)
  (example,) = c.summary.examples["truncated signal file"]
  assert "b001.dat" in example and f"{len(data) // 3} bytes" in example and f"promises {len(data)}" in example
  with pytest.raises(DataError, match=r"truncated signal file.*b001\.dat"):
    _load_small(root, strict=True)
  # Only the part that is read must exist: the first 2.4 s of the truncated file are still usable.
  d = load_cebs(root, subjects=[1], seconds_per_state=1.2)
  assert d.class_counts() == (1, 1, 1)


def test_missing_channel_is_named(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  rec = wfdb.rdrecord(os.path.join(root, "b002"))
  os.remove(os.path.join(root, "b002.hea"))
  os.remove(os.path.join(root, "b002.dat"))
  wfdb.wrsamp("b002", fs=5000, units=["mV"] * 4, sig_name=["I", "II", "RESP", "SCG2"],
              p_signal=rec.p_signal, fmt=["16"] * 4, write_dir=root)
  c = _load_small(root)
  assert c.class_counts() == (5, 10, 10)
  (example,) = c.summary.examples["missing channel"]
  assert "b002.hea" in example and "SCG needs channel 'SCG'" in example
  with pytest.raises(DataError, match="missing channel.*b002.*'SCG'"):
    _load_small(root, strict=True)
  ok = _load_small(root, modes=("ECG", "RESP"))  # the channel is not needed for F-IV
  assert ok.class_counts() == (10, 10, 10) and ok.summary.total_skipped == 0


def test_nan_segment_skips_only_its_window(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  rec = wfdb.rdrecord(os.path.join(root, "p001"))
  sig = rec.p_signal.copy()
  sig[2 * 6000 + 100:2 * 6000 + 400, rec.sig_name.index("RESP")] = np.nan  # inside window 2
  os.remove(os.path.join(root, "p001.hea"))
  os.remove(os.path.join(root, "p001.dat"))
  wfdb.wrsamp("p001", fs=5000, units=["mV"] * 4, sig_name=rec.sig_name, p_signal=sig, fmt=["16"] * 4,
              write_dir=root)
  c = _load_small(root)
  assert c.class_counts() == (10, 10, 9)
  np.testing.assert_array_equal(c.starts[c.records == "p001"], np.array([0, 1, 3, 4]) * 6000)
  assert c.summary.counts["window with NaN samples"] == 1
  assert "p001 window 2" in c.summary.examples["window with NaN samples"][0]
  for m in c.signals:
    assert np.isfinite(c.signals[m]).all()
  # NaNs in RESP do not cost the window when only ECG+SCG (F-V) are loaded.
  assert _load_small(root, modes=("ECG", "SCG")).class_counts() == (10, 10, 10)
  with pytest.raises(DataError, match="p001 window 2"):
    _load_small(root, strict=True)


def test_wrong_sampling_rate_and_unreadable_header(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  path = os.path.join(root, "m001.hea")
  text = open(path).read()
  open(path, "w").write(text.replace("m001 4 5000", "m001 4 1000", 1))
  open(os.path.join(root, "b002.hea"), "w").write("garbage header\n")
  c = _load_small(root)
  assert c.class_counts() == (5, 5, 10)
  assert "fs=1000" in c.summary.examples["wrong sampling rate"][0]
  assert "b002.hea" in c.summary.examples["unreadable header"][0]


def test_nothing_usable_and_bad_options(small_dir, tmp_path):
  root = _copy(small_dir, tmp_path)
  for f in os.listdir(root):
    if f.endswith(".dat"):
      open(os.path.join(root, f), "wb").close()
  with pytest.raises(DataError, match="no usable window"):
    _load_small(root)
  with pytest.raises(ValueError, match="modes must be distinct names"):
    load_cebs(small_dir, modes=("EEG",))
  with pytest.raises(ValueError, match="ecg_lead"):
    load_cebs(small_dir, ecg_lead="V1")
  with pytest.raises(ValueError, match="shorter than one window"):
    load_cebs(small_dir, seconds_per_state=1.0)
  with pytest.raises(ValueError, match="subjects must be numbers in 1..20"):
    load_cebs(small_dir, subjects=[0, 3])
  with pytest.raises(ValueError, match="normalize"):
    load_cebs(small_dir, normalize="global")


@pytest.mark.slow
def test_cli_writes_a_loadable_corpus(tmp_path):
  assert synthetic.main(["cebs", "--out", str(tmp_path), "--size", "3", "--seed", "2"]) == 0
  manifest = json.load(open(tmp_path / synthetic_cebs.MANIFEST))
  assert manifest["seconds_per_state"] == 3.0 and manifest["seed"] == 2 and manifest["subjects"] == 20
  assert synthetic.is_complete(str(tmp_path / "cebsdb"))
  c = load_cebs(str(tmp_path / "cebsdb"), seconds_per_state=manifest["seconds_per_state"])
  assert c.class_counts() == (40, 40, 40) and c.summary.total_skipped == 0
  assert len(np.unique(c.subjects)) == 20


@pytest.mark.slow
def test_full_length_records_give_250_windows_each(tmp_path):
  """5-min basal/post and 10-min music records at the default 300 s: 250 windows per record."""
  root = synthetic_cebs.write_cebs(str(tmp_path), subjects=1, size="full", seed=0)
  c = load_cebs(root, subjects=[1])
  assert c.class_counts() == (250, 250, 250)
  assert c.summary.total_skipped == 0 and "short_records" not in c.summary.info
  assert c.starts[c.records == "m001"].max() == 249 * 6000  # the music record's first 5 min only
