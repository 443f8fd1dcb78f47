"""The Flax fusion layers against an independent PyTorch reference (benchmarks/torch_reference.py).

Same parameters, memory, count sketch and Gumbel noise on both sides; forward output, new memory,
batch statistics and every gradient (w.r.t. the parameters and the inputs, on a loss that
includes DMF's similarity term) agree within 1e-5 in float32. Skipped without PyTorch
(``pip install -e '.[bench]'``).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tr = pytest.importorskip("benchmarks.torch_reference")

from mbaf_jax.fusion.dual_memory import DualMemoryFusion  # noqa: E402
from mbaf_jax.fusion.mbaf import MBAF  # noqa: E402
from mbaf_jax.fusion.naive import NaiveFusion  # noqa: E402

TOL = 1e-5
MASK = np.array([1, 1, 0, 1, 1], np.float32)  # row 2 is padding (and holds garbage)


# modality_mask rows: all present, mode 0 absent, (padded row), mode 1 absent, none present
# (a padding row); a third mode, when there is one, is absent in rows 0 and 3.
MODALITY = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)


def _inputs(widths, seed=0, modality=None):
  rng = np.random.default_rng(seed)
  xs = [rng.normal(size=(len(MASK), w)).astype(np.float32) for w in widths]
  for i, x in enumerate(xs):
    x[MASK == 0] = 1e3  # garbage in the padded row must not reach anything
    if modality is not None:
      x[~modality[:, i]] = -2e3  # nor in an absent mode
  return xs


def _modality(n_modes):
  return MODALITY[:, :n_modes] if n_modes > 1 else MODALITY[:, :1] | True


def _close(actual, expected, what):
  """Equal within TOL relative to each array's scale: float32 sums in another order (the two
  frameworks', and a CPU's vector width) differ by a few ulps of the largest term, so an element
  far smaller than the array's largest (a gradient entry of 0.2 beside one of 30, MBAF's
  "feature" reading) is held to the array's scale, not its own."""
  expected = np.asarray(expected)
  scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=TOL, atol=TOL * scale,
                             err_msg=what)


def _close_tree(actual: dict, expected, what):
  flat = jax.tree_util.tree_flatten_with_path(expected)[0]
  assert flat, what
  for path, value in flat:
    node = actual
    for p in path:
      node = node[p.key]
    _close(node, value, f"{what} {jax.tree_util.keystr(path)}")


def _fields(cls):
  return {f.name for f in dataclasses.fields(cls)}


def _jax_run(layer, variables, xs, train, rngs, weights, modality=None):
  """Flax forward + gradients of ``Σ mask · tanh(fused) · r + aux (+ Σ new memory · r_m)``."""
  params = variables.get("params", {})
  state = {k: v for k, v in variables.items() if k != "params"}
  mask = jnp.asarray(MASK)
  r, r_mem = weights

  def loss(params, *xs):
    kw = {} if modality is None else {"modality_mask": jnp.asarray(modality)}
    out, new = layer.apply({"params": params, **state}, *xs, mask=mask, train=train, rngs=rngs,
                           mutable=["memory", "batch_stats"], **kw)
    value = jnp.sum(mask[:, None] * jnp.tanh(out.fused) * r) + sum(out.aux.values())
    if r_mem is not None:  # MBAF's new memory is differentiable (DMF's is stop-gradient)
      value = value + jnp.sum(new["memory"]["memory"] * r_mem)
    return value, (out, new)

  argnums = tuple(range(len(xs) + 1))
  (value, (out, new)), grads = jax.value_and_grad(loss, argnums, has_aux=True)(
      params, *map(jnp.asarray, xs))
  return value, out, new, grads


def _torch_run(ref, xs, train, noise, weights, modality=None):
  r, r_mem = weights
  ts = [torch.tensor(x, requires_grad=True) for x in xs]
  m = torch.tensor(MASK)
  kw = {"noise": noise} if noise is not None else {}
  if modality is not None:
    kw["modality_mask"] = torch.tensor(modality)
  out = ref(*ts, mask=m, train=train, **kw)
  value = (m[:, None] * torch.tanh(out.fused) * torch.tensor(np.asarray(r))).sum()
  value = value + sum(out.aux.values())
  if r_mem is not None:
    value = value + (out.memory["memory"] * torch.tensor(np.asarray(r_mem))).sum()
  value.backward()
  return value, out, [t.grad.numpy() for t in ts]


