"""The optimiser of a run: an optax optimiser named in the config, in the papers' parameter groups.

``config.optim.name`` names an optax optimiser (``optax.sgd``, ``optax.adam``, …) and
``config.optim.kwargs`` its arguments other than the learning rate; the optimiser is built as
``getattr(optax, name)(learning_rate=lr, **kwargs)`` once per parameter group
(``optax.multi_transform``):

* ``"network"``: everything but the memory module, at ``config.optim.learning_rate``;
* ``"memory"``: the memory module (every module that owns a ``'memory'`` variable), at
  ``config.optim.memory_learning_rate`` (DMF §3: SGD, 0.01 network / 0.001 memory module;
  MBAF §4: Adam 1e-3 for everything, so its configs set both rates equal);
* ``"frozen"``: the pretrained parts DMF §2.1 freezes (``encoders.frozen_mask``), updates zeroed.

``config.optim.grad_clip_norm > 0`` clips the global gradient norm before the groups.
"""
import difflib
import inspect
from typing import Any, Callable

import jax
import optax

from mbaf_jax.encoders import frozen_mask
from mbaf_jax.errors import UserError


def optax_optimizers() -> tuple:
  """The names ``config.optim.name`` accepts: the public optax functions with a
  ``learning_rate`` argument (``scale_by_*`` transformations left out), sorted."""
  names = []
  for name in dir(optax):
    fn = getattr(optax, name)
    if name.startswith(("_", "scale_by_")) or isinstance(fn, type) or not callable(fn):
      continue
    try:
      params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
      continue
    if "learning_rate" in params:
      names.append(name)
  return tuple(sorted(names))


def optax_optimizer(name: str) -> Callable[..., optax.GradientTransformation]:
  """``getattr(optax, name)`` for an optimiser name of the config.

  Args:
    name: ``config.optim.name``, e.g. ``"sgd"`` (DMF §3) or ``"adam"`` (MBAF §4).

  Returns:
    The optax function, called as ``fn(learning_rate=..., **kwargs)``.

  Raises:
    UserError: ``name`` is not an optax optimiser; the message names the close matches.
  """
  known = optax_optimizers()
  if name not in known:
    close = difflib.get_close_matches(str(name), known, n=4, cutoff=0.6)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
    raise UserError(f"config.optim.name={name!r} is not an optax optimiser; {hint}It names a "
                    "function of optax that takes a learning_rate: 'sgd' (DMF §3), 'adam' "
                    f"(MBAF §4) or any of {', '.join(known)}.")
  return getattr(optax, name)


def optimizer_kwargs(optim_config, fn: Callable) -> dict:
  """``config.optim.kwargs`` as a dict, checked against the arguments of ``fn``.

  Args:
    optim_config: ``config.optim`` (a missing ``kwargs`` field is ``{}``).
    fn: the optax function of :func:`optax_optimizer`.

  Returns:
    The keyword arguments (``learning_rate`` excluded).

  Raises:
    UserError: a keyword ``fn`` does not take, or ``learning_rate`` (set by the groups).
  """
  kwargs = optim_config.get("kwargs", None) or {}
  kwargs = dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)
  name = optim_config.name
  if "learning_rate" in kwargs:
    raise UserError(f"config.optim.kwargs sets learning_rate; set config.optim.learning_rate "
                    "(network) and config.optim.memory_learning_rate (memory module) instead.")
  accepted = [p for p in inspect.signature(fn).parameters if p != "learning_rate"]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise UserError(f"config.optim.kwargs has {unknown}, which optax.{name} does not take; it "
                    f"takes {accepted} (e.g. --config.optim.kwargs='{{\"momentum\": 0.9}}' "
                    "for sgd).")
  return kwargs


def param_labels(params, optim_config, memory=None) -> Any:
  """Optimiser group of every parameter: "frozen" (DMF §2.1, ``encoders.frozen_mask``),
  "memory" (the memory module: DMF §3's own learning rate) or "network".

  Args:
    params: the parameter tree (arrays or shapes).
    optim_config: ``config.optim`` (``freeze_encoders``).
    memory: the model's ``'memory'`` collection (arrays or shapes). The memory module is every
      module that owns a memory variable (DMF: ``fusion``, the whole DualMemoryFusion; MBAF
      IEMOCAP: ``fusion/fusion``, the MBAF layer but not the block's self-attention). ``{}``
      (e.g. naive fusion): no memory group. ``None``: the top-level ``fusion`` subtree.

  Returns:
    A tree of group names shaped like ``params``.
  """
  frozen = frozen_mask(params) if optim_config.freeze_encoders else jax.tree.map(
      lambda _: False, params)
  if memory is None:
    owners = {("fusion",)}
  else:
    owners = {tuple(getattr(k, "key", k) for k in path[:-1])
              for path, _ in jax.tree_util.tree_leaves_with_path(memory)}

  def label(path, is_frozen):
    if is_frozen:
      return "frozen"
    keys = tuple(getattr(k, "key", k) for k in path)
    return "memory" if any(keys[:len(o)] == o for o in owners) else "network"

  return jax.tree_util.tree_map_with_path(label, frozen)


def make_optimizer(optim_config, params, memory=None) -> optax.GradientTransformation:
  """The run's optimiser: ``optax.<name>(learning_rate, **kwargs)`` per group, frozen parts
  zeroed, optionally behind a global-norm clip.

  Args:
    optim_config: ``config.optim`` (``name``, ``kwargs``, ``learning_rate``,
      ``memory_learning_rate``, ``freeze_encoders``, ``grad_clip_norm``).
    params: the model parameters, arrays or shapes (for the groups).
    memory: the model's ``'memory'`` collection (which modules are the memory module; see
      :func:`param_labels`).

  Returns:
    The optax transformation.

  Raises:
    UserError: an unknown optimiser name or a keyword it does not take (the learning rates are
      checked with the rest of the config, ``train.validate``).
  """
  fn = optax_optimizer(optim_config.name)
  kwargs = optimizer_kwargs(optim_config, fn)
  tx = optax.multi_transform(
      {"network": fn(learning_rate=optim_config.learning_rate, **kwargs),
       "memory": fn(learning_rate=optim_config.memory_learning_rate, **kwargs),
       "frozen": optax.set_to_zero()},
      param_labels(params, optim_config, memory))
  if optim_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), tx)
  return tx
