"""``modality_mask`` (B, M), True = mode present, in the fusion layers (docs/PAPER_NOTES.md,
"Absent modes: beyond both papers").

* ``None`` is the computation without the argument, and an all-present mask gives the same bits
  (outputs, new memory, batch statistics, aux losses and every gradient);
* absent values reach nothing: not the output, the memory write, DMF Eq. 4, the batch
  statistics, nor any gradient w.r.t. the parameters or the present inputs;
* a row with no mode present is padding (``mask=False``);
* the writers skip what they must: DMF writes ``M_a`` only from rows with audio (and ``M_t``
  from rows with text), MBAF writes nothing from a row with a memory mode absent;
* NaiveFusion against its explicit formula; ``axis_name`` under pmap equals one device.

Values against the PyTorch oracle are in tests/test_torch_reference.py.
"""
import importlib
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.fusion.dual_memory import DualMemoryFusion
from mbaf_jax.fusion.mbaf import MBAF
from mbaf_jax.fusion.mbaf_blocks import fusion_block
from mbaf_jax.fusion.naive import NaiveFusion

B, D = 8, 8
MASK = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)  # row 3 is padding
# rows: both, audio absent, text absent, (padding), both, none (a padding row), both, audio absent
PRESENT = np.array([[1, 1], [0, 1], [1, 0], [1, 1], [1, 1], [0, 0], [1, 1], [0, 1]], bool)
DMF_CFG = dict(slots=6, cbp_dim=32, attention_tokens=4, num_heads=2, writer_ff_dim=16)
LAYERS = {
    "naive_learned": lambda: NaiveFusion(absent="learned"),
    "dmf": lambda: DualMemoryFusion(**DMF_CFG, similarity_grad="all"),
    "mbaf_scan": lambda: MBAF(slots=4, attention_keys=3),
    "mbaf_batched_cross": lambda: MBAF(slots=4, write="batched", read="cross", hidden=6),
    "mbaf_iii": lambda: fusion_block("MBAF-III", slots=4, attention_keys=3),
}


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(B, D)).astype(np.float32) for _ in range(2)]


def _variables(layer, xs):
  v = layer.init({"params": jax.random.key(0), "memory": jax.random.key(1)}, *xs)
  if "params" in v and isinstance(layer, NaiveFusion):  # non-zero learned embeddings
    v = {"params": jax.tree.map(lambda a: a + 0.7, v["params"])}
  return v


_COMPILED = {}


def _run(layer, variables, xs, mask, modality, train=True):
  """Jitted outputs, new collections and gradients of a loss on the output, aux and memory.

  One compilation per (layer, with or without ``modality_mask``, mode), shared by the tests.
  """
  key = (repr(layer), type(layer).__module__, modality is None, train)
  if key not in _COMPILED:
    r = jnp.asarray(np.random.default_rng(5).normal(
        size=(B, layer.output_dim(D, D))).astype(np.float32))

    def loss(params, state, mask, modality, *xs):
      kw = {} if modality is None else {"modality_mask": modality}
      out, new = layer.apply({"params": params, **state}, *xs, mask=mask, train=train,
                             rngs={"gumbel": jax.random.key(3)},
                             mutable=["memory", "batch_stats"], **kw)
      value = jnp.sum(jnp.tanh(out.fused) * r) + sum(out.aux.values())
      value = value + sum(jnp.sum(jnp.sin(m)) for m in jax.tree.leaves(new.get("memory", {})))
      return value, (out, new)

    _COMPILED[key] = jax.jit(jax.value_and_grad(loss, argnums=(0, 4, 5), has_aux=True))
  params = variables.get("params", {})
  state = {k: v for k, v in variables.items() if k != "params"}
  (value, (out, new)), grads = _COMPILED[key](
      params, state, jnp.asarray(mask), None if modality is None else jnp.asarray(modality),
      *map(jnp.asarray, xs))
  return {"value": value, "fused": out.fused, "aux": out.aux, "new": new,
          "grad_params": grads[0], "grad_inputs": grads[1:]}


def _equal(a, b, what, atol=0.0):
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert len(la) == len(lb), what
  for (path, x), y in zip(la, lb):
    if atol == 0.0:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                    err_msg=f"{what} {jax.tree_util.keystr(path)}")
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=atol, atol=atol,
                                 err_msg=f"{what} {jax.tree_util.keystr(path)}")


