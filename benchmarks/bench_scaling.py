"""Train-step scaling with device count (1, 2, 4, 8) and batch size, jit-mesh and pmap.

The step is the DMF memory-fusion train step on pooled encoder embeddings (d = 768 as
after Wav2Vec2/BERT pooling, 120 slots, CBP 2048, head 1024 → 512 → 4), SGD, written to the
``train.parallel`` contract and wrapped by ``make_parallel_train_step``. On CPU the
devices are fake (``--xla_force_host_platform_device_count``) and share the same cores, so
these numbers measure the *overhead* of sharding and collectives, not speed-up; run on a
multi-GPU/TPU host for real scaling. One JSON line per measurement.

    python -m benchmarks.bench_scaling            # full sizes
    python -m benchmarks.bench_scaling --quick    # tiny sizes, a smoke check
"""
import os

if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu") and \
    "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from benchmarks import common  # noqa: E402
from mbaf_jax.fusion import DualMemoryFusion  # noqa: E402
from train import parallel  # noqa: E402
from train import steps  # noqa: E402


class FusionClassifier(nn.Module):
  """DMF memory fusion + classification head on pooled embeddings (DMF §2.2–2.3)."""
  sizes: dict  # d, slots, cbp_dim, heads, ff, tokens, head (tuple), classes
  axis_name: str | None = None  # pmap batch axis

  @nn.compact
  def __call__(self, xa, xt, mask, train=False):
    s = self.sizes
    out = DualMemoryFusion(slots=s["slots"], cbp_dim=s["cbp_dim"], num_heads=s["heads"],
                           writer_ff_dim=s["ff"], attention_tokens=s["tokens"],
                           axis_name=self.axis_name, name="fusion")(xa, xt, mask=mask,
                                                                    train=train)
    h = out.fused
    for i, f in enumerate(s["head"]):
      h = nn.relu(nn.Dense(f, name=f"head_{i}")(h))
    return nn.log_softmax(nn.Dense(s["classes"], name="out")(h)), out.aux


def make(sizes, batch):
  tx = optax.sgd(0.01)
  rng = np.random.default_rng(0)
  data = {"xa": rng.normal(size=(batch, sizes["d"])).astype(np.float32),
          "xt": rng.normal(size=(batch, sizes["d"])).astype(np.float32),
          "label": rng.integers(0, sizes["classes"], batch).astype(np.int32),
          "mask": np.ones((batch,), np.float32)}
  v = jax.jit(lambda: FusionClassifier(sizes).init(
      {"params": jax.random.key(0)}, data["xa"], data["xt"], data["mask"]))()
  state = {"params": v["params"], "opt": tx.init(v["params"]), "bs": v["batch_stats"],
           "const": v["constants"], "mem": v["memory"], "step": jnp.zeros((), jnp.int32)}
  state = jax.tree.map(np.asarray, state)

  def build_step(axis_name):
    model = FusionClassifier(sizes, axis_name)

    def step(st, b, key):
      def loss_fn(p):
        (logp, aux), nv = model.apply(
            {"params": p, "memory": st["mem"], "batch_stats": st["bs"], "constants": st["const"]},
            b["xa"], b["xt"], b["mask"], train=True,
            rngs={"gumbel": jax.random.fold_in(key, st["step"])},
            mutable=["memory", "batch_stats"])
        ce = -jnp.take_along_axis(logp, b["label"][:, None], 1)[:, 0]
        return (steps.global_masked_mean(ce, b["mask"], axis_name)
                + steps.device_share(aux["memory_similarity"], axis_name)), nv
      (loss, nv), g = jax.value_and_grad(loss_fn, has_aux=True)(st["params"])
      g = steps.sum_over_devices(g, axis_name)
      upd, opt = tx.update(g, st["opt"], st["params"])
      return ({"params": optax.apply_updates(st["params"], upd), "opt": opt,
               "bs": nv["batch_stats"], "const": st["const"],
               "mem": jax.lax.stop_gradient(nv["memory"]), "step": st["step"] + 1},
              {"loss": steps.sum_over_devices(loss, axis_name)})
    return step

  return state, data, build_step


def run_one(parallelism, n_dev, batch, sizes, warmup, iters, peak):
  state, data, build_step = make(sizes, batch)
  ps = parallel.make_parallel_train_step(build_step, parallelism, devices=jax.devices()[:n_dev])
  st = ps.put_state(state)
  b = ps.put_batch(data)
  key = ps.put_key(jax.random.key(1))
  compiled = ps.step.lower(st, b, key).compile()
  gflop = common.compiled_gflop(compiled)
  holder = {"st": st}

  def call():
    holder["st"], m = ps.step(holder["st"], b, key)
    return m["loss"]

  t = common.time_fn(call, (), warmup=warmup, iters=iters)
  rec = {"bench": f"train_step_{parallelism}", "device": common.device_name(),
         "shape": {"devices": n_dev, "global_batch": batch, "per_device_batch": batch // n_dev,
                   "d": sizes["d"], "slots": sizes["slots"], "cbp_dim": sizes["cbp_dim"]},
         "dtype": "float32", "median_ms": round(t["median_ms"], 4),
         "min_ms": round(t["min_ms"], 4), "iters": t["iters"],
         "throughput": round(batch / (t["median_ms"] * 1e-3), 2),
         "throughput_unit": "utterances/s", "peak_mem_mb": round(common.peak_mem_mb(), 1)}
  if gflop is not None:
    # XLA's cost analysis is of one device's (partitioned) program under both jit and pmap:
    # scale to all devices (replicated work, e.g. the optimiser update, counts n times).
    total = gflop * n_dev
    rec["gflop"] = round(total, 6)
    rec["gflops_per_s"] = round(total / (t["median_ms"] * 1e-3), 3)
    rec["matmul_peak_gflops"] = round(peak, 2)
    rec["frac_of_peak"] = round(rec["gflops_per_s"] / peak, 4)
  return rec


def main():
  p = common.parser("Train-step scaling with device count and batch size")
  p.add_argument("--parallelism", default="jit,pmap", help="comma list of jit,pmap")
  args = p.parse_args()
  warmup, iters = common.iterations(args)
  if args.quick:
    sizes = dict(d=16, slots=4, cbp_dim=32, heads=2, ff=16, tokens=4, head=(16,), classes=4)
    batches, base_batch = (8, 16), 8
  else:
    sizes = dict(d=768, slots=120, cbp_dim=2048, heads=8, ff=2048, tokens=16,
                 head=(1024, 512), classes=4)
    batches, base_batch = (8, 16, 32, 64, 128), 32
  peak = common.matmul_peak_gflops(quick=args.quick)
  counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
  for par in [s.strip() for s in args.parallelism.split(",") if s.strip()]:
    parallel.check_parallelism(par)
    for n in counts:  # vs device count at a fixed global batch
      common.emit(run_one(par, n, base_batch, sizes, warmup, iters, peak))
    for bsz in batches:  # vs batch size on all devices
      if bsz != base_batch and bsz % counts[-1] == 0:
        common.emit(run_one(par, counts[-1], bsz, sizes, warmup, iters, peak))


if __name__ == "__main__":
  main()
