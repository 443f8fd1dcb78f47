"""Data parallelism: pmap and jit-mesh train steps equal the single-device run.

The step under test is a small DMF classifier (two Dense projections → DualMemoryFusion →
Dense head) written to the ``train.parallel`` step contract: the *reference* is the same
maths run on one device over the whole batch, unsharded, with no collectives. Parameters,
memory (write-then-carry, DMF §2.2), batch statistics and the loss must agree after a few
SGD steps.
"""
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import linen as nn

from configs import iemocap
from mbaf_jax.data import synthetic
from mbaf_jax.errors import UserError
from mbaf_jax.fusion import DualMemoryFusion
from train import workdir as workdir_lib
from train import loop
from train import checkpoints
from train import multihost
from train import parallel
from train import steps
from train import validate

import plans  # tests/plans.py

NUM_CLASSES = 4
D_IN = 6
GLOBAL_BATCH = 16
STEPS = 3


class TinyDmfClassifier(nn.Module):
  """Projections → DMF fusion → class log-probabilities (DMF §2.3, shrunk)."""
  axis_name: str | None = None  # pmap batch axis handed to the fusion layer

  @nn.compact
  def __call__(self, xa, xt, mask, train: bool = False):
    a = nn.Dense(8, name="audio_proj")(xa)
    t = nn.Dense(8, name="text_proj")(xt)
    out = DualMemoryFusion(slots=4, cbp_dim=32, num_heads=2, attention_tokens=4,
                           writer_ff_dim=16, axis_name=self.axis_name,
                           name="fusion")(a, t, mask=mask, train=train)
    return nn.log_softmax(nn.Dense(NUM_CLASSES, name="head")(out.fused)), out.aux


TX = optax.sgd(0.1, momentum=0.9)


def make_batch(seed=0, batch=GLOBAL_BATCH, n_pad=3):
  """Synthetic features; the last ``n_pad`` rows are padding (mask 0, garbage values)."""
  rng = np.random.default_rng(seed)
  mask = np.ones((batch,), np.float32)
  if n_pad:
    mask[-n_pad:] = 0
  return {"xa": rng.normal(size=(batch, D_IN)).astype(np.float32),
          "xt": rng.normal(size=(batch, D_IN)).astype(np.float32),
          "label": rng.integers(0, NUM_CLASSES, size=(batch,)).astype(np.int32),
          "mask": mask}


def init_state(seed=0):
  """Host (NumPy) train state: params, optimiser state, batch stats, constants, memory, step."""
  b = make_batch(seed)
  variables = TinyDmfClassifier().init(
      {"params": jax.random.key(seed), "memory": jax.random.key(seed + 1)},
      b["xa"], b["xt"], b["mask"], train=False)
  params = variables["params"]
  state = {"params": params, "opt_state": TX.init(params),
           "batch_stats": variables["batch_stats"], "constants": variables["constants"],
           "memory": variables["memory"], "step": jnp.zeros((), jnp.int32)}
  return jax.tree.map(np.asarray, state)


def build_step(axis_name):
  """The step contract of ``train.parallel``: global loss = Σ_devices per-device loss."""
  model = TinyDmfClassifier(axis_name=axis_name)

  def step(state, batch, key):
    key = jax.random.fold_in(key, state["step"])

    def loss_fn(params):
      variables = {"params": params, "memory": state["memory"],
                   "batch_stats": state["batch_stats"], "constants": state["constants"]}
      (logp, aux), new_vars = model.apply(
          variables, batch["xa"], batch["xt"], batch["mask"], train=True,
          rngs={"gumbel": key}, mutable=["memory", "batch_stats"])
      ce = -jnp.take_along_axis(logp, batch["label"][:, None], axis=1)[:, 0]
      loss = (steps.global_masked_mean(ce, batch["mask"], axis_name)
              + steps.device_share(aux["memory_similarity"], axis_name))
      return loss, new_vars

    (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grads = steps.sum_over_devices(grads, axis_name)
    loss = steps.sum_over_devices(loss, axis_name)
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state, "batch_stats": new_vars["batch_stats"],
                 "constants": state["constants"],
                 "memory": jax.lax.stop_gradient(new_vars["memory"]),  # write-then-carry
                 "step": state["step"] + 1}
    return new_state, {"loss": loss}

  return step


