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

Each run is ``train.loop.train_and_evaluate`` in its own ``<workdir>/<config key>/seed<k>/``;
a run whose metrics.json is complete is read, not rerun (rerunning a command resumes it; a run
interrupted mid-fold resumes from its checkpoint). Runs shared by several tables (e.g. MBAF-III at
l = 30 in Tables 4 and 6) are trained once. Outputs: ``<workdir>/<table>.md`` (the table in the
paper's layout, paper rows beside ours), ``<workdir>/<table>.json`` (every value, per seed and
fold) and, for a memory-size sweep, ``<workdir>/<table>.png``.

Statistics (``train/experiment_stats.py``): a cell's value of one seed is the mean over
the folds (the paper's cross-validation number); "mean ± std" is over all seed × fold values (std
with ddof = 1); the 95 % CI is the t-interval over the per-seed values; a memory − naive difference
is paired by seed (same seed, same folds, same data) and its CI is the t-interval of the per-seed
differences — an interval containing 0 is no evidence of a difference.
"""
import argparse
import ast
import importlib
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

from absl import logging
import jax

from configs.common import fusion_kinds
from mbaf_jax import models
from train import run_identity
from train import workdir as workdir_lib
from train import loop
from train import cli
from train import optimizers
from train import steps
from train import timing
from train.errors import NonFiniteLossError, UserError
from train.experiment_report import plot_sweep, summarize, to_markdown
from train.experiment_tables import ALIASES, ALL_NAMES, TABLES, RunSpec


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


def config_differences(run_dir: str, config) -> list:
  """Fields in which ``config`` differs from the one stored in ``run_dir/config.json`` (by the
  trainer) so that they are different runs (``run_identity.config_differences``: fields such as
  the logging cadence do not count); [] when equal or when nothing readable is stored."""
  try:
    with open(workdir_lib.config_path(run_dir)) as f:
      stored = json.load(f).get("config")
  except (OSError, ValueError, AttributeError):
    return []
  if not isinstance(stored, dict):
    return []
  return [field for field, _, _ in run_identity.config_differences(
      stored, json.loads(config.to_json_best_effort()))]


def _trainer() -> Callable:
  """The function that trains one run (a seam: tests replace it with a fake trainer)."""
  return loop.train_and_evaluate


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
        os.makedirs(run_dir, exist_ok=True)
        workdir_lib.write_json(failed_path, out[(spec.key, seed)])
        log(f"[{done}/{total}] {spec.key} seed {seed}: FAILED after {time.time() - t0:.0f} s: {e}")
        continue
      if os.path.exists(failed_path):
        os.remove(failed_path)
      log(f"[{done}/{total}] {spec.key} seed {seed}: done in {time.time() - t0:.0f} s")
  return out


def _machine() -> dict:
  """The machine a table ran on (platform, Python, cores, load, JAX version and devices)."""
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count()}
  try:
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  try:
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
  workdir_lib.write_json(os.path.join(args.workdir, f"{name}.json"), summary)
  if table.sweep:
    summary["plot"] = plot_sweep(table, summary, os.path.join(args.workdir, f"{name}.png"))
  log(md)
  return summary


# ----------------------------------------------------------------------------- inference time
def run_inference(args, log=print) -> dict:
  """DMF §3.2: per-sample inference time (batch 1) of DMF vs naive fusion.

  Times the jitted eval step on a random batch (``train.timing``: compiled once, 3 untimed calls,
  the median of ``--iters`` timed calls). Full size: Wav2Vec2-base + BERT-base (random init: the
  time does not depend on the weights), 5 s audio, 30 tokens; ``--synthetic``: the demo config's
  tiny encoders.
  """
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, "dmf_inference.json")
  iters = args.iters or (20 if args.synthetic else 10)
  c = build_config(RunSpec("iemocap"), 0, args.synthetic, args.size, "", args.workdir, 0,
                   args.set)
  rows = {}
  for kind in ("dmf", "naive"):
    model, _ = models.build_model(c.model, kind)
    batch = timing.random_batch(c.data, c.model, 1)
    variables = steps.init_variables(model, batch, jax.random.key(0))
    tx = optimizers.make_optimizer(c.optim, variables["params"], variables.get("memory", {}))
    state = steps.create_state(variables, tx)
    _, t = timing.compile_and_time(steps.make_eval_step(model.apply), (state, batch), warmup=3,
                                   iters=iters)
    rows[kind] = round(t["median_ms"], 4)
    log(f"{kind}: {rows[kind]:.2f} ms per sample (median of {iters})")
  summary = {"table": "dmf_inference", "ms_per_sample": rows,
             "paper_ms_per_sample": {"dmf": 91.0, "naive": 63.0},
             "overhead_frac": (rows["dmf"] - rows["naive"]) / rows["naive"],
             "paper_overhead_frac": (91.0 - 63.0) / 63.0,
             "encoders": c.model.audio.size + "/" + c.model.text.size,
             "audio_s": c.data.max_seconds, "tokens": c.data.max_tokens,
             "slots": c.model.fusion.dmf.slots, "device": timing.device_name(),
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
  workdir_lib.write_json(path, summary)
  log(md)
  return summary


# ----------------------------------------------------------------------------- command line
def parse_args(argv):
  """The command line (see the module docstring); ``args.argv`` keeps ``argv`` for the records.

  Args:
    argv: the arguments, without the program name.

  Returns:
    The parsed ``argparse.Namespace``, with defaults resolved from ``--synthetic``.
  """
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
  """Every table's name, caption and run keys (``--list``)."""
  lines = []
  for t in TABLES.values():
    specs = list(dict.fromkeys(c.spec.key for c in t.cells))
    lines.append(f"{t.name}: {t.title}\n    runs: {', '.join(specs)}")
  lines.append("dmf_inference: DMF §3.2 inference time per sample, DMF vs naive (no training)")
  return "\n".join(lines)


def main(argv=None) -> int:
  """Runs the tables named on the command line; returns the process exit status."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.list:
    print(_list_tables())
    return 0
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  cli.plain_warnings()
  if args.compile_cache != "none":  # every seed of a config compiles its steps once
    cli.enable_compilation_cache(
        args.compile_cache or os.path.join(os.path.abspath(args.workdir), "jax_cache"),
        min_compile_seconds=1.0)
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

  stop = cli.StopRequest()
  return cli.run_command(run_all, stop, restore=False)


if __name__ == "__main__":
  sys.exit(main())
