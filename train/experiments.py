r"""The papers' tables, reproduced: every config × seed × fold, aggregated beside the papers' numbers.

  python -m train.experiments dmf_table1 --data_dir=/data/IEMOCAP_full_release --workdir=runs/t1
  python -m train.experiments dmf_table1 --synthetic --workdir=runs/t1_syn          # 5 seeds
  python -m train.experiments mbaf_table4_memory_size --synthetic --seeds=3 --workdir=runs/t4

Tables (``--list`` prints them): ``dmf_table1`` (DMF vs naive, IEMOCAP LOSO), ``mbaf_table1``
(NF/MBAF I–III, IEMOCAP 8:1:1), ``mbaf_table2`` (CEBS F-IV/V/VI, NF vs MBAF, LOGO),
``mbaf_table4_memory_size`` (IEMOCAP MBAF-III, memory size l), ``mbaf_table5_cebs_memory_size``
(CEBS F-IV/V/VI, memory size l), ``mbaf_table6_read`` (naive vs cross-attention read over l),
``mbaf_single_mode`` (§6.3, memory on one mode, no table in the paper) and ``dmf_inference``
(DMF §3.2 inference time per sample, memory vs naive). ``mbaf_table4`` / ``mbaf_table5`` /
``mbaf_table6`` are accepted as short names.

Each run is ``train.trainer.train_and_evaluate`` in its own ``<workdir>/<config key>/seed<k>/``;
a run whose metrics.json is complete is read, not rerun (rerunning a command resumes it; a run
interrupted mid-fold resumes from its checkpoint). Runs shared by several tables (e.g. MBAF-III at
l = 30 in Tables 4 and 6) are trained once. Outputs: ``<workdir>/<table>.md`` (the table in the
paper's layout, paper rows beside ours), ``<workdir>/<table>.json`` (every value, per seed and
fold) and, for a memory-size sweep, ``<workdir>/<table>.png``.

Statistics (see ``aggregate`` / ``paired_difference``): a cell's value of one seed is the mean over
the folds (the paper's cross-validation number); "mean ± std" is over all seed × fold values (std
with ddof = 1); the 95 % CI is the t-interval over the per-seed values; a memory − naive difference
is paired by seed (same seed, same folds, same data) and its CI is the t-interval of the per-seed
differences — an interval containing 0 is no evidence of a difference.
"""
import argparse
import ast
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

from configs.common import fusion_kinds
from train.errors import NonFiniteLossError, UserError

METRIC_NAMES = {"wa": "WA", "ua": "UA", "f1": "F1"}


# ----------------------------------------------------------------------------- table definitions
@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One trained configuration (all its fusions are trained in one run).

  Attributes:
    module: config module under ``configs`` ("iemocap", "iemocap_mbaf", "cebs", "ablations").
    arg: its ``get_config`` variant string (without demo/smoke; added for --synthetic).
    overrides: extra ``(dotted.field, value)`` pairs applied after ``get_config``.
  """
  module: str
  arg: str = ""
  overrides: tuple = ()

  @property
  def key(self) -> str:
    """Directory name of the run (stable: shared between tables)."""
    parts = [self.module] + [a for a in self.arg.split(",") if a]
    parts += [f"{k.split('.')[-1]}={v}" for k, v in self.overrides]
    return "_".join(p.replace("=", "").replace(".", "").replace("/", "") for p in parts)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One number of a table: ``metric`` of fusion ``fusion`` of run ``spec``.

  Attributes:
    row: row label in the table.
    col: column label.
    spec: the run.
    fusion: the fusion kind inside the run's metrics ("dmf", "naive", "mbaf").
    metric: "wa" | "ua" | "f1".
    paper: the paper's number (percent for WA/UA, fraction for F1), None if it gives none.
  """
  row: str
  col: str
  spec: RunSpec
  fusion: str
  metric: str
  paper: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Pair:
  """A memory-vs-naive comparison: (memory row, naive row) of the same column."""
  label: str
  memory_row: str
  naive_row: str


@dataclasses.dataclass(frozen=True)
class Table:
  """A table of the papers.

  Attributes:
    name: command-line name.
    title: the paper's caption (source).
    rows, cols: labels in the paper's order.
    cells: every number.
    pairs: paired memory − naive differences reported below the table.
    sweep: x values (memory sizes) of the columns for a plot, or ().
    note: what the table leaves out or how it was adapted.
  """
  name: str
  title: str
  rows: tuple
  cols: tuple
  cells: tuple
  pairs: tuple = ()
  sweep: tuple = ()
  note: str = ""