def run_reference(steps=STEPS, seed=0):
  """One device, whole batch, no collectives."""
  step = jax.jit(build_step(None))
  dev = jax.devices()[0]
  state = jax.device_put(init_state(seed), dev)
  key = jax.random.key(seed + 7)
  losses = []
  for i in range(steps):
    state, m = step(state, jax.device_put(make_batch(100 + i), dev), key)
    losses.append(float(m["loss"]))
  return jax.tree.map(np.asarray, state), np.array(losses)


def run_parallel(parallelism, devices, steps=STEPS, seed=0):
  ps = parallel.make_parallel_train_step(build_step, parallelism, devices=devices)
  state = ps.put_state(init_state(seed))
  key = jax.random.key(seed + 7)
  losses = []
  for i in range(steps):
    state, m = ps(state, ps.put_batch(make_batch(100 + i)), key)
    losses.append(float(ps.to_host(m)["loss"]))
  return ps, state, np.array(losses)


@pytest.fixture(scope="module")
def reference():
  return run_reference()


def assert_trees_close(got, want, atol):
  jax.tree_util.tree_map_with_path(
      lambda p, g, w: np.testing.assert_allclose(g, w, rtol=atol, atol=atol,
                                                 err_msg=jax.tree_util.keystr(p)), got, want)


@pytest.mark.parametrize("parallelism,n_dev", [
    ("jit", 8), ("pmap", 8),
    pytest.param("pmap", 2, marks=pytest.mark.slow),
    pytest.param("jit", 4, marks=pytest.mark.slow)])
def test_parallel_step_equals_one_device(reference, parallelism, n_dev):
  assert jax.device_count() >= 8, "tests/conftest.py should provide 8 fake CPU devices"
  want_state, want_loss = reference
  ps, dev_state, got_loss = run_parallel(parallelism, jax.devices()[:n_dev])
  got_state = ps.to_host(dev_state)
  assert len(ps.devices) == n_dev
  assert ps.traces == 1  # 3 steps, one compilation
  if parallelism == "pmap":  # memory identical on every device, bit for bit
    for name in ("M_a", "M_t"):
      per_dev = np.asarray(dev_state["memory"]["fusion"][name])
      assert per_dev.shape[0] == n_dev
      for i in range(1, n_dev):
        np.testing.assert_array_equal(per_dev[i], per_dev[0])
  else:  # replicated on every mesh device
    mem = dev_state["memory"]["fusion"]["M_a"]
    assert mem.sharding.is_fully_replicated and len(mem.sharding.device_set) == n_dev
  # The run must actually change things, else equality is vacuous.
  init = init_state()
  moved = want_state["memory"]["fusion"]["M_a"] - init["memory"]["fusion"]["M_a"]
  assert np.abs(moved).max() > 1e-3
  assert np.abs(want_loss[0] - want_loss[-1]) > 1e-4
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-5)
  assert_trees_close(got_state["params"], want_state["params"], 1e-5)
  assert_trees_close(got_state["memory"], want_state["memory"], 1e-5)
  assert_trees_close(got_state["batch_stats"], want_state["batch_stats"], 1e-5)
  assert int(got_state["step"]) == STEPS


