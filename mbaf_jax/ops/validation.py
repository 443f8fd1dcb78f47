"""Shared argument checks for the ops and the fusion layers.

Every check runs at trace time on *static* information (Python ints, shapes,
dtypes, option strings), so it costs nothing inside ``jit`` and works with
traced arrays. Each error names the argument, the value received and what was
expected, so the user knows what to change.

Values (NaN / Inf) are only known at run time; :func:`check_finite` is the
run-time check that also works under ``jit``.
"""
import numbers
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def positive_int(value, name: str) -> int:
  """Returns ``value`` as an ``int`` after checking it is an integer > 0.

  Args:
    value: the user's value (a Python or NumPy integer; ``bool`` is refused).
    name: the argument name used in the error message.

  Returns:
    ``int(value)``.

  Raises:
    TypeError: ``value`` is not an integer (e.g. ``2.5``, ``"8"``, a traced array).
    ValueError: ``value <= 0``.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be a positive Python int, got {value!r} "
                    f"of type {type(value).__name__}; pass e.g. {name}=8.")
  if value <= 0:
    raise ValueError(f"{name} must be a positive int, got {value}.")
  return int(value)


def int_tuple(values, name: str) -> tuple[int, ...]:
  """Checks a non-empty sequence of positive ints and returns it as a tuple."""
  if isinstance(values, numbers.Integral) and not isinstance(values, bool):
    values = (values,)
  if not isinstance(values, (tuple, list)) or not values:
    raise TypeError(f"{name} must be a non-empty tuple of positive ints "
                    f"(one per input), got {values!r}.")
  return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))


def option(value, allowed: Iterable[str], name: str) -> str:
  """Checks that ``value`` is one of the ``allowed`` option strings."""
  allowed = tuple(allowed)
  if not isinstance(value, str) or value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
  return value


def floating_array(x, name: str, min_rank: int = 1) -> jax.Array:
  """Converts ``x`` to a JAX array and checks it is floating with rank >= min_rank.

  Args:
    x: array-like (a NumPy/JAX array, a list, or a tracer).
    name: the argument name used in error messages.
    min_rank: the smallest number of dimensions accepted.

  Returns:
    ``jnp.asarray(x)``.

  Raises:
    TypeError: ``x`` is not a floating-point array (ints are refused so that
      e.g. token ids are not silently fed where features are expected).
    ValueError: ``x.ndim < min_rank``.
  """
  try:
    x = jnp.asarray(x)
  except TypeError as e:
    raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}.") from e
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}; "
                    f"cast it, e.g. {name}.astype(jnp.float32).")
  if x.ndim < min_rank:
    raise ValueError(f"{name} must have at least {min_rank} dimension(s), "
                     f"got shape {x.shape}.")
  return x


def last_dim(x, expected: int, name: str, why: str) -> None:
  """Checks ``x.shape[-1] == expected``; ``why`` says where ``expected`` comes from."""
  if x.shape[-1] != expected:
    raise ValueError(f"{name} has last dimension {x.shape[-1]} (shape {x.shape}) but "
                     f"{why} expects {expected}.")


def broadcast_batch(shapes: Sequence[tuple[int, ...]], names: Sequence[str]) -> tuple[int, ...]:
  """Broadcasts leading (batch) shapes, naming the arguments on failure."""
  try:
    return tuple(np.broadcast_shapes(*shapes))
  except ValueError as e:
    desc = ", ".join(f"{n}: {s}" for n, s in zip(names, shapes))
    raise ValueError(f"leading (batch) dimensions do not broadcast ({desc}); give the "
                     f"inputs the same batch shape.") from e


def _raise_if_not_finite(name, x):
  x = np.asarray(x)
  if not np.all(np.isfinite(x)):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise FloatingPointError(
        f"{name} contains {bad} non-finite value(s) (NaN or Inf) out of {np.size(x)}; "
        f"check the inputs / learning rate that produced it.")


def check_finite(x, name: str):
  """Checks that every value of ``x`` is finite; returns ``x`` unchanged.

  Works eagerly and under ``jit`` / ``vmap`` / ``grad``:

  * on concrete arrays the check runs at once and raises ``FloatingPointError``;
  * on traced arrays a ``jax.debug.callback`` runs the same host-side check when
    the compiled function executes; the ``FloatingPointError`` then surfaces
    from the call (JAX re-raises it wrapped in its runtime error type, with the
    message naming ``name``). Costs one device-to-host copy of ``x``: use it for
    inputs and losses, not inside a hot inner loop.

  Args:
    x: a floating-point array.
    name: what ``x`` is, used in the message (e.g. ``"x_a"``, ``"loss"``).

  Returns:
    ``x`` (so it can be used inline: ``x = check_finite(x, "x")``).

  Raises:
    FloatingPointError: ``x`` has a NaN or an Inf.
  """
  if isinstance(x, jax.core.Tracer):
    jax.debug.callback(lambda v: _raise_if_not_finite(name, v), x)
  else:
    _raise_if_not_finite(name, x)
  return x
