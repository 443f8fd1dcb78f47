"""MBAF: Memory Based Attentive Fusion (MBAF paper §3, Eqs. 1–13).

One explicit memory ``M ∈ R^{k×H}`` (``k`` slots, width ``H = l`` = width of the
concatenated modes by default) lives in the ``'memory'`` collection. For every
sample ``t`` of a batch (each sample is one time step):

* Eq. 1   ``x_t = x_1 ⊕ … ⊕ x_n``                                 (concatenation)
* Eq. 2   ``z_t = softmax(M_{t−1} f_r(x_t))``          over the k slots (key)
* Eq. 3   ``m_r = z_tᵀ M_{t−1}``                                 (read)
* Eq. 4   ``b_t = f_c^MLP(x_t ⊕ m_r)``                           (compose)
* Eqs. 5–6 attention ``b_t → c_t`` (see :func:`attend` for the readings)
* Eq. 7   ``h_t = ReLU(c_t W (+ bias))``
* Eq. 8   ``M_t = M_{t−1} ⊙ (1 − z_t e_Hᵀ) + z_t h_tᵀ``          (erase, then write)
* Eq. 9   ``o_t = x_t + h_t``             ("axis-wise summation": same width as ⊕)
* Eqs. 11–12 cross read: the key uses ``x_t``, the composer ``x_t^s`` (modes reversed)
* Eq. 13  memory on a subset of modes (``memory_modes``); other modes pass through.

Absent modes (``modality_mask``, beyond the paper; docs/PAPER_NOTES.md): the absent slices of
``x_t`` are replaced by the same slices of a first read ``m_r`` (keyed by ``x_t`` with the absent
slices zeroed; mapped to width l by ``output_kernel`` when ``H ≠ l``), then Eqs. 2–9 run on the
completed ``x_t``. A row with a memory mode absent reads but never writes (Eq. 8's ``h_t`` spans
every mode's columns); an absent pass-through mode's slice of the output is zeros.

``write="scan"`` is the faithful sequential semantics (``lax.scan`` over the batch,
sample t reads the memory written by samples < t); ``write="batched"`` lets every
sample read ``M_{t−1}`` of the batch and then applies all B erase/writes of Eq. 8
exactly composed in one step (the only approximation is the stale read).

The pure functions below (:func:`address`, :func:`compose`, :func:`attend`,
:func:`transform`, :func:`erase_write`, :func:`compose_writes`) are the equations;
:class:`MBAF` is the linen module holding parameters and memory.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbaf_jax.fusion.common import (FusionOutput, batch_mask, check_modes, gather_batch,
                                    is_local_batch, local_slice, modality_presence)
from mbaf_jax.ops import validation

WRITE_MODES = ("scan", "batched")
READ_MODES = ("naive", "cross")
ATTENTION_MODES = ("feature", "keys", "none")


# --------------------------------------------------------------------------- equations


def address(q, memory):
  """Key and read (MBAF Eqs. 2–3): ``z = softmax(M q)``, ``m_r = zᵀ M``.

  Args:
    q: ``(..., H)`` the input mapped to memory space, ``f_r(x_t)``.
    memory: ``(k, H)`` memory ``M_{t−1}``.

  Returns:
    ``(z (..., k), m_r (..., H))``.
  """
  z = jax.nn.softmax(q @ memory.T, axis=-1)
  return z, z @ memory


def compose(p, x_part, m_r, n_layers: int):
  """Composer MLP (MBAF Eq. 4): ``b_t = f_c^MLP(x_t ⊕ m_r)``.

  The first layer is a Dense on ``x_t ⊕ m_r``; its ``x_t`` part ``x_part`` =
  ``x_t K0[:l] + bias0`` is precomputed (it does not depend on memory). Hidden
  layers use ReLU; the output layer is linear (attention and Eq. 7's ReLU follow).

  Args:
    p: parameter dict with ``compose_kernel_i``, ``compose_bias_i``.
    x_part: ``(..., d0)`` ``x_t K0[:l] + bias0``.
    m_r: ``(..., H)`` the memory read.
    n_layers: number of MLP layers.

  Returns:
    ``(..., C)`` ``b_t``.
  """
  k0 = p["compose_kernel_0"]
  y = x_part + m_r @ k0[k0.shape[0] - m_r.shape[-1]:]
  for i in range(1, n_layers):
    y = jax.nn.relu(y) @ p[f"compose_kernel_{i}"] + p[f"compose_bias_{i}"]
  return y


def attend(p, b, attention: str):
  """Attention over the composition (MBAF Eqs. 5–6), one of three readings.

  As printed, ``α_i = exp(b_tᵀ b̂)/Σ_i exp(b_tᵀ b̂)`` and ``c_t = Σ_i α_i b_t`` are
  degenerate (the ``α_i`` sum to 1, so ``c_t = b_t``). Readings:

  * ``"keys"`` (default): ``b̂_i ∈ R^C``, ``i = 1..K`` learned attentive vectors,
    ``α_i = softmax_i(b_tᵀ b̂_i / √C)``, ``c_t = Σ_i α_i b̂_i``. With K = batch size
    this has the ``q·l`` parameters of Eq. 10 / Table 3. ``c_t`` is a convex mix of the
    keys, so its size does not depend on the memory's: Eq. 8's write stays bounded
    (``|M| ≤ max(|M_0|, max_i ‖b̂_i‖ · max_j ‖W_{:,j}‖ + max |bias|)``) without any cap.
  * ``"feature"`` ("filter uninformative features"): ``b̂ ∈ R^C`` learned,
    ``α_i = exp(b_{t,i} b̂_i) / Σ_j exp(b_{t,j} b̂_j)`` over the C features and
    ``c_{t,i} = C · α_i b_{t,i}`` (the factor C makes uniform attention the identity).
    **Unbounded**: ``c_t`` scales with ``b_t``, which contains the read ``m_r``, with a gain of
    up to C, so the memory recurrence can grow geometrically and overflow (docs/RESULTS.md).
    Use it with ``write_max``.
  * ``"none"``: ``c_t = b_t`` (the printed equations taken literally). **Unbounded** for the
    same reason (gain of the composer MLP); use it with ``write_max``.

  Args:
    p: parameter dict (``attention_context`` (C,) or ``attention_keys`` (K, C)).
    b: ``(..., C)`` composition ``b_t``.
    attention: the reading.

  Returns:
    ``(..., C)`` ``c_t``.
  """
  if attention == "feature":
    alpha = jax.nn.softmax(b * p["attention_context"], axis=-1)
    return b.shape[-1] * alpha * b
  if attention == "keys":
    keys = p["attention_keys"]
    alpha = jax.nn.softmax(b @ keys.T / jnp.sqrt(jnp.asarray(b.shape[-1], b.dtype)), axis=-1)
    return alpha @ keys
  return b


def transform(p, c, write_max=None):
  """MBAF Eq. 7: ``h_t = ReLU(c_t W + bias)`` (bias only with ``write_bias=True``).

  With ``write_max`` the ReLU is capped, ``h_t = min(ReLU(c_t W + bias), write_max)`` (a
  ReLU-n, not in the paper): Eq. 8 writes a convex mix of ``M_{t−1}`` and ``h_t``, so then
  every memory entry stays within ``[min(M_0, 0), max(M_0, write_max)]``. Uncapped, the
  "feature" and "none" readings of Eqs. 5–6 make Eqs. 2–8 a recurrence
  ``M ← (1 − z) M + z g(M)`` whose gain can exceed 1 (the read ``m_r`` feeds ``h_t``), so the
  memory can overflow (docs/PAPER_NOTES.md, "MBAF memory growth"). The default "keys" reading
  needs no cap.
  """
  y = c @ p["write_kernel"]
  if "write_bias" in p:
    y = y + p["write_bias"]
  h = jax.nn.relu(y)
  return h if write_max is None else jnp.minimum(h, jnp.asarray(write_max, h.dtype))


def erase_write(memory, z, h):
  """MBAF Eq. 8 for one sample: ``M_t = M_{t−1} ⊙ (1 − z e_Hᵀ) + z hᵀ``.

  Slot j keeps ``(1 − z_j)`` of its content and receives ``z_j h`` (erase then write
  at the slots selected by the key; ``e_H`` is a vector of ones).

  Args:
    memory: ``(k, H)``.
    z: ``(k,)`` key (0 leaves the memory unchanged).
    h: ``(H,)``.

  Returns:
    ``(k, H)`` new memory.
  """
  return memory * (1.0 - z[:, None]) + z[:, None] * h[None, :]


def compose_writes(memory, z, h):
  """Applies B erase/writes of Eq. 8 in order, in one parallel step.

  Each write is affine in the memory with fixed ``(z_b, h_b)``, so the composition
  is exact: ``M_B[j] = M_0[j] Π_b (1 − z_bj) + Σ_b z_bj h_b Π_{b'>b} (1 − z_b'j)``.
  Rows with ``z_b = 0`` (padded) are no-ops.

  Args:
    memory: ``(k, H)``.
    z: ``(B, k)`` keys, in time order.
    h: ``(B, H)``.

  Returns:
    ``(k, H)`` memory after all B writes.
  """
  keep = 1.0 - z  # (B, k)
  suffix = jnp.cumprod(keep[::-1], axis=0)[::-1]  # Π_{b' >= b}
  after = jnp.concatenate([suffix[1:], jnp.ones_like(suffix[:1])], axis=0)  # Π_{b' > b}
  return memory * suffix[0][:, None] + (z * after).T @ h


# --------------------------------------------------------------------------- module


class MBAF(nn.Module):
  """Memory Based Attentive Fusion layer (MBAF §3, Eqs. 1–13; Fig. 1).

  Call: ``layer(*modes, mask=None, modality_mask=None, train=False)`` with ``modes[i]``
  ``(B, d_i)`` →
  ``FusionOutput(fused (B, Σ d_i), aux={})``. ``train=False`` reads the memory and
  never writes; ``train=True`` writes the new memory to ``'memory'`` (when mutable;
  write-then-carry, docs/ARCHITECTURE.md). Padded rows (mask 0) do not touch the
  memory; their outputs are zeros.

  Parameters (``'params'``): ``read_kernel (l, H)`` (f_r, Eq. 2), ``compose_kernel_i``/
  ``compose_bias_i`` (f_c^MLP, Eq. 4; the first layer acts on ``x_t ⊕ m_r``),
  ``attention_context (C,)`` or ``attention_keys (K, C)`` (Eqs. 5–6),
  ``write_kernel (C, H)`` [+ ``write_bias``] (Eq. 7) and, only when ``H ≠ l``,
  ``output_kernel (H, l)`` mapping ``h_t`` back to the output width for Eq. 9.
  Initialisation ("all other weights ... uniform", §3): kernels Glorot uniform (Keras'
  Dense default), attention vectors LeCun uniform, biases zero. Memory
  ``'memory'/'memory' (k, H)`` ~ N(0, 1) from the ``'memory'`` RNG stream if given,
  else ``'params'``.
  """
  slots: int = 30  # k, memory slots (Tables 4–6 sweep 10..100)
  hidden: int | None = None  # H, memory width (None: l, the width of x_t)
  mlp_dims: Sequence[int] = ()  # widths of f_c^MLP's hidden layers before its output layer
  compose_dim: int | None = None  # C, width of b_t and c_t (None: H)
  read_projection: bool = True  # f_r a bias-free Dense l→H; False: identity (needs H == l)
  attention: str = "keys"  # reading of Eqs. 5–6: "keys" (bounded) | "feature" | "none"
  attention_keys: int = 32  # K, learned attentive vectors for attention="keys" (Table 3: q)
  write_bias: bool = False  # bias in Eq. 7's transform c_t W
  write_max: float | None = None  # cap of Eq. 7's ReLU (None: the paper); bounds the memory
  write: str = "scan"  # "scan" (sequential, faithful) | "batched" (stale reads, one write)
  read: str = "naive"  # "naive" (Eqs. 2–4) | "cross" (Eqs. 11–12)
  memory_modes: Sequence[int] | None = None  # modes fused by the memory (Eq. 13); None: all
  axis_name: str | None = None  # pmap/shard_map batch axis: writes see the global batch
  dtype: Any = None  # computation dtype (None: promoted dtype of inputs and params)
  param_dtype: Any = jnp.float32  # dtype of parameters and memory

  # ------------------------------------------------------------------ sizes
  def _selected(self, n_modes: int) -> tuple[int, ...]:
    if self.memory_modes is None:
      return tuple(range(n_modes))
    sel = self.memory_modes
    if isinstance(sel, int) or not isinstance(sel, (tuple, list)) or not sel:
      raise ValueError(f"memory_modes must be None or a non-empty tuple of mode indices, "
                       f"e.g. memory_modes=(0,), got {sel!r}.")
    for i in sel:
      if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_modes:
        raise ValueError(f"memory_modes={tuple(sel)!r}: each entry must be an int index "
                         f"in [0, {n_modes}) for {n_modes} modes, got {i!r}.")
    if len(set(sel)) != len(sel):
      raise ValueError(f"memory_modes={tuple(sel)!r} repeats a mode.")
    return tuple(sel)

  def sizes(self, *in_dims: int) -> dict:
    """The layer's sizes for modes of widths ``in_dims``: l, H, C, MLP layer widths."""
    if not in_dims:
      raise ValueError("MBAF needs the width of every mode, e.g. sizes(2048, 4800).")
    dims = validation.int_tuple(tuple(int(d) for d in in_dims), "in_dims")
    sel = self._selected(len(dims))
    l = sum(dims[i] for i in sel)
    h = l if self.hidden is None else validation.positive_int(self.hidden, "hidden")
    c = h if self.compose_dim is None else validation.positive_int(self.compose_dim,
                                                                    "compose_dim")
    mlp = tuple(validation.positive_int(d, f"mlp_dims[{i}]")
                for i, d in enumerate(self.mlp_dims)) + (c,)
    if not self.read_projection and h != l:
      raise ValueError(f"read_projection=False makes f_r the identity, which needs "
                       f"hidden == l = {l} (width of the memory input), got hidden={h}; "
                       f"set hidden=None or read_projection=True.")
    return {"l": l, "H": h, "C": c, "mlp": mlp, "selected": sel}

  def output_dim(self, *in_dims: int) -> int:
    """Width of the fused output: ``Σ d_i`` (Eq. 9 keeps the width of concatenation)."""
    if not in_dims:
      raise ValueError("output_dim needs the width of every mode, e.g. output_dim(2048, 4800).")
    return int(sum(int(d) for d in in_dims))

  # ------------------------------------------------------------------ variables
  def _params(self, s: dict) -> dict:
    l, h, c, mlp = s["l"], s["H"], s["C"], s["mlp"]
    kinit = nn.initializers.glorot_uniform()
    zeros = nn.initializers.zeros
    pd = self.param_dtype
    p = {}
    if self.read_projection:
      p["read_kernel"] = self.param("read_kernel", kinit, (l, h), pd)
    fan_in = l + h
    for i, width in enumerate(mlp):
      p[f"compose_kernel_{i}"] = self.param(f"compose_kernel_{i}", kinit, (fan_in, width), pd)
      p[f"compose_bias_{i}"] = self.param(f"compose_bias_{i}", zeros, (width,), pd)
      fan_in = width
    if self.attention == "feature":
      p["attention_context"] = self.param(
          "attention_context", nn.initializers.lecun_uniform(in_axis=0, out_axis=()), (c,), pd)
    elif self.attention == "keys":
      keys = validation.positive_int(self.attention_keys, "attention_keys")
      p["attention_keys"] = self.param(
          "attention_keys", nn.initializers.lecun_uniform(in_axis=1, out_axis=0), (keys, c), pd)
    p["write_kernel"] = self.param("write_kernel", kinit, (c, h), pd)
    if self.write_bias:
      p["write_bias"] = self.param("write_bias", zeros, (h,), pd)
    if h != l:
      p["output_kernel"] = self.param("output_kernel", kinit, (h, l), pd)
    return p

  def _memory(self, s: dict):
    shape = (validation.positive_int(self.slots, "slots"), s["H"])
    stream = "memory" if self.has_rng("memory") else "params"

    def init():
      return jax.random.normal(self.make_rng(stream), shape, jnp.float32).astype(self.param_dtype)

    var = self.variable("memory", "memory", init)
    if var.value.shape != shape:
      raise ValueError(
          f"MBAF: the 'memory' variable has shape {var.value.shape} but slots={self.slots} "
          f"and memory width H={s['H']} (l = width of the memory's input modes, or hidden) "
          f"need {shape}; check the input widths against the ones used at init, or re-init.")
    return var

  # ------------------------------------------------------------------ call
  @nn.compact
  def __call__(self, *modes, mask=None, modality_mask=None,
               train: bool = False) -> FusionOutput:
    """Fuses the modes through the memory (MBAF Eqs. 1–13).

    Args:
      *modes: ``(B, d_i)`` floating arrays, one per modality (n ≥ 1).
      mask: optional ``(B,)`` mask, 1 = real row (None: all real).
      modality_mask: optional ``(B, M)`` bool, True = mode present (None: all present). An
        absent mode's slice is the memory read's slice; its values are never read.
      train: write the memory (sequentially over the batch) when True.

    Returns:
      ``FusionOutput(fused (B, Σ d_i), aux={})``.
    """
    validation.option(self.write, WRITE_MODES, "write")
    validation.option(self.read, READ_MODES, "read")
    validation.option(self.attention, ATTENTION_MODES, "attention")
    if self.write_max is not None and not (isinstance(self.write_max, (int, float))
                                           and not isinstance(self.write_max, bool)
                                           and 0 < self.write_max < float("inf")):
      raise ValueError(f"write_max must be None (Eq. 7's plain ReLU) or a positive finite "
                       f"number capping it, e.g. write_max=6.0, got {self.write_max!r}.")
    modes = check_modes(modes, "MBAF")
    bsz = modes[0].shape[0]
    m = batch_mask(mask, bsz)
    present, m = modality_presence(modality_mask, bsz, len(modes), m)
    s = self.sizes(*(x.shape[1] for x in modes))
    mem_var = self._memory(s)  # checks the memory width first
    if self.has_variable("params", "compose_kernel_0"):
      have = self.get_variable("params", "compose_kernel_0").shape[0] - s["H"]
      if have != s["l"]:
        raise ValueError(f"MBAF was initialised for memory inputs of total width {have} but "
                         f"got modes of widths {[x.shape[1] for x in modes]} "
                         f"(memory_modes={self.memory_modes}, width {s['l']}); pass inputs "
                         f"of the widths used at init, or re-init.")
    p = self._params(s)
    dtype = self.dtype or jnp.result_type(*modes, self.param_dtype)
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), p)
    memory = jnp.asarray(mem_var.value, dtype)

    sel = s["selected"]
    if present is not None:  # absent values never enter (where, not multiply)
      modes = tuple(jnp.where(present[:, i:i + 1], x.astype(dtype), jnp.zeros((), dtype))
                    for i, x in enumerate(modes))
    x_t = jnp.concatenate([modes[i].astype(dtype) for i in sel], axis=-1)  # Eq. 1 / Eq. 13
    if self.read == "cross":  # Eq. 11: the composer sees the modes in reversed order
      x_c = jnp.concatenate([modes[i].astype(dtype) for i in reversed(sel)], axis=-1)
    else:
      x_c = x_t

    write = train and not self.is_initializing()
    gather = write and is_local_batch(x_t, self.axis_name)
    l = s["l"]
    if present is None:
      cols, m_write, perm = None, m, None
    else:
      # (B, l) column presence of x_t; rows with a memory mode absent do not write (Eq. 8).
      cols = jnp.concatenate([jnp.broadcast_to(present[:, i:i + 1], (bsz, modes[i].shape[1]))
                              for i in sel], axis=-1)
      m_write = jnp.where(jnp.all(present[:, list(sel)], axis=1), m, jnp.zeros((), m.dtype))
      perm = _cross_permutation([modes[i].shape[1] for i in sel]) if self.read == "cross" \
          else None
    if gather:  # the writer sees the global batch (pmap/shard_map, or an explicit sharding)
      parts = [x_t, x_c] + ([] if cols is None else [cols.astype(dtype)])
      x_all, m_all = gather_batch(jnp.concatenate(parts, -1), m_write, self.axis_name)
      x_all_t, x_all_c = x_all[:, :l], x_all[:, l:2 * l]
      cols_all = None if cols is None else x_all[:, 2 * l:] > 0
    else:
      x_all_t, x_all_c, m_all, cols_all = x_t, x_c, m_write, cols
    h, new_memory, x_full = _run(p, memory, x_all_t, x_all_c, m_all, len(s["mlp"]),
                                 self.attention, self.write if write else None,
                                 self.read_projection, self.write_max, cols_all, perm)
    if gather:
      h = local_slice(h, bsz, self.axis_name)
      x_full = local_slice(x_full, bsz, self.axis_name)
    x_t = x_full
    if write and self.is_mutable_collection("memory"):
      mem_var.value = new_memory.astype(mem_var.value.dtype)

    if "output_kernel" in p:
      h = h @ p["output_kernel"]
    o_sel = x_t + h  # Eq. 9: axis-wise sum of x_t and h_t
    pieces, start = {}, 0
    for i in sel:
      pieces[i] = o_sel[:, start:start + modes[i].shape[1]]
      start += modes[i].shape[1]
    fused = jnp.concatenate([pieces[i] if i in pieces else modes[i].astype(dtype)
                             for i in range(len(modes))], axis=-1)  # absent: zeroed above
    fused = jnp.where(m[:, None] > 0, fused, jnp.zeros((), dtype))
    return FusionOutput(fused=fused, aux={})


