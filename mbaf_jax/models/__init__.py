"""Full models = encoders + fusion layer + classification head (DMF §2, MBAF §4).

``build_model(config.model, fusion_kind)`` turns a config into a model; every model is called as
``model.apply(variables, batch, mask=mask, train=...)`` → ``ModelOutput(log_probs (B, K), aux)``.
"""
from mbaf_jax._lazy import lazy_exports

_EXPORTS = {
    "ModelOutput": "heads",
    "ClassifierHead": "heads",
    "DMFModel": "dmf",
    "MBAFIemocapModel": "mbaf_iemocap",
    "CebsModel": "cebs",
    "build_model": "factory",
    "make_fusion": "factory",
    "dummy_batch": "factory",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
