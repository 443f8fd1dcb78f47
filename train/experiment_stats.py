"""Statistics of a table cell over seeds × folds, and of a paired memory − naive difference.

A cell's value of one seed is the mean over its folds (the paper's cross-validation number);
"mean ± std" is over all seed × fold values (std with ddof = 1); the 95 % CI is the t-interval
over the per-seed values; a memory − naive difference is paired by seed (same seed, same folds,
same data) and its CI is the t-interval of the per-seed differences.
"""
import math

import numpy as np


def t_quantile(df: int, q: float = 0.975) -> float:
  """The q-quantile of Student's t with ``df`` degrees of freedom (scipy).

  Args:
    df: degrees of freedom (≥ 1).
    q: probability; 0.975 gives the half-width factor of a two-sided 95 % interval.

  Returns:
    The quantile as a float.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.t.ppf(q, df))


def aggregate(values: np.ndarray) -> dict:
  """Statistics of one cell from its (seeds, folds) values.

  Args:
    values: (S, F) metric values, one row per seed, one column per fold.

  Returns:
    ``{"mean", "std", "n", "seed_means", "ci95": [lo, hi] or None, "values"}``: mean and std
    (ddof = 1; 0 for one value) over all S·F values, the per-seed fold means and the 95 %
    t-interval of their mean (None for one seed).
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 2 or v.size == 0:
    raise ValueError(f"aggregate: expected a non-empty (seeds, folds) array, got shape {v.shape}")
  seed_means = v.mean(axis=1)
  flat = v.reshape(-1)
  std = float(flat.std(ddof=1)) if flat.size > 1 else 0.0
  return {"mean": float(flat.mean()), "std": std, "n": int(flat.size),
          "seed_means": seed_means.tolist(), "ci95": _t_interval(seed_means),
          "values": v.tolist()}


def _t_interval(x: np.ndarray):
  """The 95 % t-interval ``[lo, hi]`` of the mean of ``x``; None for fewer than two values."""
  x = np.asarray(x, np.float64)
  if x.size < 2:
    return None
  half = t_quantile(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
  return [float(x.mean() - half), float(x.mean() + half)]


def paired_difference(memory: np.ndarray, naive: np.ndarray) -> dict:
  """Memory − naive, paired by seed (and fold).

  Args:
    memory, naive: (S, F) values of the two cells (same seeds, same folds).

  Returns:
    ``{"mean", "ci95", "seed_diffs", "wins", "n_seeds"}``: the mean per-seed difference of the
    fold means, its 95 % t-interval (None for one seed), and in how many of the S·F
    (seed, fold) pairs memory scored higher (``wins`` = [higher, equal, lower]).
  """
  m, n = np.asarray(memory, np.float64), np.asarray(naive, np.float64)
  if m.shape != n.shape:
    raise ValueError(f"paired_difference: shapes differ {m.shape} vs {n.shape} (different seeds "
                     "or folds); pair runs of the same seeds and folds.")
  d = m.mean(axis=1) - n.mean(axis=1)
  diff = (m - n).reshape(-1)
  return {"mean": float(d.mean()), "ci95": _t_interval(d), "seed_diffs": d.tolist(),
          "wins": [int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())],
          "n_seeds": int(d.size)}
