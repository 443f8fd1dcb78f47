"""Train/validation/test splits shared by the IEMOCAP and CEBS loaders.

* :func:`loso_folds` — IEMOCAP leave-one-session-out (DMF §3.1: 5 folds, train on
  4 sessions, test on the 5th), with a documented validation choice.
* :func:`stratified_split` — the MBAF paper's 8:1:1 train/val/test split
  (MBAF §4.1; the paper does not say how it is drawn: here random, stratified
  by class).
* :func:`group_kfold` — leave-one-group-out over subjects (CEBS: 4 groups of 5
  subjects, MBAF §4.2).

Every split is a :class:`Fold` of sorted ``int64`` index arrays into the list of
examples the caller passed in; the three arrays are disjoint.
"""
import dataclasses
from typing import Sequence

import numpy as np

from mbaf_jax.data.report import DataError


@dataclasses.dataclass(frozen=True)
class Fold:
  """One split of a data set into index sets.

  Attributes:
    name: a short id, e.g. ``"loso_s1"`` or ``"stratified_8-1-1"``.
    train: sorted int64 indices of the training examples.
    val: sorted int64 indices of the validation examples (may be empty).
    test: sorted int64 indices of the test examples.
  """
  name: str
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray

  def sizes(self) -> dict:
    """``{"train": n, "val": n, "test": n}``."""
    return {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)}


def _idx(values) -> np.ndarray:
  return np.sort(np.asarray(values, dtype=np.int64).reshape(-1))


def _largest_remainder(n: int, ratios: Sequence[float]) -> list[int]:
  """Splits ``n`` items into parts proportional to ``ratios``; each part within 1 of its ideal."""
  ratios = np.asarray(ratios, dtype=np.float64)
  ideal = n * ratios / ratios.sum()
  counts = np.floor(ideal).astype(int)
  rest = n - counts.sum()
  # Hand the leftover items to the largest fractional parts (ties: earlier part first).
  order = np.argsort(-(ideal - counts), kind="stable")
  counts[order[:rest]] += 1
  return counts.tolist()


