"""DualMemoryFusion layer: forward (eval / train) and a full train step, vs NaiveFusion.

Paper sizes (DMF §2.2): batch 32, n_a = n_t = 120 slots, d = 768; CBP D = 2048 (the
paper does not state D; ``--cbp_dim``). The train step is ``value_and_grad`` of
cross-entropy (fixed random 4-way projection of x_f) + the similarity loss (Eq. 4),
then an optax SGD update, all in one ``jit``; the new memory is carried (write-then-carry).
One JSON line per measurement with the XLA-counted GFLOP, achieved GFLOP/s and the same
run's f32 matmul peak (``frac_of_peak``). ``matmul_gflop_analytic`` is the GFLOP of
the layer's dense matmuls alone (an analytic count; the train step counted as 3× the
forward), to show how much of the work is matmul at all. ``dot_floor_ms`` is the time of
the step's own matrix products, each timed alone at its best and summed
(``common.dot_floor``); ``max_frac_of_peak`` = GFLOP / that floor / peak, the fraction the
step could reach if all its other work and every gap between ops took no time.

    python -m benchmarks.bench_dmf_layer            # paper sizes (slow on a laptop)
    python -m benchmarks.bench_dmf_layer --quick    # tiny sizes, a smoke check
    python -m benchmarks.bench_dmf_layer --dtype bfloat16   # bf16 compute, f32 params/memory

With ``--dtype bfloat16`` the layer computes in bf16 (``DualMemoryFusion(dtype=...)``; params,
memory and the loss stay float32) and the roofline is the same run's matmul peak *in that
dtype* (``bf16 @ bf16 -> bf16``, what the layer's dense layers run).
"""

import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from mbaf_jax.fusion.dual_memory import DualMemoryFusion
from mbaf_jax.fusion.naive import NaiveFusion


def matmul_gflop(b, n, d, dim, ff, tokens):
  """Analytic forward GFLOP of DMF's dense matmuls (2·m·k·n each), both modalities.

  Returns:
    ``(reader + composer, writer)``: evaluation runs only the first part.
  """
  rows = n + b  # expanded memory
  reader = 2 * (2 * b * d * n) + 2 * (2 * b * n)  # x Mᵀ, wᵀ M, temperature Dense
  width = dim // tokens
  composer = 2 * (4 * 2 * b * tokens * width * width + 2 * 2 * b * tokens * tokens * width)
  writer = 2 * (4 * 2 * rows * d * d + 2 * 2 * rows * rows * d + 2 * 2 * rows * d * ff
                + 2 * rows * d)
  return (reader + composer) / 1e9, writer / 1e9


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--slots", type=int, default=120)
  p.add_argument("--d", type=int, default=768)
  p.add_argument("--cbp_dim", type=int, default=2048)
  p.add_argument("--dtype", choices=sorted(common.DTYPES), default="float32",
                 help="compute dtype of the layer (params, memory and loss stay float32)")
  args = p.parse_args(argv)
  dtype = common.DTYPES[args.dtype]
  warmup, iters = common.iterations(args)
  b, n, d, dim = args.batch, args.slots, args.d, args.cbp_dim
  cfg = {}
  if args.quick:
    b, n, d, dim = 4, 8, 32, 64
    cfg = dict(attention_tokens=4, num_heads=2, writer_ff_dim=64)
  layer = DualMemoryFusion(slots=n, cbp_dim=dim, dtype=dtype, **cfg)
  peak = common.matmul_peak_gflops(dtype=dtype, quick=args.quick)
  ka, kt, kw, kl = jax.random.split(jax.random.key(0), 4)
  x_a = jax.random.normal(ka, (b, d), jnp.float32)
  x_t = jax.random.normal(kt, (b, d), jnp.float32)
  labels = jax.random.randint(kl, (b,), 0, 4)
  mask = jnp.ones((b,), bool)
  w_out = jax.random.normal(kw, (dim, 4), jnp.float32) / dim ** 0.5
  variables = jax.jit(layer.init)({"params": jax.random.key(1)}, x_a, x_t)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(0.01)
  opt_state = tx.init(params)
  key = jax.random.key(2)
  shape = {"batch": b, "slots": n, "d": d, "cbp_dim": dim,
           "writer_ff_dim": layer.writer_ff_dim if not cfg else cfg["writer_ff_dim"]}
  tokens = layer.attention_tokens if not cfg else cfg["attention_tokens"]
  mm_read, mm_write = matmul_gflop(b, n, d, dim, shape["writer_ff_dim"], tokens)
  mm = mm_read + mm_write

  def forward_eval(params, state, x_a, x_t):
    return layer.apply({"params": params, **state}, x_a, x_t, mask=mask, train=False).fused

  def forward_train(params, state, x_a, x_t, key):
    out, new = layer.apply({"params": params, **state}, x_a, x_t, mask=mask, train=True,
                           rngs={"gumbel": key}, mutable=["memory", "batch_stats"])
    return out.fused, out.aux["memory_similarity"], new

  def train_step(params, state, opt_state, x_a, x_t, key):
    def loss_fn(params):
      fused, sim, new = forward_train(params, state, x_a, x_t, key)
      logp = jax.nn.log_softmax(fused.astype(jnp.float32) @ w_out)
      ce = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
      return ce + sim, new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    state = {**state, **jax.lax.stop_gradient(new)}
    return optax.apply_updates(params, updates), state, opt_state, loss

  runs = [("dmf_forward_eval", forward_eval, (params, state, x_a, x_t), mm_read),
          ("dmf_forward_train", forward_train, (params, state, x_a, x_t, key), mm),
          ("dmf_train_step", train_step, (params, state, opt_state, x_a, x_t, key), 3 * mm)]
  for name, fn, fargs, mm_gflop in runs:
    rec = common.measure(name, fn, fargs, items=b, shape=shape, dtype=args.dtype,
                         peak_gflops=peak, warmup=warmup, iters=iters,
                         extra={"matmul_gflop_analytic": round(mm_gflop, 6)})
    common.emit(common.add_dot_floor(rec, fn, fargs, peak, warmup=warmup, iters=iters))

  naive = NaiveFusion()
  rec = common.measure("naive_forward", lambda a, t: naive.apply({}, a, t, mask=mask).fused,
                       (x_a, x_t), items=b, shape={"batch": b, "d": d}, dtype="float32",
                       peak_gflops=peak, warmup=warmup, iters=iters)
  common.emit(rec)


if __name__ == "__main__":
  main()
