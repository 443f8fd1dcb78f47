"""Count sketch and compact bilinear pooling (Gao et al. 2016; Fukui et al. 2016).

The bilinear feature of ``x ∈ R^{d1}`` and ``y ∈ R^{d2}`` is the outer product
``x yᵀ`` (d1·d2 numbers). Compact bilinear pooling projects it to ``D`` numbers
without forming it: with count sketches ``Ψ1`` (hash ``h1 ∈ [0, D)^{d1}``, signs
``s1 ∈ {±1}^{d1}``) and ``Ψ2``,

    Ψ(x)[c] = Σ_{i : h[i] = c} s[i] x[i]                     (count sketch)
    CBP(x, y) = Ψ1(x) ⊛ Ψ2(y) = irfft(rfft(Ψ1 x) · rfft(Ψ2 y), D)

(``⊛`` = circular convolution), which equals the count sketch of ``vec(x yᵀ)``
with hash ``(h1[i] + h2[j]) mod D`` and sign ``s1[i] s2[j]``. Its kernel property
``E_{h,s}⟨CBP(x, y), CBP(x', y')⟩ = ⟨x, x'⟩⟨y, y'⟩`` (Gao et al. 2016, Eq. 5) is
what makes it a compact stand-in for bilinear pooling. Used by DMF's composer
(DMF Eq. 3).

The hashes and signs are fixed random constants drawn from an explicit key
(:func:`make_count_sketch`); fusion layers keep them in the ``'constants'``
variable collection so they are saved with checkpoints.
"""
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mbaf_jax.ops import sharding, validation

SKETCH_METHODS = ("segment_sum", "scatter", "dense")


@flax.struct.dataclass
class CountSketch:
  """The fixed random hashes and signs of one count sketch per input.

  Attributes:
    hashes: one int32 array ``(d_i,)`` per input, values in ``[0, dim)``.
    signs: one float32 array ``(d_i,)`` per input, values in ``{-1, +1}``.
    dim: the sketch (output) dimension ``D``; static (not a pytree leaf).
  """
  hashes: tuple  # int32 (d_i,) per input, in [0, dim)
  signs: tuple  # float32 (d_i,) per input, in {-1, +1}
  dim: int = flax.struct.field(pytree_node=False)  # output dimension D

  @property
  def in_dims(self) -> tuple[int, ...]:
    """The input dimensions ``(d_1, d_2, ...)``."""
    return tuple(int(h.shape[0]) for h in self.hashes)


def _check_key(key, name="key"):
  if isinstance(key, (int, np.integer)):
    raise TypeError(f"{name} must be a JAX PRNG key, got the int {key!r}; "
                    f"pass jax.random.key({key}).")
  if not isinstance(key, jax.Array) and not isinstance(key, np.ndarray):
    raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key(seed)), "
                    f"got {type(key).__name__}.")
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.dtype != jnp.uint32 or key.ndim != 1:
      raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key(seed) or a raw "
                      f"uint32 key from jax.random.PRNGKey), got dtype {key.dtype} "
                      f"shape {key.shape}.")


def make_count_sketch(key, in_dims: Sequence[int], dim: int) -> CountSketch:
  """Draws the hashes and signs of count sketches, deterministically from ``key``.

  ``h_i ~ Uniform{0, …, D−1}^{d_i}`` and ``s_i ~ Uniform{−1, +1}^{d_i}``, all
  independent (Gao et al. 2016, Alg. 2; Fukui et al. 2016, §3.1). Input ``i``
  uses ``jax.random.fold_in(key, i)``, so adding an input does not change the
  sketches of the others.

  Args:
    key: a JAX PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``).
    in_dims: the input dimensions ``(d_1, d_2, ...)``, positive ints.
    dim: the sketch dimension ``D``, a positive int.

  Returns:
    A :class:`CountSketch` with one hash/sign array per input.
  """
  _check_key(key)
  in_dims = validation.int_tuple(in_dims, "in_dims")
  dim = validation.positive_int(dim, "dim")
  hashes, signs = [], []
  for i, d in enumerate(in_dims):
    k_hash, k_sign = jax.random.split(jax.random.fold_in(key, i))
    hashes.append(jax.random.randint(k_hash, (d,), 0, dim, dtype=jnp.int32))
    signs.append(jnp.where(jax.random.bernoulli(k_sign, 0.5, (d,)), 1.0, -1.0)
                 .astype(jnp.float32))
  return CountSketch(hashes=tuple(hashes), signs=tuple(signs), dim=dim)


