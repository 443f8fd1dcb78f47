"""The fusion layers as Flax NNX modules: NaiveFusion, DualMemoryFusion, MBAF, FusionBlock.

Built like NNX layers and called like them::

  layer = mbaf_jax.nnx.DualMemoryFusion(in_features=(768, 768), slots=120, rngs=nnx.Rngs(0))
  out = layer(x_a, x_t, mask=mask)      # FusionOutput(fused, aux); training mode writes memory
  layer.eval(); out = layer(x_a, x_t)   # evaluation reads memory, never writes it

Each NNX layer holds the variables of the Linen layer of the same name (``mbaf_jax.fusion``) and
runs that layer's code, so the two APIs compute the same numbers from the same variables and
random keys (``tests/test_nnx.py``). The variables are typed by role, under the Linen collection
names and paths as attributes (``layer.params['reader_a']['temperature']['kernel']``,
``layer.memory['M_a']``):

* ``params`` (``nnx.Param``): the trained parameters;
* ``memory`` (:class:`Memory`): the explicit memory, written by a training call, only read in
  evaluation, never a parameter;
* ``batch_stats`` (``nnx.BatchStat``): the running statistics of DMF's composer batch norm;
* ``constants`` (:class:`Constant`): DMF's count sketch (hashes, signs), drawn at init and never
  updated;

so ``nnx.state(layer, Memory)`` is the memory, ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
trains the parameters only, and ``nnx.state(model)`` (orbax, ``nnx.split``) saves everything.

Mode: ``layer.train()`` / ``layer.eval()`` (or ``nnx.view(layer, deterministic=...)``, or
``layer(..., deterministic=...)``) set the ``deterministic`` attribute; ``deterministic=False``
(the default, as for ``nnx.Dropout``) is the Linen ``train=True``: the new memory and batch
statistics are written into the layer, and ``out.aux`` holds the loss terms computed from the
new memory (DMF Eq. 4). The written memory carries no gradient (DMF §2.2 write-then-carry), so
inside ``nnx.jit`` + ``nnx.value_and_grad`` a step trains the parameters and leaves the new
memory in the model for the next step.

Random draws: the layer keeps a fork of the ``'gumbel'`` and ``'dropout'`` streams of the
``rngs`` it was built with (DMF's reader noise and writer dropout; ``rngs=`` at call time
overrides them); initialisation draws from ``'params'`` and, for the memory, ``'memory'`` when
the ``rngs`` has that stream (or a default one), as the Linen layers do.

``axis_name`` (DMF, MBAF, FusionBlock) is an attribute too: for ``pmap`` / ``shard_map`` over the
batch, build the layer with it or take ``nnx.view(layer, axis_name="batch")``.
"""
import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.core import FrozenDict, unfreeze

from mbaf_jax.fusion import dual_memory, mbaf, mbaf_blocks, naive
from mbaf_jax.fusion.common import FusionOutput
from mbaf_jax.ops import validation

__all__ = ["Memory", "Constant", "NaiveFusion", "DualMemoryFusion", "MBAF", "FusionBlock",
           "fusion_block", "from_linen", "to_linen", "FusionOutput", "COLLECTIONS"]


class Memory(nnx.Variable):
  """The explicit memory of a fusion layer: state written by training calls, never trained."""


class Constant(nnx.Variable):
  """A fixed random constant of a fusion layer (DMF's count sketch): drawn at init, never
  updated, saved with the model."""


COLLECTIONS = {"params": nnx.Param, "memory": Memory, "batch_stats": nnx.BatchStat,
               "constants": Constant}
"""Linen variable collection -> the NNX variable type that holds it (and the attribute name)."""

WRITTEN = ("memory", "batch_stats")  # the collections a training call writes
DIAGNOSTICS = dual_memory.DIAGNOSTICS  # Linen collection of DMF's training-dynamics scalars


# --------------------------------------------------------------------------- pure helpers


def _freeze(value):
  """A hashable copy of a Linen field value (lists -> tuples, dicts -> FrozenDict)."""
  if isinstance(value, dict):
    return FrozenDict({k: _freeze(v) for k, v in value.items()})
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


