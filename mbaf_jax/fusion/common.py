"""Pieces shared by the fusion layers.

* :class:`FusionOutput` — what every fusion layer returns;
* :func:`batch_mask`, :func:`check_modes`, :func:`modality_presence` — argument checks that name
  the argument (``modality_mask``: which modes each row has);
* :class:`CompactBilinearPooling` — linen wrapper of :func:`mbaf_jax.ops.compact_bilinear_pooling`
  whose count-sketch hashes/signs live in the ``'constants'`` collection (DMF Eq. 3);
* :class:`MaskedBatchNorm` — batch normalisation whose statistics exclude padded rows,
  also when synchronised over a ``pmap``/``shard_map`` axis (count-weighted, so it
  equals the single-device result even when devices hold different numbers of real rows);
* :func:`gather_batch` — all-gather a batch and its mask over an axis (the global batch), or
  reshard it to replicated under a mesh with Explicit axes (:func:`is_local_batch`).
"""
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbaf_jax import ops
from mbaf_jax.ops import sharding, validation

SKETCH_CONSTANTS = ("hashes_x", "signs_x", "hashes_y", "signs_y")


@flax.struct.dataclass
class FusionOutput:
  """What every fusion layer returns.

  Attributes:
    fused: (B, F) fused features for the downstream head.
    aux: extra loss terms (scalars) the caller adds to its objective, e.g.
      ``{"memory_similarity": loss}`` for DMF (Eq. 4). Empty for NaiveFusion.
  """
  fused: jax.Array
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)


def batch_mask(mask, batch_size, name="mask"):
  """Returns a (B,) float32 mask of ones when ``mask`` is None, else checks it."""
  if mask is None:
    return jnp.ones((batch_size,), jnp.float32)
  mask = jnp.asarray(mask)
  if mask.shape != (batch_size,):
    raise ValueError(f"{name} must have shape ({batch_size},) to match the batch, "
                     f"got {mask.shape}")
  return mask.astype(jnp.float32)


def modality_presence(modality_mask, batch_size: int, n_modes: int, mask):
  """Checks ``modality_mask`` and folds the rows with no mode present into the batch mask.

  Args:
    modality_mask: ``(B, M)`` bool or {0, 1}, True = mode present; ``None``: all present.
    batch_size: ``B``.
    n_modes: ``M``, the number of modes the layer was called with.
    mask: the ``(B,)`` float32 batch mask of :func:`batch_mask`.

  Returns:
    ``(present (B, M) bool, row_mask (B,) float32)``: ``row_mask`` is ``mask`` with the rows
    that have no mode present set to 0 (they are treated as padding); ``present`` marks every
    mode of a padded row present, so a padded row is computed exactly as without the argument.
    ``(None, mask)`` when ``modality_mask`` is None.

  Raises:
    ValueError naming ``modality_mask`` when its shape is not ``(B, M)``.
  """
  if modality_mask is None:
    return None, mask
  mm = jnp.asarray(modality_mask)
  if mm.shape != (batch_size, n_modes):
    raise ValueError(f"modality_mask must have shape (B, M) = ({batch_size}, {n_modes}) (one "
                     f"flag per row and mode, True = present), got {mm.shape}.")
  present = mm > 0 if mm.dtype != jnp.bool_ else mm
  row_mask = jnp.where(jnp.any(present, axis=1), mask, jnp.zeros((), mask.dtype))
  return present | (row_mask <= 0)[:, None], row_mask


def check_modes(modes: Sequence[Any], layer: str, count: int | None = None,
                names: Sequence[str] | None = None) -> tuple[jax.Array, ...]:
  """Checks the ``*modes`` of a fusion layer: floating ``(B, d_i)`` arrays, one batch size.

  Args:
    modes: the positional inputs, one ``(B, d_i)`` array per modality.
    layer: the layer's name, for messages.
    count: the exact number of modes required (``None``: at least one).
    names: display names of the modes (default ``modes[i]``).

  Returns:
    The modes as JAX arrays.

  Raises:
    ValueError / TypeError naming the offending mode and what is expected.
  """
  if count is not None and len(modes) != count:
    want = " and ".join(names) if names else f"{count} arrays"
    raise ValueError(f"{layer} takes exactly {count} modes ({want}), each of shape (B, d), "
                     f"got {len(modes)}.")
  if not modes:
    raise ValueError(f"{layer} needs at least one mode: call it as layer(x_1, ..., x_n) "
                     f"with arrays of shape (B, d_i); got none.")
  names = list(names) if names else [f"modes[{i}]" for i in range(len(modes))]
  out = []
  for name, x in zip(names, modes):
    x = validation.floating_array(x, name)
    if x.ndim != 2:
      raise ValueError(f"{name} must have shape (B, d) (one feature vector per example), "
                       f"got shape {x.shape}; pool sequences before fusing.")
    out.append(x)
  sizes = {x.shape[0] for x in out}
  if len(sizes) > 1:
    desc = ", ".join(f"{n}: {x.shape}" for n, x in zip(names, out))
    raise ValueError(f"{layer}: all modes must have the same batch size B, got {desc}.")
  return tuple(out)


