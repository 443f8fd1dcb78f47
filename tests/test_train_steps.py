"""train.steps and train.optimizers: write-then-carry, loss composition, optimiser groups and the
optimiser from its optax name, determinism, compile-once, 8-device == 1-device (the steps wrapped
by train.parallel), non-finite detection, evaluation never writes memory."""
import importlib
import json

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

import flax
import flax.linen as nn

from mbaf_jax.errors import UserError
from mbaf_jax.fusion import DualMemoryFusion, NaiveFusion
from mbaf_jax.fusion.dual_memory import memory_diagnostics
from mbaf_jax.models.heads import ClassifierHead, ModelOutput
from train import config_help
from train import parallel
from train import optimizers
from train import steps

B = 8


class _FeatureExtractor(nn.Module):
  """Named like Wav2Vec2's conv feature encoder so encoders.frozen_mask freezes it."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(12, name="conv_layers_0")(x)


class ToyDMF(nn.Module):
  """A small stand-in for DMFModel (tiny Dense "encoders", the real DualMemoryFusion and
  ClassifierHead), cheap to compile; tests/test_models.py covers the real encoders."""

  @nn.compact
  def __call__(self, batch, mask=None, train=False):
    a = nn.Dense(16, name="audio_proj")(nn.tanh(_FeatureExtractor(name="feature_extractor")(
        batch["audio"])))
    t = nn.Dense(16, name="text_proj")(batch["text"])
    out = DualMemoryFusion(slots=4, cbp_dim=32, num_heads=2, writer_ff_dim=16,
                           attention_tokens=4, name="fusion")(a, t, mask=mask, train=train)
    log_probs = ClassifierHead((8,), 4, dropout=0.1, name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))


MODEL = ToyDMF()


def _optim(name="sgd", **kwargs):
  return mlc.ConfigDict(dict(name=name, kwargs=kwargs, learning_rate=0.01,
                             memory_learning_rate=0.001, freeze_encoders=True, grad_clip_norm=0.0))


def _batch(seed, real=B):
  rng = np.random.default_rng(seed)
  mask = np.zeros((B,), bool)
  mask[:real] = True
  labels = rng.integers(0, 4, size=(B,)).astype(np.int32)
  return {"audio": (rng.normal(size=(B, 6)) + labels[:, None]).astype(np.float32),
          "text": rng.normal(size=(B, 5)).astype(np.float32),
          "label": labels, "mask": mask}


TX = optimizers.make_optimizer(
    _optim(), steps.abstract_variables(MODEL, _batch(0), jax.random.key(0))["params"])


def _init():
  return steps.create_state(steps.init_variables(MODEL, _batch(0), jax.random.key(0)), TX)


def _jit_step(num_devices, donate=True):
  """MODEL's train step over a jit mesh of the first ``num_devices`` devices
  (train.parallel)."""
  return parallel.make_parallel_train_step(lambda ax: steps.make_train_step(MODEL.apply, TX, ax),
                                       "jit", devices=jax.devices()[:num_devices], donate=donate)


@pytest.fixture(scope="module")
def one_device():
  return _jit_step(1, donate=False)


def _sim_loss_numpy(m):
  """DMF Eq. 4 similarity term, explicit double loop, divisor n(n-1) ("paper")."""
  m = np.asarray(m, np.float64)
  n = m.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(i + 1, n):
      total += m[i] @ m[j] / (np.linalg.norm(m[i]) * np.linalg.norm(m[j]))
  return total / (n * (n - 1))


def test_write_then_carry_and_loss(one_device):
  step = one_device
  state = _init()
  key = jax.random.key(7)
  batch = _batch(1, real=6)
  new_state, metrics = step(step.put_state(state), step.put_batch(batch), key)
  # Independent forward pass with the same per-step keys.
  inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
  out, new_vars = MODEL.apply(state.variables(), inputs, mask=batch["mask"], train=True,
                                 rngs=steps.step_keys(key, 0), mutable=["memory", "batch_stats"])
  for name in ("M_a", "M_t"):
    np.testing.assert_allclose(new_state.memory["fusion"][name],
                               new_vars["memory"]["fusion"][name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(new_state.memory["fusion"][name], state.memory["fusion"][name])
  lp = np.asarray(out.log_probs, np.float64)
  ce = -np.mean([lp[i, batch["label"][i]] for i in range(6)])  # only the 6 real rows
  sim = sum(_sim_loss_numpy(new_vars["memory"]["fusion"][n]) for n in ("M_a", "M_t"))
  np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["aux"], sim, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], ce + sim, rtol=1e-5)
  assert int(new_state.step) == 1 and int(metrics["count"]) == 6
  # The fusion layer's training dynamics come back as flat metrics (TensorBoard "train/memory/…").
  want = memory_diagnostics(state.memory["fusion"]["M_a"], new_vars["memory"]["fusion"]["M_a"])
  np.testing.assert_allclose(metrics["memory/fusion/slot_similarity_a"],
                             want["slot_similarity"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["memory/fusion/mean_shift_a"], want["mean_shift"],
                             rtol=1e-5)
  assert {"memory/fusion/read_entropy_t", "memory/fusion/writer_t/from_batch"} <= set(metrics)


def test_diagnostic_scalars_flattens_and_averages():
  sown = {"fusion": {"tau_a": (jnp.float32(2.0), jnp.float32(4.0)),
                     "writer_a": {"from_batch": (jnp.float32(0.5),)}}}
  got = steps.diagnostic_scalars(sown)
  assert set(got) == {"memory/fusion/tau_a", "memory/fusion/writer_a/from_batch"}
  assert float(got["memory/fusion/tau_a"]) == 3.0
  assert steps.diagnostic_scalars({}) == {}


def test_optimizer_groups_lr_and_frozen():
  state = _init()
  labels = optimizers.param_labels(state.params, _optim(), state.memory)
  assert labels == optimizers.param_labels(state.params, _optim())  # DMF: memory module = fusion
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
  assert all(v == "memory" for k, v in flat.items() if k.startswith("['fusion']"))
  assert all(v == "frozen" for k, v in flat.items() if "feature_extractor" in k)
  assert flat["['audio_proj']['kernel']"] == "network"
  assert all(v == "network" for k, v in flat.items() if k.startswith("['head']"))
  grads = jax.tree.map(jnp.ones_like, state.params)
  updates, _ = TX.update(grads, state.opt_state, state.params)
  expected = {"memory": -0.001, "network": -0.01, "frozen": 0.0}
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    np.testing.assert_allclose(u, expected[flat[jax.tree_util.keystr(path)]], rtol=1e-6)


def test_a_misspelt_optimiser_or_keyword_is_a_user_error_naming_close_matches():
  params = steps.abstract_variables(MODEL, _batch(0), jax.random.key(0))["params"]
  with pytest.raises(UserError, match=r"config.optim.name='adamm' is not an optax optimiser; "
                                      r"did you mean 'adam'"):
    optimizers.make_optimizer(_optim("adamm"), params)
  with pytest.raises(UserError, match=r"config.optim.name='sdg'.*did you mean 'sgd'"):
    optimizers.make_optimizer(_optim("sdg"), params)
  with pytest.raises(UserError, match=r"\['momentom'\], which optax.sgd does not take.*'momentum'"):
    optimizers.make_optimizer(_optim("sgd", momentom=0.9), params)
  with pytest.raises(UserError, match=r"kwargs sets learning_rate"):
    optimizers.make_optimizer(_optim("sgd", learning_rate=0.1), params)
  assert {"sgd", "adam", "adamw", "rmsprop", "lamb"} <= set(optimizers.optax_optimizers())
  assert not any(n.startswith("scale_by_") for n in optimizers.optax_optimizers())


def test_kwargs_reach_the_optax_optimiser_of_every_group():
  """``optim.kwargs`` is passed to ``optax.<name>`` in each group: SGD with momentum 0.9 equals
  ``optax.sgd(lr, momentum=0.9)`` per group, here over three steps of constant gradients."""
  state = _init()
  labels = optimizers.param_labels(state.params, _optim(), state.memory)
  tx = optimizers.make_optimizer(_optim("sgd", momentum=0.9), state.params, state.memory)
  want = optax.multi_transform({"network": optax.sgd(0.01, momentum=0.9),
                                "memory": optax.sgd(0.001, momentum=0.9),
                                "frozen": optax.set_to_zero()}, labels)
  got_state, want_state = tx.init(state.params), want.init(state.params)
  grads = jax.tree.map(jnp.ones_like, state.params)
  for _ in range(3):
    got, got_state = tx.update(grads, got_state, state.params)
    exp, want_state = want.update(grads, want_state, state.params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exp)):
    np.testing.assert_array_equal(a, b)
  moved = jax.tree.leaves(jax.tree.map(lambda u, l: float(np.abs(u).max()) if l == "network"
                                       else 0.0, got, labels))
  np.testing.assert_allclose(max(moved), 0.01 * (1 + 0.9 + 0.81), rtol=1e-6)  # momentum at work


def _old_make_optimizer(optim_config, params, memory=None):
  """``make_optimizer`` as it was before the optimiser was named by its optax name: "sgd" with
  ``momentum or None`` or "adam", hard-coded (the reference for the equality test)."""
  if optim_config.name == "sgd":
    mom = optim_config.kwargs.get("momentum", 0.0) or None

    def opt(lr):
      return optax.sgd(lr, momentum=mom)
  else:
    assert optim_config.name == "adam"

    def opt(lr):
      return optax.adam(lr)
  tx = optax.multi_transform({"network": opt(optim_config.learning_rate),
                              "memory": opt(optim_config.memory_learning_rate),
                              "frozen": optax.set_to_zero()},
                             optimizers.param_labels(params, optim_config, memory))
  if optim_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), tx)
  return tx


def _shipped_optim_sections() -> dict:
  """``{json of config.optim: "file.py:variant"}``: the distinct optimiser sections of every
  config file and each of its variants (configs/; a ``key=<int>`` variant with the value 1)."""
  found = {}
  for path in config_help.config_files():
    name = path.rsplit("/", 1)[-1][:-3]
    module = importlib.import_module(f"configs.{name}")
    for variant in [None] + config_help.config_variants(path):
      arg = variant and variant.replace("<int>", "1")
      if arg and "<" in arg:
        continue  # a typed value this test does not know how to fill
      optim = module.get_config(arg).optim
      found.setdefault(json.dumps(optim.to_dict(), sort_keys=True), f"{name}.py:{arg or ''}")
  return found


def test_every_shipped_config_builds_the_optimiser_it_built_before():
  """For every config in configs/ (and its demo/smoke/... variants) the optimiser built from the
  optax name equals the hard-coded one it replaced: same state tree and, bit for bit, the same
  updates over three steps of random gradients on a model with network, memory and frozen
  parameters."""
  found = _shipped_optim_sections()
  names = {json.loads(k)["name"] for k in found}
  assert names == {"sgd", "adam"}, names
  assert any("demo" in v for v in found.values()) and len(found) >= 3, found
  state = _init()
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), state.params)
           for _ in range(3)]
  for section, where in found.items():
    optim = mlc.ConfigDict(json.loads(section))
    assert set(optim.kwargs) <= {"momentum"}, where
    new = optimizers.make_optimizer(optim, state.params, state.memory)
    old = _old_make_optimizer(optim, state.params, state.memory)
    s_new, s_old = new.init(state.params), old.init(state.params)
    assert jax.tree.structure(s_new) == jax.tree.structure(s_old), where
    params_new = params_old = state.params
    for g in grads:
      u_new, s_new = new.update(g, s_new, params_new)
      u_old, s_old = old.update(g, s_old, params_old)
      params_new = optax.apply_updates(params_new, u_new)
      params_old = optax.apply_updates(params_old, u_old)
    for a, b in zip(jax.tree.leaves((params_new, s_new)), jax.tree.leaves((params_old, s_old))):
      np.testing.assert_array_equal(a, b, err_msg=where)
    assert max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(params_new), jax.tree.leaves(state.params))) > 1e-4, where


def test_memory_group_is_the_module_that_owns_memory():
  """MBAF IEMOCAP's fusion block: only its MBAF layer (the memory's owner) is the memory
  module, not the block's self-attention; naive fusion (no memory) has no memory group."""
  params = {"audio": {"kernel": 0}, "fusion": {"attention": {"kernel": 0, "bias": 0},
                                               "fusion": {"read_kernel": 0, "write_kernel": 0}},
            "head": {"kernel": 0}}
  memory = {"fusion": {"fusion": {"memory": 0}}}
  flat = lambda t: {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(t)}
  got = flat(optimizers.param_labels(params, _optim(), memory))
  assert got == {"['audio']['kernel']": "network", "['fusion']['attention']['kernel']": "network",
                 "['fusion']['attention']['bias']": "network",
                 "['fusion']['fusion']['read_kernel']": "memory",
                 "['fusion']['fusion']['write_kernel']": "memory",
                 "['head']['kernel']": "network"}
  assert set(flat(optimizers.param_labels(params, _optim(), {})).values()) == {"network"}
  # Without the memory tree, the top-level fusion subtree (backward compatible).
  labels = flat(optimizers.param_labels(params, _optim()))
  assert labels["['fusion']['attention']['bias']"] == "memory"


