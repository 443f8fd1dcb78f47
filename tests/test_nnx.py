"""mbaf_jax.nnx: the fusion layers as Flax NNX modules, checked against the Linen layers.

The reference is the Linen layer (``mbaf_jax.fusion``) applied to the same variables with the same
random keys: every NNX layer, in training and evaluation mode, gives the same fused rows, aux
terms, new memory, batch statistics and parameter gradients (1e-6, float32). Then what an NNX user
relies on: typed variables (``Memory`` apart from ``nnx.Param``), ``train()`` / ``eval()``,
write-then-carry inside ``nnx.jit`` + ``nnx.value_and_grad`` with ``nnx.Optimizer``, random draws
from ``nnx.Rngs`` streams, ``nnx.split`` / ``nnx.merge`` and orbax checkpoints.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx, traverse_util
from flax.core import unfreeze

import mbaf_jax.nnx as mnnx
from mbaf_jax import fusion
from mbaf_jax.fusion.mbaf_blocks import fusion_block

B = 8
TOL = 1e-6
TINY_DMF = dict(slots=4, cbp_dim=16, num_heads=2, attention_tokens=4, writer_ff_dim=8,
                tau_min=0.5)
GUMBEL, DROPOUT = jax.random.key(2), jax.random.key(3)

LAYERS = {  # name: (Linen layer, mode widths)
    "naive": (lambda: fusion.NaiveFusion(), (6, 10)),
    "dmf": (lambda: fusion.DualMemoryFusion(**TINY_DMF, dropout_rate=0.1), (8, 8)),
    "mbaf": (lambda: fusion.MBAF(slots=4, write_max=6.0), (6, 10)),
    "mbaf_3_modes": (lambda: fusion.MBAF(slots=4, write="batched", memory_modes=(0, 2)),
                     (6, 4, 10)),
    "mbaf_iii": (lambda: fusion_block("MBAF-III", slots=4, read="cross"), (6, 10)),
    "nf_ii": (lambda: fusion_block("NF-II"), (6, 10)),
}


def modes(dims, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, d)).astype(np.float32)) for d in dims)


MASK = jnp.asarray(np.arange(B) < B - 2, jnp.float32)  # two padded rows


def linen_setup(name):
  module, dims = LAYERS[name][0](), LAYERS[name][1]
  xs = modes(dims)
  variables = jax.jit(module.init)({"params": jax.random.key(0), "memory": jax.random.key(1)},
                                   *xs)
  return module, dict(variables), dims, xs


def weighted(rows):
  w = jnp.asarray(np.random.default_rng(9).normal(size=rows.shape).astype(np.float32))
  return jnp.sum(MASK[:, None] * w * rows)


def stream_keys():
  """The keys an NNX call draws from ``nnx.Rngs(gumbel=GUMBEL, dropout=DROPOUT)``."""
  rngs = nnx.Rngs(gumbel=GUMBEL, dropout=DROPOUT)
  return {"gumbel": rngs.gumbel(), "dropout": rngs.dropout()}


def linen_reference(module, variables, xs):
  """Eval rows, then a training call: rows, aux, new state, loss and parameter gradients."""

  @jax.jit
  def run(variables, xs):
    rest = {k: v for k, v in variables.items() if k != "params"}
    eval_rows = module.apply(variables, *xs, mask=MASK, train=False).fused

    def loss_fn(params):
      out, new = module.apply({**rest, "params": params}, *xs, mask=MASK, train=True,
                              rngs=stream_keys(),
                              mutable=["memory", "batch_stats", "diagnostics"])
      return weighted(out.fused) + sum(out.aux.values(), 0.0), (out, new)

    (loss, (out, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables.get("params", {}))
    new = dict(new)
    return eval_rows, out, new, diagnostics(new.pop("diagnostics", {})), loss, grads

  return run(variables, xs)


def diagnostics(tree):
  """Sown scalars by name (``writer_a/from_batch``), from Linen's collection or NNX's capture."""
  tree = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else unfreeze(tree)
  flat = traverse_util.flatten_dict(tree, is_leaf=lambda _, v: isinstance(v, tuple))
  return {"/".join(k): jnp.stack(v) for k, v in flat.items()}


@nnx.jit
def nnx_run(layer, xs):
  """The same on the NNX layer: an evaluation call, then ``nnx.value_and_grad`` in training
  mode, which writes the new memory and batch statistics into the layer. Also returns the state
  after the evaluation call and the gradient with respect to the stored memory."""
  eval_rows = layer(*xs, mask=MASK, deterministic=True).fused
  after_eval = pure(layer, mnnx.Memory, nnx.BatchStat)  # arrays: a snapshot

  def loss_fn(model):  # DMF's training diagnostics come out through nnx.capture
    out, sown = nnx.capture(model, nnx.Intermediate)(
        *xs, mask=MASK, rngs=nnx.Rngs(gumbel=GUMBEL, dropout=DROPOUT))
    return weighted(out.fused) + sum(out.aux.values(), 0.0), (out, sown)

  wrt = nnx.DiffState(0, nnx.Any(nnx.Param, mnnx.Memory))
  (loss, (out, sown)), grads = nnx.value_and_grad(loss_fn, argnums=wrt, has_aux=True)(layer)
  return eval_rows, after_eval, out, diagnostics(sown), loss, grads


LAYER_VARIABLES = (nnx.Param, mnnx.Memory, nnx.BatchStat, mnnx.Constant)  # all but RNG state


def pure(module, *filters):
  """The arrays of ``module``'s variables of the given types (default: all but RNG state)."""
  return nnx.to_pure_dict(nnx.state(module, nnx.Any(*(filters or LAYER_VARIABLES))))


