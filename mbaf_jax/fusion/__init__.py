"""Fusion layers (flax.linen): NaiveFusion, DualMemoryFusion (DMF), MBAF.

Memory lives in the ``'memory'`` variable collection; see docs/ARCHITECTURE.md.
"""
from mbaf_jax._lazy import lazy_exports

_EXPORTS = {
    "FusionOutput": "common",
    "CompactBilinearPooling": "common",
    "NaiveFusion": "naive",
    "DualMemoryFusion": "dual_memory",
    "MBAF": "mbaf",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