def _cross_permutation(widths: Sequence[int]):
  """Column indices that reorder ``x_1 ⊕ … ⊕ x_n`` (widths ``widths``) into ``x_n ⊕ … ⊕ x_1``."""
  starts = [sum(widths[:i]) for i in range(len(widths))]
  return jnp.asarray([c for i in reversed(range(len(widths)))
                      for c in range(starts[i], starts[i] + widths[i])], jnp.int32)


def _run(p, memory, x_t, x_c, mask, n_layers, attention, write, read_projection,
         write_max=None, present=None, perm=None):
  """Eqs. 2–8 over a batch. ``write``: None (read only), "scan" or "batched".

  With ``present`` (``(B, l)`` bool, the columns of ``x_t`` whose mode is present; ``x_t`` and
  ``x_c`` zero there) each row first reads ``m_r`` with the zero-filled ``x_t`` (Eqs. 2–3), and
  its absent columns take ``m_r``'s (``m_r · output_kernel`` when ``H ≠ l``); Eqs. 2–7 then
  run on the completed row. ``perm`` maps ``x_t``'s columns to ``x_c``'s (cross read).

  Returns:
    ``(h (B, H), new_memory (k, H), x_t (B, l))``: ``new_memory is memory`` when not writing;
    ``x_t`` completed (the input ``x_t`` when ``present`` is None).
  """
  q = x_t @ p["read_kernel"] if read_projection else x_t  # f_r(x_t), memory independent
  k0 = p["compose_kernel_0"]
  l = x_c.shape[-1]
  x_part = x_c @ k0[:l] + p["compose_bias_0"]  # x_t's share of Eq. 4's layer 0

  def head(z_q, xp, mem):
    z, m_r = address(z_q, mem)  # Eqs. 2-3
    b = compose(p, xp, m_r, n_layers)  # Eq. 4
    c = attend(p, b, attention)  # Eqs. 5-6
    return z, transform(p, c, write_max)  # Eq. 7

  def complete(qi, xpi, xi, ci, mem):
    """An absent slice of x_t is m_r's slice; f_r and Eq. 4's layer 0 are linear in x_t."""
    _, m_r = address(qi, mem)
    if "output_kernel" in p:
      m_r = m_r @ p["output_kernel"]
    fill = jnp.where(ci, jnp.zeros((), m_r.dtype), m_r)
    q_full = qi + (fill @ p["read_kernel"] if read_projection else fill)
    xp_full = xpi + (fill if perm is None else fill[..., perm]) @ k0[:l]
    return q_full, xp_full, jnp.where(ci, xi, m_r)

  if write == "scan":
    def step(mem, inp):
      qi, xpi, mi = inp[:3]
      xi = inp[3] if present is not None else None
      if present is not None:
        qi, xpi, xi = complete(qi, xpi, xi, inp[4], mem)
      z, h = head(qi, xpi, mem)
      new = erase_write(mem, z, h)  # Eq. 8
      return jnp.where(mi > 0, new, mem), (h if present is None else (h, xi))

    inputs = (q, x_part, mask) + (() if present is None else (x_t, present))
    new_memory, out = jax.lax.scan(step, memory, inputs)
    h, x_full = out if present is not None else (out, x_t)
    return h, new_memory, x_full
  if present is not None:
    q, x_part, x_t = complete(q, x_part, x_t, present, memory)
  z, h = head(q, x_part, memory)
  if write == "batched":
    return h, compose_writes(memory, z * (mask[:, None] > 0), h), x_t
  return h, memory, x_t