def _compare(layer, variables, xs, train, rngs=None, noise=None, mem_weight=False,
             modality=None):
  out_dim = layer.output_dim(*(x.shape[1] for x in xs))
  rng = np.random.default_rng(1)
  r = rng.normal(size=(len(MASK), out_dim)).astype(np.float32)
  r_mem = None
  if mem_weight:
    r_mem = rng.normal(size=variables["memory"]["memory"].shape).astype(np.float32)
  value, out, new, grads = _jax_run(layer, variables, xs, train, rngs, (r, r_mem), modality)
  ref = tr.from_flax(variables, layer)
  t_value, t_out, t_grads = _torch_run(ref, xs, train, noise, (r, r_mem), modality)
  _close(t_out.fused.detach(), out.fused, "fused")
  assert set(t_out.aux) == set(out.aux)
  for k in out.aux:
    _close(t_out.aux[k].detach(), out.aux[k], f"aux {k}")
  _close(t_value.detach(), value, "loss")
  if "memory" in variables:
    _close_tree({k: v.detach().numpy() for k, v in t_out.memory.items()},
                new.get("memory", variables["memory"]), "memory")
  if "batch_stats" in new:
    _close_tree({n: {k: v.numpy() for k, v in s.items()} for n, s in t_out.batch_stats.items()},
                new["batch_stats"], "batch_stats")
  if jax.tree.leaves(grads[0]):
    _close_tree(tr.flax_grads(ref), grads[0], "grad params")
  for i, (g, t) in enumerate(zip(grads[1:], t_grads)):
    _close(t, g, f"grad input {i}")
    if modality is not None:  # an absent input gets no gradient
      assert float(jnp.abs(g[~modality[:, i]]).max()) == 0.0, f"grad of absent mode {i}"
  return out, grads


# ------------------------------------------------------------------------------ DMF

DMF_SMALL = dict(slots=6, cbp_dim=32, attention_tokens=4, num_heads=2, writer_ff_dim=24)
DMF_CASES = [
    ("train", {}),
    ("train", {"similarity_grad": "all"}),
    ("train", {"similarity_grad": "writer"}),
    ("train", {"reader_logits": "log_softplus", "similarity_reduction": "mean",
               "composer_attention": "none", "tau_max": 1.5}),
    ("train", {"reader_logits": "log_clamp", "read_mode": "uniform", "similarity_weight": 0.5}),
    ("eval", {}),
    ("eval", {"writer_in_eval": True, "gumbel_noise_in_eval": True}),
    ("eval", {"writer_in_eval": True, "dropout_rate": 0.3}),  # no dropout in evaluation
]


