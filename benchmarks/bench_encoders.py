"""Wav2Vec2-base and BERT-base forward / forward+backward at the DMF input sizes.

DMF §2.1 feeds 5 s of 16 kHz audio and 30 tokens per utterance. One JSON line per measurement
(``benchmarks/common.py``): median ms, GFLOP from XLA's cost analysis, GFLOP/s, the matmul peak
measured in the same run and the fraction of it (issue 3 target: Wav2Vec2-base forward ≥ 60 % of
the matmul peak on CPU). Random init at base size (no checkpoint needed).

  python -m benchmarks.bench_encoders                 # base sizes, batch 8 and 32, f32
  python -m benchmarks.bench_encoders --dtypes float32,bfloat16 --batches 8
  python -m benchmarks.bench_encoders --quick         # tiny configs: a smoke check only

Modes: ``fwd`` (eval forward), ``fwd_bwd`` (training forward with dropout/SpecAugment + gradient of
all parameters), ``fwd_bwd_frozen`` (Wav2Vec2 only: conv feature encoder behind stop_gradient, as
when it is frozen per DMF §2.1 — the backward pass skips the conv stack), ``conv_fwd`` (Wav2Vec2
only: the conv feature encoder alone, to see how XLA's convolutions fare against the matmul peak).

``--compare-torch`` (needs PyTorch + transformers; meant for GPUs) also times transformers'
PyTorch model on the same sizes, device and dtype in the same run and adds ``torch_median_ms`` and
``jax_over_torch`` (time ratio, < 1 = JAX faster) to each ``fwd`` record.
"""
import dataclasses
import gc
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from mbaf_jax.encoders import Bert, BertConfig, Wav2Vec2, Wav2Vec2Config
from mbaf_jax.encoders.wav2vec2 import FeatureEncoder


def _csv(s, cast=str):
  return [cast(v) for v in s.split(",") if v]


def build(model_name, quick, dtype, frozen=False):
  """(module, make_inputs(batch) -> tuple of arrays, sizes dict)."""
  if model_name == "wav2vec2":
    cfg = (Wav2Vec2Config.tiny if quick else Wav2Vec2Config.base)(
        dtype=dtype, stop_gradient_feature_encoder=frozen)
    return Wav2Vec2(cfg), cfg
  cfg = (BertConfig.tiny if quick else BertConfig.base)(dtype=dtype)
  return Bert(cfg), cfg


def inputs(model_name, batch, seconds, tokens, cfg):
  key = jax.random.key(0)
  if model_name == "wav2vec2":
    n = int(round(seconds * 16000))
    x = jax.random.normal(key, (batch, n), jnp.float32)
    return (x, jnp.ones((batch, n), jnp.int32)), {"batch": batch, "samples": n}
  ids = jax.random.randint(key, (batch, tokens), 1, cfg.vocab_size, jnp.int32)
  return ((ids, jnp.ones((batch, tokens), jnp.int32), jnp.zeros((batch, tokens), jnp.int32)),
          {"batch": batch, "tokens": tokens})


def main(argv=None):
  """Command line (``argv``: the arguments, default ``sys.argv[1:]``)."""
  p = common.parser(__doc__.split("\n")[0])
  p.add_argument("--models", default="wav2vec2,bert", help="comma list of wav2vec2,bert")
  p.add_argument("--batches", default=None, help="comma list (default 8,32; quick 2)")
  p.add_argument("--dtypes", default="float32", help="comma list of float32,bfloat16")
  p.add_argument("--modes", default="fwd,fwd_bwd,fwd_bwd_frozen")
  p.add_argument("--seconds", type=float, default=None, help="audio length (default 5; quick 0.1)")
  p.add_argument("--tokens", type=int, default=30, help="text length (DMF: 30)")
  p.add_argument("--compare-torch", action="store_true",
                 help="also time transformers' PyTorch model (fwd mode) in the same run")
  args = p.parse_args(argv)
  warmup, iters = common.iterations(args)
  batches = _csv(args.batches or ("2" if args.quick else "8,32"), int)
  seconds = args.seconds or (0.1 if args.quick else 5.0)
  peak = common.matmul_peak_gflops(quick=args.quick)
  for model_name in _csv(args.models):
    if model_name not in ("wav2vec2", "bert"):
      raise SystemExit(f"--models: unknown model {model_name!r}; expected wav2vec2 or bert")
    for dtype_name in _csv(args.dtypes):
      if dtype_name not in common.DTYPES:
        raise SystemExit(f"--dtypes: unknown dtype {dtype_name!r}; "
                         f"expected {sorted(common.DTYPES)}")
      for mode in _csv(args.modes):
        if mode in ("fwd_bwd_frozen", "conv_fwd") and model_name != "wav2vec2":
          continue
        model, cfg = build(model_name, args.quick, common.DTYPES[dtype_name],
                           mode == "fwd_bwd_frozen")
        for batch in batches:
          sizes = {"batch": batch, "size": "tiny" if args.quick else "base"}
          sizes.update({"samples": int(round(seconds * 16000))} if model_name == "wav2vec2"
                       else {"tokens": args.tokens})
          try:
            rec = measure_one(model_name, mode, model, cfg, batch, seconds, args, dtype_name,
                              peak, warmup, iters)
          except Exception as e:  # pylint: disable=broad-except
            if not common.is_oom(e):
              raise
            # One size that does not fit must not stop the others: record it and go on.
            rec = common.oom_record(f"{model_name}_{mode}", e, shape=sizes, dtype=dtype_name)
            del e
            gc.collect()
          common.emit(rec)


