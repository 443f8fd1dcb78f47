"""Matrix-product throughput and error per precision: f32, bf16, bf16 with f32 accumulation.

The rooflines behind the other scripts. ``float32`` is the roofline they compare against
(``common.matmul_peak_gflops``); ``bfloat16`` is ``bf16 @ bf16 -> bf16``, what Flax's
``nn.Dense(dtype=bfloat16)`` and ``jnp.matmul`` of bf16 arrays run; ``bfloat16_f32acc`` is
``lax.dot_general(bf16, bf16, preferred_element_type=float32)``. Shapes: the 2048³ roofline
product and the DMF writer's products at the paper's sizes (152 = 120 slots + batch 32 rows,
d = 768, feed-forward 2048), forward (``x W``) and the weight-gradient layout of the backward
pass (``xᵀ g``, contracting the 152 rows). One JSON line per (shape, precision): the usual
timing keys, ``frac_of_f32_peak`` (its GFLOP/s over the same run's f32 2048³ rate) and
``max_rel_err`` (largest |error| of the product against NumPy float64 on the same f32 inputs,
over the largest |exact entry|; bf16 modes round the inputs to bf16 first, as a bf16 model does).

    python -m benchmarks.bench_matmul
    python -m benchmarks.bench_matmul --quick    # sizes / 8, a smoke check
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

# name: (m, k, n, contract_rows). contract_rows=False: (m, k) @ (k, n). contract_rows=True: the
# weight-gradient xᵀ g, lhs x (m, k) and rhs g (m, n) contracted over their m rows -> (k, n).
SHAPES = {
    "square_2048": (2048, 2048, 2048, False),
    "writer_qkv_fwd": (152, 768, 768, False),
    "writer_ff1_fwd": (152, 768, 2048, False),
    "writer_ff2_fwd": (152, 2048, 768, False),
    "writer_ff1_dW": (152, 768, 2048, True),
    "writer_ff2_dW": (152, 2048, 768, True),
}
# name: (input dtype, preferred_element_type)
PRECISIONS = {
    "float32": (jnp.float32, None),
    "bfloat16": (jnp.bfloat16, None),
    "bfloat16_f32acc": (jnp.bfloat16, jnp.float32),
}


def product(contract_rows: bool, preferred):
  """The jit-able product of one row of :data:`SHAPES`."""
  dims = (((0,), (0,)), ((), ())) if contract_rows else (((1,), (0,)), ((), ()))
  return lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=preferred)


def operands(m: int, k: int, n: int, contract_rows: bool, key):
  """Random normal f32 operands: ``(m, k) @ (k, n)``, or ``(m, k)ᵀ @ (m, n)``."""
  ka, kb = jax.random.split(key)
  a = jax.random.normal(ka, (m, k), jnp.float32)
  b = jax.random.normal(kb, (m, n) if contract_rows else (k, n), jnp.float32)
  return a, b


def max_rel_err(out, a, b, contract_rows: bool) -> float:
  """max |out − exact| / max |exact|, exact = the float64 product of ``a`` and ``b``."""
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  exact = a64.T @ b64 if contract_rows else a64 @ b64
  return float(np.max(np.abs(np.asarray(out, np.float64) - exact)) / np.max(np.abs(exact)))


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--shapes", default=",".join(SHAPES),
                 help=f"comma list of {', '.join(SHAPES)}")
  args = p.parse_args(argv)
  warmup, iters = common.iterations(args)
  names = [s for s in args.shapes.split(",") if s]
  unknown = sorted(set(names) - set(SHAPES))
  if unknown:
    raise SystemExit(f"--shapes: unknown {unknown}; expected some of {list(SHAPES)}")
  peak = common.matmul_peak_gflops(quick=args.quick)
  for i, name in enumerate(names):
    m, k, n, contract_rows = SHAPES[name]
    if args.quick:
      m, k, n = m // 8, k // 8, n // 8
    a, b = operands(m, k, n, contract_rows, jax.random.key(i))
    for precision, (dtype, preferred) in PRECISIONS.items():
      fn = product(contract_rows, preferred)
      x, y = a.astype(dtype), b.astype(dtype)
      rec = common.measure(f"matmul_{name}", fn, (x, y), items=1, dtype=precision,
                           shape={"m": m, "k": k, "n": n, "contract_rows": contract_rows},
                           peak_gflops=peak, warmup=warmup, iters=iters)
      # Error against the exact product of the f32 inputs (bf16 input rounding included).
      rec["max_rel_err"] = float(f"{max_rel_err(jax.jit(fn)(x, y), a, b, contract_rows):.3g}")
      if rec.get("gflops_per_s") is not None:
        rec["frac_of_f32_peak"] = rec.pop("frac_of_peak")
      common.emit(rec)


if __name__ == "__main__":
  main()
