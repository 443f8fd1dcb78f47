"""Devices and hosts: data parallelism over a jit device mesh or ``jax.pmap``, and multi-host.

The project's one device layer: the only place that checks a run's layout against its devices
(:func:`layout`), builds meshes (:func:`global_mesh`), places arrays (the steps'
``put_*``, :func:`host_local_to_global`, :func:`replicate_on_mesh`) and compiles steps for a
layout; ``train.steps`` holds the pure step functions it wraps. One mesh axis name,
:data:`BATCH_AXIS`, for the jit mesh and the pmap axis.

One train-step function serves every layout. A *step builder* ``build_step(axis_name)``
returns ``step(state, batch, key) -> (state, metrics)``, a pure function of its arguments:

* ``axis_name=None`` — the step sees the **global** batch. Under ``jax.jit`` over a device
  mesh (``parallelism="jit"``; ``jax.make_mesh`` with Auto axes, or Explicit axes with
  ``axis_type="explicit"``) the batch is sharded along its leading axis, the state
  (params, optimiser state, batch stats, constants, memory) is replicated, and XLA inserts
  the collectives; the fusion writer sees the global batch with no option.
* ``axis_name=BATCH_AXIS`` — the step sees this device's slice of the batch under ``jax.pmap``
  (``parallelism="pmap"``). The step must then (i) build its fusion layer with
  ``axis_name`` (the writer all-gathers the batch, batch norm syncs its statistics, the
  Gumbel noise is drawn for the global batch and sliced), (ii) normalise its loss so that
  the *sum over devices* of the per-device losses is the global loss
  (``steps.global_masked_mean`` for per-row terms, ``steps.device_share`` for terms computed
  from the gathered global batch, e.g. DMF Eq. 4's similarity loss), and (iii) sum the
  gradients over devices (``steps.sum_over_devices``) before the optimiser update. Then every
  device holds the same params and the same memory (write-then-carry, DMF §2.2), equal to
  the single-device run.

Multi-host: ``train.multihost.initialize_multihost`` calls ``jax.distributed.initialize``; every
process builds the same global mesh (:func:`global_mesh`), feeds its own rows
(:func:`host_local_to_global`), and runs the same jitted step.

Typical use (what ``train.loop`` calls)::

  multihost.initialize_multihost()                # no-op for one process (reads the environment)
  parallelism, devices = layout("jit", 0, (32, 64))  # checked against the batch sizes
  ps = make_parallel_train_step(build_step, parallelism, devices)   # a JitStep or a PmapStep
  state = ps.put_state(state)
  for batch in batches:                           # host-local rows
    state, metrics = ps(state, ps.put_batch(batch), jax.random.fold_in(key, step))
  state = ps.to_host(state)                       # host numpy, one copy
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mbaf_jax.errors import UserError

PARALLELISMS = ("jit", "pmap")  # config.train.parallelism
BATCH_AXIS = "batch"  # the name of the batch axis: the jit mesh's axis and the pmap axis
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}



# --------------------------------------------------------------------------- mesh + sharding
def global_mesh(axis_name: str = BATCH_AXIS, devices=None, axis_type: str = "auto") -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process), axis ``axis_name``.

  Built with ``jax.make_mesh``; devices are ordered by (process, local id), so process ``p``
  holds the ``p``-th contiguous block of the global batch.

  Args:
    axis_name: the batch axis.
    devices: the devices (default: all).
    axis_type: ``"auto"`` (the trainer's default: the step is global-view code under ``jit``
      with in/out shardings, and XLA places the collectives) or ``"explicit"`` (the sharding
      is part of every array's type; steps then run inside ``jax.set_mesh(mesh)``, which
      :class:`JitStep` does). ``jax.make_mesh``'s own default is Explicit; the axis type is
      stated here so a JAX upgrade cannot change the trainer's program.

  Returns:
    The mesh.
  """
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError("global_mesh got an empty device list.")
  if axis_type not in AXIS_TYPES:
    raise ValueError(f"axis_type={axis_type!r} is not one of {tuple(AXIS_TYPES)}.")
  devs = sorted(devs, key=lambda d: (d.process_index, d.id))
  return jax.make_mesh((len(devs),), (axis_name,), axis_types=(AXIS_TYPES[axis_type],),
                       devices=devs)


