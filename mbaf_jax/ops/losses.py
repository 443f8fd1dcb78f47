"""DMF's pairwise memory similarity loss (DMF §2.3, Eq. 4)."""
import jax
import jax.numpy as jnp

from mbaf_jax.ops import validation

REDUCTIONS = ("paper", "mean")


def cosine_similarity_matrix(memory, eps: float = 1e-8) -> jax.Array:
  """``S[i, j] = m_i · m_j / (max(‖m_i‖, eps) max(‖m_j‖, eps))`` for rows ``m_i``.

  The norm is computed as ``rsqrt(max(‖m‖², eps²))`` so a zero row gives
  ``S = 0`` with a finite (zero) gradient instead of NaN.

  Args:
    memory: ``(..., n, d)`` floating array.
    eps: smallest norm used in the denominator.

  Returns:
    ``(..., n, n)`` cosine similarities.
  """
  memory = validation.floating_array(memory, "memory", min_rank=2)
  inv = jax.lax.rsqrt(jnp.maximum(jnp.sum(memory * memory, axis=-1), eps * eps))
  unit = memory * inv[..., None]
  return jnp.einsum("...id,...jd->...ij", unit, unit,
                    precision=jax.lax.Precision.HIGHEST)


def memory_similarity_loss(memory, reduction: str = "paper", eps: float = 1e-8) -> jax.Array:
  """Pairwise cosine-similarity loss of one memory block (DMF Eq. 4, first term).

  ``L_sim = Σ_{i<j} S(i, j) / c`` with ``S`` the cosine-similarity matrix of
  the memory slots (rows). DMF Eq. 4 prints ``c = n(n−1)``, although the text
  says "averaging the upper triangle", which has ``n(n−1)/2`` entries:

  * ``reduction="paper"``: ``c = n(n−1)`` (Eq. 4 as printed; half the mean);
  * ``reduction="mean"``: ``c = n(n−1)/2`` (the true mean of the upper triangle).

  DMF sums this term over both memories (``l ∈ {a, t}``); call it once per memory.

  Args:
    memory: ``(n, d)`` memory (or ``(..., n, d)``: one loss per leading index), n >= 2.
    reduction: ``"paper"`` or ``"mean"``.
    eps: see :func:`cosine_similarity_matrix`.

  Returns:
    Scalar loss (or ``memory.shape[:-2]``).

  Example:
    >>> import jax.numpy as jnp
    >>> from mbaf_jax import ops
    >>> m = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # cos: 1, 0, 0
    >>> float(ops.memory_similarity_loss(m))  # 1 / (3 * 2)
    0.1666666716337204
    >>> float(ops.memory_similarity_loss(m, reduction="mean"))  # 1 / 3
    0.3333333432674408
  """
  validation.option(reduction, REDUCTIONS, "reduction")
  memory = validation.floating_array(memory, "memory", min_rank=2)
  n = memory.shape[-2]
  if n < 2:
    raise ValueError(f"memory must have at least 2 slots (rows) for a pairwise similarity "
                     f"loss, got shape {memory.shape}.")
  sim = cosine_similarity_matrix(memory, eps)
  upper = jnp.triu(jnp.ones((n, n), bool), k=1)
  total = jnp.sum(jnp.where(upper, sim, 0), axis=(-2, -1))
  denom = n * (n - 1) if reduction == "paper" else n * (n - 1) / 2
  return total / denom