SLOTS = (10, 20, 30, 40, 50, 100)  # MBAF Tables 4-6


def _grid(rows_specs, cols_metrics):
  """Cells for a "model rows × metric columns" table.

  Args:
    rows_specs: [(row label, RunSpec, fusion, {metric: paper value})].
    cols_metrics: [(col label, metric)].
  """
  return tuple(Cell(r, c, spec, fusion, m, paper.get(m)) for r, spec, fusion, paper in rows_specs
               for c, m in cols_metrics)


def _dmf_table1() -> Table:
  both = RunSpec("iemocap", "both")
  rows = [("DMF (memory fusion)", both, "dmf", {"wa": 76.8, "ua": 77.3, "f1": 0.77}),
          ("naive fusion", both, "naive", {"wa": 74.3, "ua": 75.2, "f1": 0.74})]
  cols = [("WA (%)", "wa"), ("UA (%)", "ua"), ("F1", "f1")]
  return Table("dmf_table1", "DMF Table 1 / §3.2: memory vs naive fusion, IEMOCAP LOSO",
               tuple(r[0] for r in rows), tuple(c[0] for c in cols), _grid(rows, cols),
               pairs=(Pair("DMF − naive", rows[0][0], rows[1][0]),),
               note="The naive row is the paper's §3.2 text (74.3 / 75.2 / 0.74), not Table 1.")


def _mbaf_table1() -> Table:
  paper = {"NF-I": (79.27, 77.85), "NF-II": (80.01, 78.98), "NF-III": (80.51, 79.22),
           "MBAF-I": (79.75, 78.13), "MBAF-II": (80.60, 79.49), "MBAF-III": (82.20, 80.66)}
  rows = []
  for kind, fusion in (("NF", "naive"), ("MBAF", "mbaf")):
    for level in ("I", "II", "III"):
      name = f"{kind}-{level}"
      wa, ua = paper[name]
      rows.append((name, RunSpec("iemocap_mbaf", f"{level},both"), fusion, {"wa": wa, "ua": ua}))
  cols = [("WA (%)", "wa"), ("UA (%)", "ua")]
  return Table("mbaf_table1", "MBAF Table 1: recognition accuracy for IEMOCAP (8:1:1 split)",
               tuple(r[0] for r in rows), tuple(c[0] for c in cols), _grid(rows, cols),
               pairs=tuple(Pair(f"MBAF-{l} − NF-{l}", f"MBAF-{l}", f"NF-{l}")
                           for l in ("I", "II", "III")),
               note="The paper's SOTA rows (MCNN-LSTM, MDRE, MHA-2) are other systems, not rerun.")


def _mbaf_table2() -> Table:
  paper = {"F-IV": (35.23, 41.75), "F-V": (51.68, 53.58), "F-VI": (51.50, 53.98)}
  modes = {"F-IV": "ECG+RS", "F-V": "ECG+SCG", "F-VI": "RS+SCG"}
  cells, rows = [], []
  for pair, (nf, mb) in paper.items():
    spec = RunSpec("cebs", f"{pair},both")
    row = f"{pair} ({modes[pair]})"
    rows.append(row)
    cells += [Cell(row, "UA-NF (%)", spec, "naive", "ua", nf),
              Cell(row, "UA-MBAF (%)", spec, "mbaf", "ua", mb)]
  # Pairs compare columns of one row here: expressed as pseudo-rows below (see _pair_cells).
  return Table("mbaf_table2", "MBAF Table 2: UA for PhysioNet CEBS (LOGO, 4 groups)",
               tuple(rows), ("UA-NF (%)", "UA-MBAF (%)"), tuple(cells),
               pairs=tuple(Pair(f"{r}: MBAF − NF", f"{r}|UA-MBAF (%)", f"{r}|UA-NF (%)")
                           for r in rows))


def _mbaf_table4() -> Table:
  paper = {"UA (%)": (80.07, 80.66, 80.66, 79.10, 80.07, 79.10),
           "WA (%)": (81.27, 81.98, 82.20, 80.49, 81.03, 80.55)}
  cells = []
  for row, metric in (("UA (%)", "ua"), ("WA (%)", "wa")):
    for l, p in zip(SLOTS, paper[row]):
      cells.append(Cell(row, str(l), RunSpec("ablations", f"slots={l}"), "mbaf", metric, p))
    cells.append(Cell(row, "NF-III", RunSpec("iemocap_mbaf", "III,nf"), "naive", metric,
                      {"ua": 79.22, "wa": 80.51}[metric]))
  cols = tuple(str(l) for l in SLOTS) + ("NF-III",)
  return Table("mbaf_table4_memory_size",
               "MBAF Table 4: MBAF-III on IEMOCAP vs memory size l (NF-III from Table 1)",
               ("UA (%)", "WA (%)"), cols, tuple(cells),
               pairs=tuple(Pair(f"l={l} − NF-III ({r})", f"{r}|{l}", f"{r}|NF-III")
                           for r in ("UA (%)", "WA (%)") for l in SLOTS),
               sweep=SLOTS)


