"""config.model.dtype: "bfloat16" computes the encoders, fusion and head in bf16 while the
parameters, optimiser state, memory and log-probabilities stay float32; "float32" (the default)
is exactly the model built before the field existed; anything else is refused."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cebs, iemocap, iemocap_mbaf
from mbaf_jax.models import factory
from train import optimizers
from train import steps

B = 4
VOCAB = 30
# model name → (config module, fusion kind): each model with its memory fusion.
CASES = {"dmf": (iemocap, "dmf"), "mbaf_iemocap": (iemocap_mbaf, "mbaf"), "cebs": (cebs, "mbaf")}


def _config(name, dtype=None):
  c = CASES[name][0].get_config("smoke")
  if dtype is None:  # a config stored before the field existed
    with c.unlocked():
      del c.model["dtype"]
  else:
    c.model.dtype = dtype
  return c


def _build(name, dtype=None):
  c = _config(name, dtype)
  model, _ = factory.build_model(c.model, CASES[name][1], vocab_size=VOCAB,
                                 max_tokens=c.data.max_tokens)
  return model


@functools.lru_cache(maxsize=None)
def _batch(name):
  """A random batch of the smoke config's shapes, with labels and a padded last row."""
  rng = np.random.default_rng(0)
  batch = {}
  c = _config(name, "float32")
  for k, v in factory.dummy_batch(c.data, c.model, B).items():
    if k == "modes":
      batch[k] = tuple(rng.normal(size=x.shape).astype(np.float32) for x in v)
    elif k in ("input_ids", "token_ids"):
      batch[k] = rng.integers(1, VOCAB, size=v.shape).astype(np.int32)
    elif v.dtype == np.float32:
      batch[k] = rng.normal(size=v.shape).astype(np.float32)
    else:
      batch[k] = v
  batch["label"] = rng.integers(0, 3, size=(B,)).astype(np.int32)
  batch["mask"] = np.array([1] * (B - 1) + [0], bool)
  return batch


def _inputs(batch):
  return {k: v for k, v in batch.items() if k not in ("mask", "label")}


@functools.lru_cache(maxsize=None)
def _variables(name, dtype):
  return steps.init_variables(_build(name, dtype), _batch(name), jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _float32_log_probs(name):
  model, batch = _build(name, "float32"), _batch(name)
  return np.asarray(jax.jit(model.apply)(_variables(name, "float32"), _inputs(batch),
                                         mask=batch["mask"]).log_probs)


def _dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bad_dtype_names_the_field():
  c = _config("dmf", "float16")
  with pytest.raises(ValueError, match=r"config\.model\.dtype='float16'.*'float32', 'bfloat16'"):
    factory.build_model(c.model, "dmf")


@pytest.mark.parametrize("name", list(CASES))
def test_float32_is_the_model_without_the_field(name):
  assert _config(name, "float32").model.dtype == "float32"  # the shipped default
  # Same module tree (no extra casts): every field, down to the encoders' and fusion's dtypes.
  assert _build(name, "float32") == _build(name)
  if name == "dmf":  # and bit-identical outputs (one model is enough: the trees are equal)
    model, batch = _build(name), _batch(name)
    out = jax.jit(model.apply)(_variables(name, "float32"), _inputs(batch), mask=batch["mask"])
    np.testing.assert_array_equal(out.log_probs, _float32_log_probs(name))


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_computes_in_bf16_and_keeps_float32_state(name):
  model, batch = _build(name, "bfloat16"), _batch(name)
  v = _variables(name, "bfloat16")
  assert _dtypes(v) == {"float32"}  # params, memory, batch_stats
  # Initialisation does not depend on the compute dtype: same parameters as the f32 model.
  jax.tree.map(np.testing.assert_array_equal, v["params"], _variables(name, "float32")["params"])

  apply = jax.jit(functools.partial(model.apply, capture_intermediates=True,
                                    mutable=["intermediates"]))
  out, state = apply(v, _inputs(batch), mask=batch["mask"])
  inter = state["intermediates"]
  assert out.log_probs.dtype == jnp.float32
  encoder = "audio" if name != "cebs" else "encoder_0"
  enc_out = inter[encoder]["__call__"][0]
  assert _dtypes(enc_out) == {"bfloat16"}  # DMF: last_hidden_state and pooled
  assert inter["fusion"]["__call__"][0].fused.dtype == jnp.bfloat16
  assert inter["head"]["logits"]["__call__"][0].dtype == jnp.bfloat16

  # Same parameters, float32 model: equal up to bf16 rounding, but not bit-identical.
  lp16, lp32 = np.asarray(out.log_probs), _float32_log_probs(name)
  real = batch["mask"]
  np.testing.assert_allclose(np.exp(lp16).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(lp16[real], lp32[real], atol=0.05)
  assert not np.array_equal(lp16[real], lp32[real])


@pytest.mark.parametrize("name", [pytest.param("dmf", marks=pytest.mark.slow),
                                  pytest.param("mbaf_iemocap", marks=pytest.mark.slow), "cebs"])
def test_bfloat16_train_step(name):
  c = _config(name, "bfloat16")
  model, batch = _build(name, "bfloat16"), _batch(name)
  v = _variables(name, "bfloat16")
  tx = optimizers.make_optimizer(c.optim, v["params"], v.get("memory"))
  state = steps.create_state(v, tx)
  key = jax.random.key(3)
  new, metrics = jax.jit(steps.make_train_step(model.apply, tx))(state, batch, key)

  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  assert int(new.first_nonfinite) == -1
  for part in ("params", "opt_state", "memory", "batch_stats"):
    assert _dtypes(getattr(new, part)) <= {"float32"}, part
  assert _dtypes(new.params) == _dtypes(new.memory) == {"float32"}
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params,
                                       new.params))
  assert any(moved)
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), state.memory,
                                          new.memory)))  # the memory was written

  # The step's cross-entropy is the masked mean of -log p(label) of the bf16 model's own
  # float32 log-probabilities (same per-step keys; XLA may fuse the bf16 forward differently
  # under grad, hence a bf16-sized tolerance).
  forward = jax.jit(functools.partial(model.apply, train=True,
                                      mutable=["memory", "batch_stats"]))
  out, _ = forward(state.variables(), _inputs(batch), mask=batch["mask"],
                   rngs=steps.step_keys(key, 0))
  lp = np.asarray(out.log_probs, np.float64)
  real = np.flatnonzero(batch["mask"])
  ce = -np.mean(lp[real, batch["label"][real]])
  np.testing.assert_allclose(float(metrics["ce"]), ce, rtol=1e-2)
