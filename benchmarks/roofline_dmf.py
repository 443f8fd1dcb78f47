r"""The whole DMF train step on paper: XLA's FLOP and byte counts, and the roofline time and MFU
ceiling they imply on accelerators. Not a timing: nothing is run, only compiled (on any machine).

The step is ``bench_vs_torch.py``'s ``dmf_model`` step (``dmf_model_torch.make_jax_train_step``):
``configs/iemocap.py``'s model — Wav2Vec2-base (5 s at 16 kHz, conv feature encoder frozen) +
BERT-base (30 tokens, embeddings frozen) + DualMemoryFusion (n = 120, D = 2048) or naive
concatenation + head — forward, loss (cross-entropy + DMF Eq. 4), backward and the SGD update,
layerdrop 0. For each fusion kind and compute dtype, one JSON line:

* ``gflop``, ``gbytes``: ``compiled.cost_analysis()``'s ``flops`` and ``bytes accessed`` of the
  compiled step (XLA counts a convolution or a matmul exactly; it counts element-wise work
  once per element; ``bytes accessed`` is that of the *CPU* compilation, whose fusion decisions
  differ from a GPU's or TPU's: read it as the order of magnitude of the traffic, not a
  prediction); ``dot_gflop``: the matrix products alone, from the jaxpr
  (``common.dot_general_calls``; convolutions are not in it);
* per accelerator (``ACCELERATORS``: peak dense bf16 FLOP/s and memory bandwidth from the
  datasheets): ``t_compute_ms`` = FLOPs / peak, ``t_memory_ms`` = bytes / bandwidth,
  ``t_roofline_ms`` = the larger, and ``mfu_ceiling`` = t_compute / t_roofline — the model FLOP
  utilisation the step cannot exceed on that chip (1.0 when compute-bound), before any
  launch overhead, imperfect overlap or non-matmul work running below peak;
* ``param_gbytes``: the parameters' bytes (float32). A step reads them in the forward and the
  backward, writes their gradients and SGD reads parameters and gradients and writes parameters:
  ≈ 6 × ``param_gbytes`` of traffic that no fusion removes, the optimistic end of the traffic
  range whose pessimistic end is ``gbytes`` (the CPU compilation computes bf16 in f32 and fuses
  less than a GPU or TPU compiler, so its ``bytes accessed`` barely changes with the dtype);
* ``frozen_backward_dropped`` (float32 DMF line): the same step compiled with
  ``stop_gradient_feature_encoder=True`` has the same FLOP count, i.e. XLA already removes the
  frozen conv stack's backward as dead code when only the optimiser freezes it.

    python -m benchmarks.roofline_dmf                 # batch 16 (configs/iemocap.py), ~2-4 min
    python -m benchmarks.roofline_dmf --batch 32 --dtypes bfloat16
    python -m benchmarks.roofline_dmf --quick         # tiny encoders: a smoke check
"""
import copy

import jax
import jax.numpy as jnp

from benchmarks import common, mfu

# name -> (dense bf16 FLOP/s, memory bandwidth B/s), vendors' datasheets.
ACCELERATORS = {
    "H100 SXM": (mfu.spec_peak_tflops("H100", "bfloat16") * 1e12, 3.35e12),
    "TPU v5e": (197e12, 819e9),
}