def _mbaf_table5() -> Table:
  paper = {"F-IV": (39.86, 41.75, 41.61, 40.96, 40.80, 41.02),
           "F-V": (53.58, 53.12, 52.08, 52.73, 52.68, 52.48),
           "F-VI": (52.94, 53.98, 52.81, 52.39, 51.82, 53.07)}
  nf = {"F-IV": 35.23, "F-V": 51.68, "F-VI": 51.50}
  cells = []
  for pair, values in paper.items():
    for l, p in zip(SLOTS, values):
      spec = RunSpec("cebs", pair, (("model.fusion.mbaf.slots", l),))
      cells.append(Cell(pair, str(l), spec, "mbaf", "ua", p))
    cells.append(Cell(pair, "NF", RunSpec("cebs", f"{pair},nf"), "naive", "ua", nf[pair]))
  cols = tuple(str(l) for l in SLOTS) + ("NF",)
  return Table("mbaf_table5_cebs_memory_size",
               "MBAF Table 5: UA (%) for CEBS vs memory size l (NF from Table 2)",
               tuple(paper), cols, tuple(cells),
               pairs=tuple(Pair(f"{p} l={l} − NF", f"{p}|{l}", f"{p}|NF")
                           for p in paper for l in SLOTS),
               sweep=SLOTS)


def _mbaf_table6() -> Table:
  paper = {"UA-NA (%)": (80.07, 80.66, 80.66, 79.10, 80.07, 79.10),
           "UA-CA (%)": (79.82, 80.27, 79.49, 78.13, 79.30, 79.88),
           "WA-NA (%)": (81.27, 81.98, 82.20, 80.49, 81.03, 80.55),
           "WA-CA (%)": (80.80, 81.33, 80.45, 80.22, 80.99, 80.93)}
  cells = []
  for row, values in paper.items():
    metric = row[:2].lower()
    cross = "CA" in row
    for l, p in zip(SLOTS, values):
      spec = RunSpec("ablations", f"cross,slots={l}" if cross else f"slots={l}")
      cells.append(Cell(row, str(l), spec, "mbaf", metric, p))
  return Table("mbaf_table6_read",
               "MBAF Table 6: MBAF-III on IEMOCAP, naive-attention (NA) vs cross-attention (CA) "
               "memory read, vs memory size l",
               tuple(paper), tuple(str(l) for l in SLOTS), tuple(cells),
               pairs=tuple(Pair(f"{m} l={l}: CA − NA", f"{m}-CA (%)|{l}", f"{m}-NA (%)|{l}")
                           for m in ("UA", "WA") for l in SLOTS),
               sweep=SLOTS,
               note="Here the pairs are CA − NA (the paper: CA does not beat NA).")


def _mbaf_single() -> Table:
  rows = [("MBAF-III (both modes)", RunSpec("ablations", "slots=30"), "mbaf", {}),
          ("memory on audio only (i=1)", RunSpec("ablations", "single=0"), "mbaf", {}),
          ("memory on text only (i=2)", RunSpec("ablations", "single=1"), "mbaf", {}),
          ("NF-III", RunSpec("iemocap_mbaf", "III,nf"), "naive", {})]
  cols = [("WA (%)", "wa"), ("UA (%)", "ua")]
  return Table("mbaf_single_mode",
               "MBAF §6.3: memory on one mode (Eq. 13), l = 30; the paper gives only the best of "
               "the two, UA 78.31 % / WA 80.29 %",
               tuple(r[0] for r in rows), tuple(c[0] for c in cols), _grid(rows, cols),
               pairs=(Pair("audio-only − NF-III", rows[1][0], "NF-III"),
                      Pair("text-only − NF-III", rows[2][0], "NF-III"),
                      Pair("both − NF-III", rows[0][0], "NF-III")))


TABLES = {t.name: t for t in (_dmf_table1(), _mbaf_table1(), _mbaf_table2(), _mbaf_table4(),
                              _mbaf_table5(), _mbaf_table6(), _mbaf_single())}