@pytest.mark.parametrize("mode,opts", DMF_CASES)
def test_dmf_matches_torch(mode, opts):
  missing = set(opts) - _fields(DualMemoryFusion)
  if missing:
    pytest.skip(f"DualMemoryFusion has no field {sorted(missing)}")
  layer = DualMemoryFusion(**DMF_SMALL, **opts)
  xs = _inputs((16, 16))
  variables = layer.init({"params": jax.random.key(0)}, *xs)
  train = mode == "train"
  # Non-trivial running statistics, so that evaluation does not read the initial (0, 1).
  rng = np.random.default_rng(3)
  variables = {**variables, "batch_stats": jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32),
      variables["batch_stats"])}
  key = jax.random.key(7)
  noisy = train or layer.gumbel_noise_in_eval
  rngs = {"gumbel": key} if noisy else None
  noise = tr.dmf_gumbel_noise(layer, key, len(MASK)) if noisy else None
  out, grads = _compare(layer, variables, xs, train, rngs, noise)
  if train:
    assert float(out.aux["memory_similarity"]) != 0.0
    # The gradients are not vacuous: the writers and the readers' temperatures are reached.
    assert float(jnp.abs(grads[0]["writer_a"]["projection"]).max()) > 0
    if getattr(layer, "read_mode", "gumbel") == "gumbel":
      assert float(jnp.abs(grads[0]["reader_a"]["temperature"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads[1][MASK == 0]).max()) == 0.0  # the padded row gets no gradient


def test_dmf_similarity_grad_reaches_inputs_only_with_all():
  """With ``similarity_grad="writer"`` Eq. 4's gradient stops at the writer's inputs."""
  if "similarity_grad" not in _fields(DualMemoryFusion):
    pytest.skip("DualMemoryFusion has no field similarity_grad")
  arrays = _inputs((16, 16))
  xs = [torch.tensor(x, requires_grad=True) for x in arrays]
  grads = {}
  for option in ("writer", "all"):
    layer = DualMemoryFusion(**DMF_SMALL, similarity_grad=option)
    variables = layer.init({"params": jax.random.key(0)}, *arrays)
    ref = tr.from_flax(variables, layer)
    noise = tr.dmf_gumbel_noise(layer, jax.random.key(7), len(MASK))
    out = ref(*xs, mask=torch.tensor(MASK), train=True, noise=noise)
    grad = torch.autograd.grad(out.aux["memory_similarity"], xs[0], allow_unused=True)[0]
    grads[option] = torch.zeros_like(xs[0]) if grad is None else grad
  assert float(grads["writer"].abs().max()) == 0.0
  assert float(grads["all"].abs().max()) > 0.0


# ------------------------------------------------------------------------------ MBAF

MBAF_CASES = [
    ("scan", "feature", None),
    ("scan", "keys", 6.0),
    ("scan", "none", None),
    ("scan", "feature", 6.0),
    ("batched", "feature", 6.0),
    ("batched", "keys", None),
    ("batched", "none", 6.0),
]


@pytest.mark.parametrize("write,attention,write_max", MBAF_CASES)
def test_mbaf_matches_torch(write, attention, write_max):
  layer = MBAF(slots=4, write=write, attention=attention, attention_keys=3, write_max=write_max)
  xs = _inputs((6, 5))
  variables = layer.init({"params": jax.random.key(0), "memory": jax.random.key(1)}, *xs)
  if write_max is not None:  # make the cap bind somewhere
    variables = {**variables, "params": {**variables["params"], "write_kernel":
                                         variables["params"]["write_kernel"] * 8.0}}
  _compare(layer, variables, xs, train=True, mem_weight=True)


def test_mbaf_options_match_torch():
  """Three modes, memory on two of them (Eq. 13), cross read (Eqs. 11–12), H ≠ l, an MLP."""
  layer = MBAF(slots=3, hidden=7, mlp_dims=(9,), compose_dim=5, write_bias=True, read="cross",
               memory_modes=(2, 0), attention="keys", attention_keys=2)
  xs = _inputs((4, 3, 6))
  variables = layer.init({"params": jax.random.key(2)}, *xs)
  for train in (True, False):
    _compare(layer, variables, xs, train=train, mem_weight=train)


def test_mbaf_identity_read_matches_torch():
  layer = MBAF(slots=3, read_projection=False, write="batched")
  xs = _inputs((4, 4))
  variables = layer.init({"params": jax.random.key(3)}, *xs)
  _compare(layer, variables, xs, train=True, mem_weight=True)


# ------------------------------------------------------------------------------ Naive


def test_naive_matches_torch():
  layer = NaiveFusion()
  xs = _inputs((3, 5, 2))
  _compare(layer, layer.init(jax.random.key(0), *xs), xs, train=False)


# ------------------------------------------------------------------------------ options


def test_unmirrored_option_raises():
  layer = DualMemoryFusion(**DMF_SMALL, axis_name="batch")
  with pytest.raises(NotImplementedError, match="axis_name"):
    tr.options(layer, tr.DMF_OPTIONS)
  with pytest.raises(NotImplementedError, match="dtype"):
    tr.options(MBAF(dtype=jnp.bfloat16), tr.MBAF_OPTIONS)
  with pytest.raises(NotImplementedError, match="write"):
    tr.options(MBAF(write="parallel"), tr.MBAF_OPTIONS)


def test_unknown_field_raises():
  """A field added to a Flax layer fails until the reference mirrors it."""

  class Wider(MBAF):
    new_option: int = 0  # a field the reference does not know

  with pytest.raises(NotImplementedError, match="new_option"):
    tr.options(Wider(), tr.MBAF_OPTIONS)


def test_every_field_is_listed():
  """The reference knows every field of the current layers (no silent new option)."""
  for cls, table in ((DualMemoryFusion, tr.DMF_OPTIONS), (MBAF, tr.MBAF_OPTIONS),
                     (NaiveFusion, tr.NAIVE_OPTIONS)):
    assert _fields(cls) - {"parent", "name"} <= set(table), cls.__name__


def test_dmf_dropout_in_training_raises():
  layer = DualMemoryFusion(**DMF_SMALL, dropout_rate=0.1)
  xs = _inputs((16, 16))
  variables = layer.init({"params": jax.random.key(0)}, *xs)
  ref = tr.from_flax(variables, layer)
  noise = tr.dmf_gumbel_noise(layer, jax.random.key(1), len(MASK))
  with pytest.raises(NotImplementedError, match="dropout_rate"):
    ref(*map(torch.tensor, xs), train=True, noise=noise)


# ------------------------------------------------------------------------------ modality_mask


@pytest.mark.parametrize("mode,opts", [("train", {}), ("train", {"similarity_grad": "all"}),
                                       ("train", {"read_mode": "uniform"}),
                                       ("eval", {"writer_in_eval": True})])
def test_dmf_modality_mask_matches_torch(mode, opts):
  """An absent embedding is the present mode's read; a memory is written from its mode's rows."""
  layer = DualMemoryFusion(**DMF_SMALL, **opts)
  modality = _modality(2)
  xs = _inputs((16, 16), modality=modality)
  variables = layer.init({"params": jax.random.key(0)}, *xs)
  train = mode == "train"
  key = jax.random.key(7)
  noise = tr.dmf_gumbel_noise(layer, key, len(MASK)) if train else None
  out, _ = _compare(layer, variables, xs, train, {"gumbel": key} if train else None, noise,
                    modality=modality)
  assert "memory_similarity" in out.aux


@pytest.mark.parametrize("write,opts", [("scan", {}),
                                        ("batched", {"hidden": 7, "read": "cross"})])
def test_mbaf_modality_mask_matches_torch(write, opts):
  layer = MBAF(slots=4, write=write, attention_keys=3, **opts)
  modality = _modality(2)
  xs = _inputs((6, 5), modality=modality)
  variables = layer.init({"params": jax.random.key(0), "memory": jax.random.key(1)}, *xs)
  for train in (True, False):
    _compare(layer, variables, xs, train=train, mem_weight=train, modality=modality)


@pytest.mark.slow
def test_mbaf_modality_mask_options_match_torch():
  """Three modes, memory on modes 2 and 0 (mode 1 passes through), cross read, H ≠ l."""
  layer = MBAF(slots=3, hidden=7, mlp_dims=(9,), compose_dim=5, write_bias=True, read="cross",
               memory_modes=(2, 0), attention="keys", attention_keys=2)
  modality = _modality(3)
  xs = _inputs((4, 3, 6), modality=modality)
  variables = layer.init({"params": jax.random.key(2)}, *xs)
  _compare(layer, variables, xs, train=True, mem_weight=True, modality=modality)
  identity = MBAF(slots=3, read_projection=False, write="batched")
  variables = identity.init({"params": jax.random.key(3)}, *xs)
  _compare(identity, variables, xs, train=True, mem_weight=True, modality=modality)


@pytest.mark.parametrize("absent", ["zeros", "learned"])
def test_naive_modality_mask_matches_torch(absent):
  layer = NaiveFusion(absent=absent)
  modality = _modality(3)
  xs = _inputs((3, 5, 2), modality=modality)
  variables = layer.init(jax.random.key(0), *xs)
  if absent == "learned":  # non-zero embeddings, so that the test tells them from zeros
    variables = {"params": {k: v + 1.5 for k, v in variables["params"].items()}}
  _, grads = _compare(layer, variables, xs, train=True, modality=modality)
  if absent == "learned":  # each embedding's gradient sums the upstream of its absent real rows
    assert float(jnp.abs(grads[0]["absent_0"]).max()) > 0
