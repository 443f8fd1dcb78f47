"""Explicit-sharding helpers: an array's sharding type, a batch gathered, batch-sharded zeros.

Under a mesh with **Explicit** axes (``jax.make_mesh``'s default in current JAX, active through
``jax.set_mesh``; ``jax.sharding.use_mesh`` in older JAX) the sharding of every array is part of
its type (``jax.typeof(x).sharding.spec``, e.g. ``float32[16@data, 8]``) and ops that cannot
infer the sharding of their output (scatters, gathers, concatenation of differently sharded
operands, ``lax.scan`` over a sharded axis) raise ``ShardingTypeError``. Under Auto axes, with
no mesh, or inside ``shard_map`` over the batch axis (a Manual axis), the type carries no
sharding: every helper here is then the identity, so those paths compute exactly what they
computed before.

An array placed on an Explicit mesh has a sharded type whether or not a mesh context is active
(``jax.device_put(x, NamedSharding(mesh, P("data")))`` then ``jax.jit`` without
``jax.set_mesh``: the usual case in a data pipeline). A bare ``PartitionSpec`` needs that
context, so every sharding built here is a ``NamedSharding`` on the array's own (abstract) mesh,
read from its type (:func:`like`): the helpers work with and without ``jax.set_mesh``.
"""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


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


def like(x, spec: PartitionSpec) -> NamedSharding:
  """``spec`` on the mesh of ``x``'s type: an ``out_sharding`` valid without a mesh context.

  Args:
    x: an array or tracer whose type is explicitly sharded (:func:`explicit_spec` not None).
    spec: the wanted partition spec over that mesh's axes.

  Returns:
    ``NamedSharding(jax.typeof(x).sharding.mesh, spec)`` (an abstract mesh under ``jit``).
  """
  return NamedSharding(jax.typeof(x).sharding.mesh, spec)


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
  return jax.sharding.reshard(x, like(x, PartitionSpec()))


def zeros_like_rows(x, shape, dtype, axis: int = 0):
  """``jnp.zeros(shape, dtype)`` whose leading axis is sharded like axis ``axis`` of ``x``.

  For a carry or accumulator of one row per example (e.g. an RNN's initial state ``(B, H)``):
  under explicit sharding it must have the batch sharding of the inputs it is combined with.
  Elsewhere this is ``jnp.zeros(shape, dtype)``.

  Args:
    x: an array whose axis ``axis`` is the batch.
    shape: the shape of the zeros; ``shape[0]`` is the batch.
    dtype: their dtype.
    axis: the batch axis of ``x``.

  Returns:
    The zeros.
  """
  spec = explicit_spec(x)
  if spec is None:
    return jnp.zeros(shape, dtype)
  rest = (None,) * (len(shape) - 1)
  out = like(x, PartitionSpec(tuple(spec)[axis], *rest))
  return jnp.zeros(shape, dtype, out_sharding=out)


def take_rows(table, ids):
  """``jnp.take(table, ids, axis=0)``: rows of a (replicated) table, e.g. an embedding lookup.

  Under explicit sharding the gather cannot infer its output sharding from sharded ``ids``:
  the output ``ids.shape + table.shape[1:]`` keeps the sharding of ``ids`` and replicates the
  table's feature axes (``.at[ids].get(out_sharding=...)``).

  Args:
    table: ``(V, ...)`` array.
    ids: integer array of row indices.

  Returns:
    ``ids.shape + table.shape[1:]`` array.
  """
  spec = explicit_spec(ids)
  if spec is None:
    return jnp.take(table, ids, axis=0)
  out = like(ids, PartitionSpec(*spec, *((None,) * (table.ndim - 1))))
  return table.at[ids].get(out_sharding=out, mode="fill")  # jnp.take's default mode