ALIASES = {"mbaf_table4": "mbaf_table4_memory_size", "mbaf_table5": "mbaf_table5_cebs_memory_size",
           "mbaf_table6": "mbaf_table6_read"}
ALL_NAMES = tuple(TABLES) + ("dmf_inference",)


# ----------------------------------------------------------------------------- statistics
def t_quantile(df: int, q: float = 0.975) -> float:
  """The q-quantile of Student's t with ``df`` degrees of freedom (scipy)."""
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


# ----------------------------------------------------------------------------- running
def _set_field(config, dotted: str, value):
  """``config.a.b = value`` with the value cast to the field's type (UserError if unknown)."""
  parts = dotted.split(".")
  node = config
  for p in parts[:-1]:
    if p not in node:
      raise UserError(f"override {dotted!r}: the config has no field {p!r}; check the spelling "
                      "(e.g. train.epochs, model.fusion.dmf.slots).")
    node = node[p]
  if parts[-1] not in node:
    raise UserError(f"override {dotted!r}: the config has no field {parts[-1]!r}; check the "
                    "spelling (e.g. train.epochs, model.fusion.dmf.slots).")
  old = node[parts[-1]]
  if isinstance(value, str) and not isinstance(old, str):
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise UserError(f"override {dotted}={value!r}: not a valid {type(old).__name__}.") from e
    if isinstance(old, float) and isinstance(value, int):
      value = float(value)
  node[parts[-1]] = value


def build_config(spec: RunSpec, seed: int, synthetic: bool, size: str, data_dir: str,
                 workdir: str, folds: int = 0, overrides: Sequence = ()):
  """The ``ml_collections`` config of one run.

  Args:
    spec: the run.
    seed: ``config.seed``.
    synthetic: use the synthetic corpus (``size`` variant: "demo" or "smoke"), generated once
      into ``<workdir>/data/<dataset>`` and shared by every run.
    size: "demo" | "smoke" | "" (full size; real data).
    data_dir: the real data set (IEMOCAP_full_release or cebsdb); ignored with ``synthetic``.
    workdir: the experiment's top directory.
    folds: >0: only the first ``folds`` folds.
    overrides: user ``"dotted.field=value"`` strings, applied last.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"configs.{spec.module}")
  arg = ",".join(a for a in (spec.arg, size) if a)
  config = module.get_config(arg or None)
  config.seed = int(seed)
  for k, v in spec.overrides:
    _set_field(config, k, v)
  if synthetic:
    config.data.synthetic = True
    config.data.data_dir = os.path.join(os.path.abspath(workdir), "data", config.data.dataset)
    config.data.cache_dir = os.path.join(os.path.abspath(workdir), "data",
                                         f"{config.data.dataset}_cache")
  elif data_dir:
    config.data.data_dir = data_dir
  if folds:
    config.data.max_folds = int(folds)
  config.train.progress = False
  for o in overrides:
    if "=" not in o:
      raise UserError(f"--set {o!r}: expected dotted.field=value, e.g. --set train.epochs=4.")
    k, v = o.split("=", 1)
    _set_field(config, k.strip(), v.strip())
  return config


def run_is_complete(run_dir: str, config) -> bool:
  """True when ``run_dir/metrics.json`` holds every fusion of ``config`` with a final table."""
  path = os.path.join(run_dir, "metrics.json")
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      m = json.load(f)
  except (OSError, ValueError):
    return False
  kinds = fusion_kinds(config)
  return "table" in m and all(k in m.get("fusions", {}) for k in kinds)


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(run_dir: str, config) -> list:
  """Fields in which ``config`` differs from the one stored in ``run_dir/config.json`` (by the
  trainer); [] when equal or when nothing readable is stored."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      stored = json.load(f).get("config")
  except (OSError, ValueError, AttributeError):
    return []
  if not isinstance(stored, dict):
    return []
  a, b = _flatten(stored), _flatten(json.loads(config.to_json_best_effort()))
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _trainer() -> Callable:
  from train import trainer  # pylint: disable=g-import-not-at-top
  return trainer.train_and_evaluate


