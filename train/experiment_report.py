"""A paper table's report: the values of its cells over seeds and folds, their statistics
(``train.experiment_stats``), the Markdown table beside the paper's numbers and the sweep plot."""
from typing import Sequence

import numpy as np

from train.errors import UserError
from train.experiment_stats import aggregate, paired_difference
from train.experiment_tables import Cell, Table

METRIC_NAMES = {"wa": "WA", "ua": "UA", "f1": "F1"}


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
  """A table number: "–" for None, 3 decimals for F1, 2 for percentages (or ``digits``)."""
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