def is_explicit(mesh: Mesh | None) -> bool:
  """True for a mesh whose axes are Explicit (steps run inside ``jax.set_mesh(mesh)``)."""
  return mesh is not None and all(t == AxisType.Explicit for t in mesh.axis_types)


def batch_sharding(mesh: Mesh, axis_name: str | None = None) -> NamedSharding:
  """Leading (batch) axis split over the mesh, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(axis_name or mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (params, optimiser state, memory, keys)."""
  return NamedSharding(mesh, PartitionSpec())


def _check_divisible(name: str, size: int, parts: int, what: str) -> None:
  if size % parts:
    raise UserError(f"{name} has {size} rows, which does not split evenly over {parts} {what}; "
                     f"choose a batch size divisible by {parts} (pad with masked rows).")


def _leaves_with_paths(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def host_local_to_global(batch, mesh: Mesh, axis_name: str | None = None):
  """Assembles the global batch from each process's rows (its contiguous block).

  Args:
    batch: pytree of host arrays ``(B_local, ...)``, this process's rows; ``B_local`` is the
      same on every process and divisible by the local device count.
    mesh: from :func:`global_mesh`.
    axis_name: mesh axis to split the batch over (default: the mesh's first axis).

  Returns:
    The same pytree of global ``jax.Array`` of leading size ``B_local · process_count``,
    sharded over the batch axis.
  """
  sharding = batch_sharding(mesh, axis_name)
  n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  for path, leaf in _leaves_with_paths(batch):
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} is a scalar; every batch "
                       f"entry needs a leading batch axis.")
    _check_divisible(f"batch leaf {jax.tree_util.keystr(path)}", shape[0], n_local,
                     "local devices")

  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(put, batch)


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate_on_mesh(tree, mesh: Mesh):
  """Places a pytree (identical on every process) replicated on every mesh device.

  Works across processes (``make_array_from_callback``); typed PRNG keys are carried as
  their key data and re-wrapped.
  """
  sharding = replicated_sharding(mesh)

  def put(x):
    if _is_key(x):
      impl = jax.random.key_impl(x)
      data = put(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=impl)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


def to_host(tree):
  """Host NumPy copy of a replicated (or fully addressable) pytree; keys stay keys."""
  def get(x):
    if _is_key(x):
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError("to_host() got an array sharded over other processes; gather it first "
                         "(only replicated state can be fetched on one host).")
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


# --------------------------------------------------------------------------- jit over a mesh
def make_jit_train_step(step_fn: Callable, mesh: Mesh, axis_name: str | None = None,
                        donate: bool = True) -> Callable:
  """``jax.jit`` of ``step_fn(state, batch, key)`` with the data-parallel layout.

  Batch sharded along its leading axis over ``mesh``; state, key and metrics replicated.
  ``step_fn`` must be the ``axis_name=None`` (global-batch) variant.
  """
  rep, shard = replicated_sharding(mesh), batch_sharding(mesh, axis_name)
  return jax.jit(step_fn, in_shardings=(rep, shard, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())


# --------------------------------------------------------------------------- pmap
def replicate(tree, devices, axis_name: str = BATCH_AXIS):
  """pmap layout: a leading device axis, one copy per device.

  The arrays get the sharding ``jax.pmap`` over ``axis_name`` gives its outputs (a 1-D mesh of
  ``devices`` named ``axis_name``), so the first call and later calls hit the same compiled
  step (a different sharding would trace the step a second time).
  """
  devices = list(devices)
  sharding = NamedSharding(Mesh(np.array(devices), (axis_name,)), PartitionSpec(axis_name))

  def put(x):
    if _is_key(x):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)
  return jax.tree.map(put, tree)


