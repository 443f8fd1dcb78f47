"""Split helpers: disjointness, coverage, stratification, speaker/group separation."""
import collections

import numpy as np
import pytest

from mbaf_jax.data import folds
from mbaf_jax.data.report import DataError

Utt = collections.namedtuple("Utt", "session speaker label")


def _fake_utterances(seed=0, per_speaker=23):
  rng = np.random.default_rng(seed)
  utts = []
  for s in range(1, 6):
    for g in "FM":
      for _ in range(per_speaker + s):  # unequal sizes on purpose
        utts.append(Utt(s, f"Ses0{s}{g}", int(rng.integers(4))))
  return utts


def _assert_partition(fold, n):
  parts = [fold.train, fold.val, fold.test]
  for p in parts:
    assert p.dtype == np.int64
    assert np.all(np.diff(p) > 0), "indices sorted and unique"
  cat = np.concatenate(parts)
  assert cat.size == np.unique(cat).size, "train/val/test overlap"
  return set(cat.tolist()) == set(range(n))


@pytest.mark.parametrize("ratios", [(8, 1, 1), (7, 2, 1), (1, 1, 1)])
def test_stratified_split_is_stratified_within_one(ratios):
  rng = np.random.default_rng(3)
  labels = rng.choice(["ang", "hap", "neu", "sad"], size=517, p=[0.2, 0.3, 0.3, 0.2])
  fold = folds.stratified_split(labels, ratios=ratios, seed=5)
  assert _assert_partition(fold, labels.size)
  total = sum(ratios)
  for cls in np.unique(labels):
    n_cls = int(np.sum(labels == cls))
    for part, r in zip((fold.train, fold.val, fold.test), ratios):
      got = int(np.sum(labels[part] == cls))
      assert abs(got - n_cls * r / total) <= 1.0, (cls, got, n_cls * r / total)


def test_stratified_split_seeded():
  labels = np.repeat(np.arange(3), [40, 25, 11])
  a = folds.stratified_split(labels, seed=1)
  b = folds.stratified_split(labels, seed=1)
  c = folds.stratified_split(labels, seed=2)
  np.testing.assert_array_equal(a.test, b.test)
  assert not np.array_equal(a.test, c.test)
  assert a.name == "stratified_8-1-1"
  # Largest-remainder sizes of the 8:1:1 cut, class by class: 40 -> 32/4/4, 25 -> 20/3/2 (or 2/3), 11 -> 9/1/1.
  assert a.sizes()["train"] == 32 + 20 + 9


def test_stratified_split_bad_input():
  with pytest.raises(ValueError, match="ratios"):
    folds.stratified_split([0, 1, 1], ratios=(8, 1))
  with pytest.raises(ValueError, match="ratios"):
    folds.stratified_split([0, 1, 1], ratios=(8, -1, 1))
  with pytest.raises(ValueError, match="1-D"):
    folds.stratified_split(np.zeros((3, 2)))


def test_loso_speaker_validation():
  utts = _fake_utterances()
  fs = folds.loso_folds(utts, validation="speaker", seed=0)
  assert [f.name for f in fs] == [f"loso_s{s}" for s in range(1, 6)]
  sessions = np.array([u.session for u in utts])
  speakers = np.array([u.speaker for u in utts])
  for s, f in zip(range(1, 6), fs):
    assert _assert_partition(f, len(utts))
    assert set(sessions[f.train]) == set(range(1, 6)) - {s}
    assert set(sessions[f.val]) == {s} and set(sessions[f.test]) == {s}
    val_spk, test_spk = set(speakers[f.val]), set(speakers[f.test])
    assert len(val_spk) == 1 and len(test_spk) == 1 and val_spk != test_spk
    assert not set(speakers[f.train]) & (val_spk | test_spk)
  # Every session is tested exactly once, on one of its speakers.
  tested = np.concatenate([f.test for f in fs] + [f.val for f in fs])
  assert sorted(tested.tolist()) == list(range(len(utts)))


def test_loso_random20_validation():
  utts = _fake_utterances(seed=1)
  sessions = np.array([u.session for u in utts])
  labels = np.array([u.label for u in utts])
  fs = folds.loso_folds(utts, validation="random20", seed=0)
  for s, f in zip(range(1, 6), fs):
    assert _assert_partition(f, len(utts))
    np.testing.assert_array_equal(f.test, np.flatnonzero(sessions == s))
    rest = np.flatnonzero(sessions != s)
    assert set(sessions[f.val]) <= set(range(1, 6)) - {s}
    for k in range(4):  # stratified 20 % of each class of the training sessions
      n_k = int(np.sum(labels[rest] == k))
      assert abs(int(np.sum(labels[f.val] == k)) - 0.2 * n_k) <= 1.0
  assert folds.loso_folds(utts, "random20", seed=0)[0].val.tolist() == fs[0].val.tolist()


def test_loso_bad_input():
  utts = _fake_utterances()
  with pytest.raises(ValueError, match="validation"):
    folds.loso_folds(utts, validation="speakers")
  with pytest.raises(DataError, match="no utterances"):
    folds.loso_folds([])
  with pytest.raises(DataError, match="at least 2 sessions"):
    folds.loso_folds([u for u in utts if u.session == 1])
  one_speaker = [u for u in utts if u.speaker.endswith("F")]
  with pytest.raises(DataError, match="random20"):
    folds.loso_folds(one_speaker, validation="speaker")


def test_group_kfold_logo():
  subjects = np.repeat(np.arange(1, 21), 7)
  fs = folds.group_kfold(subjects, n_groups=4, seed=0)
  assert len(fs) == 4
  tests = np.concatenate([f.test for f in fs])
  assert sorted(tests.tolist()) == list(range(subjects.size))
  for f in fs:
    assert _assert_partition(f, subjects.size)
    assert len(set(subjects[f.test])) == 5
    assert not set(subjects[f.train]) & set(subjects[f.test])
    assert f.val.size == 0
  with_val = folds.group_kfold(subjects, n_groups=4, seed=0, val_fraction=0.25)
  for f, g in zip(with_val, fs):
    np.testing.assert_array_equal(f.test, g.test)
    assert f.val.size == round(0.25 * g.train.size)
    assert _assert_partition(f, subjects.size)


def test_group_kfold_bad_input():
  with pytest.raises(ValueError, match="n_groups"):
    folds.group_kfold([1, 2, 3], n_groups=4)
  with pytest.raises(ValueError, match="val_fraction"):
    folds.group_kfold([1, 2, 3, 4], n_groups=2, val_fraction=1.0)
