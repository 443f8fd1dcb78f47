"""Gumbel-softmax (Jang et al. 2017; Maddison et al. 2017), used by DMF's reader.

DMF Eq. 2 weighs memory slots by ``softmax((log π + g) / τ)`` with Gumbel noise
``g`` and a learned per-sample temperature ``τ`` (DMF Eq. 1, see
:func:`clip_temperature`). The noise comes only from an explicit key (the
``'gumbel'`` RNG stream of the fusion layers); with ``key=None`` there is no
noise, which is what evaluation uses by default.
"""
import jax
import jax.numpy as jnp

from mbaf_jax.ops import validation


def sample_gumbel(key, shape, dtype=jnp.float32) -> jax.Array:
  """Standard Gumbel(0, 1) noise ``g = −log(−log U)``, ``U ~ Uniform(0, 1)``.

  This is exactly the noise :func:`gumbel_softmax` adds for the same ``key``
  and ``logits.shape`` (it calls ``jax.random.gumbel(key, shape, dtype)``), so
  tests and users can reproduce a draw.

  Args:
    key: a JAX PRNG key.
    shape: the noise shape.
    dtype: a floating dtype.

  Returns:
    ``shape`` array of Gumbel(0, 1) samples.
  """
  return jax.random.gumbel(key, tuple(shape), dtype)


def clip_temperature(t, t_min: float = 1e-4, t_max: float = 10.0) -> jax.Array:
  """DMF Eq. 1: ``τ = min(max(|t|, t_min), t_max)`` for a raw learned ``t``.

  The gradient is that of ``|t|`` inside the range and 0 where clipped.

  Args:
    t: raw temperature, e.g. ``Dense(1)(x_tmp)`` of shape ``(B, 1)``.
    t_min: lower bound (DMF: 1e-4); must be > 0.
    t_max: upper bound (DMF: τ_max = 10); must be >= t_min.

  Returns:
    The clipped temperature, same shape as ``t``.
  """
  if not (isinstance(t_min, (int, float)) and isinstance(t_max, (int, float))):
    raise TypeError(f"t_min and t_max must be Python numbers, got {t_min!r}, {t_max!r}.")
  if not 0 < t_min <= t_max:
    raise ValueError(f"need 0 < t_min <= t_max for the temperature range, got "
                     f"t_min={t_min}, t_max={t_max}.")
  return jnp.clip(jnp.abs(t), t_min, t_max)


def gumbel_softmax(logits, temperature, key=None, axis: int = -1,
                   hard: bool = False) -> jax.Array:
  """Gumbel-softmax ``softmax((logits + g) / τ)`` along ``axis`` (DMF Eq. 2).

  Args:
    logits: floating array of unnormalised log-probabilities (``log π``).
    temperature: ``τ > 0``, a scalar or an array broadcastable to ``logits``
      (e.g. ``(B, 1)`` per sample from a learned layer). Not clipped here; use
      :func:`clip_temperature` first (values must be positive; this is not
      checkable at trace time).
    key: PRNG key for the noise ``g = sample_gumbel(key, logits.shape)``;
      ``None`` gives the noise-free ``softmax(logits / τ)``.
    axis: the category axis.
    hard: straight-through estimator: the forward value is the one-hot of the
      argmax of the soft sample, the gradient is that of the soft sample.

  Returns:
    Array of ``logits``' shape and (promoted floating) dtype; sums to 1 along ``axis``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mbaf_jax import ops
    >>> logits = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
    >>> print(ops.gumbel_softmax(logits, 1.0).round(3))  # no key: no noise
    [[0.2 0.3 0.5]]
    >>> y = ops.gumbel_softmax(logits, jnp.array([[0.5]]), key=jax.random.key(0))
    >>> round(float(y.sum()), 5)
    1.0
  """
  logits = validation.floating_array(logits, "logits")
  if not -logits.ndim <= axis < logits.ndim:
    raise ValueError(f"axis={axis} is out of range for logits of shape {logits.shape}.")
  temperature = jnp.asarray(temperature)
  if not (jnp.issubdtype(temperature.dtype, jnp.floating)
          or jnp.issubdtype(temperature.dtype, jnp.integer)):
    raise TypeError(f"temperature must be a real number or array, got dtype "
                    f"{temperature.dtype}.")
  try:
    out_shape = jnp.broadcast_shapes(logits.shape, temperature.shape)
  except ValueError as e:
    raise ValueError(f"temperature of shape {temperature.shape} does not broadcast to "
                     f"logits of shape {logits.shape}; use e.g. shape (B, 1) for one "
                     f"temperature per sample.") from e
  if out_shape != logits.shape:
    raise ValueError(f"temperature of shape {temperature.shape} would change the shape of "
                     f"logits {logits.shape} to {out_shape}; it must broadcast to logits.")
  dtype = jnp.result_type(logits, temperature)
  z = logits.astype(dtype)
  if key is not None:
    z = z + sample_gumbel(key, logits.shape, dtype)
  y = jax.nn.softmax(z / temperature.astype(dtype), axis=axis)
  if hard:
    one_hot = jax.nn.one_hot(jnp.argmax(y, axis=axis), y.shape[axis], dtype=dtype,
                             axis=axis)
    y = one_hot + y - jax.lax.stop_gradient(y)
  return y
