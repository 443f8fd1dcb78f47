"""Which encoder parameters DMF freezes during fine-tuning (DMF §2.1).

"The encoder networks were trained (fine-tuned) end-to-end with the memory module and the
classification heads, keeping only the 'feature_extractor' (Wav2Vec2) and 'embedding' (BERT)
layers frozen." ``frozen_mask`` labels those leaves for ``optax.multi_transform`` /
``optax.masked``, matching by path component names so it works wherever the encoders are nested.
"""
import jax

# BERT embedding sub-modules (``Bert/embeddings/<one of these>``).
_BERT_EMBEDDING_CHILDREN = ("word_embeddings", "position_embeddings", "token_type_embeddings",
                            "LayerNorm")


def _name(entry):
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def is_frozen_path(names) -> bool:
  """True for a parameter path inside a Wav2Vec2 conv feature encoder or a BERT embeddings block.

  Args:
    names: sequence of path component names, e.g. ``("audio", "feature_extractor",
      "conv_layers_0", "conv", "kernel")``.

  Returns:
    Whether DMF §2.1 freezes the parameter: a component ``feature_extractor`` followed by a
    ``conv_layers_<i>`` component (Wav2Vec2), or ``embeddings`` followed by a BERT embedding child.
  """
  names = list(names)
  for a, b in zip(names, names[1:]):
    if a == "feature_extractor" and b.startswith("conv_layers_"):
      return True
    if a == "embeddings" and b in _BERT_EMBEDDING_CHILDREN:
      return True
  return False


def frozen_mask(params):
  """Bool pytree (same structure as ``params``): True where DMF §2.1 freezes (DMF §2.1).

  Works on bare encoder params, on ``{"params": ...}`` variable dicts and on a bigger model's
  params with the encoders nested at any depth.

  Example::

    tx = optax.multi_transform({"train": optax.sgd(1e-2), "frozen": optax.set_to_zero()},
                               jax.tree.map(lambda f: "frozen" if f else "train",
                                            frozen_mask(params)))

  Args:
    params: a pytree of arrays (dicts / FrozenDicts).

  Returns:
    A pytree of Python bools with the structure of ``params``.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: is_frozen_path([_name(p) for p in path]), params)