def test_global_masked_mean_shares_sum_to_global_mean():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(8, 3)).astype(np.float32)
  m = np.array([1, 1, 0, 1, 0, 0, 1, 1], np.float32)
  want = (v.sum(-1) * m).sum() / m.sum()
  shares = jax.pmap(lambda a, b: steps.global_masked_mean(a, b, "i"), axis_name="i",
                    devices=jax.devices()[:4])(v.reshape(4, 2, 3), m.reshape(4, 2))
  np.testing.assert_allclose(np.sum(shares), want, rtol=1e-6)
  np.testing.assert_allclose(steps.global_masked_mean(v, m), want, rtol=1e-6)
  assert float(steps.global_masked_mean(v, np.zeros(8))) == 0.0


def test_host_local_to_global_single_process_layout():
  mesh = parallel.global_mesh(devices=jax.devices()[:4])
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  g = parallel.host_local_to_global({"x": x}, mesh)["x"]
  assert g.shape == (8, 3)
  assert g.sharding.spec == jax.sharding.PartitionSpec("batch")
  for shard in g.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
  np.testing.assert_array_equal(np.asarray(g), x)


def test_replicate_on_mesh_and_fetch_round_trip_keeps_keys():
  mesh = parallel.global_mesh(devices=jax.devices()[:2])
  tree = {"w": np.arange(6.0).reshape(2, 3), "key": jax.random.key(3)}
  rep = parallel.replicate_on_mesh(tree, mesh)
  assert rep["w"].sharding.is_fully_replicated and len(rep["w"].sharding.device_set) == 2
  back = parallel.to_host(rep)
  np.testing.assert_array_equal(back["w"], tree["w"])
  np.testing.assert_array_equal(jax.random.key_data(back["key"]), jax.random.key_data(tree["key"]))


def test_bad_parallelism_and_indivisible_batch_are_explained():
  with pytest.raises(UserError, match=r"config.train.parallelism='pmapp' is not one of.*'jit'"):
    parallel.make_parallel_train_step(build_step, "pmapp")
  with pytest.raises(UserError, match=r"\['x'\] has 6 rows.*4 devices.*divisible by 4"):
    parallel.shard_for_pmap({"x": np.zeros((6, 2))}, 4)
  mesh = parallel.global_mesh(devices=jax.devices()[:4])
  with pytest.raises(UserError, match=r"has 6 rows.*4 local devices"):
    parallel.host_local_to_global({"x": np.zeros((6, 2))}, mesh)
  with pytest.raises(ValueError, match=r"scalar"):
    parallel.host_local_to_global({"x": np.float32(1.0)}, mesh)