class CompactBilinearPooling(nn.Module):
  """Compact bilinear pooling layer ``CBP(x, y)`` (DMF Eq. 3; Gao et al. 2016; Fukui et al. 2016).

  The count-sketch hashes and signs are fixed random constants drawn at init from
  the ``'params'`` RNG stream and stored in the ``'constants'`` collection
  (``hashes_x``, ``signs_x``, ``hashes_y``, ``signs_y``); they are never trained or
  updated and must be passed to every ``apply`` (they are saved with checkpoints).
  One instance called twice shares its sketches (DMF's "shared CBP layer").

  Call: ``layer(x, y)`` with ``x (..., d1)``, ``y (..., d2)`` → ``(..., output_dim)``.
  """
  output_dim: int = 2048  # D, the pooled dimension
  signed_sqrt: bool = False  # Fukui et al. §3.1 signed square root of the output
  l2_normalize: bool = False  # then L2-normalise the output
  method: str = "segment_sum"  # count-sketch method of ops.count_sketch

  @nn.compact
  def __call__(self, x, y):
    """Returns ``irfft(rfft(Ψ_x x) · rfft(Ψ_y y))`` of shape ``(..., output_dim)``.

    Args:
      x: ``(..., d1)`` floating array (first CBP argument; order matters).
      y: ``(..., d2)`` floating array.

    Returns:
      ``(..., output_dim)`` pooled features.
    """
    dim = validation.positive_int(self.output_dim, "output_dim")
    x = validation.floating_array(x, "x")
    y = validation.floating_array(y, "y")
    in_dims = (x.shape[-1], y.shape[-1])
    have = all(self.has_variable("constants", n) for n in SKETCH_CONSTANTS)
    if not have and not self.is_initializing():
      raise ValueError(
          f"CompactBilinearPooling ({self.name}) found no count sketch in the 'constants' "
          f"collection; pass every collection returned by init to apply, e.g. "
          f"layer.apply({{'params': ..., 'constants': variables['constants'], ...}}, ...).")
    sketch_box = {}

    def draw():
      if "sk" not in sketch_box:
        sketch_box["sk"] = ops.make_count_sketch(self.make_rng("params"), in_dims, dim)
      return sketch_box["sk"]

    hx = self.variable("constants", "hashes_x", lambda: draw().hashes[0]).value
    sx = self.variable("constants", "signs_x", lambda: draw().signs[0]).value
    hy = self.variable("constants", "hashes_y", lambda: draw().hashes[1]).value
    sy = self.variable("constants", "signs_y", lambda: draw().signs[1]).value
    if (hx.shape[0], hy.shape[0]) != in_dims:
      raise ValueError(f"CompactBilinearPooling ({self.name}) was initialised for inputs of "
                       f"dims {(hx.shape[0], hy.shape[0])} but got x {x.shape}, y {y.shape}.")
    sk = ops.CountSketch(hashes=(hx, hy), signs=(sx, sy), dim=dim)
    return ops.compact_bilinear_pooling(x, y, sk, signed_sqrt=self.signed_sqrt,
                                        l2_normalize=self.l2_normalize, method=self.method)