def run_all(specs: Sequence[RunSpec], seeds: Sequence[int], args, log=print) -> dict:
  """Trains (or reads) every spec × seed; returns ``{(spec.key, seed): metrics}``.

  A finished run (metrics.json complete) is read without calling the trainer.
  """
  out = {}
  total = len(specs) * len(seeds)
  done = 0
  for spec in specs:
    for seed in seeds:
      done += 1
      run_dir = os.path.join(args.workdir, spec.key, f"seed{seed}")
      config = build_config(spec, seed, args.synthetic, args.size, args.data_dir, args.workdir,
                            args.folds, args.set)
      if run_is_complete(run_dir, config):
        diff = config_differences(run_dir, config)
        if diff and not args.reuse_existing:
          raise UserError(f"{run_dir} holds a finished run of a different config (fields "
                          f"{diff[:8]}{' …' if len(diff) > 8 else ''} differ, e.g. another --folds, "
                          "--set or size). Use a fresh --workdir, or --reuse_existing to read it "
                          "anyway.")
        with open(os.path.join(run_dir, "metrics.json")) as f:
          out[(spec.key, seed)] = json.load(f)
        log(f"[{done}/{total}] {spec.key} seed {seed}: finished earlier, read {run_dir}")
        continue
      failed_path = os.path.join(run_dir, "failed.json")
      if os.path.exists(failed_path) and not getattr(args, "retry_failed", False):
        with open(failed_path) as f:
          out[(spec.key, seed)] = json.load(f)
        reason = out[(spec.key, seed)].get("failed", "?")
        log(f"[{done}/{total}] {spec.key} seed {seed}: failed earlier ({reason}); excluded "
            "(--retry_failed to train it again)")
        continue
      log(f"[{done}/{total}] {spec.key} seed {seed}: training in {run_dir}")
      t0 = time.time()
      try:
        out[(spec.key, seed)] = _trainer()(config, run_dir)
      except NonFiniteLossError as e:
        # A diverged run is a result, not a crash of the table: recorded and excluded.
        out[(spec.key, seed)] = {"failed": f"NonFiniteLossError: {e}"}
        from train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
        os.makedirs(run_dir, exist_ok=True)
        metrics_lib.write_json(failed_path, out[(spec.key, seed)])
        log(f"[{done}/{total}] {spec.key} seed {seed}: FAILED after {time.time() - t0:.0f} s: {e}")
        continue
      if os.path.exists(failed_path):
        os.remove(failed_path)
      log(f"[{done}/{total}] {spec.key} seed {seed}: done in {time.time() - t0:.0f} s")
  return out


def cell_values(cell: Cell, results: dict, seeds: Sequence[int]):
  """Values of a cell (WA/UA in percent, F1 as a fraction), folds in the run's order.

  Returns:
    ``(values (S', F), seeds used)``: the seeds whose run did not fail.
  """
  rows, used = [], []
  for seed in seeds:
    r = results[(cell.spec.key, seed)]
    if "failed" in r:
      continue
    used.append(seed)
    fus = r["fusions"][cell.fusion]["folds"]
    scale = 1.0 if cell.metric == "f1" else 100.0
    rows.append([scale * float(f[cell.metric]) for f in fus.values()])
  if not rows:
    raise UserError(f"{cell.spec.key}: every seed's run failed (see failed.json in its run "
                    "directories); nothing to aggregate.")
  if len({len(r) for r in rows}) != 1:
    raise UserError(f"{cell.spec.key}: the seeds have different numbers of folds "
                    f"({[len(r) for r in rows]}); rerun in a fresh --workdir.")
  return np.array(rows), used


def summarize(table: Table, results: dict, seeds: Sequence[int]) -> dict:
  """Every cell's statistics and every pair's difference (JSON-ready)."""
  cells = {}
  for cell in table.cells:
    v, used = cell_values(cell, results, seeds)
    cells[f"{cell.row}|{cell.col}"] = dict(aggregate(v), seeds=used, row=cell.row, col=cell.col,
                                           metric=cell.metric, paper=cell.paper,
                                           run=cell.spec.key, fusion=cell.fusion)
  pairs = []
  for p in table.pairs:
    for col in ([None] if "|" in p.memory_row else table.cols):
      mk = p.memory_row if col is None else f"{p.memory_row}|{col}"
      nk = p.naive_row if col is None else f"{p.naive_row}|{col}"
      if mk not in cells or nk not in cells:
        continue
      both = [x for x in cells[mk]["seeds"] if x in cells[nk]["seeds"]]  # paired by seed
      pick = lambda c: [c["values"][c["seeds"].index(x)] for x in both]  # pylint: disable=cell-var-from-loop
      d = paired_difference(pick(cells[mk]), pick(cells[nk]))
      d["seeds"] = both
      pm, pn = cells[mk]["paper"], cells[nk]["paper"]
      d.update(label=p.label, col=col, memory=mk, naive=nk,
               metric=cells[mk]["metric"],
               paper=None if pm is None or pn is None else round(pm - pn, 4))
      pairs.append(d)
  failed = [{"run": k, "seed": seed, "error": r["failed"]} for (k, seed), r in results.items()
            if "failed" in r]
  return {"table": table.name, "title": table.title, "seeds": list(seeds), "cells": cells,
          "pairs": pairs, "note": table.note, "failed_runs": failed}


