"""Pure, jit/vmap/grad-able ops shared by the fusion layers.

* :func:`compact_bilinear_pooling` with :func:`make_count_sketch` /
  :func:`count_sketch` (Gao et al. 2016; Fukui et al. 2016; DMF Eq. 3);
* :func:`gumbel_softmax`, :func:`sample_gumbel`, :func:`clip_temperature`
  (DMF Eqs. 1–2);
* :func:`top_k_pool` (gPool of Graph U-Nets; DMF writer);
* :func:`memory_similarity_loss` (DMF Eq. 4);
* :func:`check_finite` and the argument checks in :mod:`mbaf_jax.ops.validation`;
* :mod:`mbaf_jax.ops.sharding`: what the layers need under a mesh with Explicit axes
  (an array's explicit sharding, resharding a batch to replicated, batch-sharded zeros and
  embedding lookups); the identity elsewhere.

Bad input: shapes, ranks, dtypes, sizes (``dim``, ``k``, ``in_dims``) and option
strings are checked at trace time (free under ``jit``) and raise
``ValueError``/``TypeError`` naming the argument. NaN/Inf values are only known
at run time: wrap an array in :func:`check_finite` (works eagerly and under
``jit`` via ``jax.debug.callback``) where that matters.
"""
from mbaf_jax._lazy import lazy_exports

_EXPORTS = {
    "CountSketch": "cbp",
    "make_count_sketch": "cbp",
    "count_sketch": "cbp",
    "compact_bilinear_pooling": "cbp",
    "signed_sqrt": "cbp",
    "l2_normalize": "cbp",
    "gumbel_softmax": "gumbel",
    "sample_gumbel": "gumbel",
    "clip_temperature": "gumbel",
    "top_k_pool": "topk",
    "memory_similarity_loss": "losses",
    "cosine_similarity_matrix": "losses",
    "check_finite": "validation",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