def test_initialize_multihost_validates_settings(monkeypatch):
  for name in ("MBAF_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS", "MBAF_NUM_PROCESSES",
               "JAX_NUM_PROCESSES", "MBAF_PROCESS_ID", "JAX_PROCESS_ID", "MBAF_DISTRIBUTED_AUTO"):
    monkeypatch.delenv(name, raising=False)
  setup = multihost.initialize_multihost()  # nothing set: single process, nothing initialised
  assert not setup.initialized and setup.process_count == 1
  assert setup.global_devices == jax.device_count()
  with pytest.raises(ValueError, match=r"coordinator_address='localhost' is not 'host:port'"):
    multihost.initialize_multihost(coordinator_address="localhost", num_processes=2, process_id=0)
  with pytest.raises(ValueError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
    multihost.initialize_multihost(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2)
  with pytest.raises(ValueError, match=r"coordinator_address is not"):
    multihost.initialize_multihost(num_processes=2, process_id=0)
  monkeypatch.setenv("MBAF_NUM_PROCESSES", "two")
  monkeypatch.setenv("MBAF_PROCESS_ID", "0")
  monkeypatch.setenv("MBAF_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(ValueError, match=r"num_processes='two'.*integers"):
    multihost.initialize_multihost()


# --------------------------------------------------------------------------- the real trainer
TRAINER_ATOL = 1e-5  # float32 tolerance of the end-to-end trainer comparisons


def smoke_config(data_dir, parallelism="jit", num_devices=0, folds=1, dropout=False, layers=None):
  """configs/iemocap.py:smoke, DMF only, 3 steps a fold, batch 8, SGD, encoder dropout off unless
  ``dropout``; ``layers``: the encoders' number of transformer layers (None: the smoke config's 2).

  SGD, not the smoke config's Adam: Adam divides by the root of the second moment, so a
  parameter with a near-zero gradient moves by about ``lr`` whatever the gradient's rounding,
  and the ~1e-7 reduction-order differences between layouts become ~1e-3 in the params. SGD
  keeps them at float32 rounding.

  pmap needs dropout off: it draws the encoders' dropout masks per local batch (equal in
  distribution to the global draw, not bit-equal; docs/SCALING.md); everything else (Gumbel
  noise, the writer's global batch, synced batch norm, the padded last batch) is exact. jit over
  a mesh (one or several processes) draws the global masks, so it matches with dropout on.
  """
  c = iemocap.get_config("smoke")
  c.data.data_dir = str(data_dir)
  c.fusions = "dmf"
  c.data.max_folds = folds
  c.train.max_steps = 3
  c.train.batch_size = 8
  c.train.eval_batch_size = 16
  c.train.parallelism = parallelism
  c.train.num_devices = num_devices
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.01  # DMF §3
  c.optim.memory_learning_rate = 0.001  # DMF §3
  if layers is not None:
    c.model.audio.overrides["num_hidden_layers"] = layers
    c.model.text.overrides["num_hidden_layers"] = layers
  if dropout:
    return c
  for key, value in dict(hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                         apply_spec_augment=False).items():
    c.model.audio.overrides[key] = value
  for key, value in dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         layerdrop=0.0).items():
    c.model.text.overrides[key] = value
  return c


def final_fold_state(workdir, fold="loso_s1"):
  """The last 'latest' checkpoint of a fold (host NumPy tree) and its step."""
  ck = checkpoints.FoldCheckpointer(workdir_lib.fold_dir(str(workdir), "dmf", fold), keep=2)
  try:
    step = ck.latest_step()
    tree = ck.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
  finally:
    ck.close()
  return step, tree


@pytest.fixture(scope="module")
def iemocap_data(tmp_path_factory):
  return synthetic.write_iemocap(str(tmp_path_factory.mktemp("data") / "iemocap"), size="tiny",
                                 seed=0)


def max_differences(got, want):
  """``{path: (max |got - want|, max |want|)}`` over two trees of arrays."""
  out = {}
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    out[jax.tree_util.keystr(path)] = (float(np.abs(g - w).max(initial=0.0)),
                                       float(np.abs(w).max(initial=0.0)))
  return out


def assert_same_run(got, want, atol=TRAINER_ATOL):
  """Same final state (params, memory, batch stats, optimiser state, step) and test metrics."""
  (s_got, t_got), (s_want, t_want) = got["state"], want["state"]
  assert s_got == s_want
  diffs = max_differences(t_got, t_want)
  worst = max(diffs.items(), key=lambda kv: kv[1][0])
  print(f"largest difference {worst[1][0]:.3g} at {worst[0]} (scale {worst[1][1]:.3g})")
  assert_trees_close(t_got, t_want, atol)
  for fold, m in want["metrics"]["folds"].items():
    g = got["metrics"]["folds"][fold]
    for name in ("wa", "ua", "f1", "confusion", "best_step", "steps"):
      assert g[name] == m[name], (fold, name, g[name], m[name])


@pytest.mark.slow
def test_trainer_jit_and_pmap_on_8_devices_equal_1_device(tmp_path, iemocap_data):
  """train.trainer end to end: jit over 8 devices, pmap over 8 devices and 1 device give the same
  final state and test metrics; each layout compiles its train and eval steps once over all
  batches (padded last batch included) and, for pmap, both folds (tests/test_demo.py covers
  jit over folds). Measured: largest difference 7e-7 (memory, scale 2). With lr 0.05 instead
  of DMF's 0.01 the differences after 3 steps reach 3e-5 (batch-norm running mean): reduction
  order rounding amplified by training, not a layout error. Encoders of one transformer layer
  (the smoke config's have two, the same layer twice): three layouts compile the model, each
  compilation a third cheaper."""
  runs = {}
  for name, par, n, folds in (("one", "jit", 1, 1), ("jit8", "jit", 8, 1), ("pmap8", "pmap", 8, 2)):
    workdir = tmp_path / name
    out = loop.train_and_evaluate(smoke_config(iemocap_data, par, n, folds, layers=1),
                                     str(workdir))
    assert out["devices"] == n and out["parallelism"] == par
    dmf = out["fusions"]["dmf"]
    assert dmf["train_traces"] == 1 and dmf["eval_traces"] == 1, (name, dmf["train_traces"],
                                                                 dmf["eval_traces"])
    runs[name] = {"metrics": dmf, "state": final_fold_state(workdir),
                  "state2": final_fold_state(workdir, "loso_s2") if folds == 2 else None}
  one = runs["one"]
  one["metrics"] = {"folds": {"loso_s1": one["metrics"]["folds"]["loso_s1"]}}
  init = smoke_init_params(iemocap_data)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(one["state"][1]["params"]), jax.tree.leaves(init)))
  assert moved > 1e-4  # training changed the parameters, so equality is not vacuous
  for name in ("jit8", "pmap8"):
    diffs = max_differences(runs[name]["state"][1], one["state"][1])
    print(name, {k: f"{d:.2g}/{m:.2g}" for k, (d, m) in diffs.items() if d > 1e-6})
  for name in ("jit8", "pmap8"):
    try:
      assert_same_run({"state": runs[name]["state"], "metrics": {"folds": {
          "loso_s1": runs[name]["metrics"]["folds"]["loso_s1"]}}}, one)
    except AssertionError as e:
      raise AssertionError(f"{name} differs from the one-device run: {e}") from None
  assert runs["pmap8"]["state2"][0] == 3  # the second fold ran, with the same compiled step