def _fmt(x, metric, digits=None):
  if x is None:
    return "–"
  d = digits if digits is not None else (3 if metric == "f1" else 2)
  return f"{x:.{d}f}"


def to_markdown(table: Table, summary: dict, header: str = "") -> str:
  """The table in the paper's layout: for each paper row a "paper" line and an "ours" line
  (mean ± std over seeds × folds, 95 % CI over seeds), then the paired differences."""
  cells = summary["cells"]
  lines = [f"### {table.title}", ""]
  if header:
    lines += [header, ""]
  lines.append("| | " + " | ".join(table.cols) + " |")
  lines.append("|---" * (len(table.cols) + 1) + "|")
  for row in table.rows:
    paper, ours, ci = [], [], []
    for col in table.cols:
      c = cells.get(f"{row}|{col}")
      if c is None:
        paper.append(""), ours.append(""), ci.append("")
        continue
      paper.append(_fmt(c["paper"], c["metric"]))
      ours.append(f"{_fmt(c['mean'], c['metric'])} ± {_fmt(c['std'], c['metric'])}")
      ci.append("–" if c["ci95"] is None else
                f"[{_fmt(c['ci95'][0], c['metric'])}, {_fmt(c['ci95'][1], c['metric'])}]")
    lines.append(f"| {row} — paper | " + " | ".join(paper) + " |")
    lines.append(f"| {row} — ours | " + " | ".join(ours) + " |")
    lines.append(f"| {row} — ours 95 % CI | " + " | ".join(ci) + " |")
  if summary["pairs"]:
    lines += ["", "| paired difference | metric | paper | ours (mean over seeds) | 95 % CI | "
              "(seed, fold) pairs higher / equal / lower |", "|---|---|---|---|---|---|"]
    for p in summary["pairs"]:
      m = p["metric"]
      ci = "–" if p["ci95"] is None else f"[{_fmt(p['ci95'][0], m)}, {_fmt(p['ci95'][1], m)}]"
      col = "" if p["col"] is None else f" ({p['col']})"
      lines.append(f"| {p['label']}{col} | {METRIC_NAMES[m]} | {_fmt(p['paper'], m)} | "
                   f"{_fmt(p['mean'], m)} | {ci} | {'/'.join(map(str, p['wins']))} |")
  for f in summary.get("failed_runs", []):
    lines += ["", f"Failed run, excluded from every cell it feeds (and from its pairs): "
              f"{f['run']} seed {f['seed']}: {f['error'].splitlines()[0][:300]}"]
  if table.note:
    lines += ["", f"Note: {table.note}"]
  return "\n".join(lines) + "\n"


