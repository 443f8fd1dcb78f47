"""Offline loading of Hugging Face Wav2Vec2 / BERT checkpoints into the native Flax modules.

``from_pretrained(path)`` reads a LOCAL directory (``config.json`` + ``model.safetensors``, sharded
safetensors, or ``pytorch_model.bin`` when PyTorch happens to be importable), picks the model by
``model_type``, and converts weights with an explicit mapping:

* module path: the Hugging Face dotted path with the head prefix (``wav2vec2.`` / ``bert.``) removed
  and each list index joined to its list name (``encoder.layers.0.attention.q_proj`` →
  ``encoder/layers_0/attention/q_proj``);
* leaf rules (``LEAF_RULES``): Linear/Conv ``weight`` → ``kernel`` transposed (``(out, in)`` →
  ``(in, out)``, ``(out, in, k)`` → ``(k, in, out)``); norm ``weight``/``gamma`` → ``scale``,
  ``beta`` → ``bias``; Embedding ``weight`` → ``embedding``; weight-norm ``weight_g`` (1, 1, K) →
  (K,), ``weight_v`` (out, in/g, K) → (K, in/g, out), with ``parametrizations.weight.original0/1``
  read as ``weight_g/weight_v``.

Keys of task heads (``classifier``, ``projector``, ``lm_head``, ``cls.*``) are reported as unused;
parameters absent from the checkpoint keep their seeded random initialisation and are reported as
missing (``strict=True`` raises instead).
"""
import dataclasses
import json
import os
import re
from typing import Any, Callable, Dict, List, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mbaf_jax.encoders.bert import Bert, BertConfig
from mbaf_jax.encoders.wav2vec2 import Wav2Vec2, Wav2Vec2Config, receptive_field

# model_type -> (module class, config class, prefix used by checkpoints with heads)
MODEL_TYPES = {
    "wav2vec2": (Wav2Vec2, Wav2Vec2Config, "wav2vec2."),
    "bert": (Bert, BertConfig, "bert."),
}

# Checkpoint entries that are buffers or training-only parameters of the bare model: skipped on
# purpose (listed in LoadReport.ignored_keys, not as unused).
IGNORED_PATTERNS = (
    re.compile(r"(^|\.)position_ids$"),  # BERT buffer
    re.compile(r"(^|\.)token_type_ids$"),  # BERT buffer
)


def _transpose_kernel(a):
  return np.transpose(a, tuple(range(a.ndim))[::-1])  # (out, in) → (in, out); (o, i, k) → (k, i, o)


def _weight_g(a):
  return np.reshape(a, (-1,))  # (1, 1, K) → (K,)


def _identity(a):
  return a


