"""Explicit sharding: every fusion layer and the full models under a mesh with Explicit axes.

``jax.make_mesh`` makes Explicit axes by default in current JAX: inside ``jax.set_mesh`` the
sharding of an array is part of its type (``float32[16@batch, 8]``) and ops that cannot infer an
output sharding raise ``ShardingTypeError``. Each case runs one layer (or a full model) three
ways on the same variables and batch, and compares with the single-device run:

* ``single``: ``jax.jit`` on one device, no mesh (the reference);
* ``explicit``: ``jax.jit`` inside ``jax.set_mesh(jax.make_mesh((8,), ("batch",)))``, batch
  sharded over ``batch`` (``jax.device_put(x, P("batch"))``), variables replicated;
* ``shard_map``: per-device code, ``jax.shard_map`` over the same mesh with the layer's
  ``axis_name="batch"`` (the writer all-gathers the global batch, batch norm syncs).

The mesh axis is the project's one batch axis name, ``train.parallel.BATCH_AXIS``.

Each run does init, an evaluation apply and a train step (``jax.value_and_grad`` of a loss on the
rows plus the layer's aux terms, memory written); the memory must come back replicated and equal
to the single-device one. 8 fake CPU devices from ``tests/conftest.py``.
"""
import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import cebs as cebs_config
from configs import iemocap as dmf_config
from configs import iemocap_mbaf as mbaf_config
from mbaf_jax import ops
from mbaf_jax.fusion import MBAF, DualMemoryFusion, NaiveFusion
from mbaf_jax.fusion.mbaf_blocks import fusion_block
from mbaf_jax.models import factory
from mbaf_jax.ops import sharding
from train import parallel
from train import steps

import test_distributed as td  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)

AXIS = parallel.BATCH_AXIS
N_DEV = 8
BATCH = 16
ATOL = 1e-5


def explicit_mesh():
  """The 8-device 1-D mesh ``jax.make_mesh`` builds (Explicit axes by default)."""
  mesh = jax.make_mesh((N_DEV,), (AXIS,), devices=jax.devices()[:N_DEV])
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  return mesh


@dataclasses.dataclass
class Case:
  """One module and its inputs: a fusion layer on ``modes``, or a full model on ``batch``."""
  module: object  # the module (fusion layer or full model)
  inputs: object  # tuple of (B, d_i) modes (layer) or a batch dict (model)
  is_model: bool = False  # full model: called as module(batch, mask=...), output log_probs

  def call(self, module, variables, inputs, mask, train, **kw):
    """Returns ``(rows (B, F), aux dict, new collections)``."""
    args = (inputs,) if self.is_model else tuple(inputs)
    result = module.apply(variables, *args, mask=mask, train=train, **kw)
    out, new = result if "mutable" in kw else (result, {})
    rows = out.log_probs if self.is_model else out.fused
    return rows, dict(out.aux), new

  def with_axis(self, axis_name):
    """The per-device module for ``shard_map`` over ``axis_name``."""
    if self.is_model:
      return steps.with_axis_name(self.module, axis_name)
    return _clone_axis(self.module, axis_name)


def _clone_axis(module, axis_name):
  return module.clone(axis_name=axis_name) if hasattr(module, "axis_name") else module


def _mask(n_pad=3):
  m = np.ones((BATCH,), np.float32)
  m[BATCH - n_pad:] = 0
  return m


def _modes(*dims, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(BATCH, d)).astype(np.float32) for d in dims)


def _keys():
  return {"params": jax.random.key(0), "memory": jax.random.key(1)}


def _rngs():
  return {"gumbel": jax.random.key(2), "dropout": jax.random.key(3)}


def _init(case, module, inputs, mask):
  args = (inputs,) if case.is_model else tuple(inputs)
  return module.init(_keys(), *args, mask=mask, train=False)


def _loss_weights(width):
  return jnp.asarray(np.random.default_rng(9).normal(size=(BATCH, width)).astype(np.float32))


def _train(case, module, variables, inputs, mask, call=None):
  """value_and_grad of ``Σ mask·w·rows + Σ aux`` w.r.t. params: loss, grads, new vars."""
  call = call or (lambda p: case.call(module, {**variables, "params": p}, inputs, mask, True,
                                      rngs=_rngs(), mutable=["memory", "batch_stats"]))

  def loss_fn(params):
    rows, aux, new = call(params)
    w = _loss_weights(rows.shape[-1])
    loss = jnp.sum(mask[:, None] * w * rows) + sum(aux.values(), jnp.zeros(()))
    return loss, new

  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables.get("params", {}))
  return {"loss": loss, "grads": grads, "new": new}