def smoke_init_params(data_dir):
  """Fold 0's initial parameters (as the trainer builds them), to show training moved them."""
  c = smoke_config(data_dir, "jit", 1, 1, layers=1)
  with tempfile.TemporaryDirectory() as d:
    ds = plans.load_dataset(c, d)
    compiled = loop.CompiledModel(plans.plan(c, num_devices=1), "dmf", ds)
    return compiled.init_host_state(0).params


def test_layout_errors_name_the_setting():
  c = iemocap.get_config("smoke")
  c.train.parallelism = "pmapp"
  with pytest.raises(UserError, match=r"config.train.parallelism='pmapp' is not one of"):
    validate.layout(c.train)
  c.train.parallelism = "pmap"
  c.train.batch_size = 12
  with pytest.raises(UserError, match=r"config.train.batch_size=12 does not split evenly over "
                                      r"the 8 devices.*multiple of 8"):
    validate.layout(c.train)
  c.train.num_devices = 4
  assert validate.layout(c.train) == ("pmap", tuple(jax.local_devices()[:4]))
  c.train.eval_batch_size = 30
  with pytest.raises(UserError, match=r"config.train.eval_batch_size=30 .* 4 devices"):
    validate.layout(c.train)
  c.train.batch_size, c.train.eval_batch_size = 16, 32
  c.train.parallelism = "jit"
  c.train.num_devices = 0
  assert validate.layout(c.train) == ("jit", tuple(jax.devices()))
  for n in (9, -1):
    c.train.num_devices = n
    with pytest.raises(UserError, match=rf"num_devices={n} but 8 devices"):
      validate.layout(c.train)
  with pytest.raises(UserError, match=r"num_devices=9 but 8 devices"):
    parallel.select_devices("pmap", 9)  # the one device-count check of every layout