class MaskedBatchNorm(nn.Module):
  """Batch normalisation over the rows of ``(B, F)`` that excludes padded rows.

  Statistics are count-weighted sums: ``μ = Σ m x / Σ m``, ``σ² = Σ m (x − μ)² / Σ m``;
  with ``axis_name`` set the sums (and counts) are ``psum``-ed over that axis, so a
  ``pmap``/``shard_map`` run equals the single-device run on the global batch even
  when devices hold different numbers of real rows (``flax.linen.BatchNorm`` averages
  per-device means, which is only right for equal counts). Running statistics use
  flax's convention ``ra ← momentum·ra + (1 − momentum)·stat`` with the biased
  variance; they are left unchanged by a batch with no real rows. Padded rows are
  zeroed on entry (their outputs are meaningless but finite).

  Variables: ``params/{scale, bias}``, ``batch_stats/{mean, var}`` (flax's names).
  """
  momentum: float = 0.9  # running-average decay (flax convention; PyTorch's 0.1)
  epsilon: float = 1e-5  # added to the variance (PyTorch's BatchNorm1d default)
  axis_name: str | None = None  # pmap/shard_map axis to sync statistics over
  dtype: Any = None  # output dtype (None: input dtype)
  param_dtype: Any = jnp.float32  # dtype of scale/bias

  @nn.compact
  def __call__(self, x, mask=None, use_running_average: bool = False):
    """Normalises ``x``.

    Args:
      x: ``(B, F)`` floating array.
      mask: ``(B,)`` {0, 1}/bool, 1 = real row (None: all real).
      use_running_average: use the stored statistics (evaluation) instead of the batch's.

    Returns:
      ``(B, F)`` normalised, scaled and shifted features.
    """
    x = validation.floating_array(x, "x", min_rank=2)
    feat = x.shape[-1]
    m = batch_mask(mask, x.shape[0]).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((feat,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((feat,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (feat,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (feat,), self.param_dtype)
    real = m > 0
    # Padded rows are zeroed before any arithmetic (where, not multiply): a padded row of
    # Inf/NaN must not give 0 * Inf = NaN in the statistics, the outputs or the gradients.
    xf = jnp.where(real, x.astype(jnp.promote_types(x.dtype, jnp.float32)), 0)
    axes = tuple(range(x.ndim - 1))
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      def total(v):
        s = jnp.sum(v, axis=axes)
        return s if self.axis_name is None else jax.lax.psum(s, self.axis_name)
      count = total(jnp.broadcast_to(real, x.shape[:-1] + (1,)).astype(jnp.float32))[..., 0]
      safe = jnp.maximum(count, 1.0)
      mean = total(xf) / safe
      var = total(jnp.where(real, jnp.square(xf - mean), 0)) / safe
      if not self.is_initializing():
        mom = self.momentum
        ra_mean.value = jnp.where(count > 0, mom * ra_mean.value + (1 - mom) * mean,
                                  ra_mean.value)
        ra_var.value = jnp.where(count > 0, mom * ra_var.value + (1 - mom) * var,
                                 ra_var.value)
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype or x.dtype)


def gather_batch(x, mask, axis_name: str | None):
  """All-gathers a per-device batch and its mask over ``axis_name`` (the global batch).

  With ``axis_name=None`` the inputs already are the global batch; if their type is sharded
  over an Explicit mesh axis (``jax.make_mesh`` + ``jax.set_mesh``) they are resharded to
  replicated (``jax.sharding.reshard``: the all-gather of global-view code), so the writer's
  concatenation with the replicated memory and its scan over rows are well typed. Otherwise
  (no mesh, Auto axes) the inputs are returned unchanged.

  Args:
    x: ``(B_local, ...)`` array.
    mask: ``(B_local,)`` mask.
    axis_name: the ``pmap``/``shard_map`` axis, or ``None``.

  Returns:
    ``(x_global (B_local·P, ...), mask_global (B_local·P,))`` in device order.
  """
  if axis_name is None:
    return sharding.replicate(x), sharding.replicate(mask)
  return (jax.lax.all_gather(x, axis_name, tiled=True),
          jax.lax.all_gather(mask, axis_name, tiled=True))


def is_local_batch(x, axis_name: str | None) -> bool:
  """True when ``x`` is not the whole batch on every device, so a writer must gather it.

  That is a per-device batch (``axis_name`` set: ``pmap``/``shard_map``) or a global batch
  whose type is sharded over an Explicit mesh axis (:func:`gather_batch` reshards it).
  """
  return axis_name is not None or sharding.is_explicitly_sharded(x)


def local_slice(x_global, local_size: int, axis_name: str | None):
  """The rows of a global ``(B_local·P, ...)`` array that belong to this device."""
  if axis_name is None:
    return x_global
  start = jax.lax.axis_index(axis_name) * local_size
  return jax.lax.dynamic_slice_in_dim(x_global, start, local_size, axis=0)


def xavier_normal(gain: float = 1.0):
  """PyTorch's ``xavier_normal_``: ``N(0, gain² · 2 / (fan_in + fan_out))``, not truncated.

  For a memory of shape ``(n, d)`` (fan_out = n, fan_in = d) the std is
  ``gain · sqrt(2 / (n + d))`` (DMF §2.2: "Xavier normal distribution with a gain of 1").
  ``jax.nn.initializers.glorot_normal`` draws a *truncated* normal, hence this helper.
  """
  def init(key, shape, dtype=jnp.float32):
    if len(shape) != 2:
      raise ValueError(f"xavier_normal expects a 2-D shape (n, d), got {shape}.")
    std = gain * float(np.sqrt(2.0 / (shape[0] + shape[1])))
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return init