def _check_sketch_arrays(hashes, signs, name="hashes"):
  hashes, signs = jnp.asarray(hashes), jnp.asarray(signs)
  if hashes.ndim != 1 or signs.ndim != 1 or hashes.shape != signs.shape:
    raise ValueError(f"{name} and signs must be 1-D arrays of the same length (d,), "
                     f"got shapes {hashes.shape} and {signs.shape}.")
  if not jnp.issubdtype(hashes.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array (bucket ids in [0, dim)), "
                    f"got dtype {hashes.dtype}.")
  return hashes, signs


def count_sketch(x, hashes, signs, dim: int, method: str = "segment_sum") -> jax.Array:
  """Count sketch ``Ψ(x)[..., c] = Σ_{i: h[i]=c} s[i] x[..., i]`` (Gao et al. 2016).

  Args:
    x: ``(..., d)`` floating array; leading dimensions are batch dimensions.
    hashes: ``(d,)`` int array with values in ``[0, dim)`` (checked when the
      array is concrete; traced out-of-range ids would be dropped by the scatter).
    signs: ``(d,)`` float array of ±1.
    dim: the sketch dimension ``D`` (static positive int).
    method: ``"segment_sum"`` (default; ``jax.ops.segment_sum`` over the feature
      axis), ``"scatter"`` (``.at[..., h].add`` on the last axis), or
      ``"dense"`` (builds the d×D sketch matrix and multiplies; for comparison
      and small sizes only).

  Returns:
    ``(..., D)`` array of ``x``'s dtype; under a mesh with Explicit axes its batch axes keep
    ``x``'s sharding (the scatter's ``out_sharding``).
  """
  dim = validation.positive_int(dim, "dim")
  validation.option(method, SKETCH_METHODS, "method")
  x = validation.floating_array(x, "x")
  hashes, signs = _check_sketch_arrays(hashes, signs)
  validation.last_dim(x, hashes.shape[0], "x", "the count sketch (len(hashes))")
  if not isinstance(hashes, jax.core.Tracer) and hashes.size:
    host = np.asarray(hashes)  # concrete: read on the host, adds nothing to a trace
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= dim:
      raise ValueError(f"hashes has values in [{lo}, {hi}] but must lie in [0, dim={dim}); "
                       f"was the sketch made with a different dim?")
  xs = x * signs.astype(x.dtype)
  # Under explicit sharding a scatter cannot infer its output's sharding: the sketch keeps the
  # batch axes' sharding of x and replicates its last (bucket) axis. None elsewhere.
  spec = sharding.explicit_spec(x)
  batch_spec = None if spec is None else tuple(spec)[:-1]
  if method == "segment_sum":
    moved = jnp.moveaxis(xs, -1, 0)  # (d, ...)
    kw = {} if spec is None else {"out_sharding": sharding.like(x, P(None, *batch_spec))}
    out = jax.ops.segment_sum(moved, hashes, num_segments=dim,
                              indices_are_sorted=False, **kw)
    return jnp.moveaxis(out, 0, -1)
  if method == "scatter":
    kw = {} if spec is None else {"out_sharding": sharding.like(x, P(*batch_spec, None))}
    out = jnp.zeros(x.shape[:-1] + (dim,), x.dtype, **kw)
    return out.at[..., hashes].add(xs, mode="drop", **kw)
  matrix = jax.nn.one_hot(hashes, dim, dtype=x.dtype)  # (d, D)
  return jnp.einsum("...d,dk->...k", xs, matrix,
                    precision=jax.lax.Precision.HIGHEST)


def _fft_dtype(*arrays):
  dtype = jnp.result_type(*arrays)
  return jnp.promote_types(dtype, jnp.float32)


def signed_sqrt(z, eps: float = 1e-8) -> jax.Array:
  """Smooth signed square root ``z / sqrt(|z| + eps)`` (Fukui et al. 2016, §3.1).

  Equals ``sign(z) sqrt(|z|)`` up to a relative error ``≈ eps / (2|z|)``, and
  unlike it has a finite, continuous derivative everywhere
  (``1/sqrt(eps)`` at ``z = 0``), so gradients are safe at 0.
  """
  return z * jax.lax.rsqrt(jnp.abs(z) + eps)