def roofline(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> dict:
  """Roofline time of a step with ``flops`` FLOPs and ``nbytes`` bytes of memory traffic.

  ``t_compute = flops / peak``, ``t_memory = nbytes / bandwidth``, ``t = max(both)``,
  ``mfu_ceiling = t_compute / t`` (≤ 1), ``arithmetic_intensity = flops / nbytes`` against the
  chip's ridge point ``peak / bandwidth``.

  Example:
    >>> r = roofline(2e12, 1e9, 1e15, 1e12)   # 2 ms of compute, 1 ms of traffic
    >>> r["t_roofline_ms"], r["mfu_ceiling"], r["bound"]
    (2.0, 1.0, 'compute')
  """
  t_c, t_m = flops / peak_flops, nbytes / bandwidth
  t = max(t_c, t_m)
  return {"t_compute_ms": round(t_c * 1e3, 4), "t_memory_ms": round(t_m * 1e3, 4),
          "t_roofline_ms": round(t * 1e3, 4), "mfu_ceiling": round(t_c / t, 4) if t else None,
          "bound": "compute" if t_c >= t_m else "memory",
          "arithmetic_intensity": round(flops / nbytes, 2) if nbytes else None,
          "ridge_point": round(peak_flops / bandwidth, 2)}


def step_cost(c, kind: str, batch_size: int, stop_gradient: bool = False) -> dict:
  """XLA's cost analysis of the compiled train step of ``c`` (a ``model_config``), and the
  jaxpr's matrix-product FLOPs."""
  from benchmarks import dmf_model_torch as dm  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(c)
  c.model.audio.overrides = dict(c.model.audio.overrides,
                                 stop_gradient_feature_encoder=stop_gradient)
  vocab = 128 if c.model.text.size == "tiny" else 30522
  batch = dm.random_batch(c, batch_size, vocab)
  model, variables = dm.build_jax(c, kind, batch)
  params = variables.pop("params")
  tx = dm.optimizer(params, variables.get("memory", {}))
  step = dm.make_jax_train_step(model, tx)
  args = (params, variables, tx.init(params), batch, jax.random.key(0))
  compiled = jax.jit(step).lower(*args).compile()
  cost = common._cost_dict(compiled)  # pylint: disable=protected-access
  dots = common.dot_general_calls(step, args)
  return {"gflop": float(cost["flops"]) / 1e9,
          "gbytes": float(cost.get("bytes accessed", 0.0)) / 1e9,
          "dot_gflop": sum(d.count * d.gflop for d in dots),
          "param_gbytes": sum(v.size * v.dtype.itemsize for v in jax.tree.leaves(params)) / 1e9}


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=None, help="train batch (default 16, quick 2)")
  p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of compute dtypes")
  p.add_argument("--kinds", default="dmf,naive", help="comma list of dmf,naive")
  args = p.parse_args(argv)
  from benchmarks import dmf_model_torch as dm  # pylint: disable=g-import-not-at-top
  b = args.batch or (2 if args.quick else 16)
  for kind in [k for k in args.kinds.split(",") if k]:
    for dtype in [d for d in args.dtypes.split(",") if d]:
      if dtype not in common.DTYPES:
        raise SystemExit(f"--dtypes: unknown {dtype!r}; expected {sorted(common.DTYPES)}")
      c = dm.model_config(args.quick)
      c.model.dtype = dtype
      cost = step_cost(c, kind, b)
      rec = {"bench": f"roofline_dmf_model_train_step_{kind}", "device": common.device_name(),
             "compiled_on": jax.default_backend(),
             "shape": {"batch": b, "audio_samples": int(round(c.data.max_seconds *
                                                              c.data.sample_rate)),
                       "tokens": int(c.data.max_tokens), "size": "tiny" if args.quick else "base"},
             "dtype": dtype, "median_ms": None, "throughput": None,
             "peak_mem_mb": round(common.peak_mem_mb(), 1),
             **{k: round(v, 6) for k, v in cost.items()},
             "gflop_per_utterance": round(cost["gflop"] / b, 6)}
      if kind == "dmf" and dtype == "float32":
        frozen = step_cost(c, kind, b, stop_gradient=True)
        rec["gflop_stop_gradient_feature_encoder"] = round(frozen["gflop"], 6)
        rec["frozen_backward_dropped"] = bool(
            abs(frozen["gflop"] - cost["gflop"]) <= 1e-3 * frozen["gflop"])
      for name, (peak, bw) in ACCELERATORS.items():
        r = roofline(cost["gflop"] * 1e9, cost["gbytes"] * 1e9, peak, bw)
        r["utterances_per_s_ceiling"] = round(b / (r["t_roofline_ms"] * 1e-3), 1)
        rec[name] = r
      common.emit(rec)


if __name__ == "__main__":
  main()
