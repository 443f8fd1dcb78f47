"""frozen_mask (DMF §2.1): a train step with optax.multi_transform leaves exactly the Wav2Vec2
conv feature encoder and the BERT embeddings unchanged, and changes everything else."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbaf_jax.encoders import Bert, BertConfig, Wav2Vec2, Wav2Vec2Config, frozen_mask
from mbaf_jax.encoders.freezing import is_frozen_path


def test_path_rules():
  assert is_frozen_path(("feature_extractor", "conv_layers_0", "conv", "kernel"))
  assert is_frozen_path(("model", "text", "embeddings", "LayerNorm", "scale"))
  assert not is_frozen_path(("feature_projection", "projection", "kernel"))
  assert not is_frozen_path(("encoder", "pos_conv_embed", "conv", "weight_v"))
  assert not is_frozen_path(("glove", "embeddings", "embedding"))  # not a BERT embeddings block
  assert not is_frozen_path(("head", "Dense_0", "kernel"))


def test_train_step_leaves_exactly_frozen_params_unchanged():
  w2v = Wav2Vec2(Wav2Vec2Config.tiny(num_hidden_layers=1, layerdrop=0.0))
  bert = Bert(BertConfig.tiny(num_hidden_layers=1))
  audio = jax.random.normal(jax.random.key(0), (2, 200))
  ids = jnp.array([[2, 5, 6, 3], [2, 7, 3, 0]], jnp.int32)
  mask = (ids > 0).astype(jnp.int32)
  params = {  # encoders nested inside a bigger model, as the training pipeline does
      "model": {"audio": jax.jit(w2v.init)(jax.random.key(1), audio)["params"],
                "text": jax.jit(bert.init)(jax.random.key(2), ids)["params"]},
      "head": {"kernel": jax.random.normal(jax.random.key(5), (64, 4))},
  }
  labels = frozen_mask(params)
  flat = flax.traverse_util.flatten_dict(labels, sep="/")
  frozen = sorted(k for k, v in flat.items() if v)
  assert frozen and all("/feature_extractor/conv_layers_" in k or "/embeddings/" in k
                        for k in frozen)
  assert len([k for k in frozen if "audio" in k]) == 5  # 3 conv kernels + group-norm scale, bias
  assert len([k for k in frozen if "text" in k]) == 5  # word/pos/type tables + LayerNorm scale, bias

  def loss_fn(p):
    a = w2v.apply({"params": p["model"]["audio"]}, audio, train=True,
                  rngs={"dropout": jax.random.key(3)})
    t = bert.apply({"params": p["model"]["text"]}, ids, mask, train=True,
                   rngs={"dropout": jax.random.key(4)})
    logits = jnp.concatenate([a.pooled, t.pooled], -1) @ p["head"]["kernel"]
    return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  tx = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()},
                             jax.tree.map(lambda f: "frozen" if f else "train", labels))

  @jax.jit
  def step(p, opt_state):
    grads = jax.grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), grads

  new, grads = step(params, tx.init(params))
  before = flax.traverse_util.flatten_dict(params, sep="/")
  after = flax.traverse_util.flatten_dict(new, sep="/")
  g = flax.traverse_util.flatten_dict(grads, sep="/")
  for k in before:
    if k.endswith(("k_proj/bias", "key/bias")):
      # softmax is shift-invariant per query, so key biases get (numerically) zero gradient
      assert float(jnp.abs(g[k]).max()) < 1e-5, k
    elif flat[k]:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
      assert float(jnp.abs(g[k]).max()) > 0, f"{k}: frozen only by the optimizer, grads flow"
    else:
      assert float(jnp.abs(after[k] - before[k]).max()) > 0, f"{k} was not updated"
