"""Differentiable top-k pooling (gPool of Gao & Ji, "Graph U-Nets", 2019).

DMF's writer shrinks the expanded memory ``concat(M, batch)`` (``n + m`` rows)
back to ``n`` slots with "the differentiable Top-K pooling layer (k is set to
n_a) which weights and selects the k most salient feature vectors" (DMF §2.2).
gPool keeps the ``k`` rows with the largest scores ``y = X p / ‖p‖`` and gates
them, ``X̃ = X[idx] ⊙ sigmoid(y[idx])``, so the gradient reaches the scores
(and ``p``) through the gate. The caller computes the scores.
"""
import jax
import jax.numpy as jnp

from mbaf_jax.ops import validation


GATES = ("sigmoid", "tanh")


def top_k_pool(x, scores, k: int, mask=None, return_valid: bool = False,
               gate: str = "sigmoid"):
  """Keeps the ``k`` highest-scoring rows of ``x``, gated by ``sigmoid(score)``.

  Selection order (deterministic): valid rows before masked rows, then higher
  score first, then lower row index first (ties keep the earlier row).

  Masked rows (``mask == 0``) are never kept while valid rows remain. If fewer
  than ``k`` rows are valid (only knowable at run time), the remaining slots
  point at masked rows in index order and their output rows are **zero**, so
  no masked data ever reaches the output; ``return_valid=True`` also returns
  which slots hold a valid row.

  Args:
    x: ``(..., N, d)`` floating array of rows.
    scores: ``(..., N)`` floating scores (e.g. ``X p / ‖p‖``); leading dims as ``x``.
    k: number of rows kept, static int with ``1 <= k <= N``.
    mask: optional ``(..., N)`` bool / {0, 1} array, 1 = valid row; ``None`` = all valid.
    return_valid: also return the ``(..., k)`` bool validity of each slot.
    gate: ``"sigmoid"`` (Graph U-Nets' gPool, the default) or ``"tanh"`` (the
      gate of PyTorch Geometric's ``TopKPooling``).

  Returns:
    ``(pooled, idx)`` or ``(pooled, idx, valid)``: ``pooled`` is ``(..., k, d)``
    ``= x[idx] * sigmoid(scores[idx])[..., None]`` (zero for invalid slots),
    ``idx`` is ``(..., k)`` int32 row indices in selection order.

  Example:
    >>> import jax.numpy as jnp
    >>> from mbaf_jax import ops
    >>> x = jnp.arange(8.0).reshape(4, 2)
    >>> pooled, idx = ops.top_k_pool(x, jnp.array([0.0, 2.0, -1.0, 1.0]), k=2,
    ...                              mask=jnp.array([1, 0, 1, 1]))
    >>> idx.tolist()  # row 1 has the best score but is masked
    [3, 0]
    >>> print(pooled.round(3))  # rows 3 and 0 gated by sigmoid(1.0), sigmoid(0.0)
    [[4.386 5.117]
     [0.    0.5  ]]
  """
  x = validation.floating_array(x, "x", min_rank=2)
  scores = validation.floating_array(scores, "scores", min_rank=1)
  n = x.shape[-2]
  if scores.shape != x.shape[:-1]:
    raise ValueError(f"scores must have shape x.shape[:-1] = {x.shape[:-1]} (one score per "
                     f"row of x), got {scores.shape}.")
  validation.option(gate, GATES, "gate")
  k = validation.positive_int(k, "k")
  if k > n:
    raise ValueError(f"k={k} is larger than the number of rows N={n} of x "
                     f"(shape {x.shape}); need 1 <= k <= N.")
  if mask is None:
    valid = jnp.ones(scores.shape, bool)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != scores.shape:
      raise ValueError(f"mask must have the shape of scores {scores.shape} (one flag per "
                       f"row), got {mask.shape}.")
    valid = mask.astype(bool)
  iota = jax.lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
  neg = -jax.lax.stop_gradient(scores)
  _, _, order = jax.lax.sort((jnp.logical_not(valid).astype(jnp.int32), neg, iota),
                             dimension=scores.ndim - 1, num_keys=3)
  idx = order[..., :k]
  kept_valid = jnp.take_along_axis(valid, idx, axis=-1)
  gate_fn = jax.nn.sigmoid if gate == "sigmoid" else jnp.tanh
  weight = gate_fn(jnp.take_along_axis(scores, idx, axis=-1))
  weight = jnp.where(kept_valid, weight, 0).astype(jnp.result_type(x, scores))
  rows = jnp.take_along_axis(x, idx[..., None], axis=-2)
  pooled = rows * weight[..., None]
  if return_valid:
    return pooled, idx, kept_valid
  return pooled, idx