def stratified_split(labels, ratios=(8, 1, 1), seed: int = 0, name: str | None = None) -> Fold:
  """The MBAF 8:1:1 split (MBAF §4.1: "a 8:1:1 dataset split for training, validation, and testing").

  The paper does not say how the split is drawn; this one is random and
  stratified by class.

  Within each class the examples are shuffled with ``seed`` and cut in the
  proportions ``ratios`` (train, val, test) by largest remainders, so every
  split's per-class count is within 1 of ``n_class * ratio / sum(ratios)``.

  Args:
    labels: (N,) integer or string class labels.
    ratios: three non-negative numbers (train, val, test) with a positive sum.
    seed: shuffling seed; the same seed gives the same split.
    name: fold name; default ``"stratified_8-1-1"`` (from the ratios).

  Returns:
    A :class:`Fold` covering all N indices exactly once.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"stratified_split: labels must be 1-D (one label per example), got shape {labels.shape}")
  ratios = tuple(float(r) for r in ratios)
  if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
    raise ValueError(f"stratified_split: ratios must be 3 non-negative numbers (train, val, test) with a "
                     f"positive sum, e.g. (8, 1, 1); got {ratios}")
  rng = np.random.default_rng(seed)
  parts = ([], [], [])
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    members = members[rng.permutation(members.size)]
    counts = _largest_remainder(members.size, ratios)
    bounds = np.cumsum([0] + counts)
    for k in range(3):
      parts[k].append(members[bounds[k]:bounds[k + 1]])
  if name is None:
    name = "stratified_" + "-".join(f"{r:g}" for r in ratios)
  cat = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
  return Fold(name, _idx(cat[0]), _idx(cat[1]), _idx(cat[2]))


def loso_folds(utterances, validation: str = "speaker", seed: int = 0) -> list[Fold]:
  """IEMOCAP leave-one-session-out folds (DMF §3.1; 5 folds).

  Fold ``k`` (name ``"loso_s{k}"``) trains on the four other sessions. The
  validation choice (both are common in the literature; DATA_FORMATS "IEMOCAP"):

  * ``"speaker"`` (default): the held-out session's two speakers are split —
    one (picked at random with ``seed``, independently per fold) is the
    validation set, the other the test set. Train, validation and test are
    then speaker-disjoint; the test set is half a session.
  * ``"random20"``: a random 20 % of the training sessions' utterances
    (stratified by label) is the validation set; the whole held-out session is
    the test set. Validation speakers also appear in training.

  Args:
    utterances: sequence of objects with ``.session`` (int 1..5), ``.speaker``
      (e.g. ``"Ses01F"``) and ``.label`` (int), e.g. ``iemocap.Utterance``.
    validation: ``"speaker"`` or ``"random20"``.
    seed: seed of the random choices.

  Returns:
    One :class:`Fold` per session present, in session order.
  """
  if validation not in ("speaker", "random20"):
    raise ValueError(f"loso_folds: validation must be 'speaker' or 'random20', got {validation!r}")
  if not utterances:
    raise DataError("loso_folds: no utterances given; load a corpus first (is the IEMOCAP root right?)")
  sessions = np.asarray([u.session for u in utterances])
  speakers = np.asarray([u.speaker for u in utterances])
  labels = np.asarray([u.label for u in utterances])
  present = sorted(set(sessions.tolist()))
  if len(present) < 2:
    raise DataError(f"loso_folds: leave-one-session-out needs at least 2 sessions, found {present}")
  folds = []
  for s in present:
    rng = np.random.default_rng([seed, s])
    held = np.flatnonzero(sessions == s)
    rest = np.flatnonzero(sessions != s)
    if validation == "speaker":
      spk = sorted(set(speakers[held].tolist()))
      if len(spk) < 2:
        raise DataError(f"loso_folds: validation='speaker' needs 2 speakers in session {s}, found {spk}; "
                        "use validation='random20'")
      val_spk = spk[int(rng.integers(len(spk)))]
      val = held[speakers[held] == val_spk]
      test = held[speakers[held] != val_spk]
      train = rest
    else:
      sub = stratified_split(labels[rest], ratios=(8, 2, 0), seed=int(rng.integers(2**31)))
      train, val = rest[sub.train], rest[sub.val]
      test = held
    folds.append(Fold(f"loso_s{s}", _idx(train), _idx(val), _idx(test)))
  return folds


def group_kfold(groups, n_groups: int = 4, seed: int = 0, val_fraction: float = 0.0,
                name: str = "group") -> list[Fold]:
  """Leave-one-group-out folds over subjects (MBAF §4.2, CEBS: 4 groups of 5 subjects).

  The distinct values of ``groups`` (e.g. subject ids) are shuffled with
  ``seed`` and dealt into ``n_groups`` groups whose sizes differ by at most 1.
  Fold ``k`` (name ``f"{name}{k}"``) tests on every example of group ``k`` and
  trains on the rest; with ``val_fraction > 0`` a random (label-free) fraction
  of the training examples becomes the validation set, else it is empty.

  Args:
    groups: (N,) group id (subject) per example.
    n_groups: number of folds, 2 <= n_groups <= number of distinct ids.
    seed: seed of the shuffles.
    val_fraction: fraction of training examples held out for validation, in [0, 1).
    name: prefix of the fold names.

  Returns:
    ``n_groups`` :class:`Fold` objects; their test sets partition all N indices.
  """
  groups = np.asarray(groups)
  if groups.ndim != 1:
    raise ValueError(f"group_kfold: groups must be 1-D (one id per example), got shape {groups.shape}")
  ids = np.unique(groups)
  if not 2 <= int(n_groups) <= ids.size:
    raise ValueError(f"group_kfold: n_groups must be between 2 and the number of distinct ids ({ids.size}), "
                     f"got {n_groups}")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"group_kfold: val_fraction must be in [0, 1), got {val_fraction}")
  rng = np.random.default_rng(seed)
  ids = ids[rng.permutation(ids.size)]
  chunks = np.array_split(ids, int(n_groups))
  folds = []
  for k, chunk in enumerate(chunks):
    in_test = np.isin(groups, chunk)
    test = np.flatnonzero(in_test)
    train = np.flatnonzero(~in_test)
    n_val = int(round(val_fraction * train.size))
    perm = train[rng.permutation(train.size)]
    val, train = perm[:n_val], perm[n_val:]
    folds.append(Fold(f"{name}{k}", _idx(train), _idx(val), _idx(test)))
  return folds