# The fusion modules as they were before modality_mask (commit a8c4aab).
BEFORE = "a8c4aab"
OLD_MODULES = ("naive", "dual_memory", "mbaf", "mbaf_blocks")


@pytest.fixture(scope="module")
def before(tmp_path_factory):
  """The pre-``modality_mask`` layer modules, read from git history (skipped without it)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  folder = tmp_path_factory.mktemp("before")
  for name in OLD_MODULES:
    try:
      text = subprocess.run(["git", "show", f"{BEFORE}:mbaf_jax/fusion/{name}.py"], cwd=root,
                            capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
      pytest.skip(f"git history with commit {BEFORE} is not available")
    for other in OLD_MODULES:
      text = text.replace(f"from mbaf_jax.fusion.{other} import", f"from before_{other} import")
    (folder / f"before_{name}.py").write_text(text)
  sys.path.insert(0, str(folder))
  try:
    return {n: importlib.import_module(f"before_{n}") for n in OLD_MODULES}
  finally:
    sys.path.remove(str(folder))


def _before_layer(name, old):
  return {"naive_learned": lambda: old["naive"].NaiveFusion(),
          "dmf": lambda: old["dual_memory"].DualMemoryFusion(**DMF_CFG, similarity_grad="all"),
          "mbaf_scan": lambda: old["mbaf"].MBAF(slots=4, attention_keys=3),
          "mbaf_batched_cross": lambda: old["mbaf"].MBAF(slots=4, write="batched",
                                                         read="cross", hidden=6),
          "mbaf_iii": lambda: old["mbaf_blocks"].fusion_block("MBAF-III", slots=4,
                                                              attention_keys=3)}[name]()


@pytest.mark.parametrize("train", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_none_is_the_computation_before_modality_mask(name, train, before):
  """``modality_mask=None`` gives the bits of the layer before the argument existed."""
  layer = LAYERS[name]()
  xs = _inputs()
  v = _variables(layer, xs)
  if name == "naive_learned":  # the embeddings exist but a call without the mask never reads them
    layer, v = NaiveFusion(), {}
  want = _run(_before_layer(name, before), v, xs, MASK, None, train)
  got = _run(layer, v, xs, MASK, None, train)
  _equal(got, want, f"{name} train={train}")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_all_present_equals_none(name):
  layer = LAYERS[name]()
  xs = _inputs()
  v = _variables(layer, xs)
  want = _run(layer, v, xs, MASK, None)
  got = _run(layer, v, xs, MASK, jnp.ones((B, 2), bool))
  _equal(got, want, name, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_absent_values_reach_nothing(name):
  layer = LAYERS[name]()
  xs = _inputs()
  v = _variables(layer, xs)
  present = jnp.asarray(PRESENT)
  clean = [np.where(PRESENT[:, i:i + 1], x, 0.0).astype(np.float32) for i, x in enumerate(xs)]
  rng = np.random.default_rng(9)
  junk = [np.where(PRESENT[:, i:i + 1], x, 1e4 * rng.normal(size=x.shape)).astype(np.float32)
          for i, x in enumerate(xs)]
  want = _run(layer, v, clean, MASK, present)
  got = _run(layer, v, junk, MASK, present)
  _equal({k: got[k] for k in ("value", "fused", "aux", "new", "grad_params")},
         {k: want[k] for k in ("value", "fused", "aux", "new", "grad_params")}, name, atol=1e-6)
  for i, (g, w) in enumerate(zip(got["grad_inputs"], want["grad_inputs"])):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"grad input {i}")
    assert float(jnp.abs(g[~PRESENT[:, i]]).max()) == 0.0  # absent inputs get no gradient
  assert np.isfinite(np.asarray(got["fused"])).all()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_row_with_no_mode_is_padding(name):
  layer = LAYERS[name]()
  xs = _inputs()
  v = _variables(layer, xs)
  none_row = np.ones((B, 2), bool)
  none_row[5] = False
  padded = MASK.copy()
  padded[5] = False
  got = _run(layer, v, xs, MASK, jnp.asarray(none_row))
  want = _run(layer, v, xs, padded, None)
  _equal({k: got[k] for k in ("value", "fused", "aux", "new", "grad_params")},
         {k: want[k] for k in ("value", "fused", "aux", "new", "grad_params")}, name, atol=1e-6)


def test_naive_fills_absent_modes_with_zeros_or_the_learned_embedding():
  xs = _inputs()
  for absent in ("zeros", "learned"):
    layer = NaiveFusion(absent=absent)
    v = _variables(layer, xs)
    out = layer.apply(v, *xs, mask=MASK, modality_mask=PRESENT)
    fill = [np.full(D, 0.7 if absent == "learned" else 0.0, np.float32) for _ in xs]
    want = np.concatenate([np.where(PRESENT[:, i:i + 1], x, fill[i]) for i, x in enumerate(xs)],
                          -1) * (MASK & PRESENT.any(1))[:, None]
    np.testing.assert_array_equal(out.fused, want)
  assert not jax.tree.leaves(NaiveFusion().init(jax.random.key(0), *xs))  # zeros: no variables


def test_dmf_writes_a_memory_only_from_the_rows_with_its_mode():
  """A row without audio never reaches ``M_a`` (its substituted read is not written back), and
  still writes its text into ``M_t``."""
  layer = LAYERS["dmf"]()
  xs = _inputs()
  v = _variables(layer, xs)
  present = np.ones((B, 2), bool)
  present[1, 0] = False  # row 1: text only
  got = _run(layer, v, xs, MASK, jnp.asarray(present))["new"]["memory"]
  padded = MASK.copy()
  padded[1] = False
  without_row = _run(layer, v, xs, padded, None)["new"]["memory"]
  _equal(got["M_a"], without_row["M_a"], "M_a", atol=1e-6)
  assert np.abs(np.asarray(got["M_t"]) - np.asarray(without_row["M_t"])).max() > 1e-4


@pytest.mark.parametrize("name", ["mbaf_scan", "mbaf_batched_cross"])
def test_mbaf_rows_with_a_memory_mode_absent_do_not_write(name):
  layer = LAYERS[name]()
  xs = _inputs()
  v = _variables(layer, xs)
  partial = PRESENT.any(1) & ~PRESENT.all(1)
  got = _run(layer, v, xs, MASK, jnp.asarray(PRESENT))
  want = _run(layer, v, xs, MASK & ~partial & PRESENT.any(1), None)
  _equal(got["new"], want["new"], "memory", atol=1e-6)
  # ... yet those rows are fused: their absent slice is the read, not zero
  assert np.abs(np.asarray(got["fused"])[1, :D]).min() > 0


def test_bad_modality_mask_names_the_argument():
  xs = _inputs()
  for layer in (NaiveFusion(), MBAF(slots=3), DualMemoryFusion(**DMF_CFG)):
    v = _variables(layer, xs)
    with pytest.raises(ValueError, match=r"modality_mask must have shape \(B, M\)"):
      layer.apply(v, *xs, modality_mask=np.ones((B, 3), bool))
  with pytest.raises(ValueError, match="absent"):
    NaiveFusion(absent="mean").apply({}, *xs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dmf", "mbaf"])
def test_pmap_axis_name_gathers_the_modality_mask(kind):
  """Under pmap the writer gathers the modality mask with the batch: equal to one device."""
  n = 4
  if jax.device_count() < n:
    pytest.skip("needs 4 devices")
  make = {"dmf": lambda **kw: DualMemoryFusion(**DMF_CFG, **kw),
          "mbaf": lambda **kw: MBAF(slots=4, attention_keys=3, **kw)}[kind]
  xs = _inputs()
  one = make()
  v = _variables(one, xs)
  call = lambda layer, v, m, p, *x: layer.apply(
      v, *x, mask=m, modality_mask=p, train=True, rngs={"gumbel": jax.random.key(3)},
      mutable=["memory", "batch_stats"])
  o1, n1 = jax.jit(lambda *a: call(one, *a))(v, MASK, PRESENT, *xs)
  par = make(axis_name="batch")
  split = lambda a: np.asarray(a).reshape((n, B // n) + np.shape(a)[1:])
  f = jax.pmap(lambda *a: call(par, *a), axis_name="batch", in_axes=(None, 0, 0, 0, 0),
               devices=jax.devices()[:n])
  o8, n8 = f(v, split(MASK), split(PRESENT), *map(split, xs))
  np.testing.assert_allclose(np.asarray(o8.fused).reshape(B, -1), o1.fused, rtol=1e-5,
                             atol=1e-5)
  for dev in range(n):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[dev], b, rtol=1e-5, atol=1e-5),
                 n8, n1)