def largest_change(a, b):
  return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def close(got, want, what):
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  jax.tree_util.tree_map_with_path(
      lambda p, g, w: np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=TOL,
                                                 atol=TOL,
                                                 err_msg=f"{what}{jax.tree_util.keystr(p)}"),
      got, want)


@pytest.mark.parametrize("name", [
    "naive", "dmf", "mbaf_3_modes", "nf_ii",
    # 5-15 s each on 2 loaded cores; MBAF's scan also runs in test_sharding_settings' fast set
    pytest.param("mbaf", marks=pytest.mark.slow),
    pytest.param("mbaf_iii", marks=pytest.mark.slow)])
def test_nnx_layer_equals_linen_in_train_and_eval(name):
  """Same fused rows (eval and train), aux, loss, parameter gradients, new memory and batch
  statistics; the evaluation call wrote nothing; no gradient reaches the stored memory."""
  module, variables, dims, xs = linen_setup(name)
  want_eval, want_out, want_new, want_sown, want_loss, want_grads = linen_reference(
      module, variables, xs)
  layer = mnnx.from_linen(module, variables, dims)
  assert not layer.deterministic  # NNX layers start in training mode, like nnx.Dropout
  eval_rows, after_eval, out, sown, loss, grads = nnx_run(layer, xs)
  close(eval_rows, want_eval, "eval fused ")
  written = {c: variables[c] for c in ("memory", "batch_stats") if c in variables}
  close(after_eval, written, "state after the eval call ")
  close(out.fused, want_out.fused, "train fused ")
  close(dict(out.aux), dict(want_out.aux), "aux ")
  close(sown, want_sown, "diagnostics ")
  assert ("writer_a/from_batch" in sown) == (name == "dmf")
  np.testing.assert_allclose(loss, want_loss, rtol=TOL, atol=TOL)
  grads = nnx.to_pure_dict(grads)
  close(grads.get("params", {}), want_grads, "grads ")
  for g in jax.tree.leaves(grads.get("memory", {})):  # nothing flows into or through memory
    np.testing.assert_array_equal(g, 0.0)
  _, now = mnnx.to_linen(layer)  # the training call wrote memory and batch statistics
  close({c: now[c] for c in written}, {c: want_new[c] for c in written}, "new state ")
  if "memory" in variables:  # the write is not vacuous
    assert largest_change(now["memory"], variables["memory"]) > 1e-4


def test_train_eval_switches_and_views():
  """``eval()`` reads and never writes the memory; ``train()`` writes it, with no gradient path
  through the written memory; ``nnx.view`` copies the mode (and ``axis_name``) without touching
  the layer."""
  module, variables, dims, xs = linen_setup("mbaf")
  layer = mnnx.from_linen(module, variables, dims)
  layer.eval()
  assert layer.deterministic
  out = layer(*xs)
  close(pure(layer, mnnx.Memory)["memory"], variables["memory"], "eval memory ")
  np.testing.assert_allclose(out.fused, module.apply(variables, *xs).fused, rtol=TOL, atol=TOL)
  view = nnx.view(layer, deterministic=False, axis_name="batch")
  assert (view.deterministic, view.axis_name) == (False, "batch")
  assert (layer.deterministic, layer.axis_name) == (True, None)
  assert view.linen().axis_name == "batch"
  layer.train()
  assert not layer.deterministic

  def written_memory(model):  # a loss of the memory the call wrote: no gradient flows through it
    model(*xs)
    return jnp.sum(model.memory["memory"][...] ** 2)

  grads = nnx.grad(written_memory)(layer)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(nnx.to_pure_dict(grads)))
  assert largest_change(pure(layer, mnnx.Memory)["memory"], variables["memory"]) > 1e-4


class Classifier(nnx.Module):
  """MBAF + a linear head: what a user drops the layer into."""

  def __init__(self, rngs):
    self.fusion = mnnx.MBAF((6, 10), slots=4, write_max=6.0, rngs=rngs)
    self.head = nnx.Linear(self.fusion.out_features, 3, rngs=rngs)

  def __call__(self, x1, x2):
    return self.head(self.fusion(x1, x2).fused)


