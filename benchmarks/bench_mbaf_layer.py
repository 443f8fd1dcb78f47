"""MBAF layer benchmark: forward (eval / train) and train step, scan vs batched write.

Sizes (MBAF §4): IEMOCAP l = 6,848 (2,048 + 4,800), 30 slots, batch 64; CEBS l = 1,024
(512 + 512), 20 slots, batch 32. ``--quick``: l = 32, 4 slots, batch 8 (a smoke check).

Prints one JSON line per measurement (see benchmarks/common.py); the batched-write
records carry ``max_abs_dev_memory`` / ``max_abs_dev_out``: the deviation of
``write="batched"`` from the sequential ``write="scan"`` after one train forward.

    python -m benchmarks.bench_mbaf_layer --quick
"""

import jax
import jax.numpy as jnp

from benchmarks import common
from mbaf_jax.fusion.mbaf import MBAF

FULL = [("iemocap", (2048, 4800), 30, 64), ("cebs", (512, 512), 20, 32)]
QUICK = [("quick", (16, 16), 4, 8)]


def functions(layer):
  """The timed functions of one MBAF layer: ``forward_eval``, ``forward_train`` and
  ``train_step`` (SGD 1e-3 on ``mean(fused²)``, the new memory carried)."""
  def forward_eval(v, *x):
    return layer.apply(v, *x, train=False).fused

  def forward_train(v, *x):
    out, new = layer.apply(v, *x, train=True, mutable=["memory"])
    return out.fused, new["memory"]

  def train_step(v, *x):
    def loss(params):
      out, new = layer.apply({"params": params, "memory": v["memory"]}, *x, train=True,
                             mutable=["memory"])
      return jnp.mean(out.fused ** 2), new["memory"]
    (val, mem), grads = jax.value_and_grad(loss, has_aux=True)(v["params"])
    params = jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, v["params"], grads)
    return val, params, jax.lax.stop_gradient(mem)

  return {"forward_eval": forward_eval, "forward_train": forward_train,
          "train_step": train_step}


def main():
  args = common.parser("MBAF layer: forward and train step, scan vs batched write").parse_args()
  warmup, iters = common.iterations(args)
  peak = common.matmul_peak_gflops(quick=args.quick)
  for name, dims, slots, batch in (QUICK if args.quick else FULL):
    keys = jax.random.split(jax.random.key(0), len(dims) + 2)
    xs = [jax.random.normal(k, (batch, d), jnp.float32) for k, d in zip(keys[2:], dims)]
    scan_layer = MBAF(slots=slots, write="scan")
    v = jax.jit(lambda *x: scan_layer.init({"params": keys[0], "memory": keys[1]}, *x))(*xs)
    results = {}
    for write in ("scan", "batched"):
      layer = MBAF(slots=slots, write=write)
      fns = functions(layer)
      results[write] = jax.jit(fns["forward_train"])(v, *xs)
      extra = {"write": write, "case": name}
      if write == "batched":
        extra["max_abs_dev_memory"] = float(jnp.max(jnp.abs(
            results["scan"][1]["memory"] - results["batched"][1]["memory"])))
        extra["max_abs_dev_out"] = float(jnp.max(jnp.abs(results["scan"][0] -
                                                         results["batched"][0])))
      l, k = sum(dims), slots
      # matmul FLOPs per sample (H = C = l): f_r, compose, W, key + read; XLA's
      # cost_analysis counts a while-loop (scan) body once, so this is the fair count.
      fwd = 2 * (l * l + 2 * l * l + l * l + 2 * k * l)
      model_flops = {"forward_eval": fwd * batch, "forward_train": fwd * batch,
                     "train_step": 3 * fwd * batch}
      for fn_name, fn in fns.items():
        if fn_name == "forward_eval" and write == "batched":
          continue  # eval never writes: identical for both write modes
        rec = common.measure(f"mbaf_{fn_name}", fn, (v, *xs), items=batch,
                             shape={"batch": batch, "dims": list(dims), "l": sum(dims),
                                    "slots": slots},
                             dtype="float32", peak_gflops=peak, warmup=warmup, iters=iters,
                             extra=extra)
        rec["gflop_model"] = model_flops[fn_name] / 1e9
        rec["gflops_per_s_model"] = round(rec["gflop_model"] / (rec["median_ms"] * 1e-3), 3)
        rec["frac_of_peak_model"] = round(rec["gflops_per_s_model"] / peak, 4)
        common.emit(rec)


if __name__ == "__main__":
  main()
