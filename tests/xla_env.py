"""XLA flags the test session runs with, for tests that start their own Python processes.

``COMPILE_FAST_FLAGS``: the test suite's time is mostly XLA compilation of small programs, so
tests compile with LLVM's cheap pipeline (``--xla_backend_optimization_level=0``,
``--xla_llvm_disable_expensive_passes``): measured on the 8-device trainer test, backend compile
72 -> 43 s; same HLO (XLA's graph passes and fusion are untouched) but slower generated code,
which only a run that trains many steps notices (the README's first command,
tests/first_command.py, keeps the defaults).
Benchmarks and user runs keep XLA's defaults.
``MBAF_TEST_XLA_DEFAULT=1`` runs the suite with the defaults too.
"""
import os

COMPILE_FAST_FLAGS = ("--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")


def enabled() -> bool:
  return os.environ.get("MBAF_TEST_XLA_DEFAULT", "").lower() not in ("1", "true", "yes", "on")


def xla_flags(device_count: int | None = None) -> str:
  """``XLA_FLAGS`` for a subprocess: this suite's compile flags, plus ``device_count`` fake CPU
  devices when given (None: one device, as on a user's machine)."""
  flags = COMPILE_FAST_FLAGS if enabled() else ""
  if device_count is not None:
    flags += f" --xla_force_host_platform_device_count={device_count}"
  return flags.strip()