def test_write_then_carry_under_nnx_jit_and_optimizer():
  """A user's train step: ``nnx.Optimizer(wrt=nnx.Param)`` never holds the memory, each step
  writes the memory the Linen step computes from the one the previous step wrote, and the step
  compiles once. (DMF's aux loss and Gumbel stream in such a step: tests/test_readme_example.py.)"""
  model = Classifier(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x1, x2 = modes((6, 10))
  labels = jnp.arange(B) % 3
  traces = []

  @nnx.jit
  def step(model, optimizer):
    traces.append(1)

    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x1, x2), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  memories = [pure(model, mnnx.Memory)]
  for _ in range(3):
    module, variables = mnnx.to_linen(model.fusion)  # what this step starts from
    loss, grads = step(model, optimizer)
    assert np.isfinite(loss)
    memories.append(pure(model, mnnx.Memory))
  assert len(traces) == 1  # one compilation: the memory write keeps the graph's structure
  assert not jax.tree.leaves(nnx.state(grads, mnnx.Memory))  # no gradient into the memory
  assert not jax.tree.leaves(nnx.state(optimizer.opt_state, mnnx.Memory))
  for old, new in zip(memories, memories[1:]):  # every step wrote, the next one carried it
    assert largest_change(new, old) > 1e-4
  _, want = jax.jit(lambda v: module.apply(v, x1, x2, train=True, mutable=["memory"]))(variables)
  close(memories[-1]["fusion"]["memory"], want["memory"], "last step's memory ")


def test_random_draws_come_from_the_rngs_streams():
  """Initial variables from the 'params' and 'memory' streams (the parameters do not depend on
  the memory stream); a training call without a 'gumbel' stream is refused by name."""
  kw = dict(in_features=(8, 8), **TINY_DMF)  # the orbax test's layer: one init compilation
  a = mnnx.DualMemoryFusion(**kw, rngs=nnx.Rngs(params=0, memory=1, gumbel=2))
  b = mnnx.DualMemoryFusion(**kw, rngs=nnx.Rngs(params=0, memory=1, gumbel=2))
  c = mnnx.DualMemoryFusion(**kw, rngs=nnx.Rngs(params=0, memory=5, gumbel=2))
  close(pure(a), pure(b), "same seeds ")
  close(pure(a, nnx.Param), pure(c, nnx.Param), "params do not depend on the memory stream ")
  assert largest_change(pure(a, mnnx.Memory), pure(c, mnnx.Memory)) > 1e-2
  assert set(pure(a, mnnx.Constant)["constants"]["cbp"]) == {
      "hashes_x", "signs_x", "hashes_y", "signs_y"}
  x_a, x_t = modes((8, 8))
  with pytest.raises(ValueError, match="gumbel"):
    mnnx.from_linen(*mnnx.to_linen(a), (8, 8))(x_a, x_t)  # training needs a 'gumbel' stream


def test_split_merge_and_orbax_round_trip_the_memory(tmp_path):
  """``nnx.split`` / ``nnx.merge`` and an orbax save / restore of ``nnx.state`` keep the memory
  (and the parameters, batch statistics, count sketch and RNG streams) of a DMF layer."""
  build = lambda seed: mnnx.DualMemoryFusion((8, 8), **TINY_DMF, rngs=nnx.Rngs(seed))
  layer = build(0)
  written = layer.memory["M_a"][...] + 1.0  # as a training call would, a new memory
  layer.memory["M_a"].set_value(written)
  graphdef, state = nnx.split(layer)
  close(pure(nnx.merge(graphdef, state), mnnx.Memory), pure(layer, mnnx.Memory), "merged ")

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(1)))
  restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", abstract))
  close(pure(restored), pure(layer), "restored state ")
  np.testing.assert_array_equal(restored.memory["M_a"][...], written)
  np.testing.assert_array_equal(jax.random.key_data(restored.rngs.gumbel.key[...]),
                                jax.random.key_data(layer.rngs.gumbel.key[...]))


def test_constructor_checks_name_the_argument():
  with pytest.raises(ValueError, match="exactly 2 modes"):
    mnnx.DualMemoryFusion((8, 8, 8), **TINY_DMF, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'params'"):
    mnnx.MBAF((6, 10), slots=4)
  with pytest.raises(TypeError, match="slotz"):
    mnnx.MBAF((6, 10), slotz=4, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="Linen fusion layer"):
    mnnx.from_linen(nnx.Linear, {}, (1,))
  assert mnnx.NaiveFusion((6, 10)).out_features == 16
  assert mnnx.fusion_block("NF-III", (6, 10), rngs=nnx.Rngs(0)).out_features == 16


def test_call_arguments_reach_the_linen_layer():
  """A keyword of the Linen call the NNX signature does not name (``modality_mask``) is passed
  on; NaiveFusion's learned absent-mode embeddings are NNX parameters."""
  xs = modes((3, 4))
  present = jnp.asarray(np.arange(2 * B).reshape(B, 2) % 3 > 0)
  layer = mnnx.NaiveFusion((3, 4), absent="learned")
  assert set(pure(layer, nnx.Param)["params"]) == {"absent_0", "absent_1"}
  module, variables = mnnx.to_linen(layer)
  want = module.apply(variables, *xs, modality_mask=present).fused
  np.testing.assert_array_equal(layer(*xs, modality_mask=present).fused, want)
