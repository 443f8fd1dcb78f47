"""Joining a multi-host run: ``jax.distributed.initialize`` from the environment or keyword
arguments, before anything asks JAX for its devices (docs/SCALING.md)."""
import dataclasses
import os
import re

import jax

from mbaf_jax.errors import UserError

_ENV_COORDINATOR = ("MBAF_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM_PROCESSES = ("MBAF_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_PROCESS_ID = ("MBAF_PROCESS_ID", "JAX_PROCESS_ID")
_ENV_AUTO = ("MBAF_DISTRIBUTED_AUTO",)


@dataclasses.dataclass(frozen=True)
class HostSetup:
  """Where this process stands after :func:`initialize_multihost`."""
  process_index: int  # this process (0 .. process_count - 1)
  process_count: int  # number of processes
  local_devices: int  # devices this process drives
  global_devices: int  # devices over all processes
  initialized: bool  # True if jax.distributed.initialize was called here


def _first_env(names):
  for n in names:
    if os.environ.get(n):
      return os.environ[n]
  return None


def _check_address(address: str) -> None:
  if not isinstance(address, str) or not re.fullmatch(r"[^\s:]+:\d{1,5}", address):
    raise UserError(
        f"coordinator_address={address!r} is not 'host:port' (e.g. '10.0.0.1:1234' or "
        f"'127.0.0.1:29500'); set {_ENV_COORDINATOR[0]}.")


def initialize_multihost(*, coordinator_address: str | None = None,
                         num_processes: int | None = None, process_id: int | None = None,
                         local_device_ids=None, auto: bool | None = None,
                         timeout_s: int = 300) -> HostSetup:
  """Joins this process to a multi-host run via ``jax.distributed.initialize``.

  Each setting comes from its keyword argument, else from the environment
  (``MBAF_COORDINATOR_ADDRESS`` / ``JAX_COORDINATOR_ADDRESS``, ``MBAF_NUM_PROCESSES`` /
  ``JAX_NUM_PROCESSES``, ``MBAF_PROCESS_ID`` / ``JAX_PROCESS_ID``, ``MBAF_DISTRIBUTED_AUTO=1`` for
  ``auto``). With none of them this is a single-process run and nothing is initialised.
  ``auto=True`` calls ``jax.distributed.initialize()`` with no arguments, which detects Cloud TPU
  pods, SLURM and Open MPI. On CPU the collectives go through gloo.

  Call it before any other JAX call that touches devices.

  Returns:
    :class:`HostSetup`.

  Raises:
    UserError: the settings are incomplete or malformed (one sentence naming them).
  """
  address = coordinator_address or _first_env(_ENV_COORDINATOR)
  nproc = num_processes if num_processes is not None else _first_env(_ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _first_env(_ENV_PROCESS_ID)
  local_ids = local_device_ids
  if auto is None:
    auto = (_first_env(_ENV_AUTO) or "").strip().lower() in ("1", "true", "yes", "on")

  initialized = False
  if jax.distributed.is_initialized():
    pass
  elif address is None and nproc is None and pid is None and not auto:
    pass  # single process
  else:
    kwargs = {}
    if address is not None or not auto:
      if address is None:
        raise UserError("num_processes/process_id are set but coordinator_address is not; "
                         f"give all three (or {_ENV_AUTO[0]}=1 on a TPU pod or SLURM).")
      _check_address(address)
      try:
        nproc, pid = int(nproc), int(pid)
      except (TypeError, ValueError):
        raise UserError(f"num_processes={nproc!r} and process_id={pid!r} must both be integers "
                         f"when coordinator_address={address!r} is set.") from None
      if nproc < 1 or not 0 <= pid < nproc:
        raise UserError(f"process_id={pid} must lie in [0, num_processes={nproc}) and "
                         f"num_processes must be >= 1.")
      kwargs = dict(coordinator_address=address, num_processes=nproc, process_id=pid,
                    initialization_timeout=int(timeout_s))
      if local_ids is not None:
        kwargs["local_device_ids"] = list(local_ids)
    # CPU devices talk across processes through gloo (only the CPU backend reads this).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    initialized = True
  return HostSetup(process_index=jax.process_index(), process_count=jax.process_count(),
                   local_devices=jax.local_device_count(), global_devices=jax.device_count(),
                   initialized=initialized)