def measure_one(model_name, mode, model, cfg, batch, seconds, args, dtype_name, peak, warmup,
                iters) -> dict:
  """Builds the inputs and parameters of one (model, mode, batch) and measures it.

  Returns:
    The JSON record (``common.measure``); raises whatever the measurement raises (e.g. an
    out-of-memory ``JaxRuntimeError``).
  """
  x, sizes = inputs(model_name, batch, seconds, args.tokens, cfg)
  params = jax.jit(model.init)(jax.random.key(1), *x)["params"]
  if mode == "fwd":
    fn = lambda p, *a: model.apply({"params": p}, *a).pooled
  elif mode == "conv_fwd":
    enc = FeatureEncoder(cfg)
    fn = lambda p, *a: enc.apply({"params": p["feature_extractor"]}, a[0])
  elif mode in ("fwd_bwd", "fwd_bwd_frozen"):
    def fn(p, *a):
      def loss(q):
        out = model.apply({"params": q}, *a, train=True, rngs={"dropout": jax.random.key(2)})
        return jnp.sum(out.pooled.astype(jnp.float32) ** 2)
      return jax.grad(loss)(p)
  else:
    raise SystemExit(f"--modes: unknown mode {mode!r}")
  rec = common.measure(
      f"{model_name}_{mode}", fn, (params, *x), items=batch, peak_gflops=peak,
      shape={**sizes, "size": "tiny" if args.quick else "base"}, dtype=dtype_name,
      warmup=warmup, iters=iters,
      extra={"params_m": round(sum(v.size for v in jax.tree.leaves(params)) / 1e6, 2),
             "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                        if k in ("hidden_size", "num_hidden_layers",
                                 "do_stable_layer_norm", "feat_extract_norm")}})
  if args.compare_torch and mode == "fwd":
    rec.update(torch_time(model_name, cfg, x, dtype_name, warmup, iters))
    rec["jax_over_torch"] = round(rec["median_ms"] / rec["torch_median_ms"], 4)
  return rec


def torch_time(model_name, cfg, x, dtype_name, warmup, iters):
  """Median ms of transformers' PyTorch model (random init, same sizes) on the best device."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  fields = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("dtype", "param_dtype", "remat", "stop_gradient_feature_encoder",
                         "masked_group_norm", "pos_conv_impl")}
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
  if model_name == "wav2vec2":
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**fields))
  else:
    model = transformers.BertModel(transformers.BertConfig(**fields))
  model = model.to(dev, tdtype).eval()
  args = [torch.from_numpy(np.array(a)).to(dev) for a in x]
  args[0] = args[0].to(tdtype) if model_name == "wav2vec2" else args[0].long()
  args[1:] = [a.long() for a in args[1:]]

  def run():
    with torch.no_grad():
      out = model(*args)
    if dev == "cuda":
      torch.cuda.synchronize()
    return out

  for _ in range(max(warmup, 1)):
    run()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    run()
    times.append((time.perf_counter() - t0) * 1e3)
  return {"torch_median_ms": round(float(np.median(times)), 4), "torch_device": dev,
          "torch_version": torch.__version__}


if __name__ == "__main__":
  main()
