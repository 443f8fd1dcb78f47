"""Compact bilinear pooling: count sketch + FFT vs the explicit bilinear-then-project form.

The explicit form builds the outer product ``x yᵀ`` (B × d1·d2) and projects it
with the equivalent count sketch of the d1·d2 vector (hash
``(h1[i] + h2[j]) mod D``, sign ``s1[i] s2[j]``) by a scatter-add. Both give the
same vector (asserted here to 1e-4 relative); the FFT form never forms the
outer product. One JSON line per measurement; the ``cbp_fft`` lines carry
``speedup_vs_explicit``.

    python -m benchmarks.bench_cbp            # d = 768, D = 2048 / 8000 / 16000, batch 32
    python -m benchmarks.bench_cbp --quick    # tiny sizes, a smoke check
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from mbaf_jax import ops


def explicit_sketch(sk: ops.CountSketch):
  """Hash and sign of the count sketch of vec(x yᵀ) that CBP(x, y) equals."""
  h1, h2 = sk.hashes
  s1, s2 = sk.signs
  hashes = ((h1[:, None] + h2[None, :]) % sk.dim).reshape(-1)
  signs = (s1[:, None] * s2[None, :]).reshape(-1)
  return hashes, signs


def cbp_explicit(x, y, hashes, signs, dim):
  """``Ψ(vec(x yᵀ))`` by scatter-add: (B, d1), (B, d2) -> (B, D)."""
  outer = (x[:, :, None] * y[:, None, :]).reshape(x.shape[0], -1)
  out = jnp.zeros((x.shape[0], dim), x.dtype)
  return out.at[:, hashes].add(outer * signs)


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--d", type=int, default=768, help="input dimension d1 = d2")
  p.add_argument("--dims", type=str, default="2048,8000,16000", help="sketch dims D")
  p.add_argument("--methods", type=str, default="segment_sum,scatter,dense",
                 help="count_sketch methods to time for the FFT form")
  args = p.parse_args(argv)
  warmup, iters = common.iterations(args)
  batch, d = args.batch, args.d
  dims = [int(v) for v in args.dims.split(",")]
  if args.quick:
    batch, d, dims = 4, 16, [32, 64]
  methods = args.methods.split(",")
  peak = common.matmul_peak_gflops(quick=args.quick)
  kx, ky, ks = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, d), jnp.float32)
  y = jax.random.normal(ky, (batch, d), jnp.float32)
  for dim in dims:
    sk = ops.make_count_sketch(ks, in_dims=(d, d), dim=dim)
    hashes, signs = explicit_sketch(sk)
    shape = {"batch": batch, "d1": d, "d2": d, "D": dim}

    explicit_fn = lambda a, b, h, s, dim=dim: cbp_explicit(a, b, h, s, dim)
    want = np.asarray(jax.jit(explicit_fn)(x, y, hashes, signs), np.float64)
    rec_explicit = common.measure("cbp_explicit", explicit_fn, (x, y, hashes, signs),
                                  items=batch, shape=shape, dtype="float32",
                                  peak_gflops=peak, warmup=warmup, iters=iters,
                                  extra={"impl": "outer product + scatter-add sketch"})
    common.emit(rec_explicit)

    for method in methods:
      fft_fn = lambda a, b, s, method=method: ops.compact_bilinear_pooling(a, b, s, method=method)
      got = np.asarray(jax.jit(fft_fn)(x, y, sk), np.float64)
      rel_err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
      if not rel_err <= 1e-4:
        raise AssertionError(f"CBP by FFT ({method}) differs from the explicit form at D={dim}: "
                             f"max relative error {rel_err:.2e} > 1e-4")
      rec = common.measure("cbp_fft", fft_fn, (x, y, sk), items=batch, shape=shape,
                           dtype="float32", peak_gflops=peak, warmup=warmup, iters=iters,
                           extra={"sketch_method": method,
                                  "max_rel_err_vs_explicit": rel_err})
      rec["speedup_vs_explicit"] = round(rec_explicit["median_ms"] / rec["median_ms"], 2)
      common.emit(rec)


if __name__ == "__main__":
  main()