def l2_normalize(z, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """``z / sqrt(‖z‖² + eps)`` along ``axis``; finite gradient at ``z = 0``."""
  return z * jax.lax.rsqrt(jnp.sum(z * z, axis=axis, keepdims=True) + eps)


# Aliases: compact_bilinear_pooling's boolean options shadow the names above.
_signed_sqrt = signed_sqrt
_l2_normalize = l2_normalize


def compact_bilinear_pooling(x, y, sk: CountSketch, signed_sqrt: bool = False,
                             l2_normalize: bool = False, eps: float = 1e-8,
                             method: str = "segment_sum") -> jax.Array:
  """Compact bilinear pooling ``irfft(rfft(Ψ1 x) · rfft(Ψ2 y), D)``.

  Gao et al. 2016 (Tensor Sketch projection, Alg. 2) and Fukui et al. 2016
  (MCB, Eq. 4–5); used as ``CBP`` in DMF Eq. 3. Optional post-processing of
  Fukui et al. §3.1: signed square root, then L2 normalisation.

  Args:
    x: ``(..., d1)`` floating array.
    y: ``(..., d2)`` floating array; leading dimensions broadcast with ``x``'s.
    sk: a :class:`CountSketch` with exactly two inputs, ``sk.in_dims == (d1, d2)``.
    signed_sqrt: apply :func:`signed_sqrt` to the pooled vector.
    l2_normalize: then divide by its L2 norm (:func:`l2_normalize`).
    eps: the ``eps`` of both options (keeps their gradients finite at 0).
    method: how the count sketches are computed, see :func:`count_sketch`.

  Returns:
    ``(..., D)`` array, ``D = sk.dim``, in ``x``/``y``'s promoted dtype (the FFT
    runs in at least float32).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mbaf_jax import ops
    >>> sk = ops.make_count_sketch(jax.random.key(0), in_dims=(3, 4), dim=8)
    >>> ops.compact_bilinear_pooling(jnp.ones((2, 3)), jnp.ones((2, 4)), sk).shape
    (2, 8)
    >>> z = ops.compact_bilinear_pooling(jnp.ones(3), jnp.ones(4), sk, signed_sqrt=True,
    ...                                  l2_normalize=True)
    >>> round(float(jnp.linalg.norm(z)), 4)
    1.0
  """
  if not isinstance(sk, CountSketch):
    raise TypeError(f"sk must be a CountSketch from make_count_sketch, got "
                    f"{type(sk).__name__}.")
  if len(sk.hashes) != 2 or len(sk.signs) != 2:
    raise ValueError(f"sk must sketch exactly two inputs for compact_bilinear_pooling(x, y), "
                     f"got a sketch of {len(sk.hashes)} input(s); use "
                     f"make_count_sketch(key, in_dims=(d1, d2), dim=D).")
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
    raise ValueError(f"eps must be a non-negative Python float, got {eps!r}.")
  x = validation.floating_array(x, "x")
  y = validation.floating_array(y, "y")
  d1, d2 = sk.in_dims
  validation.last_dim(x, d1, "x", f"sk (in_dims={sk.in_dims}) for the first input")
  validation.last_dim(y, d2, "y", f"sk (in_dims={sk.in_dims}) for the second input")
  validation.broadcast_batch((x.shape[:-1], y.shape[:-1]), ("x", "y"))
  out_dtype = jnp.result_type(x, y)
  compute = _fft_dtype(x, y)
  d = sk.dim
  px = count_sketch(x.astype(compute), sk.hashes[0], sk.signs[0], d, method=method)
  py = count_sketch(y.astype(compute), sk.hashes[1], sk.signs[1], d, method=method)
  z = jnp.fft.irfft(jnp.fft.rfft(px, n=d) * jnp.fft.rfft(py, n=d), n=d)
  if signed_sqrt:
    z = _signed_sqrt(z, eps)
  if l2_normalize:
    z = _l2_normalize(z, eps=eps)
  return z.astype(out_dtype)