def _fields(module: nn.Module) -> dict:
  """The dataclass fields of a Linen module (without ``parent`` / ``name``)."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.init and f.name not in ("parent", "name")}


def _in_features(in_features, layer: str, count: int | None) -> tuple[int, ...]:
  """Checks ``in_features``: one positive width per mode (``count`` of them when given)."""
  if isinstance(in_features, int):
    in_features = (in_features,)
  if not isinstance(in_features, (tuple, list)) or not in_features:
    raise TypeError(f"{layer}: in_features must be a tuple of the modes' widths, e.g. "
                    f"in_features=(768, 768), got {in_features!r}.")
  dims = validation.int_tuple(tuple(in_features), "in_features")
  if count is not None and len(dims) != count:
    raise ValueError(f"{layer} fuses exactly {count} modes: in_features needs {count} widths, "
                     f"got {dims}.")
  return dims


def _has_stream(rngs, stream: str) -> bool:
  """True when ``rngs`` (an ``nnx.Rngs`` or None) has ``stream`` or a default stream."""
  return rngs is not None and (stream in rngs or "default" in rngs)


def _draw(rngs, stream: str):
  """A key from ``rngs[stream]`` (or its default stream); None when it has neither."""
  return rngs[stream]() if _has_stream(rngs, stream) else None


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(module: nn.Module, in_features: tuple[int, ...], keys: dict) -> dict:
  """``module.init`` on zero inputs of widths ``in_features``, compiled once per configuration."""
  dummies = [jnp.zeros((1, d), jnp.float32) for d in in_features]
  return module.init(keys, *dummies, train=False)


def _to_nnx(variables: dict) -> dict:
  """Linen variables -> ``{collection: tree of typed NNX variables}``."""
  unknown = sorted(set(variables) - set(COLLECTIONS))
  if unknown:
    raise ValueError(f"variables have collections {unknown} that no fusion layer keeps; "
                     f"expected some of {sorted(COLLECTIONS)}.")
  return {col: jax.tree.map(COLLECTIONS[col], unfreeze(tree)) for col, tree in variables.items()}


def _to_linen(layer) -> dict:
  """The layer's variables as the Linen ``variables`` dict (arrays, not NNX variables)."""
  return {col: jax.tree.map(lambda v: v.get_value(), getattr(layer, col),
                            is_leaf=lambda v: isinstance(v, nnx.Variable))
          for col in COLLECTIONS if hasattr(layer, col)}


def _write(tree, new) -> None:
  """Sets every variable of ``tree`` to the value at its path in ``new`` (same structure)."""
  jax.tree.map(lambda var, value: var.set_value(value), tree, new,
               is_leaf=lambda v: isinstance(v, nnx.Variable))


# --------------------------------------------------------------------------- layers