def test_adam_uses_memory_learning_rate_for_fusion_params():
  """Adam's first step moves every parameter by -lr * sign(g) (bias-corrected m/sqrt(v) = 1
  for a constant gradient): the fusion subtree by memory_learning_rate, the rest by
  learning_rate, frozen parts not at all."""
  state = _init()
  optim = _optim("adam")
  optim.learning_rate, optim.memory_learning_rate = 1e-2, 1e-3
  tx = optimizers.make_optimizer(optim, state.params)
  labels = optimizers.param_labels(state.params, optim)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
  grads = jax.tree.map(jnp.ones_like, state.params)
  updates, _ = tx.update(grads, tx.init(state.params), state.params)
  expected = {"memory": -1e-3, "network": -1e-2, "frozen": 0.0}
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    np.testing.assert_allclose(u, expected[flat[jax.tree_util.keystr(path)]], rtol=1e-4)


def test_same_seed_bit_identical_and_compiles_once(one_device):
  step = one_device

  def run():
    state = step.put_state(_init())
    for i, real in enumerate((B, B, 3)):  # the last batch is padded
      state, _ = step(state, step.put_batch(_batch(10 + i, real)), jax.random.key(3))
    return jax.device_get(state.params), jax.device_get(state.memory)

  a, b = run(), run()
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert step.traces == 1  # 6 calls (two runs, a padded last batch), one trace