def plot_sweep(table: Table, summary: dict, path: str) -> str:
  """Memory size vs metric (ours with 95 % CI error bars; the paper's values dashed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for i, row in enumerate(table.rows):
    color = f"C{i}"
    xs, ys, err, paper = [], [], [], []
    for l in table.sweep:
      c = summary["cells"].get(f"{row}|{l}")
      if c is None:
        continue
      xs.append(l)
      ys.append(c["mean"])
      half = 0.0 if c["ci95"] is None else (c["ci95"][1] - c["ci95"][0]) / 2
      err.append(half)
      paper.append(np.nan if c["paper"] is None else c["paper"])
    axes[0].errorbar(xs, ys, yerr=err, marker="o", color=color, capsize=3, label=f"{row} ours")
    axes[1].plot(xs, paper, "--s", color=color, label=f"{row} paper")
  for ax, what in zip(axes, ("ours (mean, 95 % CI over seeds)", "paper")):
    ax.set_xscale("log")
    ax.set_xticks(list(table.sweep), [str(l) for l in table.sweep])
    ax.set_xlabel("memory size l (slots)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(what)
    ax.legend(fontsize=7)
  fig.suptitle(table.title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _machine() -> dict:
  import platform  # pylint: disable=g-import-not-at-top
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count()}
  try:
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  try:
    import jax  # pylint: disable=g-import-not-at-top
    info["jax"] = jax.__version__
    info["devices"] = [str(d) for d in jax.devices()]
  except Exception:  # pylint: disable=broad-except
    pass
  return info


def run_table(name: str, args, log=print) -> dict:
  """Runs (or reads) every run of a table, writes ``<table>.md/.json(/.png)``; returns the
  summary."""
  table = TABLES[name]
  seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
  specs = list(dict.fromkeys(c.spec for c in table.cells))
  t0 = time.time()
  results = run_all(specs, seeds, args, log)
  summary = summarize(table, results, seeds)
  summary.update(command=" ".join(["python -m train.experiments"] + args.argv),
                 synthetic=bool(args.synthetic), size=args.size, folds=args.folds,
                 overrides=list(args.set), wall_s=round(time.time() - t0, 1),
                 machine=_machine())
  header = (f"Ours: {'synthetic corpus, ' + args.size + ' size' if args.synthetic else 'real data'}"
            f", seeds {seeds}, {len(next(iter(summary['cells'].values()))['values'][0])} fold(s) "
            "per seed; mean ± std over seeds × folds, 95 % CI: t-interval over the per-seed "
            "fold means.")
  md = to_markdown(table, summary, header)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, f"{name}.md"), "w") as f:
    f.write(md)
  from train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  metrics_lib.write_json(os.path.join(args.workdir, f"{name}.json"), summary)
  if table.sweep:
    summary["plot"] = plot_sweep(table, summary, os.path.join(args.workdir, f"{name}.png"))
  log(md)
  return summary


# ----------------------------------------------------------------------------- inference time
def run_inference(args, log=print) -> dict:
  """DMF §3.2: per-sample inference time (batch 1) of DMF vs naive fusion.

  Reuses ``benchmarks.bench_train`` (model builder, random batch) and ``benchmarks.common``
  (compile + median timing). Full size: Wav2Vec2-base + BERT-base (random init: the time does not
  depend on the weights), 5 s audio, 30 tokens; ``--synthetic``: the demo config's tiny encoders.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import bench_train  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from train import steps  # pylint: disable=g-import-not-at-top
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, "dmf_inference.json")
  iters = args.iters or (20 if args.synthetic else 10)
  c = build_config(RunSpec("iemocap"), 0, args.synthetic, args.size, "", args.workdir, 0,
                   args.set)
  rows = {}
  for kind in ("dmf", "naive"):
    model = bench_train._build(c, kind, jnp.float32)  # pylint: disable=protected-access
    batch = bench_train._batch(c, 1)  # pylint: disable=protected-access
    variables = steps.init_variables(model, batch, jax.random.key(0))
    tx = steps.make_optimizer(c.optim, variables["params"], variables.get("memory", {}))
    state = steps.create_state(variables, tx)
    rec = common.measure(f"infer_{kind}_b1", steps.make_eval_step(model.apply), (state, batch),
                         items=1, shape={"batch": 1}, dtype="float32", warmup=3, iters=iters)
    rows[kind] = rec["median_ms"]
    log(f"{kind}: {rec['median_ms']:.2f} ms per sample (median of {iters})")
  summary = {"table": "dmf_inference", "ms_per_sample": rows,
             "paper_ms_per_sample": {"dmf": 91.0, "naive": 63.0},
             "overhead_frac": (rows["dmf"] - rows["naive"]) / rows["naive"],
             "paper_overhead_frac": (91.0 - 63.0) / 63.0,
             "encoders": c.model.audio.size + "/" + c.model.text.size,
             "audio_s": c.data.max_seconds, "tokens": c.data.max_tokens,
             "slots": c.model.fusion.dmf.slots, "device": common.device_name(),
             "machine": _machine(), "command": " ".join(["python -m train.experiments"] + args.argv)}
  md = "\n".join([
      "### DMF §3.2: average inference time per sample (batch 1)", "",
      f"Ours: {summary['device']}, {summary['encoders']} encoders, {c.data.max_seconds} s audio, "
      f"{c.data.max_tokens} tokens, {summary['slots']} slots; median of {iters} calls. "
      "Paper: NVIDIA M40/T4 cluster.", "",
      "| | DMF (ms) | naive (ms) | DMF / naive − 1 |", "|---|---|---|---|",
      f"| paper | 91 | 63 | {100 * summary['paper_overhead_frac']:.1f} % |",
      f"| ours | {rows['dmf']:.2f} | {rows['naive']:.2f} | "
      f"{100 * summary['overhead_frac']:.1f} % |", ""])
  with open(os.path.join(args.workdir, "dmf_inference.md"), "w") as f:
    f.write(md)
  metrics_lib.write_json(path, summary)
  log(md)
  return summary