class _LinenLayer(nnx.Module):
  """An NNX layer holding the variables of one Linen fusion layer and running its code."""

  linen_type: type = None  # the Linen class (set by each layer)
  count: int | None = None  # exact number of modes (None: n >= 1)
  streams: tuple = ()  # RNG streams a call may draw from

  def __init__(self, in_features: Sequence[int], *, rngs: nnx.Rngs | None = None,
               deterministic: bool = False, variables: dict | None = None, **fields):
    """Builds the layer and draws its variables (or takes ``variables``).

    Args:
      in_features: the width of each mode, ``(d_1, ..., d_n)``.
      rngs: ``nnx.Rngs``: ``'params'`` (and ``'memory'``) for the initial variables, and the
        call-time streams (DMF: ``'gumbel'``, ``'dropout'``), which the layer forks and keeps.
      deterministic: evaluation mode (the Linen ``train=False``); ``layer.train()`` /
        ``layer.eval()`` switch it.
      variables: the Linen ``variables`` of this configuration (e.g. from a Linen checkpoint)
        to hold instead of drawing new ones.
      **fields: the Linen layer's fields (``mbaf_jax.fusion``), e.g. ``slots=120``.
    """
    name = self.linen_type.__name__
    self.in_features = _in_features(in_features, name, self.count)
    module = self.linen_type(**{k: _freeze(v) for k, v in fields.items()})
    self.module = module  # the Linen definition (static)
    self.out_features = module.output_dim(*self.in_features)
    self.deterministic = bool(deterministic)
    if "axis_name" in _fields(module):
      self.axis_name = module.axis_name
    if variables is None:
      variables = self._init_variables(rngs)
    for col, tree in _to_nnx(variables).items():
      setattr(self, col, nnx.data(tree))
    keep = {s: rngs[s].fork() for s in self.streams if _has_stream(rngs, s)}
    if keep:
      self.rngs = nnx.Rngs(**keep)

  def _init_variables(self, rngs) -> dict:
    keys = {s: k for s in ("params", "memory") if (k := _draw(rngs, s)) is not None}
    if "params" not in keys:
      raise ValueError(f"{type(self).__name__} needs rngs=nnx.Rngs(...) with a 'params' (or "
                       f"default) stream to draw its variables, e.g. rngs=nnx.Rngs(0).")
    return dict(_init(self.module, self.in_features, keys))

  def set_view(self, deterministic: bool | None = None, axis_name: str | None = None):
    """``nnx.view`` hook: the mode and (DMF, MBAF, FusionBlock) the ``pmap``/``shard_map``
    batch axis."""
    if deterministic is not None:
      self.deterministic = deterministic
    if axis_name is not None and hasattr(self, "axis_name"):  # NaiveFusion never mixes rows
      self.axis_name = axis_name

  def linen(self) -> nn.Module:
    """The Linen layer this NNX layer runs (with the current ``axis_name``)."""
    if hasattr(self, "axis_name") and self.axis_name != self.module.axis_name:
      return self.module.clone(axis_name=self.axis_name)
    return self.module

  def _call_keys(self, train: bool, rngs) -> dict:
    """The keys of the Linen call's RNG streams (overridable per layer)."""
    del train, rngs
    return {}

  def __call__(self, *modes, mask=None, deterministic: bool | None = None,
               rngs: nnx.Rngs | None = None, **kwargs) -> FusionOutput:
    """Fuses the modes; in training mode writes the new memory and batch statistics.

    Args:
      *modes: ``(B, d_i)`` arrays, one per mode (widths ``in_features``).
      mask: optional ``(B,)`` mask, 1 = real row; padded rows never touch memory or statistics.
      deterministic: overrides the layer's mode for this call (True: evaluation).
      rngs: overrides the layer's kept streams for this call (DMF: ``'gumbel'``, ``'dropout'``).
      **kwargs: any further keyword argument of the Linen layer's call, passed on as it is.

    Returns:
      ``FusionOutput(fused (B, out_features), aux)``: ``aux`` holds the loss terms of a
      training call (DMF: ``memory_similarity``, on the new memory), to add to the loss.
    """
    train = not (self.deterministic if deterministic is None else deterministic)
    module, variables = self.linen(), _to_linen(self)
    # Memory is state: no gradient flows into the stored memory, or through a written one into
    # a later call (DMF §2.2 write-then-carry), whatever the Linen layer does with it.
    variables = {c: jax.lax.stop_gradient(v) if c in WRITTEN else v
                 for c, v in variables.items()}
    keys = self._call_keys(train, rngs)
    if not train:  # evaluation: nothing is mutable, so nothing can be written
      return module.apply(variables, *modes, mask=mask, train=False, rngs=keys, **kwargs)
    mutable = [c for c in WRITTEN if c in variables]
    capture = hasattr(self, "__captures__")  # inside nnx.capture: sow DMF's diagnostics
    out, new = module.apply(variables, *modes, mask=mask, train=True, rngs=keys,
                            mutable=mutable + ([DIAGNOSTICS] if capture else []), **kwargs)
    for col in mutable:
      _write(getattr(self, col), jax.lax.stop_gradient(new[col]))
    for path, values in traverse_util.flatten_dict(unfreeze(new.get(DIAGNOSTICS, {}))).items():
      for value in values:  # Linen sows a tuple per name
        self.sow(nnx.Intermediate, "/".join(path), value)
    return out


class NaiveFusion(_LinenLayer):
  """Concatenation of ``n >= 1`` modes (DMF §4 "naive fusion"; MBAF's NF), as an NNX module.

  ``NaiveFusion(in_features=(d_1, ..., d_n), rngs=None, <fields of
  mbaf_jax.fusion.NaiveFusion>)``; no memory, and parameters only for learned absent-mode
  embeddings (``absent="learned"``), which start at zero (so ``rngs`` may be left out).
  """
  linen_type = naive.NaiveFusion

  def _init_variables(self, rngs) -> dict:
    # Nothing random to draw (no variables, or absent="learned" embeddings that start at zero):
    # without rngs a fixed key only satisfies Linen's init.
    return super()._init_variables(rngs if _has_stream(rngs, "params") else nnx.Rngs(params=0))


