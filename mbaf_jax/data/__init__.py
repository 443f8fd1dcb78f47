"""Data: IEMOCAP and PhysioNet CEBS loaders in their real on-disk formats, your own CSV / JSONL
manifests, synthetic corpora in the same formats, folds, batching."""
from mbaf_jax._lazy import lazy_exports

_EXPORTS = {
    "LoadSummary": "report",
    "DataError": "report",
    "load_iemocap": "iemocap",
    "load_cebs": "cebs",
    "write_iemocap": "synthetic",
    "write_cebs": "synthetic",
    "Batcher": "pipeline",
    "load_waveforms": "audio",
    "read_manifest": "manifest",
    "load_manifest": "manifest",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
