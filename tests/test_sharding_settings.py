"""Every sharding setting a user can hold, for every fusion layer and both APIs (Linen and NNX).

The settings, each on 8 fake CPU devices (``tests/conftest.py``) with a batch of 16 rows:

* ``no_context``: the inputs arrive already sharded on an Explicit-axes mesh
  (``jax.device_put(x, NamedSharding(jax.make_mesh((8,), ("data",)), P("data")))``), the
  variables replicated on it, and the step is ``jax.jit`` **without** ``jax.set_mesh``: the usual
  case in a data pipeline;
* ``set_mesh``: the same inside ``jax.set_mesh(mesh)``;
* ``auto``: an Auto-axes mesh (XLA's partitioner decides);
* ``shard_map``: per-device code, ``jax.shard_map`` with the layer's ``axis_name``;
* ``pmap``: ``jax.pmap`` with ``axis_name``.

Each run is an evaluation call and a training step (``jax.value_and_grad`` of a loss on the rows
plus the aux terms; memory and batch statistics written), and must equal the Linen layer on one
device, no mesh (1e-5): rows, loss, parameter gradients, new memory and batch statistics. The NNX
layer runs through ``nnx.split`` / ``nnx.merge`` (the way NNX state crosses JAX transforms) or, for
the jit settings, ``nnx.jit`` on the module itself.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import unfreeze
from jax.sharding import NamedSharding, PartitionSpec as P

import mbaf_jax.nnx as mnnx
from mbaf_jax import fusion

AXIS = "data"
N_DEV = 8
BATCH = 16
ATOL = 1e-5
GUMBEL = jax.random.key(2)  # the NNX call draws nnx.Rngs(gumbel=GUMBEL).gumbel()
TINY_DMF = dict(slots=4, cbp_dim=16, num_heads=2, attention_tokens=4, writer_ff_dim=8,
                tau_min=0.5)
LAYERS = {  # name: (Linen layer, mode widths)
    "naive": (lambda: fusion.NaiveFusion(), (6, 10)),
    "dmf": (lambda: fusion.DualMemoryFusion(**TINY_DMF), (8, 8)),
    "mbaf": (lambda: fusion.MBAF(slots=4, write_max=6.0), (6, 10)),
}
WRITTEN = ("memory", "batch_stats")


def _inputs(dims):
  rng = np.random.default_rng(0)
  xs = tuple(rng.normal(size=(BATCH, d)).astype(np.float32) for d in dims)
  mask = (np.arange(BATCH) < BATCH - 3).astype(np.float32)  # three padded rows
  return xs, mask


def _loss(rows, aux, mask):
  w = jnp.asarray(np.random.default_rng(9).normal(size=rows.shape).astype(np.float32))
  return jnp.sum(mask[:, None] * w * rows) + sum(aux.values(), jnp.zeros(()))


def _with_axis(module, axis_name):
  return module.clone(axis_name=axis_name) if hasattr(module, "axis_name") else module


@functools.cache
def _setup(name):
  """The Linen layer, its variables (one device) and the NNX layer holding the same ones."""
  module, dims = LAYERS[name][0](), LAYERS[name][1]
  xs, mask = _inputs(dims)
  keys = {"params": jax.random.key(0), "memory": jax.random.key(1)}
  variables = dict(jax.jit(lambda *a: module.init(keys, *a))(*xs))
  return module, dims, variables


# --------------------------------------------------------------- one forward, two APIs
# forward(params, rest, xs, mask, train) -> (rows, aux, new {memory, batch_stats}); params and
# rest as the API keeps them (Linen: dicts; NNX: nnx.State from nnx.split).


def linen_forward(name, axis_name=None):
  module, _, variables = _setup(name)
  module = _with_axis(module, axis_name)
  rest = {c: v for c, v in variables.items() if c != "params"}
  gumbel = nnx.Rngs(gumbel=GUMBEL).gumbel()

  def forward(params, rest, xs, mask, train):
    v = {**rest, "params": params}
    if not train:
      return module.apply(v, *xs, mask=mask).fused, {}, {}
    mutable = [c for c in WRITTEN if c in rest]
    out, new = module.apply(v, *xs, mask=mask, train=True, rngs={"gumbel": gumbel},
                            mutable=mutable)
    return out.fused, dict(out.aux), dict(new)

  return forward, variables.get("params", {}), rest


def nnx_forward(name, axis_name=None):
  module, dims, variables = _setup(name)
  layer = mnnx.from_linen(module, variables, dims)
  if axis_name is not None:
    layer = nnx.view(layer, axis_name=axis_name)
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def forward(params, rest, xs, mask, train):
    model = nnx.merge(graphdef, params, rest)
    out = model(*xs, mask=mask, deterministic=not train, rngs=nnx.Rngs(gumbel=GUMBEL))
    new = nnx.state(model, nnx.Any(mnnx.Memory, nnx.BatchStat)) if train else {}
    return out.fused, dict(out.aux), nnx.to_pure_dict(new) if train else {}

  return forward, params, rest


FORWARDS = {"linen": linen_forward, "nnx": nnx_forward}


def _pure(tree):
  """Arrays of a Linen dict or an NNX State, as a nested dict (NNX gradients drop 'params')."""
  if isinstance(tree, nnx.State):
    tree = nnx.to_pure_dict(tree)
    return tree.get("params", tree)
  return tree


def train_and_eval(evaluate, train, params, rest, xs, mask):
  """Eval rows (``evaluate``), then loss, gradients and the new state of ``train``; both are
  ``forward`` with its last argument fixed, or their per-device (shard_map, pmap) versions."""
  rows = evaluate(params, rest, xs, mask)[0]

  def loss_fn(p):
    rows, aux, new = train(p, rest, xs, mask)
    return _loss(rows, aux, mask), new

  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return rows, loss, grads, new


def both_modes(forward):
  """``train_and_eval`` of one forward function."""
  return functools.partial(train_and_eval, functools.partial(forward, train=False),
                           functools.partial(forward, train=True))


# --------------------------------------------------------------- the settings


def run_single(name):
  forward, params, rest = linen_forward(name)
  xs, mask = _inputs(_setup(name)[1])
  return jax.jit(both_modes(forward))(params, rest, xs, mask)


def run_jit(api, name, axis_type, set_mesh):
  """``jax.jit`` over inputs sharded on ``AXIS``, variables replicated; NNX through ``nnx.jit``."""
  mesh = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(axis_type,),
                       devices=jax.devices()[:N_DEV])
  xs, mask = _inputs(_setup(name)[1])
  xs, mask = jax.device_put((xs, mask), NamedSharding(mesh, P(AXIS)))
  replicated = NamedSharding(mesh, P())
  forward, params, rest = FORWARDS[api](name)
  params, rest = jax.device_put((params, rest), replicated)
  if api == "nnx":  # the module itself through nnx.jit, as a user's step would take it
    return _run_nnx_jit(name, xs, mask, replicated, set_mesh, mesh)
  step = jax.jit(both_modes(forward))
  if set_mesh:
    with jax.set_mesh(mesh):
      return step(params, rest, xs, mask)
  return step(params, rest, xs, mask)


def _run_nnx_jit(name, xs, mask, replicated, set_mesh, mesh):
  module, dims, variables = _setup(name)
  layer = mnnx.from_linen(module, jax.device_put(variables, replicated), dims)

  @nnx.jit
  def step(layer, xs, mask):
    rows = layer(*xs, mask=mask, deterministic=True).fused

    def loss_fn(model):
      out = model(*xs, mask=mask, rngs=nnx.Rngs(gumbel=GUMBEL))
      return _loss(out.fused, dict(out.aux), mask)

    loss, grads = nnx.value_and_grad(loss_fn)(layer)
    return rows, loss, grads

  if set_mesh:
    with jax.set_mesh(mesh):
      rows, loss, grads = step(layer, xs, mask)
  else:
    rows, loss, grads = step(layer, xs, mask)
  new = nnx.to_pure_dict(nnx.state(layer, nnx.Any(mnnx.Memory, nnx.BatchStat)))
  return rows, loss, grads, new


def run_shard_map(api, name):
  mesh = jax.make_mesh((N_DEV,), (AXIS,), devices=jax.devices()[:N_DEV])
  xs, mask = jax.device_put(_inputs(_setup(name)[1]), NamedSharding(mesh, P(AXIS)))
  forward, params, rest = FORWARDS[api](name, axis_name=AXIS)
  params, rest = jax.device_put((params, rest), NamedSharding(mesh, P()))
  batch = (tuple(P(AXIS) for _ in xs), P(AXIS))

  def sharded(train, out_specs):
    return jax.shard_map(functools.partial(forward, train=train), mesh=mesh,
                         in_specs=(P(), P()) + batch, out_specs=out_specs, check_vma=False)

  evaluate = sharded(False, (P(AXIS), P(), P()))
  train = sharded(True, (P(AXIS), P(), P()))
  return jax.jit(functools.partial(train_and_eval, evaluate, train))(params, rest, xs, mask)


def run_pmap(api, name):
  xs, mask = _inputs(_setup(name)[1])
  forward, params, rest = FORWARDS[api](name, axis_name=AXIS)
  split = lambda a: a.reshape((N_DEV, -1) + a.shape[1:])

  def pmapped(train):
    f = jax.pmap(functools.partial(forward, train=train), axis_name=AXIS,
                 in_axes=(None, None, 0, 0), devices=jax.devices()[:N_DEV])

    def call(p, r, xs, m):
      rows, aux, new = f(p, r, tuple(split(x) for x in xs), split(m))
      first = lambda t: jax.tree.map(lambda a: a[0], t)  # the same on every device
      return rows.reshape((BATCH,) + rows.shape[2:]), first(aux), first(new)
    return call

  return train_and_eval(pmapped(False), pmapped(True), params, rest, xs, jnp.asarray(mask))


SETTINGS = {
    "no_context": lambda api, name: run_jit(api, name, jax.sharding.AxisType.Explicit, False),
    "set_mesh": lambda api, name: run_jit(api, name, jax.sharding.AxisType.Explicit, True),
    "auto": lambda api, name: run_jit(api, name, jax.sharding.AxisType.Auto, True),
    "shard_map": run_shard_map,
    "pmap": run_pmap,
}
_SINGLE = {}


def close(got, want, what):
  got, want = unfreeze(_pure(got)), unfreeze(_pure(want))
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  jax.tree_util.tree_map_with_path(
      lambda p, g, w: np.testing.assert_allclose(
          np.asarray(g), np.asarray(w), rtol=ATOL, atol=ATOL,
          err_msg=f"{what}{jax.tree_util.keystr(p)}"), got, want)


def _cases():
  """The fast set is the setting a pipeline hands over (sharded inputs, no mesh context; the NNX
  DMF runs the Linen DMF's code, so it is in the slow set with the other settings). Linen's
  set_mesh, Auto and shard_map runs of the three layers are tests/test_explicit_sharding.py's;
  here Linen runs the settings that file lacks (no mesh context, pmap)."""
  for setting in SETTINGS:
    for name in LAYERS:
      for api in FORWARDS:
        if api == "linen" and setting in ("set_mesh", "auto", "shard_map"):
          continue  # tests/test_explicit_sharding.py runs these
        fast = setting == "no_context" and (api == "linen" or name != "dmf")  # same code path
        marks = () if fast else (pytest.mark.slow,)
        yield pytest.param(setting, name, api, marks=marks, id=f"{setting}-{name}-{api}")


@pytest.mark.parametrize("setting,name,api", list(_cases()))
def test_sharded_layer_equals_one_device(setting, name, api):
  if name not in _SINGLE:
    _SINGLE[name] = run_single(name)
  want_rows, want_loss, want_grads, want_new = _SINGLE[name]
  rows, loss, grads, new = SETTINGS[setting](api, name)
  close(rows, want_rows, "eval rows ")
  np.testing.assert_allclose(loss, want_loss, rtol=ATOL, atol=ATOL)
  close(grads, want_grads, "grads ")
  close(new, want_new, "new state ")
  if "memory" in want_new:  # the step wrote the memory: equality is not vacuous
    old = _setup(name)[2]["memory"]
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         _pure(want_new)["memory"], old)
    assert max(jax.tree.leaves(moved)) > 1e-4