def run_single(case):
  """The reference: one device, no mesh."""
  mask = jnp.asarray(_mask())
  dev = jax.devices()[0]
  inputs = jax.device_put(case.inputs, dev)
  variables = jax.jit(lambda i, m: _init(case, case.module, i, m))(inputs, mask)
  rows = jax.jit(lambda v, i, m: case.call(case.module, v, i, m, False))(variables, inputs, mask)[0]
  train = jax.jit(lambda v, i, m: _train(case, case.module, v, i, m))(variables, inputs, mask)
  return variables, rows, train


def run_explicit(case, axis_type=jax.sharding.AxisType.Explicit):
  """jit under ``jax.set_mesh`` of an Explicit (or Auto) mesh, the batch sharded over ``AXIS``."""
  mesh = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(axis_type,),
                       devices=jax.devices()[:N_DEV])
  with jax.set_mesh(mesh):
    batch = jax.NamedSharding(mesh, P(AXIS))
    mask = jax.device_put(_mask(), batch)
    inputs = jax.device_put(case.inputs, batch)
    variables = jax.jit(lambda i, m: _init(case, case.module, i, m))(inputs, mask)
    rows = jax.jit(lambda v, i, m: case.call(case.module, v, i, m, False))(variables, inputs,
                                                                            mask)[0]
    if axis_type == jax.sharding.AxisType.Explicit:
      assert jax.typeof(rows).sharding.spec[0] == AXIS  # rows stay sharded
    train = jax.jit(lambda v, i, m: _train(case, case.module, v, i, m))(variables, inputs, mask)
  return variables, rows, train


def run_shard_map(case):
  """Per-device code: ``jax.shard_map`` with the module's ``axis_name``."""
  mesh = explicit_mesh()
  module = case.with_axis(AXIS)
  batch_specs = jax.tree.map(lambda _: P(AXIS), case.inputs)
  with jax.set_mesh(mesh):
    mask = jax.device_put(_mask(), P(AXIS))
    inputs = jax.device_put(case.inputs, P(AXIS))

    def init(i, m):
      return _init(case, module, i, m)

    variables = jax.jit(jax.shard_map(init, in_specs=(batch_specs, P(AXIS)), out_specs=P(),
                                      check_vma=False))(inputs, mask)

    def evaluate(v, i, m):
      return case.call(module, v, i, m, False)[0]

    rows = jax.jit(jax.shard_map(evaluate, in_specs=(P(), batch_specs, P(AXIS)),
                                 out_specs=P(AXIS), check_vma=False))(variables, inputs, mask)

    def forward(v, i, m):
      return case.call(module, v, i, m, True, rngs=_rngs(), mutable=["memory", "batch_stats"])

    sharded_forward = jax.shard_map(forward, in_specs=(P(), batch_specs, P(AXIS)),
                                    out_specs=(P(AXIS), P(), P()), check_vma=False)

    def train(v, i, m):
      return _train(case, module, v, i, m,
                    call=lambda p: sharded_forward({**v, "params": p}, i, m))

    train = jax.jit(train)(variables, inputs, mask)
  return variables, rows, train


def assert_trees_close(got, want, atol=ATOL, what=""):
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  jax.tree_util.tree_map_with_path(
      lambda p, g, w: np.testing.assert_allclose(
          np.asarray(g), np.asarray(w), rtol=atol, atol=atol,
          err_msg=f"{what}{jax.tree_util.keystr(p)}"), got, want)


_REFERENCES = {}


def check_equal(case, layout, name=None):
  """``layout`` ("explicit" | "shard_map" | "auto") equals the single-device run (computed once
  per ``name``)."""
  if name is None or name not in _REFERENCES:
    _REFERENCES[name] = run_single(case)
  want_vars, want_rows, want_train = _REFERENCES[name]
  runs = {"explicit": run_explicit, "shard_map": run_shard_map,
          "auto": lambda c: run_explicit(c, jax.sharding.AxisType.Auto)}
  got_vars, got_rows, got_train = runs[layout](case)
  assert_trees_close(got_vars, want_vars, what="init ")
  assert_trees_close(got_rows, want_rows, what="eval rows ")
  np.testing.assert_allclose(got_train["loss"], want_train["loss"], rtol=ATOL, atol=ATOL)
  assert_trees_close(got_train["grads"], want_train["grads"], what="grads ")
  assert_trees_close(got_train["new"], want_train["new"], what="new vars ")
  memory = got_train["new"].get("memory", {})
  for leaf in jax.tree.leaves(memory):  # replicated, one value on every device
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == N_DEV
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    for s in shards[1:]:
      np.testing.assert_array_equal(s, shards[0])
  if memory:  # the step wrote the memory: equality is not vacuous
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         want_train["new"]["memory"], want_vars["memory"])
    assert max(jax.tree.leaves(moved)) > 1e-4


