"""Train state and the pure train / eval step functions (write-then-carry, data parallel).

The step is a pure function of ``(state, batch, key)``: it folds the step number into ``key``
(``'dropout'`` and ``'gumbel'`` streams), runs the model with ``mutable=["memory",
"batch_stats"]``, takes the loss on the *new* memory (DMF §2.2–2.3: "these calculated new memory
states are used to calculate the overall loss"), and carries ``stop_gradient(new memory)`` into
the next state ("we assign it back to the memory variable only at the beginning of the next
iteration"). Nothing here builds a mesh, compiles or places arrays: ``train.parallel`` wraps
these functions for a layout. Under ``jit`` over a device mesh the step sees the global batch
(sharded, state replicated), so the fusion layer's writer sees the global batch; under
``jax.pmap`` the step is built with ``axis_name`` (:func:`make_train_step`) and the model with
:func:`with_axis_name`, and equals the single-device step. The optimiser is
``train.optimizers.make_optimizer``.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mbaf_jax.fusion.dual_memory import DIAGNOSTICS

COLLECTIONS = ("memory", "batch_stats", "constants")


@flax.struct.dataclass
class TrainState:
  """Everything a step threads (the pytree a checkpoint saves)."""
  step: jax.Array  # int32 scalar: number of updates done
  params: Any  # 'params' collection
  opt_state: Any  # optax state
  batch_stats: Any  # 'batch_stats' collection ({} when the model has none)
  constants: Any  # 'constants' collection (CBP count sketch), never updated
  memory: Any  # 'memory' collection, carried with stop_gradient
  first_nonfinite: jax.Array  # int32: step of the first non-finite loss, -1 if none

  def variables(self, params=None):
    """The variable dict for ``apply`` (empty collections left out)."""
    v = {"params": self.params if params is None else params}
    for name in COLLECTIONS:
      value = getattr(self, name)
      if value:
        v[name] = value
    return v

  def saveable(self) -> dict:
    """The pytree a checkpoint stores."""
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
            "batch_stats": self.batch_stats, "constants": self.constants,
            "memory": self.memory, "first_nonfinite": self.first_nonfinite}

  @classmethod
  def from_saved(cls, saved: dict) -> "TrainState":
    """The state from a ``saveable()`` dict (e.g. a restored checkpoint)."""
    return cls(**saved)


def init_variables(model: nn.Module, batch: dict, key: jax.Array) -> dict:
  """Initialises every variable collection from a (dummy) batch, under jit.

  The key is an argument of the compiled program (not a constant baked into it), so every fold
  and seed of one model reuses one compilation: in-process when the model is hashable (the
  usual case; a model holding an array, e.g. a GloVe table, is traced afresh per call), and
  through the persistent compilation cache either way.

  Args:
    model: the full model.
    batch: a batch dict with "mask" (shapes only matter; "label" ignored).
    key: PRNG key; the 'params', 'memory', 'dropout' and 'gumbel' streams are split from it.

  Returns:
    A plain dict of collections.
  """
  inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
  try:
    hash(model)
  except TypeError:
    return flax.core.unfreeze(jax.jit(functools.partial(_init, model))(inputs, batch["mask"], key))
  return flax.core.unfreeze(_init_static(model, inputs, batch["mask"], key))


def _init(model: nn.Module, inputs: dict, mask, key: jax.Array):
  k_params, k_mem, k_drop, k_gum = jax.random.split(key, 4)
  return model.init({"params": k_params, "memory": k_mem, "dropout": k_drop, "gumbel": k_gum},
                    inputs, mask=mask, train=False)


_init_static = jax.jit(_init, static_argnums=0)


def abstract_variables(model: nn.Module, batch: dict, key: jax.Array) -> dict:
  """Shapes of every collection (``jax.eval_shape``, nothing computed)."""
  return jax.eval_shape(lambda k: init_variables(model, batch, k), key)


def create_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  """A step-0 TrainState from initialised variables and the optimiser."""
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    batch_stats=variables.get("batch_stats", {}),
                    constants=variables.get("constants", {}),
                    memory=variables.get("memory", {}),
                    first_nonfinite=jnp.full((), -1, jnp.int32))


def step_keys(key, step):
  """Per-step keys: ``fold_in(key, step)`` split into the 'dropout' and 'gumbel' streams.

  Under pmap every device gets the same keys: the fusion layer draws its Gumbel noise for the
  global batch and keeps its slice (``mbaf_jax.fusion.common.local_slice``), and its writer
  (which may use dropout) runs on the gathered global batch, so it must draw the same masks on
  every device to keep the memories identical. Dropout in the encoders and head is then drawn
  per local batch (same key on every device): equal in distribution to the global draw, not
  bit-equal, so pmap equals jit exactly only with dropout off (docs/SCALING.md).
  """
  k = jax.random.fold_in(key, step)
  k_drop, k_gum = jax.random.split(k)
  return {"dropout": k_drop, "gumbel": k_gum}


def with_axis_name(model: nn.Module, axis_name: str | None) -> nn.Module:
  """The per-device copy of a full model for ``jax.pmap`` over ``axis_name``.

  The full models (``mbaf_jax.models``) hold their fusion layer as the field ``fusion``; a fusion
  layer with an ``axis_name`` field (DualMemoryFusion, MBAF, the MBAF-I/II/III FusionBlock) gets
  it, so its writer all-gathers the batch and its batch norm syncs statistics. Layers whose rows
  are independent (NaiveFusion, encoders, heads: no batch statistics) need nothing.

  Args:
    model: the full model (unbound).
    axis_name: the pmap batch axis, or ``None`` (returns ``model``).

  Returns:
    The model to apply inside the pmapped step.
  """
  if axis_name is None:
    return model
  fusion = getattr(model, "fusion", None)
  if not isinstance(fusion, nn.Module):
    raise ValueError(f"{type(model).__name__} has no module field 'fusion', so it cannot be "
                     "run under parallelism='pmap'; use config.train.parallelism='jit'.")
  if "axis_name" in {f.name for f in dataclasses.fields(fusion)}:
    fusion = fusion.clone(axis_name=axis_name)
  return model.clone(fusion=fusion)


def global_masked_mean(values, mask, axis_name: str | None = None):
  """This device's share of the masked mean over the global batch.

  ``Σ_devices global_masked_mean(v_i, m_i, axis) == Σ_all v·m / Σ_all m``, so with gradients
  summed over devices (:func:`sum_over_devices`) a pmap step equals the single-device step.
  With ``axis_name=None`` it is the ordinary masked mean of the (global) batch.

  Args:
    values: ``(B, ...)`` per-row values (extra axes are summed per row).
    mask: ``(B,)`` mask, 1 = real row.
    axis_name: pmap axis, or ``None``.

  Returns:
    Scalar. An all-padded global batch gives 0 (the denominator is clamped to 1).
  """
  m = jnp.asarray(mask, jnp.float32)
  v = jnp.asarray(values, jnp.float32).reshape(m.shape[0], -1).sum(-1)
  num, den = jnp.sum(v * m), jnp.sum(m)
  if axis_name is not None:
    den = jax.lax.psum(den, axis_name)
  return num / jnp.maximum(den, 1.0)


def device_share(x, axis_name: str | None = None):
  """This device's share ``x / P`` of a term every device computes identically.

  For terms computed from the all-gathered global batch (e.g. DMF Eq. 4 on the new
  memories): summing the shares over the ``P`` devices gives ``x`` once.
  """
  if axis_name is None:
    return x
  return x / jax.lax.axis_size(axis_name)


def sum_over_devices(tree, axis_name: str | None = None):
  """``psum`` of a pytree (e.g. gradients) over ``axis_name``; identity when ``None``."""
  if axis_name is None:
    return tree
  return jax.lax.psum(tree, axis_name)


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation,
                    axis_name: str | None = None):
  """The train step for a model's ``apply`` and an optimiser (closed over, not traced).

  Args:
    apply_fn: the model's ``apply``; under pmap the model of :func:`with_axis_name`.
    tx: the optimiser.
    axis_name: ``None``: the step sees the global batch (one device, or jit over a mesh).
      A pmap axis: the step sees this device's rows; the cross-entropy is this device's share
      of the global masked mean (``global_masked_mean``), the fusion's aux terms
      (computed from the gathered global batch) are divided by the device count
      (``device_share``), the gradients are summed over devices and the metrics are
      global, so every device makes the update of the single-device step.

  Returns:
    ``train_step(state, batch, key) -> (new_state, metrics)``, a pure function (DMF Eq. 4:
    L = CE + similarity loss of the new memories; MBAF: CE). ``batch`` holds the model inputs
    plus "label" (B,) int and "mask" (B,) (1 = real row); ``key`` is the run's base PRNG key
    (the step is folded in). metrics: "loss", "ce", "aux", "correct", "count" (device scalars,
    over the global batch).
  """
  def train_step(state: TrainState, batch: dict, key: jax.Array):
    inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
    mask, labels = batch["mask"], batch["label"]
    rngs = step_keys(key, state.step)

    def loss_fn(params):
      out, new_vars = apply_fn(state.variables(params), inputs, mask=mask, train=True,
                               rngs=rngs, mutable=["memory", "batch_stats", DIAGNOSTICS])
      picked = jnp.take_along_axis(out.log_probs, labels[:, None].astype(jnp.int32), axis=-1)
      ce = global_masked_mean(-picked[:, 0], mask, axis_name)
      aux = sum((jnp.asarray(v, jnp.float32) for v in out.aux.values()),
                jnp.zeros((), jnp.float32))
      aux = device_share(aux, axis_name)
      return ce + aux, (ce, aux, out.log_probs, new_vars)

    grads, (ce, aux, log_probs, new_vars) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_vars = dict(new_vars)
    diagnostics = diagnostic_scalars(new_vars.pop(DIAGNOSTICS, {}), axis_name)
    grads = sum_over_devices(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = mask.astype(jnp.float32)
    correct = jnp.sum(m * (jnp.argmax(log_probs, -1) == labels))
    ce, aux, correct, count = sum_over_devices((ce, aux, correct, jnp.sum(m)), axis_name)
    loss = ce + aux
    bad = jnp.logical_and(state.first_nonfinite < 0, ~jnp.isfinite(loss))
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        batch_stats=new_vars.get("batch_stats", state.batch_stats),
        # Write-then-carry: the new memory, with no gradient path, is next step's memory.
        memory=jax.lax.stop_gradient(new_vars.get("memory", state.memory)),
        first_nonfinite=jnp.where(bad, state.step, state.first_nonfinite))
    return new_state, {"loss": loss, "ce": ce, "aux": aux, "correct": correct, "count": count,
                       **diagnostics}

  return train_step


def diagnostic_scalars(sown: Any, axis_name: str | None = None) -> dict:
  """The fusion layer's training-dynamics scalars (the ``'diagnostics'`` collection that
  ``DualMemoryFusion`` sows: read entropy and spread, slot similarity, …) as flat metrics
  ``"memory/<module path>/<name>"``; under pmap averaged over devices. ``{}`` for a model that
  sows none."""
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(
      sown, is_leaf=lambda t: isinstance(t, tuple))[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    v = jnp.mean(jnp.stack([jnp.asarray(x, jnp.float32) for x in value]))
    out["memory/" + name] = v if axis_name is None else jax.lax.pmean(v, axis_name)
  return out


def make_eval_step(apply_fn: Callable):
  """``eval_step(state, batch) -> log_probs``: ``train=False``, memory read, never written
  (DMF §2.2: "the memory update process is not carried out during inference"). Rows are
  independent in evaluation, so the same step serves every layout."""

  def eval_step(state: TrainState, batch: dict):
    inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
    out = apply_fn(state.variables(), inputs, mask=batch["mask"], train=False)
    return out.log_probs

  return eval_step
