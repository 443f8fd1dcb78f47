"""train.metrics against hand-computed values and an independent per-example loop."""
import os
import warnings

import numpy as np
import pytest

from train import metrics


def _loop_reference(labels, preds, k):
  """Independent reference: explicit loops over examples and classes."""
  cm = [[0] * k for _ in range(k)]
  for y, p in zip(labels, preds):
    cm[y][p] += 1
  correct = sum(1 for y, p in zip(labels, preds) if y == p)
  wa = correct / len(labels)
  recalls, f1s = [], []
  for c in range(k):
    n_true = sum(1 for y in labels if y == c)
    n_pred = sum(1 for p in preds if p == c)
    tp = sum(1 for y, p in zip(labels, preds) if y == c and p == c)
    if n_true:
      recalls.append(tp / n_true)
    if n_true or n_pred:
      prec = tp / n_pred if n_pred else 0.0
      rec = tp / n_true if n_true else 0.0
      f1s.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
  return cm, wa, sum(recalls) / len(recalls), sum(f1s) / len(f1s)


def test_hand_computed_example():
  # truth:  0 0 0 0 1 1 2 2 2 3 ; pred: 0 0 1 3 1 1 2 0 2 3
  y = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
  p = [0, 0, 1, 3, 1, 1, 2, 0, 2, 3]
  m = metrics.classification_metrics(y, p, 4)
  assert m["confusion"] == [[2, 1, 0, 1], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 1]]
  assert m["wa"] == pytest.approx(7 / 10)
  # recalls 2/4, 2/2, 2/3, 1/1 -> UA = (0.5 + 1 + 2/3 + 1) / 4
  assert m["ua"] == pytest.approx((0.5 + 1 + 2 / 3 + 1) / 4)
  # precisions 2/3, 2/3, 1, 1/2; F1_i = 2PR/(P+R)
  f1 = [2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * (2 / 3) / (1 + 2 / 3),
        2 * 0.5 * 1 / 1.5]
  assert m["f1"] == pytest.approx(sum(f1) / 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_loop_reference(seed):
  rng = np.random.default_rng(seed)
  k = 4
  y = rng.integers(0, k, 200).tolist()
  p = [t if rng.random() < 0.6 else int(rng.integers(0, k)) for t in y]
  cm, wa, ua, f1 = _loop_reference(y, p, k)
  m = metrics.classification_metrics(y, p, k)
  assert m["confusion"] == cm
  assert m["wa"] == pytest.approx(wa)
  assert m["ua"] == pytest.approx(ua)
  assert m["f1"] == pytest.approx(f1)


def test_absent_class_and_never_predicted():
  y = [0, 0, 1, 1]
  p = [0, 2, 1, 1]  # class 2 predicted but absent in truth; class 3 nowhere
  cm, wa, ua, f1 = _loop_reference(y, p, 4)
  m = metrics.classification_metrics(y, p, 4)
  assert m["ua"] == pytest.approx(ua) and m["ua"] == pytest.approx(0.75)
  assert m["f1"] == pytest.approx(f1)
  assert m["recall"][3] is None


def test_summary_mean_std():
  folds = [metrics.classification_metrics([0, 1], [0, 1], 2),
           metrics.classification_metrics([0, 1], [0, 0], 2)]
  s = metrics.summarize_folds(folds)
  assert s["wa"]["mean"] == pytest.approx(0.75)
  assert s["wa"]["std"] == pytest.approx(0.25)
  assert s["confusion"] == [[2, 0], [1, 1]]
  np.testing.assert_allclose(s["confusion_normalized"], [[1, 0], [0.5, 0.5]])
  table = metrics.format_table({"dmf": s})
  assert "75.00 ± 25.00" in table


def test_bad_inputs_name_the_argument():
  with pytest.raises(ValueError, match="predictions"):
    metrics.confusion_matrix([0, 1], [0], 2)
  with pytest.raises(ValueError, match="labels must lie in"):
    metrics.confusion_matrix([0, 5], [0, 1], 2)
  with pytest.raises(ValueError, match="at least one fold"):
    metrics.summarize_folds([])


def test_plot_confusion_writes_png(tmp_path):
  path = metrics.plot_confusion([[3, 1], [0, 4]], ["a", "b"], str(tmp_path / "cm.png"), "t")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 1000


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_scikit_learn(seed):
  """WA, UA, macro-F1 and the confusion matrix against scikit-learn's (an independent
  implementation): accuracy, balanced accuracy (mean recall over the classes present), macro F1
  over the classes present in truth or prediction (0 for a class never predicted correctly)."""
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(seed)
  k = int(rng.integers(2, 7))
  n = int(rng.integers(1, 60))
  labels = rng.integers(0, k - (seed % 2), n)  # odd seeds: the last class never occurs in truth
  preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
  m = metrics.classification_metrics(labels, preds, k)
  np.testing.assert_array_equal(m["confusion"], sk.confusion_matrix(labels, preds,
                                                                      labels=range(k)))
  assert m["wa"] == pytest.approx(sk.accuracy_score(labels, preds), abs=1e-12)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
    ua = sk.balanced_accuracy_score(labels, preds)
  assert m["ua"] == pytest.approx(ua, abs=1e-12)
  assert m["f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro", zero_division=0),
                                  abs=1e-12)
