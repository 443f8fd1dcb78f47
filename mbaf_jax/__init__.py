"""mbaf_jax: memory-based multimodal fusion in JAX/Flax.

Two papers, one library:

* **DMF** — Dual Memory Fusion for multimodal speech emotion recognition
  (Wav2Vec2 + BERT, two explicit memories): :class:`DualMemoryFusion`.
* **MBAF** — Memory Based Attentive Fusion (one memory over the concatenated
  modes): :class:`MBAF`.
* The papers' baseline, concatenation: :class:`NaiveFusion`.
* The same layers as Flax NNX modules: :mod:`mbaf_jax.nnx`.

Memory is explicit state in the ``'memory'`` variable collection; see
``docs/ARCHITECTURE.md`` for the write-then-carry contract.

Submodules are imported lazily so ``from mbaf_jax import ops`` does not pull in
``transformers`` or ``wfdb``.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("ops", "fusion", "nnx", "encoders", "data", "models")
_FUSION_NAMES = ("DualMemoryFusion", "MBAF", "NaiveFusion", "FusionOutput")

__all__ = list(_SUBMODULES) + list(_FUSION_NAMES)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name in _FUSION_NAMES:
    return getattr(importlib.import_module(f"{__name__}.fusion"), name)
  raise AttributeError(f"module 'mbaf_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