def _first_copy(tree):
  """The first device's copy of a pmap-replicated pytree, on the host (NumPy leaves; PRNG keys
  stay keys). Each leaf is one transfer of the first device's buffer: no computation is
  dispatched (indexing ``x[0]`` would launch one gather per leaf on the device)."""
  def first(x):
    if _is_key(x):
      return jax.random.wrap_key_data(first(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_shards[0].data)[0]
    return np.asarray(x)[0]
  return jax.tree.map(first, tree)


def shard_for_pmap(batch, num_devices: int):
  """Reshapes each ``(B, ...)`` leaf to ``(num_devices, B / num_devices, ...)`` (contiguous
  blocks)."""
  def split(path, x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    _check_divisible(f"batch leaf {jax.tree_util.keystr(path)}", x.shape[0], num_devices,
                     "devices")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree_util.tree_map_with_path(split, batch)


def make_pmap_train_step(step_fn: Callable, axis_name: str = BATCH_AXIS, devices=None,
                         donate: bool = True) -> Callable:
  """``jax.pmap`` of ``step_fn(state, batch, key)`` over ``axis_name``.

  ``step_fn`` must be the ``axis_name`` variant (syncs gradients and batch statistics, the
  writer gathers the global batch). State: pmap-replicated (:func:`replicate`); batch:
  :func:`shard_for_pmap`; key: one key broadcast to every device (the layers draw noise for
  the global batch and keep their slice, so no per-device keys). Returns replicated
  ``(state, metrics)``.
  """
  return jax.pmap(step_fn, axis_name=axis_name, in_axes=(0, 0, None), out_axes=0,
                  devices=devices, donate_argnums=(0,) if donate else ())


# --------------------------------------------------------------------------- layout checks
def check_parallelism(parallelism: str) -> str:
  """Validates ``config.train.parallelism``.

  Raises:
    UserError: not one of :data:`PARALLELISMS`.
  """
  if parallelism not in PARALLELISMS:
    raise UserError(f"config.train.parallelism={parallelism!r} is not one of "
                    f"{PARALLELISMS}: 'jit' shards the batch over a device mesh (default, "
                    "multi-host capable), 'pmap' runs the same step under jax.pmap.")
  return parallelism


def select_devices(parallelism: str, num_devices: int) -> tuple:
  """The devices of a run: the first ``num_devices`` (0: all) of every process's devices
  (``"jit"``) or of this process's (``"pmap"``).

  Raises:
    UserError: an unknown parallelism, ``num_devices`` outside ``[0, available]``, a device
      count with several processes, or pmap with several processes.
  """
  check_parallelism(parallelism)
  avail = jax.local_devices() if parallelism == "pmap" else jax.devices()
  n = int(num_devices)
  if n < 0 or n > len(avail):
    raise UserError(f"config.train.num_devices={n} but {len(avail)} devices are available; use "
                    "0 (all) or a number up to that.")
  if n and jax.process_count() > 1:
    raise UserError(f"config.train.num_devices={n} with {jax.process_count()} processes; "
                    "multi-host runs use every device (set it to 0).")
  if parallelism == "pmap" and jax.process_count() > 1:
    raise UserError("config.train.parallelism='pmap' drives one process's devices only; use "
                    "'jit' for a multi-host run.")
  return tuple(avail[: n or len(avail)])


def layout(parallelism: str, num_devices: int, batch_sizes: dict) -> tuple[str, tuple]:
  """``(parallelism, devices)`` of a run, checked against its batch sizes.

  Args:
    parallelism: ``config.train.parallelism`` (:data:`PARALLELISMS`).
    num_devices: ``config.train.num_devices`` (0: all).
    batch_sizes: ``{"batch_size": n, "eval_batch_size": m}`` (named as in ``config.train``).

  Returns:
    The parallelism and the devices for :func:`make_parallel_train_step` /
    :func:`make_parallel_eval_step`.

  Raises:
    UserError: unknown parallelism, bad num_devices, or a batch size that does not split over
      the devices.
  """
  devices = select_devices(parallelism, num_devices)
  for field, size in batch_sizes.items():
    if int(size) < 1 or int(size) % len(devices):
      raise UserError(f"config.train.{field}={size} does not split evenly over the "
                      f"{len(devices)} devices of this run (parallelism={parallelism!r}); set "
                      f"it to a multiple of {len(devices)}, or choose the devices with "
                      "config.train.num_devices.")
  return parallelism, devices


# --------------------------------------------------------------------------- one front door
@dataclasses.dataclass
class JitStep:
  """A step compiled with ``jax.jit`` over a device mesh, with its placement: the batch sharded
  over the mesh's batch axis, state, keys and outputs replicated.

  Attributes:
    step: the compiled ``(state, batch[, key]) -> outputs`` in device layout.
    mesh: the device mesh.
    devices: the devices used.
    axis_name: the batch axis name.
    counter: counts the traces of the wrapped function.
  """
  step: Callable  # the compiled step, device layout in and out
  mesh: Mesh  # the device mesh (Auto or Explicit axes)
  devices: tuple  # the mesh's devices
  axis_name: str  # the batch axis
  counter: "TraceCounter"  # traces of the wrapped function (1 = compiled once)
  parallelism = "jit"

  @property
  def traces(self) -> int:
    """How many times the step function was traced (1 = compiled once)."""
    return self.counter.traces

  def __call__(self, state, batch, key=None):
    """Runs the step; ``key=None`` for a step without a PRNG key (evaluation)."""
    args = (state, batch) if key is None else (state, batch, self.put_key(key))
    if is_explicit(self.mesh):  # explicit sharding types need the mesh in context
      with jax.set_mesh(self.mesh):
        return self.step(*args)
    return self.step(*args)

  def put_key(self, key):
    """A PRNG key → replicated on the mesh (needed across processes)."""
    if isinstance(key, jax.Array) and key.sharding == replicated_sharding(self.mesh):
      return key
    return replicate_on_mesh(key, self.mesh)

  def put_state(self, state):
    """Host state → replicated on the mesh."""
    return replicate_on_mesh(state, self.mesh)

  def put_batch(self, batch):
    """This process's rows → the global batch, sharded over the batch axis."""
    return host_local_to_global(batch, self.mesh, self.axis_name)

  def to_host(self, tree):
    """Replicated outputs (state, metrics, eval rows) → one host (NumPy) copy."""
    return to_host(tree)


@dataclasses.dataclass
class PmapStep:
  """A step compiled with ``jax.pmap`` over this process's devices, with its placement: a
  leading device axis on the state (one copy per device) and on the batch (contiguous blocks).

  Attributes: as :class:`JitStep`'s, without a mesh.
  """
  step: Callable  # the pmapped step, device layout in and out
  devices: tuple  # the local devices used
  axis_name: str  # the pmap axis
  counter: "TraceCounter"  # traces of the wrapped function (1 = compiled once)
  parallelism = "pmap"

  @property
  def traces(self) -> int:
    """How many times the step function was traced (1 = compiled once)."""
    return self.counter.traces

  def __call__(self, state, batch, key=None):
    """Runs the step; ``key=None`` for a step without a PRNG key (evaluation)."""
    return self.step(state, batch) if key is None else self.step(state, batch, key)

  def put_key(self, key):
    """One key for every device (the layers draw noise for the global batch)."""
    return key

  def put_state(self, state):
    """Host state → one copy per device."""
    return replicate(state, self.devices, self.axis_name)

  def put_batch(self, batch):
    """This process's rows → ``(devices, rows / devices, ...)``."""
    return shard_for_pmap(batch, len(self.devices))

  def to_host(self, tree):
    """Replicated outputs (state, metrics) → the first device's copy, on the host (NumPy)."""
    return to_host(_first_copy(tree))

  def rows_to_host(self, x):
    """A per-row output ``(devices, rows / devices, ...)`` → host ``(rows, ...)``."""
    x = np.asarray(jax.device_get(x))
    return x.reshape((-1,) + x.shape[2:])


JitStep.rows_to_host = JitStep.to_host  # jit: per-row outputs are replicated like the state
ParallelStep = JitStep | PmapStep  # what make_parallel_train_step / _eval_step return


class TraceCounter:
  """Wraps a function and counts its traces (each ``jit``/``pmap`` compilation traces once)."""

  def __init__(self, fn: Callable):
    self.fn, self.traces = fn, 0

  def __call__(self, *args):
    self.traces += 1
    return self.fn(*args)


def make_parallel_train_step(build_step: Callable[[str | None], Callable], parallelism: str = "jit",
                             devices=None, axis_name: str = BATCH_AXIS,
                             donate: bool = True, axis_type: str = "auto") -> ParallelStep:
  """Builds the train step for ``config.parallelism`` from one step builder.

  Args:
    build_step: ``build_step(axis_name) -> step(state, batch, key) -> (state, metrics)``;
      called with ``None`` for ``"jit"`` and with ``axis_name`` for ``"pmap"``.
    parallelism: ``"jit"`` (device mesh, multi-host capable) or ``"pmap"`` (local devices).
    devices: devices to use (default: all for ``jit``, all local for ``pmap``).
    axis_name: name of the batch axis.
    donate: donate the state buffers to the step.
    axis_type: ``"jit"`` only: the mesh's axis type, ``"auto"`` or ``"explicit"``
      (:func:`global_mesh`); the same step and numbers either way.

  Returns:
    A :class:`JitStep` or :class:`PmapStep`.
  """
  check_parallelism(parallelism)
  if parallelism == "pmap":
    devs = _pmap_devices(devices)
    counter = TraceCounter(build_step(axis_name))
    step = make_pmap_train_step(counter, axis_name, devs, donate)
    return PmapStep(step, devs, axis_name, counter)
  mesh = global_mesh(axis_name, devices, axis_type)
  counter = TraceCounter(build_step(None))
  step = make_jit_train_step(counter, mesh, axis_name, donate)
  return JitStep(step, mesh, tuple(mesh.devices.flat), axis_name, counter)


def _pmap_devices(devices) -> tuple:
  devs = tuple(jax.local_devices() if devices is None else devices)
  if any(d.process_index != jax.process_index() for d in devs):
    raise UserError("parallelism='pmap' runs on this process's devices only; use "
                     "parallelism='jit' for multi-host runs.")
  return devs


def make_parallel_eval_step(build_eval: Callable[[str | None], Callable], parallelism: str = "jit",
                            devices=None, axis_name: str = BATCH_AXIS,
                            axis_type: str = "auto") -> ParallelStep:
  """The evaluation twin of :func:`make_parallel_train_step`.

  Args:
    build_eval: ``build_eval(axis_name) -> eval_step(state, batch) -> (B, ...)`` per-row output.
    parallelism: ``"jit"`` or ``"pmap"``; must match the train step's so the state layouts agree.
    devices: as for :func:`make_parallel_train_step`.
    axis_name: name of the batch axis.
    axis_type: as for :func:`make_parallel_train_step`.

  Returns:
    A :class:`JitStep` or :class:`PmapStep` called as ``ps(state, batch)``; ``ps.rows_to_host(out)`` gives the host
    ``(B_global, ...)`` output on every process (``jit``: the output is replicated, a small
    all-gather of e.g. log-probabilities).
  """
  check_parallelism(parallelism)
  if parallelism == "pmap":
    devs = _pmap_devices(devices)
    counter = TraceCounter(build_eval(axis_name))
    step = jax.pmap(counter, axis_name=axis_name, in_axes=(0, 0), out_axes=0, devices=devs)
    return PmapStep(step, devs, axis_name, counter)
  mesh = global_mesh(axis_name, devices, axis_type)
  counter = TraceCounter(build_eval(None))
  rep, shard = replicated_sharding(mesh), batch_sharding(mesh, axis_name)
  step = jax.jit(counter, in_shardings=(rep, shard), out_shardings=rep)
  return JitStep(step, mesh, tuple(mesh.devices.flat), axis_name, counter)