# --------------------------------------------------------------------------- parameter count


def mbaf_parameter_count(*in_dims: int, **layer_kwargs) -> int:
  """The layer's actual trainable parameter count (``jax.eval_shape`` of init).

  Args:
    *in_dims: the widths of the modes, e.g. ``(512, 512)``.
    **layer_kwargs: :class:`MBAF` fields.

  Returns:
    The number of scalars in ``'params'`` (the memory is state, not counted).
  """
  layer = MBAF(**layer_kwargs)
  xs = [jax.ShapeDtypeStruct((2, int(d)), jnp.float32) for d in in_dims]
  shapes = jax.eval_shape(lambda *a: layer.init(jax.random.key(0), *a), *xs)
  return int(sum(int(jnp.prod(jnp.array(v.shape))) if v.shape else 1
                 for v in jax.tree_util.tree_leaves(shapes.get("params", {}))))


def paper_eq10(l: int, q: int) -> int:
  """MBAF Eq. 10: ``p = 2 (s1 + s2)² + (q + 1)(s1 + s2)`` with ``l = s1 + s2``, batch q."""
  return 2 * l * l + (q + 1) * l


def paper_table3_difference(l: int, q: int) -> int:
  """The MBAF − NF parameter difference that Table 3 implies: ``3 l² + (q + 2) l``.

  F-IV–VI (l = 1024, q = 32): 14,628,867 − 11,448,323 = 3,180,544 = 3·1024² + 34·1024.
  IEMOCAP F-III (l = 6848, q = 64): 184,791,298 − 43,654,018 = 141,137,280 = 3 l² + 66 l
  exactly; F-I and F-II differ by 141,164,676 = 3 l² + 66 l + (4 l + 4), one more
  l→4 Dense in those MBAF models than in their NF models.
  """
  return 3 * l * l + (q + 2) * l


TABLE3_LAYOUT = {"read_projection": False, "write_bias": True, "attention": "keys"}
"""MBAF fields whose parameter count equals Table 3's ``3 l² + (q + 2) l`` exactly when
``attention_keys = q`` (batch size): f_c^MLP one Dense ``2l → l`` with bias (2l² + l),
Eq. 7's ``W`` with bias (l² + l), ``q`` attentive vectors (q·l), f_r the identity.
Eq. 10 is this count minus ``l² + l``, i.e. it omits Eq. 7's transform."""