class DualMemoryFusion(_LinenLayer):
  """DMF's dual-memory fusion layer (DMF §2.2–2.3, Eqs. 1–4) as an NNX module.

  ``DualMemoryFusion(in_features=(d, d), <fields of mbaf_jax.fusion.DualMemoryFusion>,
  rngs=nnx.Rngs(...))``; called ``layer(x_a, x_t, mask=None)``. Memory ``layer.memory['M_a']``,
  ``['M_t']`` (:class:`Memory`). Training calls draw the reader's Gumbel noise from the
  ``'gumbel'`` stream and, with ``dropout_rate > 0``, the writer's dropout from ``'dropout'``
  (both forked from ``rngs`` at construction, or ``rngs=`` at the call).
  """
  linen_type = dual_memory.DualMemoryFusion
  count = 2
  streams = ("gumbel", "dropout")

  def _call_keys(self, train: bool, rngs) -> dict:
    want = []
    if train or self.module.gumbel_noise_in_eval:
      want.append("gumbel")
    if train and self.module.dropout_rate > 0:
      want.append("dropout")
    source = rngs if rngs is not None else getattr(self, "rngs", None)
    keys = {s: k for s in want if (k := _draw(source, s)) is not None}
    missing = [s for s in want if s not in keys]
    if missing:
      raise ValueError(f"DualMemoryFusion needs the RNG stream(s) {missing} in this mode: build "
                       f"it with rngs=nnx.Rngs(...) or call layer(..., rngs=nnx.Rngs(gumbel=...)).")
    return keys


class MBAF(_LinenLayer):
  """Memory Based Attentive Fusion (MBAF §3, Eqs. 1–13) as an NNX module.

  ``MBAF(in_features=(d_1, ..., d_n), <fields of mbaf_jax.fusion.MBAF>, rngs=nnx.Rngs(...))``;
  called ``layer(*modes, mask=None)``. Memory ``layer.memory['memory']`` (:class:`Memory`).
  No randomness after init.
  """
  linen_type = mbaf.MBAF


class FusionBlock(_LinenLayer):
  """MBAF-I/II/III and NF-I/II/III (MBAF §4.1, Fig. 2) as an NNX module.

  ``FusionBlock(in_features, placement="III", fusion="mbaf", mbaf_kwargs={...}, rngs=...)``
  (fields of :class:`mbaf_jax.fusion.mbaf_blocks.FusionBlock`), or :func:`fusion_block` by the
  paper's name. MBAF's memory: ``layer.memory['fusion']['memory']``.
  """
  linen_type = mbaf_blocks.FusionBlock


def fusion_block(name: str, in_features: Sequence[int], *, rngs: nnx.Rngs | None = None,
                 **mbaf_kwargs) -> FusionBlock:
  """The block of the paper's name (``"MBAF-I"`` … ``"NF-III"``, MBAF Table 1) as an NNX module.

  Args:
    name: the paper's name (case-insensitive).
    in_features: the modes' widths.
    rngs: ``nnx.Rngs`` for the initial variables.
    **mbaf_kwargs: MBAF fields (MBAF-* only), e.g. ``slots=30``.

  Returns:
    The :class:`FusionBlock`.
  """
  linen = mbaf_blocks.fusion_block(name, **mbaf_kwargs)
  return FusionBlock(in_features, rngs=rngs, **_fields(linen))


_BY_LINEN = {cls.linen_type: cls for cls in (NaiveFusion, DualMemoryFusion, MBAF, FusionBlock)}


def from_linen(module: nn.Module, variables: dict, in_features: Sequence[int], *,
               rngs: nnx.Rngs | None = None, deterministic: bool = False) -> _LinenLayer:
  """The NNX layer of a Linen fusion layer and its variables (e.g. a Linen checkpoint).

  Args:
    module: a Linen ``NaiveFusion`` / ``DualMemoryFusion`` / ``MBAF`` / ``FusionBlock``.
    variables: its ``variables`` (``params``, ``memory``, ``batch_stats``, ``constants``).
    in_features: the modes' widths.
    rngs: ``nnx.Rngs`` for the call-time streams (DMF: ``'gumbel'``, ``'dropout'``).
    deterministic: start in evaluation mode.

  Returns:
    The NNX layer holding (copies of the references to) those variables.
  """
  cls = _BY_LINEN.get(type(module))
  if cls is None:
    raise TypeError(f"from_linen takes a Linen fusion layer of mbaf_jax.fusion "
                    f"({', '.join(c.__name__ for c in _BY_LINEN)}), got {type(module).__name__}.")
  return cls(in_features, rngs=rngs, deterministic=deterministic,
             variables={c: v for c, v in dict(variables).items() if c in COLLECTIONS},
             **_fields(module))


def to_linen(layer: _LinenLayer) -> tuple[nn.Module, dict]:
  """``(module, variables)``: the Linen layer and the variables an NNX layer holds, for
  ``module.apply(variables, ...)`` or a Linen checkpoint."""
  return layer.linen(), _to_linen(layer)