@pytest.mark.slow
def test_eight_devices_equal_one_device(one_device):
  step1, step8 = one_device, _jit_step(8)
  assert step8.mesh.axis_names == (parallel.BATCH_AXIS,) and len(step8.devices) == 8
  s1, s8 = step1.put_state(_init()), step8.put_state(_init())
  for i, real in enumerate((B, 5)):
    batch = _batch(20 + i, real)
    s1, m1 = step1(s1, step1.put_batch(batch), jax.random.key(5))
    s8, m8 = step8(s8, step8.put_batch(batch), jax.random.key(5))
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves((s1.params, s1.memory, s1.batch_stats)),
                  jax.tree.leaves((s8.params, s8.memory, s8.batch_stats))):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  with pytest.raises(UserError, match="has 6 rows.*8 local devices"):
    step8.put_batch({"x": np.zeros((6, 2))})


def test_nonfinite_loss_is_recorded(one_device):
  step = one_device
  state = step.put_state(_init())
  good = _batch(30)
  bad = _batch(31)
  bad["audio"][0, 0] = np.nan
  state, _ = step(state, step.put_batch(good), jax.random.key(1))
  assert int(state.first_nonfinite) == -1
  state, m = step(state, step.put_batch(bad), jax.random.key(1))
  assert not np.isfinite(float(m["loss"]))
  assert int(state.first_nonfinite) == 1


