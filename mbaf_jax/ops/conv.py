"""Grouped 1-D convolution whose weight gradient is fast on XLA's CPU backend.

Wav2Vec2's positional convolution (``Wav2Vec2PositionalConvEmbedding``: 768 → 768 channels,
kernel 128, 16 groups) is a grouped convolution. XLA's CPU backend runs its forward and its input
gradient as fast, Eigen-backed convolutions, but lowers the *weight* gradient of a grouped
convolution to a convolution with ``batch_group_count`` = groups, which it runs as a slow loop:
at Wav2Vec2-base's shapes (batch 4, 249 frames) the weight gradient alone took ≈ 3.3 s against
≈ 75 ms for the same sums written as one plain convolution per group (interleaved in-process
timings, 2-core AMD EPYC; ``python -m benchmarks.bench_vs_torch --only wav2vec2_posconv`` re-measures it).

:func:`grouped_conv1d` therefore computes

  ``y[b, t, g·m + o] = Σ_k Σ_i xp[b, t + k, g·c + i] · w[k, i, g·m + o]``

(``xp`` = ``x`` zero-padded by ``padding``, ``c`` = in/groups, ``m`` = out/groups) with XLA's
grouped convolution forward and input gradient, and, for ``impl="per_group"``, a custom VJP
whose weight gradient is, for each group ``g``,

  ``dw[k, i, g·m + o] = Σ_b Σ_t xp[b, t + k, g·c + i] · dy[b, t, g·m + o]``,

one *ungrouped* convolution in which the batch is the contracted feature axis, the input
channels are the batch axis and ``dy`` is the kernel (``groups`` convolutions, unrolled).
The values are the same sums as XLA's (float32 rounding apart, tested against XLA's own
gradient and a NumPy reference in ``tests/test_ops_conv.py``).

``impl="auto"`` (the default) picks ``"per_group"`` when ``jax.default_backend()`` is ``"cpu"``
and ``groups > 1``, and XLA's own convolution (``"xla"``) otherwise: cuDNN and the TPU
compiler run grouped weight gradients natively, and there the unrolled per-group convolutions
would only add launches. Forward-mode differentiation (``jax.jvp``) is not defined for a
custom VJP: use ``impl="xla"`` where it is needed.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from mbaf_jax.ops import sharding

IMPLS = ("auto", "xla", "per_group")
_DIMS = ("NWC", "WIO", "NWC")


def resolve_impl(impl: str, groups: int) -> str:
  """The implementation ``impl`` stands for here: ``"auto"`` → ``"per_group"`` on the CPU
  backend with ``groups > 1``, else ``"xla"``; other names are returned as they are.

  Raises:
    ValueError: ``impl`` not in :data:`IMPLS`.
  """
  if impl not in IMPLS:
    raise ValueError(f"grouped_conv1d: impl={impl!r}; expected one of {IMPLS}.")
  if impl == "auto":
    return "per_group" if jax.default_backend() == "cpu" and groups > 1 else "xla"
  return impl


def _xla_conv(x, w, padding, groups):
  return lax.conv_general_dilated(x, w, window_strides=(1,), padding=[padding],
                                  dimension_numbers=_DIMS, feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _per_group_conv(x, w, padding, groups):
  return _xla_conv(x, w, padding, groups)


def _per_group_fwd(x, w, padding, groups):
  return _xla_conv(x, w, padding, groups), (x, w)


def _per_group_bwd(padding, groups, res, dy):
  x, w = res
  # Input gradient: XLA's own (a grouped convolution with the flipped kernel, fast on CPU).
  _, vjp_x = jax.vjp(lambda x_: _xla_conv(x_, w, padding, groups), x)
  (dx,) = vjp_x(dy)
  # Weight gradient: one plain convolution per group, batch contracted as the feature axis.
  c, m = w.shape[1], w.shape[2] // groups
  xp = jnp.pad(x, ((0, 0), padding, (0, 0)))
  # A batch sharded over an Explicit mesh is the contracted axis here: the weight gradient is
  # replicated, like the weight (None elsewhere: XLA decides, as before).
  out_sharding = (sharding.like(x, PartitionSpec()) if sharding.is_explicitly_sharded(x)
                  else None)
  dws = []
  for g in range(groups):
    lhs = jnp.transpose(xp[:, :, g * c:(g + 1) * c], (2, 1, 0))  # (c, T + pads, B)
    rhs = jnp.transpose(dy[:, :, g * m:(g + 1) * m], (1, 0, 2))  # (T_out, B, m)
    dws.append(lax.conv_general_dilated(lhs, rhs, window_strides=(1,), padding="VALID",
                                        dimension_numbers=_DIMS,
                                        out_sharding=out_sharding))  # (c, K, m)
  dw = jnp.transpose(jnp.concatenate(dws, axis=2), (1, 0, 2))  # (K, c, groups · m)
  return dx, dw.astype(w.dtype)


_per_group_conv.defvjp(_per_group_fwd, _per_group_bwd)


def grouped_conv1d(x, w, padding, groups: int, impl: str = "auto"):
  """Stride-1 grouped 1-D convolution (cross-correlation, as ``torch.nn.Conv1d``), channels last.

  Args:
    x: (B, T, C_in) input.
    w: (K, C_in / groups, C_out) kernel (``lax.conv_general_dilated``'s ``"WIO"`` layout with
      ``feature_group_count=groups``).
    padding: ``(lo, hi)`` zeros added before / after the time axis.
    groups: feature groups (divides C_in and C_out).
    impl: ``"auto"``, ``"xla"`` (``lax.conv_general_dilated`` and its own gradients) or
      ``"per_group"`` (the same forward, the weight gradient as one plain convolution per group;
      see the module docstring).

  Returns:
    (B, T + lo + hi − K + 1, C_out), in the dtype of ``x`` and ``w``.

  Example:
    >>> x = jnp.ones((1, 5, 4)); w = jnp.ones((3, 2, 4))
    >>> grouped_conv1d(x, w, (1, 1), groups=2, impl="per_group")[0, :, 0]
    Array([4., 6., 6., 6., 4.], dtype=float32)
  """
  if x.ndim != 3 or w.ndim != 3:
    raise ValueError(f"grouped_conv1d: x must be (B, T, C) and w (K, C/groups, C_out), got "
                     f"{x.shape} and {w.shape}.")
  if x.shape[-1] != w.shape[1] * groups or w.shape[2] % groups:
    raise ValueError(f"grouped_conv1d: x has {x.shape[-1]} channels and w is {w.shape}; with "
                     f"groups={groups} w must be (K, {x.shape[-1] // max(groups, 1)}, C_out) "
                     "with C_out divisible by groups.")
  padding = tuple(int(p) for p in padding)
  if resolve_impl(impl, groups) == "xla":
    return _xla_conv(x, w, padding, groups)
  return _per_group_conv(x, w, padding, groups)
