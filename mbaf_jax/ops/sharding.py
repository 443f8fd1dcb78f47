"""Explicit-sharding helpers: read an array's sharding type and gather a batch.

Under a mesh with **Explicit** axes (``jax.make_mesh``'s default in current JAX, active through
``jax.set_mesh`` / ``jax.sharding.use_mesh``) the sharding of every array is part of its type
(``jax.typeof(x).sharding.spec``, e.g. ``float32[16@data, 8]``) and ops that cannot infer the
sharding of their output (scatters, concatenation of differently sharded operands, ``lax.scan``
over a sharded axis) raise ``ShardingTypeError``. Under Auto axes, with no mesh, or inside
``shard_map`` over the batch axis (a Manual axis), the type carries no sharding: every helper
here is then the identity, so those paths compute exactly what they computed before.
"""
import jax
from jax.sharding import PartitionSpec


def explicit_spec(x) -> PartitionSpec | None:
  """The explicit sharding spec of ``x``'s type, or ``None`` when no axis of ``x`` is sharded.

  Args:
    x: an array or tracer.

  Returns:
    ``jax.typeof(x).sharding.spec`` when some dimension is sharded over an Explicit mesh axis
    (e.g. ``P('data', None)``), else ``None`` (Auto axes, no mesh, Manual axes, replicated).
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None or all(s is None for s in spec):
    return None
  return spec


def is_explicitly_sharded(x) -> bool:
  """True when some dimension of ``x`` is sharded over an Explicit mesh axis."""
  return explicit_spec(x) is not None


def replicate(x):
  """``x`` resharded to fully replicated when its type is explicitly sharded, else ``x``.

  Under ``jit`` over a mesh with Explicit axes this is the all-gather of a sharded batch: every
  device then holds the global batch (``jax.sharding.reshard(x, P())``).

  Args:
    x: an array or tracer.

  Returns:
    ``x`` with a replicated type (the same values).
  """
  if not is_explicitly_sharded(x):
    return x
  return jax.sharding.reshard(x, PartitionSpec())
