"""Shared benchmark helpers: timing, XLA cost analysis, matmul roofline, memory, JSON lines.

Every benchmark script prints ONE JSON line per measurement with at least
``bench, device, shape, dtype, median_ms, throughput, peak_mem_mb`` and, where
the FLOP count matters, ``gflop, gflops_per_s, matmul_peak_gflops,
frac_of_peak``. Typical use::

    from benchmarks import common
    args = common.parser("CBP benchmark").parse_args()
    peak = common.matmul_peak_gflops(quick=args.quick)
    rec = common.measure("cbp_fft", fn, (x, y), items=batch, peak_gflops=peak,
                         shape={"batch": 32, "d": 768, "D": 2048}, dtype="float32")
    common.emit(rec)

Run scripts as modules from the repository root: ``python -m benchmarks.bench_cbp``.
Timing (``time_fn``, ``device_name``) is ``train.timing``'s, shared with
``python -m train.experiments dmf_inference``.
"""
import argparse
import json
import resource
import sys
from typing import Any, Callable, NamedTuple, Sequence

import jax
from jax import lax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from train import timing
from train.timing import device_name, time_fn  # noqa: F401  (part of this module's API)


# Compute dtypes a benchmark can be asked for by name (``--dtype`` / ``--dtypes``).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

def parser(description: str) -> argparse.ArgumentParser:
  """An argument parser with the flags every benchmark shares."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--quick", action="store_true",
                 help="tiny sizes and few iterations (a smoke check, not a measurement)")
  p.add_argument("--iters", type=int, default=None, help="timed iterations (default 20, quick 3)")
  p.add_argument("--warmup", type=int, default=None, help="untimed iterations after compiling")
  return p


def iterations(args) -> tuple[int, int]:
  """(warmup, iters) from parsed ``args``, smaller under ``--quick``."""
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
  iters = args.iters if args.iters is not None else (3 if args.quick else 20)
  if iters < 1 or warmup < 0:
    raise SystemExit(f"--iters must be >= 1 and --warmup >= 0, got {iters}, {warmup}")
  return warmup, iters


def _cost_dict(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return cost or {}


def compiled_gflop(compiled) -> float | None:
  """FLOPs of a compiled computation from XLA's cost analysis, in GFLOP (None if unknown).

  Note XLA counts what it can see: FFTs and scatters are counted at a few
  FLOPs per element at most, so compare GFLOP across implementations with care.
  """
  flops = _cost_dict(compiled).get("flops")
  return None if flops is None or flops < 0 else float(flops) / 1e9


def compiled_mem_mb(compiled) -> float | None:
  """Arguments + outputs + temporaries of a compiled computation, in MB (XLA's estimate)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return total / 2 ** 20


def peak_mem_mb() -> float:
  """Peak memory so far: the device's ``peak_bytes_in_use`` on GPU/TPU, else process max RSS."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10


def matmul_peak_gflops(n: int = 2048, dtype=jnp.float32, quick: bool = False,
                       iters: int | None = None) -> float:
  """Measured f32 matmul throughput (GFLOP/s) of an ``n×n @ n×n`` jitted matmul.

  This is the roofline the benchmarks compare against: the same run, the same
  device, the best case of the most optimised op. ``quick`` uses n = 256.
  """
  if quick:
    n = min(n, 256)
  iters = iters or (3 if quick else 10)
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(lambda u, v: u @ v).lower(a, b).compile()
  t = time_fn(f, (a, b), warmup=2, iters=iters)
  return 2.0 * n ** 3 / (t["min_ms"] * 1e-3) / 1e9


class DotCall(NamedTuple):
  """One kind of ``dot_general`` in a traced function and how often it runs."""
  lhs: jax.ShapeDtypeStruct  # left operand
  rhs: jax.ShapeDtypeStruct  # right operand
  dimension_numbers: tuple  # ``lax.dot_general``'s ``((lc, rc), (lb, rb))``
  precision: Any  # ``lax.dot_general``'s ``precision`` (matters on GPU/TPU)
  preferred_element_type: Any  # ``lax.dot_general``'s ``preferred_element_type``
  count: int  # executions per call of the function (a scan body counts ``length`` times)

  @property
  def gflop(self) -> float:
    """``2 · batch · m · n · k`` of one execution, in GFLOP."""
    (lc, _), (lb, _) = self.dimension_numbers
    lhs_free = np.prod([s for i, s in enumerate(self.lhs.shape) if i not in (*lc, *lb)])
    (_, rc), (_, rb) = self.dimension_numbers
    rhs_free = np.prod([s for i, s in enumerate(self.rhs.shape) if i not in (*rc, *rb)])
    contracted = np.prod([self.lhs.shape[i] for i in lc])
    batch = np.prod([self.lhs.shape[i] for i in lb])
    return 2.0 * float(batch * lhs_free * rhs_free * contracted) / 1e9


def dot_general_calls(fn: Callable, args: Sequence[Any]) -> list[DotCall]:
  """Every matrix product ``fn(*args)`` runs, read from its jaxpr (nothing is executed).

  Nested ``jit``s, custom-derivative rules and remat are walked once, a ``scan`` body
  ``length`` times. Control flow whose trip count or branch is only known at run time
  (``while_loop``, ``cond``/``switch``) has no fixed matmul count: a ``ValueError``.

  Returns:
    One :class:`DotCall` per distinct (operands, dimension numbers), largest count first.
  """
  counts: dict[tuple, int] = {}

  def walk(jaxpr, times: int) -> None:
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        lhs, rhs = (jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars[:2])
        key = (lhs, rhs, eqn.params["dimension_numbers"], eqn.params.get("precision"),
               eqn.params.get("preferred_element_type"))
        counts[key] = counts.get(key, 0) + times
        continue
      subs = list(jex.core.jaxprs_in_params(eqn.params))
      if not subs:
        continue
      if name in ("while", "cond"):
        raise ValueError(f"dot_general_calls: the function contains a '{name}' whose matmul "
                         f"count is only known at run time; time that part on its own.")
      inner = times * (eqn.params["length"] if name == "scan" else 1)
      for sub in subs:
        walk(getattr(sub, "jaxpr", sub), inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
  calls = [DotCall(*key, count=c) for key, c in counts.items()]
  return sorted(calls, key=lambda c: (-c.count * c.gflop, str(c.lhs.shape)))


def dot_floor(fn: Callable, args: Sequence[Any], warmup: int = 2, iters: int = 20,
              repeat: int = 10) -> dict:
  """The time ``fn(*args)`` needs for its matrix products alone: each distinct
  ``dot_general`` (:func:`dot_general_calls`) jitted and timed *on its own* (all cores;
  ``repeat`` calls back to back so the threads stay awake, best of ``iters`` such runs,
  per call, less the same time of a 1×1 product: the dispatch), times how often ``fn``
  runs it, summed.

  A compiled ``fn`` runs the same products, plus its other work and the gaps between
  ops, so it does not beat this floor unless it runs products *concurrently* on
  different cores faster than each runs alone on all of them (small products do not
  use many cores well; time the script pinned to one core, ``taskset -c 0``, for the
  floor with the products spread perfectly over the cores: that sum / cores).
  ``gflop / floor / peak`` is the ``frac_of_peak`` ``fn`` would reach if all its other
  work took no time.

  Returns:
    ``{"dot_kinds", "dot_calls", "dot_gflop", "dot_floor_ms", "dot_dispatch_ms"}``:
    ``dot_dispatch_ms`` is the per-call time subtracted (that of a 1×1 product).
  """
  def best_ms(call):
    lhs = jnp.ones(call.lhs.shape, call.lhs.dtype)
    rhs = jnp.ones(call.rhs.shape, call.rhs.dtype)
    dot = jax.jit(lambda a, b: lax.dot_general(a, b, call.dimension_numbers, call.precision,
                                               call.preferred_element_type))
    compiled = dot.lower(lhs, rhs).compile()
    back_to_back = lambda a, b: [compiled(a, b) for _ in range(repeat)]
    return time_fn(back_to_back, (lhs, rhs), warmup=warmup, iters=iters)["min_ms"] / repeat

  calls = dot_general_calls(fn, args)
  unit = jax.ShapeDtypeStruct((1, 1), jnp.float32)
  dispatch = best_ms(DotCall(unit, unit, (((1,), (0,)), ((), ())), None, None, 1))
  total_ms = sum(c.count * max(best_ms(c) - dispatch, 0.0) for c in calls)
  return {"dot_kinds": len(calls), "dot_calls": sum(c.count for c in calls),
          "dot_gflop": round(sum(c.count * c.gflop for c in calls), 6),
          "dot_floor_ms": round(total_ms, 4), "dot_dispatch_ms": round(dispatch, 4)}


def add_dot_floor(rec: dict, fn: Callable, args: Sequence[Any], peak_gflops: float | None,
                  warmup: int = 2, iters: int = 20) -> dict:
  """Adds :func:`dot_floor`'s keys to a :func:`measure` record, and ``max_frac_of_peak``
  = the record's XLA GFLOP / the dot floor / the peak: the ``frac_of_peak`` ``fn`` would
  reach if everything but its matrix products took no time."""
  rec.update(dot_floor(fn, args, warmup=warmup, iters=iters))
  if rec.get("gflop") and peak_gflops and rec["dot_floor_ms"] > 0:
    rec["max_frac_of_peak"] = round(rec["gflop"] / (rec["dot_floor_ms"] * 1e-3) / peak_gflops, 4)
  return rec


def measure(bench: str, fn: Callable, args: Sequence[Any], *, items: int, shape: dict,
            dtype: str, peak_gflops: float | None = None, warmup: int = 3, iters: int = 20,
            extra: dict | None = None) -> dict:
  """Compiles ``fn`` with ``jax.jit``, times it and builds the JSON record.

  Args:
    bench: measurement name.
    fn: the function to time (jitted here).
    args: its arguments.
    items: samples processed per call (throughput = items / median seconds).
    shape: the sizes, e.g. ``{"batch": 32, "d": 768, "D": 2048}``.
    dtype: dtype name for the record.
    peak_gflops: measured matmul peak of this run (adds ``frac_of_peak``).
    warmup, iters: see :func:`train.timing.time_fn`.
    extra: more keys for the record.

  Returns:
    The record (a dict); print it with :func:`emit`.
  """
  compiled, t = timing.compile_and_time(fn, args, warmup=warmup, iters=iters)
  compile_s = t["compile_s"]
  gflop = compiled_gflop(compiled)
  rec = {"bench": bench, "device": device_name(), "shape": shape, "dtype": dtype,
         "median_ms": round(t["median_ms"], 4), "min_ms": round(t["min_ms"], 4),
         "iters": t["iters"], "compile_s": round(compile_s, 3),
         "throughput": round(items / (t["median_ms"] * 1e-3), 2),
         "throughput_unit": "samples/s",
         "peak_mem_mb": round(peak_mem_mb(), 1),
         "compiled_mem_mb": None if compiled_mem_mb(compiled) is None
         else round(compiled_mem_mb(compiled), 2)}
  if gflop is not None:
    rec["gflop"] = round(gflop, 6)
    rec["gflops_per_s"] = round(gflop / (t["median_ms"] * 1e-3), 3)
    if peak_gflops:
      rec["matmul_peak_gflops"] = round(peak_gflops, 2)
      rec["frac_of_peak"] = round(rec["gflops_per_s"] / peak_gflops, 4)
  if extra:
    rec.update(extra)
  return rec


_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM when allocating")


def is_oom(error: BaseException) -> bool:
  """True when ``error`` is an out-of-memory failure (XLA ``RESOURCE_EXHAUSTED`` or a host
  ``MemoryError``), i.e. the size does not fit and the next, smaller one may."""
  if isinstance(error, MemoryError):
    return True
  return any(m in str(error) for m in _OOM_MARKERS)


def oom_record(bench: str, error: BaseException, *, shape: dict, dtype: str,
               extra: dict | None = None) -> dict:
  """The JSON record of a measurement that ran out of memory (``"status": "oom"``, no times)."""
  message = next((line.strip() for line in str(error).splitlines() if line.strip()),
                 type(error).__name__)
  rec = {"bench": bench, "device": device_name(), "shape": shape, "dtype": dtype,
         "status": "oom", "error": message[:300], "median_ms": None, "throughput": None,
         "peak_mem_mb": round(peak_mem_mb(), 1)}
  if extra:
    rec.update(extra)
  return rec


def emit(record: dict) -> None:
  """Prints one JSON line and flushes."""
  print(json.dumps(record, sort_keys=False), flush=True)