# ----------------------------------------------------------------------------- command line
def parse_args(argv):
  p = argparse.ArgumentParser(
      prog="python -m train.experiments",
      description="Reproduce a table of the DMF / MBAF papers (see docs/EXPERIMENTS.md).")
  p.add_argument("table", nargs="?", help=f"one of {', '.join(ALL_NAMES)} "
                 f"(short names: {', '.join(ALIASES)}), or 'all'")
  p.add_argument("--workdir", help="top directory: one sub-directory per run, tables at the top")
  p.add_argument("--data_dir", default="", help="IEMOCAP_full_release (IEMOCAP tables) or cebsdb "
                 "(CEBS tables); not needed with --synthetic")
  p.add_argument("--cebs_dir", default="", help="cebsdb directory for 'all' (else --data_dir)")
  p.add_argument("--synthetic", action="store_true",
                 help="synthetic corpora at --size (generated once into <workdir>/data)")
  p.add_argument("--size", default=None, choices=["demo", "smoke", "full"],
                 help="config size: demo (default with --synthetic), smoke (seconds, tests) or "
                 "full (default on real data)")
  p.add_argument("--seeds", type=int, default=None,
                 help="number of seeds (default 5 with --synthetic, 1 on real data)")
  p.add_argument("--seed_offset", type=int, default=0, help="first seed (seeds are consecutive)")
  p.add_argument("--folds", type=int, default=0, help="only the first N folds (0: all)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override applied to every run, e.g. --set train.epochs=4 "
                 "(repeatable)")
  p.add_argument("--iters", type=int, default=0, help="dmf_inference: timed calls")
  p.add_argument("--compile_cache", default="",
                 help="persistent XLA compilation cache shared by the runs (the seeds of a config "
                 "compile the same programs); default <workdir>/jax_cache, 'none' = off")
  p.add_argument("--reuse_existing", action="store_true",
                 help="read finished runs even when their stored config differs from this one")
  p.add_argument("--retry_failed", action="store_true",
                 help="train again the runs that failed earlier (non-finite loss)")
  p.add_argument("--list", action="store_true", help="list the tables and their runs, then exit")
  args = p.parse_args(argv)
  args.argv = list(argv)
  if args.list:
    return args
  if not args.table:
    p.error("give a table name (or --list).")
  args.table = ALIASES.get(args.table, args.table)
  if args.table not in ALL_NAMES + ("all",):
    p.error(f"unknown table {args.table!r}; expected one of {', '.join(ALL_NAMES)} or 'all'.")
  if not args.workdir:
    p.error("--workdir is required.")
  if args.size is None:
    args.size = "demo" if args.synthetic else "full"
  if args.size == "full":
    args.size = ""
  if args.seeds is None:
    args.seeds = 5 if args.synthetic else 1
  if args.seeds < 1:
    p.error("--seeds must be >= 1.")
  if not args.synthetic and not args.data_dir and args.table != "dmf_inference":
    p.error("give --data_dir (the real data set) or --synthetic.")
  return args


def _list_tables() -> str:
  lines = []
  for t in TABLES.values():
    specs = list(dict.fromkeys(c.spec.key for c in t.cells))
    lines.append(f"{t.name}: {t.title}\n    runs: {', '.join(specs)}")
  lines.append("dmf_inference: DMF §3.2 inference time per sample, DMF vs naive (no training)")
  return "\n".join(lines)


def _enable_compile_cache(args) -> None:
  """Turns on JAX's persistent compilation cache: every seed of a config (and every table that
  shares a model) then compiles its train/eval steps once."""
  if args.compile_cache == "none":
    return
  import jax  # pylint: disable=g-import-not-at-top
  path = args.compile_cache or os.path.join(os.path.abspath(args.workdir), "jax_cache")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.list:
    print(_list_tables())
    return 0
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  _enable_compile_cache(args)
  from train import main as main_lib  # pylint: disable=g-import-not-at-top
  names = ALL_NAMES if args.table == "all" else (args.table,)

  def run_all():
    for name in names:
      sub = args
      if "table2" in name or "table5" in name:
        sub = argparse.Namespace(**vars(args))
        sub.data_dir = args.cebs_dir or args.data_dir
      if name == "dmf_inference":
        run_inference(sub)
      else:
        run_table(name, sub)

  return main_lib.exit_status(run_all)


if __name__ == "__main__":
  sys.exit(main())
