"""The papers' tables as data: which runs each number comes from and the paper's value.

A :class:`Table` is rows × columns of :class:`Cell` s; each cell names a :class:`RunSpec` (a
config file, its variant and overrides), the fusion inside that run, the metric and the paper's
number. :class:`Pair` s are the memory − naive differences reported below a table. ``TABLES``
holds every table by its command-line name (``python -m train.experiments --list``), ``ALIASES``
the short names and ``ALL_NAMES`` every name the command accepts.
"""
import dataclasses
from typing import Optional


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
