"""Lazy attribute exports for subpackages (PEP 562), so importing one part of
the library does not import the heavy dependencies of another."""
import importlib


def lazy_exports(package_name, exports):
  """Returns ``(__getattr__, __dir__)`` resolving ``exports[name] -> submodule``."""

  def __getattr__(name):
    if name in exports:
      module = importlib.import_module(f"{package_name}.{exports[name]}")
      return getattr(module, name)
    try:
      return importlib.import_module(f"{package_name}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{package_name}.{name}":
        raise
    raise AttributeError(f"module {package_name!r} has no attribute {name!r}")

  def __dir__():
    return sorted(exports)

  return __getattr__, __dir__