TINY_DMF = dict(slots=4, cbp_dim=16, num_heads=2, attention_tokens=4, writer_ff_dim=8,
                tau_min=0.5)

LAYERS = {
    "naive": lambda: Case(NaiveFusion(), _modes(6, 10)),
    "dmf": lambda: Case(DualMemoryFusion(**TINY_DMF), _modes(8, 8)),
    "mbaf_scan": lambda: Case(MBAF(slots=4, write="scan", write_max=6.0), _modes(6, 10)),
    "mbaf_batched": lambda: Case(MBAF(slots=4, write="batched", read="cross"), _modes(6, 10)),
    "mbaf_ii": lambda: Case(fusion_block("MBAF-II", slots=4), _modes(6, 10)),
    "mbaf_iii": lambda: Case(fusion_block("MBAF-III", slots=4, write="batched"), _modes(6, 10)),
    "nf_iii": lambda: Case(fusion_block("NF-III"), _modes(6, 10)),
}


@pytest.mark.parametrize("layout", [
    "explicit", "shard_map",
    pytest.param("auto", marks=pytest.mark.slow)])  # the control: Auto axes, as before
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_fusion_layer_equals_one_device(layer, layout):
  check_equal(LAYERS[layer](), layout, f"layer:{layer}")


@pytest.mark.parametrize("method", ops.cbp.SKETCH_METHODS)
def test_count_sketch_keeps_the_batch_sharding(method):
  sk = ops.make_count_sketch(jax.random.key(0), in_dims=(6, 5), dim=8)
  x, y = _modes(6, 5)
  want = ops.compact_bilinear_pooling(x, y, sk, method=method)
  with jax.set_mesh(explicit_mesh()):
    xs, ys = jax.device_put((x, y), P(AXIS))
    got = jax.jit(lambda a, b: ops.compact_bilinear_pooling(a, b, sk, method=method))(xs, ys)
    assert jax.typeof(got).sharding.spec == P(AXIS, None)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_sharding_helpers_are_the_identity_off_explicit_meshes():
  x = jnp.ones((16, 3))
  assert sharding.explicit_spec(x) is None and sharding.replicate(x) is x
  auto = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(auto):
    xa = jax.device_put(x, jax.NamedSharding(auto, P(AXIS)))
    assert jax.jit(lambda a: jnp.asarray(sharding.explicit_spec(a) is None))(xa)
  with jax.set_mesh(explicit_mesh()):
    xe = jax.device_put(x, P(AXIS))
    assert sharding.explicit_spec(xe) == P(AXIS, None)
    assert jax.typeof(jax.jit(sharding.replicate)(xe)).sharding.spec == P(None, None)


VOCAB = 30


def _random_batch(config):
  """``factory.dummy_batch`` of ``BATCH`` rows with random audio/signals and token ids."""
  rng = np.random.default_rng(1)
  batch = factory.dummy_batch(config.data, config.model, BATCH)
  for name in ("input_values", "waves"):
    if name in batch:
      batch[name] = rng.normal(size=batch[name].shape).astype(np.float32)
  for name in ("input_ids", "token_ids"):
    if name in batch:
      batch[name] = rng.integers(1, VOCAB, size=batch[name].shape).astype(np.int32)
  if "modes" in batch:
    batch["modes"] = tuple(rng.normal(size=x.shape).astype(np.float32) for x in batch["modes"])
  return batch


NO_DROPOUT = {
    "audio": dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                  feat_proj_dropout=0.0, layerdrop=0.0),
    "text": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layerdrop=0.0),
}


def _model_case(config, kind):
  """A full model of a ``:smoke`` config, dropout off: under ``shard_map`` each device would
  draw its own masks (docs/SCALING.md, "Dropout and pmap"). DMF's encoders have one transformer
  layer (the smoke config's two are the same layer twice; one compiles faster)."""
  config.model.head_dropout = 0.0
  if config.model.name == "dmf":
    for part, options in NO_DROPOUT.items():
      config.model[part].overrides.update(options, num_hidden_layers=1)
  model, _ = factory.build_model(config.model, kind, vocab_size=VOCAB,
                                 max_tokens=config.data.max_tokens)
  return Case(model, _random_batch(config), is_model=True)


