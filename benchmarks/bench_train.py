r"""Full DMF model benchmark: train step and inference with base-size encoders (random init).

Measures, one JSON line each (keys of benchmarks/common.py):
  * ``train_step_{dmf,naive}``: the jitted train step of train/steps.py (forward, write-then-carry,
    backward, SGD multi_transform update) at 5 s audio / 30 tokens; throughput = utterances/s.
  * ``infer_{dmf,naive}_b1`` / ``_b64``: eval forward latency at batch 1 and throughput at batch 64.
  * ``memory_fusion_overhead``: (t_dmf − t_naive) / t_dmf of the full train step and of batch-1
    inference (target ≤ 5 % of the step; DMF reports 91 vs 63 ms per sample, +44 %).
  * ``train_step_scaling``: the same step data-parallel over a jit mesh of 1, 2, 4, 8 devices
    (``train.parallel.make_parallel_train_step``; ``--scaling``; on CPU the devices are fake
    and share the cores, so only GPU/TPU numbers mean anything).

  python -m benchmarks.bench_train            # base encoders (slow on CPU)
  python -m benchmarks.bench_train --quick    # tiny encoders, 0.25 s audio: a smoke check
  python -m benchmarks.bench_train --dtype bfloat16 --scaling
"""
import os
import sys

if "--scaling" in sys.argv and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import copy  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections as mlc  # noqa: E402

from benchmarks import common  # noqa: E402
from configs import iemocap  # noqa: E402
from mbaf_jax import encoders  # noqa: E402
from mbaf_jax.models import factory  # noqa: E402
from train import parallel  # noqa: E402
from train import optimizers  # noqa: E402
from train import steps  # noqa: E402
from train import timing  # noqa: E402


def _model_config(quick: bool, dtype) -> mlc.ConfigDict:
  c = iemocap.get_config("demo" if quick else None)
  return c


def _build(c, kind, dtype):
  """The DMF model of ``c`` computing in ``dtype`` (``config.model.dtype``: encoders, fusion
  and head; parameters and memory stay float32)."""
  if dtype != jnp.float32:
    c = copy.deepcopy(c)
    c.model.dtype = "bfloat16"
  model, _ = factory.build_model(c.model, kind)
  return model


def _batch(c, b, seed=0):
  return timing.random_batch(c.data, c.model, b, seed)


def main(argv=None):
  p = common.parser("Full DMF train step / inference benchmark")
  p.add_argument("--batch", type=int, default=None, help="train batch (default 16, quick 4)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--scaling", action="store_true", help="also time 1, 2, 4, 8 devices")
  args = p.parse_args(argv)
  warmup, iters = common.iterations(args)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  c = _model_config(args.quick, dtype)
  if args.quick:
    c.data.max_seconds = 0.25
  b = args.batch or (4 if args.quick else 16)
  peak = common.matmul_peak_gflops(quick=args.quick)
  shape = {"batch": b, "audio_samples": int(round(c.data.max_seconds * c.data.sample_rate)),
           "tokens": c.data.max_tokens, "encoders": "tiny" if args.quick else "base",
           "slots": c.model.fusion.dmf.slots}
  key = jax.random.key(0)
  times = {}
  for kind in ("dmf", "naive"):
    model = _build(c, kind, dtype)
    batch = _batch(c, b)
    variables = steps.init_variables(model, batch, key)
    tx = optimizers.make_optimizer(c.optim, variables["params"], variables.get("memory", {}))
    state = steps.create_state(variables, tx)
    train_step = steps.make_train_step(model.apply, tx)
    rec = common.measure(f"train_step_{kind}", train_step, (state, batch, key), items=b,
                         shape=shape, dtype=args.dtype, peak_gflops=peak, warmup=warmup,
                         iters=iters, extra={"throughput_unit": "utterances/s"})
    common.emit(rec)
    times[("train", kind)] = rec["median_ms"]
    eval_step = steps.make_eval_step(model.apply)
    for ib in (1, 64 if not args.quick else 8):
      eb = _batch(c, ib, seed=1)
      rec = common.measure(f"infer_{kind}_b{ib}", eval_step, (state, eb), items=ib,
                           shape=dict(shape, batch=ib), dtype=args.dtype, peak_gflops=peak,
                           warmup=warmup, iters=iters,
                           extra={"ms_per_utterance": None, "throughput_unit": "utterances/s"})
      rec["ms_per_utterance"] = round(rec["median_ms"] / ib, 4)
      common.emit(rec)
      times[(f"infer_b{ib}", kind)] = rec["median_ms"]
  for what in ("train", "infer_b1"):
    t_dmf, t_naive = times[(what, "dmf")], times[(what, "naive")]
    common.emit({"bench": f"memory_fusion_overhead_{what}", "device": common.device_name(),
                 "shape": shape, "dtype": args.dtype, "median_ms": t_dmf,
                 "naive_median_ms": t_naive, "overhead_frac": round((t_dmf - t_naive) / t_dmf, 4),
                 "target_frac": 0.05, "throughput": None,
                 "peak_mem_mb": round(common.peak_mem_mb(), 1)})
  if args.scaling:
    model = _build(c, "dmf", dtype)
    n_dev = len(jax.devices())
    for n in (1, 2, 4, 8):
      if n > n_dev:
        break
      gb = b * n  # weak scaling: the per-device batch is fixed
      batch = _batch(c, gb)
      variables = steps.init_variables(model, batch, key)
      tx = optimizers.make_optimizer(c.optim, variables["params"], variables.get("memory", {}))
      ps = parallel.make_parallel_train_step(
          lambda ax, tx=tx: steps.make_train_step(steps.with_axis_name(model, ax).apply, tx, ax),
          "jit", devices=jax.devices()[:n], donate=False)
      state, sb = ps.put_state(steps.create_state(variables, tx)), ps.put_batch(batch)
      k = ps.put_key(key)
      jax.block_until_ready(ps.step(state, sb, k))
      t = common.time_fn(ps.step, (state, sb, k), warmup=warmup, iters=iters)
      common.emit({"bench": "train_step_scaling", "device": common.device_name(),
                   "shape": dict(shape, batch=gb, devices=n), "dtype": args.dtype,
                   "median_ms": round(t["median_ms"], 4),
                   "throughput": round(gb / (t["median_ms"] * 1e-3), 2),
                   "throughput_unit": "utterances/s",
                   "peak_mem_mb": round(common.peak_mem_mb(), 1), "traces": ps.traces})


if __name__ == "__main__":
  main()