def test_eval_never_writes_memory():
  state = _init()
  batch = _batch(40)
  inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
  _, new_vars = MODEL.apply(state.variables(), inputs, mask=batch["mask"], train=False,
                               mutable=["memory", "batch_stats"])
  for name in ("M_a", "M_t"):
    np.testing.assert_array_equal(new_vars["memory"]["fusion"][name],
                                  state.memory["fusion"][name])
  lp = steps.make_eval_step(MODEL.apply)(state, batch)
  np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)


class FieldModel(nn.Module):
  """Like the full models: the fusion layer is a module field named 'fusion'."""
  fusion: nn.Module  # DualMemoryFusion | NaiveFusion

  @nn.compact
  def __call__(self, batch, mask=None, train=False):
    a = nn.Dense(16, name="audio_proj")(batch["audio"])
    t = nn.Dense(16, name="text_proj")(batch["text"])
    out = self.fusion(a, t, mask=mask, train=train)
    log_probs = ClassifierHead((8,), 4, dropout=0.0, name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))


@pytest.mark.parametrize("fusion", ["dmf", "naive"])
def test_pmap_train_step_equals_one_device(fusion):
  """steps.make_train_step(axis_name) under jax.pmap on 4 devices (2 rows each, a padded batch
  leaving devices with no real row) == the single-device step on the global batch: loss terms,
  gradients, params, memory, batch stats; compiled once; the pmap eval step agrees too."""
  layer = (DualMemoryFusion(slots=4, cbp_dim=32, num_heads=2, writer_ff_dim=16,
                            attention_tokens=4) if fusion == "dmf" else NaiveFusion())
  model = FieldModel(fusion=layer)
  tx = optimizers.make_optimizer(
      _optim(), steps.abstract_variables(model, _batch(0), jax.random.key(0))["params"])
  init = parallel.to_host(steps.create_state(steps.init_variables(model, _batch(0), jax.random.key(0)),
                                       tx))
  ref = jax.jit(steps.make_train_step(model.apply, tx))
  ps = parallel.make_parallel_train_step(
      lambda ax: steps.make_train_step(steps.with_axis_name(model, ax).apply, tx, ax), "pmap",
      devices=jax.devices()[:4])
  want, got = init, ps.put_state(init)
  key = jax.random.key(4)
  for i, real in enumerate((B, 3, B)):
    batch = _batch(50 + i, real)
    want, m_want = ref(want, batch, key)
    got, m_got = ps(got, ps.put_batch(batch), key)
    m_got = ps.to_host(m_got)
    for name in ("loss", "ce", "aux", "correct", "count"):
      np.testing.assert_allclose(m_got[name], m_want[name], rtol=1e-5, atol=1e-6, err_msg=name)
  host = ps.to_host(got)
  again = ps.put_state(init)  # same seed, same batches: bit-identical, no new compilation
  for i, real in enumerate((B, 3, B)):
    again, _ = ps(again, ps.put_batch(_batch(50 + i, real)), key)
  for x, y in zip(jax.tree.leaves(ps.to_host(again)), jax.tree.leaves(host)):
    np.testing.assert_array_equal(x, y)
  assert ps.traces == 1
  moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in
           zip(jax.tree.leaves(want.params), jax.tree.leaves(init.params))]
  assert max(moved) > 1e-4
  for x, y in zip(jax.tree.leaves((host.params, host.memory, host.batch_stats, host.step)),
                  jax.tree.leaves((want.params, want.memory, want.batch_stats, want.step))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  if fusion == "dmf":  # every device carries the same memory (write-then-carry)
    per_dev = np.asarray(got.memory["fusion"]["M_a"])
    assert all(np.array_equal(per_dev[i], per_dev[0]) for i in range(4))
  ev = parallel.make_parallel_eval_step(
      lambda ax: steps.make_eval_step(steps.with_axis_name(model, ax).apply), "pmap",
      devices=jax.devices()[:4])
  batch = _batch(60, 5)
  np.testing.assert_allclose(ev.rows_to_host(ev(got, ev.put_batch(batch))),
                             steps.make_eval_step(model.apply)(want, batch), rtol=1e-5, atol=1e-6)


def test_with_axis_name_sets_the_fusion_axis_only():
  m = FieldModel(fusion=DualMemoryFusion(slots=4))
  assert steps.with_axis_name(m, None) is m
  assert steps.with_axis_name(m, "batch").fusion.axis_name == "batch"
  assert m.fusion.axis_name is None  # the original is untouched
  assert isinstance(steps.with_axis_name(FieldModel(fusion=NaiveFusion()), "batch").fusion,
                    NaiveFusion)
  with pytest.raises(ValueError, match="no module field 'fusion'.*parallelism='jit'"):
    steps.with_axis_name(MODEL, "batch")


class _FreshToy(ToyDMF):
  """ToyDMF under another name: a model no other test initialises (its own cache entry)."""


def test_init_variables_is_model_init_and_compiles_once_for_every_key():
  """The key is an argument of the compiled init (folds and seeds share one program), and the
  variables are exactly ``model.init`` with the four split streams."""
  model, batch = _FreshToy(), _batch(0)
  before = steps._init_static._cache_size()  # pylint: disable=protected-access
  got = [steps.init_variables(model, batch, jax.random.key(s)) for s in (0, 1, 2)]
  assert steps._init_static._cache_size() == before + 1  # pylint: disable=protected-access
  k_params, k_mem, k_drop, k_gum = jax.random.split(jax.random.key(1), 4)
  inputs = {k: v for k, v in batch.items() if k not in ("mask", "label")}
  want = model.init({"params": k_params, "memory": k_mem, "dropout": k_drop, "gumbel": k_gum},
                    inputs, mask=batch["mask"], train=False)
  assert jax.tree.structure(got[1]) == jax.tree.structure(flax.core.unfreeze(want))
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  kernels = [g["params"]["audio_proj"]["kernel"] for g in got]
  assert not np.allclose(kernels[0], kernels[2])
