"""Wall-clock timing of a jitted call on a random batch.

The DMF inference-time table (``python -m train.experiments dmf_inference``) and the benchmarks
(``benchmarks/common.py``, ``benchmarks/bench_train.py``) time the same way: compile once with
``jax.jit(fn).lower(*args).compile()``, run ``warmup`` untimed calls, then report the median of
``iters`` timed calls, each blocking on its result.
"""
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mbaf_jax import models


def device_name() -> str:
  """The devices JAX runs on, e.g. ``"cpu (x86_64, 2 cores) x8"`` or ``"NVIDIA H100 80GB HBM3 x1"``.

  Returns:
    ``"<device kind> x<device count>"``; on CPU the kind names the machine and its core count.
  """
  devs = jax.devices()
  kind = devs[0].device_kind
  if devs[0].platform == "cpu":
    kind = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
  return f"{kind} x{len(devs)}"


def time_fn(fn: Callable, args: Sequence[Any], warmup: int = 3, iters: int = 20) -> dict:
  """Wall-clock times of ``fn(*args)`` (already compiled), blocking on the result.

  Args:
    fn: the compiled function.
    args: its arguments.
    warmup: untimed calls first.
    iters: timed calls.

  Returns:
    ``{"median_ms", "min_ms", "max_ms", "iters"}``.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return {"median_ms": statistics.median(times), "min_ms": min(times),
          "max_ms": max(times), "iters": iters}


def compile_and_time(fn: Callable, args: Sequence[Any], warmup: int = 3,
                     iters: int = 20) -> tuple[Any, dict]:
  """Compiles ``jax.jit(fn)`` for ``args``, then times it with :func:`time_fn`.

  Args:
    fn: the function to time (jitted here).
    args: its arguments.
    warmup: untimed calls after compiling.
    iters: timed calls.

  Returns:
    ``(compiled, times)``: the compiled function and :func:`time_fn`'s dict plus ``"compile_s"``
    (seconds spent lowering and compiling).
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  times = time_fn(compiled, args, warmup=warmup, iters=iters)
  return compiled, dict(times, compile_s=compile_s)


def random_batch(data, model, batch_size: int, seed: int = 0) -> dict:
  """A DMF (audio + text) batch of ``config`` with random audio, token ids and labels.

  The shapes are :func:`mbaf_jax.models.dummy_batch`'s; audio is standard normal, token ids are
  uniform in [5, 1000) for base-size text encoders and [5, 100) otherwise, labels uniform in
  [0, 4), every row valid. The time of a forward pass does not depend on the values; random ones
  keep it off any all-zeros fast path.

  Args:
    data: the config's ``data`` section.
    model: the config's ``model`` section (a DMF model).
    batch_size: rows.
    seed: NumPy generator seed.

  Returns:
    The batch as a dict of NumPy arrays (``dummy_batch``'s keys plus ``label`` and ``mask``).
  """
  rng = np.random.default_rng(seed)
  batch = models.dummy_batch(data, model, batch_size)
  batch["input_values"] = rng.normal(size=batch["input_values"].shape).astype(np.float32)
  batch["input_ids"] = rng.integers(5, 1000 if model.text.size == "base" else 100,
                                    size=batch["input_ids"].shape).astype(np.int32)
  batch["label"] = rng.integers(0, 4, size=(batch_size,)).astype(np.int32)
  batch["mask"] = np.ones((batch_size,), bool)
  return batch