MODELS = {
    "cebs_mbaf": lambda: _model_case(cebs_config.get_config("smoke"), "mbaf"),
    "mbaf_iemocap_iii": lambda: _model_case(mbaf_config.get_config("III,smoke"), "mbaf"),
    "dmf": lambda: _model_case(dmf_config.get_config("smoke"), "dmf"),
}


@pytest.mark.parametrize("layout", ["explicit", "shard_map"])
@pytest.mark.parametrize("name", [
    "cebs_mbaf",  # ~25 s for both layouts on 2 loaded cores; the others 50-70 s
    pytest.param("mbaf_iemocap_iii", marks=pytest.mark.slow),
    pytest.param("dmf", marks=pytest.mark.slow)])
def test_full_model_equals_one_device(name, layout):
  check_equal(MODELS[name](), layout, f"model:{name}")


def test_trainer_meshes_state_their_axis_type():
  assert parallel.global_mesh().axis_types == (jax.sharding.AxisType.Auto,)
  assert parallel.global_mesh().axis_names == (parallel.BATCH_AXIS,)
  mesh = parallel.global_mesh(devices=jax.devices()[:4], axis_type="explicit")
  assert parallel.is_explicit(mesh) and mesh.devices.size == 4
  with pytest.raises(ValueError, match="axis_type"):
    parallel.global_mesh(axis_type="manual")


@pytest.mark.slow  # 20-35 s on 2 loaded cores (two compilations of the toy step)
def test_parallel_train_step_on_an_explicit_mesh_equals_one_device():
  """``train.parallel``'s jit layout with Explicit axes: the toy DMF classifier of
  tests/test_distributed.py, 3 SGD steps on 8 devices, equals its single-device reference."""
  want_state, want_loss = td.run_reference()
  ps = parallel.make_parallel_train_step(td.build_step, "jit", devices=jax.devices()[:N_DEV],
                                     axis_type="explicit")
  assert parallel.is_explicit(ps.mesh)
  state = ps.put_state(td.init_state())
  losses = []
  for i in range(td.STEPS):
    state, m = ps(state, ps.put_batch(td.make_batch(100 + i)), jax.random.key(7))
    losses.append(float(ps.to_host(m)["loss"]))
  assert ps.traces == 1
  mem = state["memory"]["fusion"]["M_a"]
  assert mem.sharding.is_fully_replicated and len(mem.sharding.device_set) == N_DEV
  got = ps.to_host(state)
  np.testing.assert_allclose(losses, want_loss, rtol=ATOL, atol=ATOL)
  for part in ("params", "memory", "batch_stats"):
    assert_trees_close(got[part], want_state[part], what=f"{part} ")


@pytest.mark.slow  # three compilations of the DMF layer: 12 s of CPU, 20-30 s on loaded cores
def test_scaling_doc_example_runs_and_equals_one_device():
  """docs/SCALING.md's "Explicit sharding and shard_map" block, as written."""
  text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "SCALING.md").read_text()
  heading = "## Explicit sharding and shard_map"
  assert heading in text
  section = text.split(heading, 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  assert len(blocks) == 1
  ns = {}
  exec(compile(blocks[0], "docs/SCALING.md", "exec"), ns)  # pylint: disable=exec-used
  layer, variables = ns["layer"], ns["variables"]
  want_fused, want_memory = jax.jit(lambda v, a, t: ns["train_call"](layer, v, a, t))(
      variables, ns["x_a"], ns["x_t"])
  for fused, memory in ((ns["fused"], ns["memory"]), (ns["fused_sm"], ns["memory_sm"])):
    np.testing.assert_allclose(fused, want_fused, rtol=ATOL, atol=ATOL)
    assert_trees_close(memory, want_memory)


def test_with_axis_name_reaches_the_mbaf_of_a_fusion_block():
  """pmap/shard_map copy of MBAF IEMOCAP: the block's MBAF gathers the global batch."""
  config = mbaf_config.get_config("III,smoke")
  model, _ = factory.build_model(config.model, "mbaf", vocab_size=VOCAB,
                                 max_tokens=config.data.max_tokens)
  assert model.fusion.axis_name is None
  assert steps.with_axis_name(model, AXIS).fusion.axis_name == AXIS
