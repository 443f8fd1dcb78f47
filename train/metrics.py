"""Classification metrics of both papers: WA, UA, macro-F1, confusion matrix (NumPy, host side).

DMF §3 / MBAF §5 report *weighted accuracy* (WA: plain accuracy over all utterances) and
*unweighted accuracy* (UA: the mean of the per-class recalls); DMF also reports macro-F1.
Metrics are computed on the host from the predictions of the real (unpadded) rows only.
"""
import os
from typing import Mapping, Sequence

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """Counts ``C[i, j]`` = number of examples of true class i predicted as j.

  Args:
    labels: (N,) int true classes in [0, num_classes).
    predictions: (N,) int predicted classes in [0, num_classes).
    num_classes: number of classes K.

  Returns:
    (K, K) int64 confusion matrix (rows: truth, columns: prediction).
  """
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
  if labels.shape != predictions.shape:
    raise ValueError(f"labels has {labels.shape[0]} entries but predictions has "
                     f"{predictions.shape[0]}; pass one prediction per label.")
  for name, v in (("labels", labels), ("predictions", predictions)):
    if v.size and (v.min() < 0 or v.max() >= num_classes):
      raise ValueError(f"{name} must lie in [0, {num_classes}), got values in "
                       f"[{v.min()}, {v.max()}]; check num_classes.")
  flat = labels * num_classes + predictions
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def weighted_accuracy(cm: np.ndarray) -> float:
  """WA = Σ_i C[i, i] / Σ C (overall accuracy; DMF §3, MBAF §5)."""
  cm = np.asarray(cm, np.float64)
  total = cm.sum()
  return float(np.trace(cm) / total) if total else 0.0


def per_class_recall(cm: np.ndarray) -> np.ndarray:
  """recall_i = C[i, i] / Σ_j C[i, j]; classes with no examples get NaN."""
  cm = np.asarray(cm, np.float64)
  support = cm.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(support > 0, np.diag(cm) / support, np.nan)


def unweighted_accuracy(cm: np.ndarray) -> float:
  """UA = mean over the classes present of the per-class recall (DMF §3, MBAF §5)."""
  r = per_class_recall(cm)
  return float(np.nanmean(r)) if np.any(~np.isnan(r)) else 0.0


def macro_f1(cm: np.ndarray) -> float:
  """Macro-F1 = mean_i 2 P_i R_i / (P_i + R_i) over the classes present in truth or prediction.

  A class with P_i + R_i = 0 (present but never correct) contributes 0.
  """
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  pred = cm.sum(axis=0)
  true = cm.sum(axis=1)
  present = (pred + true) > 0
  if not present.any():
    return 0.0
  f1 = np.where(present, 2 * tp / np.maximum(pred + true, 1e-300), 0.0)
  return float(f1[present].mean())


def classification_metrics(labels, predictions, num_classes: int) -> dict:
  """WA, UA, macro-F1, per-class recall and the confusion matrix of one evaluation.

  Returns:
    ``{"wa", "ua", "f1", "recall": [K], "confusion": [[K×K]], "count"}`` (JSON-ready).
  """
  cm = confusion_matrix(labels, predictions, num_classes)
  return {"wa": weighted_accuracy(cm), "ua": unweighted_accuracy(cm), "f1": macro_f1(cm),
          "recall": [None if np.isnan(r) else float(r) for r in per_class_recall(cm)],
          "confusion": cm.tolist(), "count": int(cm.sum())}


def summarize_folds(fold_metrics: Sequence[Mapping], keys=("wa", "ua", "f1")) -> dict:
  """Cross-validation mean ± std (population std, ddof=0) of each metric over folds.

  Args:
    fold_metrics: one ``classification_metrics`` dict per fold.
    keys: metric names to aggregate.

  Returns:
    ``{key: {"mean", "std", "values"}}`` plus ``"confusion"``: the sum of the fold matrices
    and ``"confusion_normalized"``: the mean of the row-normalised fold matrices.
  """
  if not fold_metrics:
    raise ValueError("summarize_folds needs at least one fold's metrics.")
  out = {}
  for k in keys:
    v = np.array([m[k] for m in fold_metrics], np.float64)
    out[k] = {"mean": float(v.mean()), "std": float(v.std()), "values": v.tolist()}
  cms = np.array([m["confusion"] for m in fold_metrics], np.float64)
  out["confusion"] = cms.sum(axis=0).astype(np.int64).tolist()
  out["confusion_normalized"] = np.mean([normalize_rows(c) for c in cms], axis=0).tolist()
  return out


def normalize_rows(cm) -> np.ndarray:
  """Row-normalised confusion matrix (each true class sums to 1; empty rows stay 0)."""
  cm = np.asarray(cm, np.float64)
  s = cm.sum(axis=1, keepdims=True)
  return np.divide(cm, s, out=np.zeros_like(cm), where=s > 0)


def plot_confusion(cm, class_names: Sequence[str], path: str, title: str = "") -> str:
  """Saves a row-normalised confusion-matrix heat map (counts annotated) as a PNG (matplotlib Agg)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cm = np.asarray(cm, np.float64)
  norm = normalize_rows(cm)
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
  im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
  ax.set_xticks(range(k), class_names)
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  integral = np.allclose(cm, np.round(cm))
  for i in range(k):
    for j in range(k):
      text = f"{int(cm[i, j])}\n{norm[i, j]:.2f}" if integral else f"{norm[i, j]:.2f}"
      ax.text(j, i, text, ha="center", va="center", fontsize=8,
              color="white" if norm[i, j] > 0.5 else "black")
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def format_table(rows: Mapping[str, Mapping]) -> str:
  """A text table ``model | WA | UA | F1`` with mean ± std in percent (F1 as a fraction).

  Args:
    rows: ``{model_name: summarize_folds(...)}``.
  """
  lines = [f"{'model':<12} {'WA (%)':>14} {'UA (%)':>14} {'F1':>14}"]
  for name, s in rows.items():
    wa, ua, f1 = s["wa"], s["ua"], s["f1"]
    lines.append(f"{name:<12} {100 * wa['mean']:6.2f} ± {100 * wa['std']:5.2f} "
                 f"{100 * ua['mean']:6.2f} ± {100 * ua['std']:5.2f} "
                 f"{f1['mean']:6.3f} ± {f1['std']:5.3f}")
  return "\n".join(lines)