# (Hugging Face leaf name, Flax leaf name) -> array transform. Tried in order for each HF leaf; the
# first Flax leaf that exists in the target module wins.
LEAF_RULES: Dict[Tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {
    ("weight", "kernel"): _transpose_kernel,
    ("weight", "scale"): _identity,
    ("weight", "embedding"): _identity,
    ("gamma", "scale"): _identity,
    ("beta", "bias"): _identity,
    ("bias", "bias"): _identity,
    ("weight_g", "weight_g"): _weight_g,
    ("weight_v", "weight_v"): _transpose_kernel,
    ("masked_spec_embed", "masked_spec_embed"): _identity,  # Wav2Vec2 SpecAugment vector
}

_RENAMES = (
    (".parametrizations.weight.original0", ".weight_g"),
    (".parametrizations.weight.original1", ".weight_v"),
)


@dataclasses.dataclass
class LoadReport:
  """What ``from_pretrained`` did with each checkpoint entry."""
  path: str  # checkpoint directory
  model_type: str  # "wav2vec2" or "bert"
  architectures: List[str]  # config.json "architectures"
  loaded_keys: List[str]  # checkpoint keys copied into params
  unused_keys: List[str]  # checkpoint keys with no parameter (e.g. classification heads)
  missing_keys: List[str]  # Flax parameter paths not in the checkpoint (kept at random init)
  ignored_keys: List[str]  # buffers / training-only entries skipped on purpose

  def format(self) -> str:
    """Readable multi-line summary."""
    lines = [f"Loaded {self.model_type} ({', '.join(self.architectures) or 'bare model'}) from "
             f"{self.path}: {len(self.loaded_keys)} tensors loaded."]

    def block(title, keys):
      if keys:
        lines.append(f"{title} ({len(keys)}):")
        lines.extend(f"  {k}" for k in keys)

    block("Unused checkpoint keys (no matching parameter, e.g. task heads)", self.unused_keys)
    block("Missing parameters (randomly initialised)", self.missing_keys)
    block("Ignored buffers/training-only entries", self.ignored_keys)
    return "\n".join(lines)

  def __str__(self):
    return self.format()


def read_config(path: str) -> dict:
  """Reads ``config.json`` of a local checkpoint directory, with errors that say what to do."""
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"from_pretrained: path={path!r} is not a directory. Expected a local Hugging Face model "
        "directory containing config.json and model.safetensors (no downloads are made).")
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(
        f"from_pretrained: {cfg_path!r} not found. Expected a Hugging Face model directory with "
        "config.json and model.safetensors (save one with model.save_pretrained(dir)).")
  try:
    with open(cfg_path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"from_pretrained: {cfg_path!r} is not valid JSON ({e}).") from e


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads all weights of a local checkpoint directory as NumPy arrays (no PyTorch needed).

  Order of preference: ``model.safetensors``, ``model.safetensors.index.json`` (shards),
  ``pytorch_model.bin`` (only when ``torch`` is importable).
  """
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  torch_bin = os.path.join(path, "pytorch_model.bin")
  try:
    if os.path.isfile(single):
      return dict(load_file(single))
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      out = {}
      for shard in shards:
        out.update(load_file(os.path.join(path, shard)))
      return out
  except (OSError, ValueError, KeyError, SafetensorError) as e:
    raise ValueError(f"from_pretrained: could not read the safetensors weights in {path!r} "
                     f"({type(e).__name__}: {e}). The file may be truncated; re-save it.") from e
  if os.path.isfile(torch_bin):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          f"from_pretrained: {torch_bin!r} is a PyTorch pickle and PyTorch is not installed. "
          "Convert it once to safetensors on a machine with PyTorch: python -c \"import torch; "
          "from safetensors.torch import save_file; sd = torch.load('pytorch_model.bin', "
          "weights_only=True); save_file({k: v.contiguous() for k, v in sd.items()}, "
          "'model.safetensors')\" (or use a checkpoint that ships model.safetensors).") from None
    state = torch.load(torch_bin, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  raise FileNotFoundError(
      f"from_pretrained: no weights in {path!r}: expected model.safetensors, "
      "model.safetensors.index.json or pytorch_model.bin.")


def hf_key_to_flax(key: str, prefix: str):
  """Maps a Hugging Face key to (Flax module path tuple, HF leaf name) or None if foreign.

  ``prefix`` (``"wav2vec2."``/``"bert."``) is stripped when present; keys of other top-level
  modules of a head checkpoint are foreign when the checkpoint uses the prefix.
  """
  for old, new in _RENAMES:
    if key.endswith(old):
      key = key[: -len(old)] + new
  if key.startswith(prefix):
    key = key[len(prefix):]
  parts = key.split(".")
  module: List[str] = []
  for p in parts[:-1]:
    if p.isdigit() and module:
      module[-1] = f"{module[-1]}_{p}"
    else:
      module.append(p)
  return tuple(module), parts[-1]


def convert_state_dict(state: Dict[str, np.ndarray], target: Any, prefix: str,
                       param_dtype=jnp.float32):
  """Converts a Hugging Face state dict to the Flax parameter tree ``target`` (shapes only ok).

  Args:
    state: HF key → array.
    target: Flax params pytree (arrays or ``jax.ShapeDtypeStruct``) giving paths and shapes.
    prefix: head prefix to strip (``"wav2vec2."`` / ``"bert."``).
    param_dtype: dtype of the returned arrays.

  Returns:
    (flat dict Flax-path-tuple → np.ndarray of the loaded leaves, loaded keys, unused keys,
    ignored keys).

  Raises:
    ValueError: a checkpoint tensor's shape (after the leaf rule) differs from the parameter's,
      naming both.
  """
  flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  has_prefix = any(k.startswith(prefix) for k in state)
  loaded, loaded_keys, unused, ignored = {}, [], [], []
  for key in sorted(state):
    bare = key[len(prefix):] if key.startswith(prefix) else key
    if any(p.search(bare) for p in IGNORED_PATTERNS):
      ignored.append(key)
      continue
    if has_prefix and not key.startswith(prefix):
      unused.append(key)  # task head of a *ForSequenceClassification/*ForCTC checkpoint
      continue
    module, leaf = hf_key_to_flax(key, prefix)
    match = None
    for (hf_leaf, flax_leaf), rule in LEAF_RULES.items():
      if hf_leaf == leaf and module + (flax_leaf,) in flat_target:
        match = (module + (flax_leaf,), rule)
        break
    if match is None:
      unused.append(key)
      continue
    flax_path, rule = match
    value = rule(np.asarray(state[key]))
    want = tuple(flat_target[flax_path].shape)
    if value.shape != want:
      raise ValueError(
          f"from_pretrained: shape mismatch for checkpoint tensor {key!r} -> parameter "
          f"{'/'.join(flax_path)}: checkpoint gives {value.shape} (after the "
          f"{rule.__name__.strip('_')} rule), the model expects {want}. The config.json does not "
          "match the weights.")
    loaded[flax_path] = value.astype(param_dtype)
    loaded_keys.append(key)
  return loaded, loaded_keys, unused, ignored


def _dummy_inputs(model_type, config):
  if model_type == "wav2vec2":
    n = receptive_field(config)
    return (jnp.zeros((1, n), jnp.float32),)
  return (jnp.zeros((1, 2), jnp.int32),)


def init_params(model, model_type, seed=0):
  """Random parameters of ``model`` (the tiniest valid input; shapes do not depend on it)."""
  inputs = _dummy_inputs(model_type, model.config)
  return jax.jit(model.init)(jax.random.key(seed), *inputs)["params"]


def from_pretrained(path: str, dtype=jnp.float32, param_dtype=jnp.float32, strict: bool = False,
                    seed: int = 0, **config_overrides):
  """Loads a local Hugging Face Wav2Vec2 or BERT checkpoint into the native Flax module.

  Args:
    path: local directory with ``config.json`` and weights (see module docstring).
    dtype: compute dtype of the returned module (e.g. ``jnp.bfloat16``).
    param_dtype: dtype of the returned parameters.
    strict: raise if any parameter is missing from the checkpoint.
    seed: PRNG seed for parameters the checkpoint lacks (e.g. BERT pooler).
    **config_overrides: fields of ``Wav2Vec2Config``/``BertConfig`` to override (e.g.
      ``remat=True``, ``layerdrop=0.0``).

  Returns:
    ``(model, params, report)``: the linen module, its parameter pytree, a ``LoadReport``.
  """
  d = read_config(path)
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"from_pretrained: config.json in {path!r} has model_type={model_type!r}; "
                     f"expected one of {sorted(MODEL_TYPES)}.")
  module_cls, config_cls, prefix = MODEL_TYPES[model_type]
  config = config_cls.from_hf_dict(d, dtype=dtype, param_dtype=param_dtype, **config_overrides)
  model = module_cls(config)
  state = read_state_dict(path)
  shapes = jax.eval_shape(lambda: init_params(model, model_type, seed))
  loaded, loaded_keys, unused, ignored = convert_state_dict(state, shapes, prefix, param_dtype)
  flat_shapes = flax.traverse_util.flatten_dict(shapes)
  missing = sorted("/".join(p) for p in flat_shapes if p not in loaded)
  if missing and strict:
    raise ValueError(f"from_pretrained(strict=True): {len(missing)} parameters are not in the "
                     f"checkpoint {path!r}: {missing[:10]}{' ...' if len(missing) > 10 else ''}.")
  if missing:
    flat_init = flax.traverse_util.flatten_dict(init_params(model, model_type, seed))
    flat = {p: (jnp.asarray(loaded[p]) if p in loaded else flat_init[p].astype(param_dtype))
            for p in flat_shapes}
  else:
    flat = {p: jnp.asarray(v) for p, v in loaded.items()}
  params = flax.traverse_util.unflatten_dict(flat)
  report = LoadReport(path=path, model_type=model_type, architectures=list(d.get("architectures")
                                                                             or []),
                      loaded_keys=loaded_keys, unused_keys=unused, missing_keys=missing,
                      ignored_keys=ignored)
  return model, params, report
