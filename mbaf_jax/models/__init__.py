"""Full models = encoders + fusion layer + classification head (DMF §2, MBAF §4), one module per
model family (``dmf``, ``mbaf_iemocap``, ``cebs``), each owning its whole contract (see
``models.factory``).

``build_model(config.model, fusion_kind)`` turns a config into a model of the family
``config.model.name``; every model is called as ``model.apply(variables, batch, mask=mask,
train=...)`` → ``ModelOutput(log_probs (B, K), aux)``.
"""
from mbaf_jax._lazy import lazy_exports

_EXPORTS = {
    "ModelOutput": "heads",
    "ClassifierHead": "heads",
    "DMFModel": "dmf",
    "MBAFIemocapModel": "mbaf_iemocap",
    "CebsModel": "cebs",
    "family": "factory",
    "build_model": "factory",
    "make_fusion": "factory",
    "dummy_batch": "factory",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
