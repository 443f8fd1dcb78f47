"""What the model families share: picking a family by name, the declared input schema, the
fusion layer, the compute dtype and the substitution of pretrained weights.

A model family is a module ``mbaf_jax/models/<name>.py`` (``config.model.name`` = ``<name>``; a
dotted name is a full module path, for families outside the package). It owns its whole contract
and takes the config sections it needs, ``data`` (``config.data``) and ``model``
(``config.model``), never the whole run config:

  DATA_FIELDS                          config.data fields that fix the input shapes
  input_spec(data, model)              {key: Field} — the batch schema (nested in tuples)
  build(model_config, fusion_kind, *, vocab_size=None, max_tokens=None, text_embedding=None)
                                       → (model, pretrained)
  preprocessor(data, model, workdir, raw=None)
                                       → Preprocessing: fitted on the training examples ``raw``
                                       and saved in ``workdir``, or (raw None) loaded from what
                                       training saved
  make_inputs(data, model, raw, pre)   raw examples → the model's batch (training and
                                       inference), checked against ``input_spec``
  text_embedding(data, model, workdir, *, seed, verbose=True)
                                       the run's pretrained word embedding, or None
  raw_inputs(data, model)              → tuple of RawInput: what one example is at inference,
                                       in the predictor's argument order
  raw_examples(data, model, columns)   one sequence per raw input (``raw_inputs`` order) → the
                                       raw examples ``make_inputs`` takes

Raw examples are ``{"waves", "texts"}`` (+ optional ``"lengths"``) for audio + text: N mono
waveforms at ``data.sample_rate`` — a list, or an (N, S) zero-padded array whose valid samples
per row are ``lengths`` — and N transcripts; ``{"modes"}`` for physiological windows.
``build_model`` below dispatches to the family of ``model_config.name``, ``dummy_batch`` to the
family of ``model.name``.
"""
import dataclasses
import importlib
import os
import pkgutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mbaf_jax import fusion
from mbaf_jax.errors import UserError

FUSION_KINDS = ("dmf", "naive", "mbaf")
DTYPES = ("float32", "bfloat16")  # config.model.dtype: the compute dtype
PACKAGE = "mbaf_jax.models"  # a plain family name is a module of this package
CONTRACT = ("DATA_FIELDS", "input_spec", "build", "preprocessor", "make_inputs",
            "text_embedding", "raw_inputs", "raw_examples")  # the names every family defines
MEDIA = ("audio", "text", "array")  # what a RawInput holds (RawInput.medium)


@dataclasses.dataclass(frozen=True)
class Field:
  """One array of a batch, per example: ``shape`` (without the batch axis), ``dtype`` and the
  value ``dummy_batch`` fills it with (1 for masks, the full length for lengths)."""
  shape: tuple  # per-example shape
  dtype: Any  # numpy dtype of the array
  fill: Any = 0  # dummy_batch value


@dataclasses.dataclass(frozen=True)
class RawInput:
  """One input of an example at inference (``raw_inputs``): a predictor's argument and the way
  a source of it is read.

  ``kind`` is "audio" (a mono waveform at ``sample_rate``, read from an audio file), "text" (a
  transcript) or "array" (float32 values of shape ``shape`` per example, e.g. a window of a
  physiological signal sampled at ``sample_rate``, read from a ``.npy`` file of N examples).
  """
  name: str  # the predictor's argument name, e.g. "waves", "texts", "ECG"
  medium: str  # one of MEDIA
  shape: tuple = ()  # "array": the shape of one example
  sample_rate: int | None = None  # Hz of an "audio" waveform or of the signal of an "array"
  note: str = ""  # what one example must be, for error messages (e.g. how it is cut)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """A family's preprocessing state (``preprocessor``): what ``make_inputs`` needs besides the
  config — a tokenizer and feature extractor, a word → id map, or nothing."""
  vocab_size: int | None = None  # text vocabulary size (None: no random-init text encoder)
  state: Any = None  # family-specific (see the family's ``preprocessor``)


def known_families() -> tuple:
  """The family modules of this package (those defining every name of ``CONTRACT``)."""
  names = []
  for info in pkgutil.iter_modules([os.path.dirname(__file__)]):
    module = importlib.import_module(f"{PACKAGE}.{info.name}")
    if all(hasattr(module, n) for n in CONTRACT):
      names.append(info.name)
  return tuple(sorted(names))


def family(name: str):
  """The family module of ``config.model.name``: ``mbaf_jax.models.<name>``, or ``name`` itself
  when it is a dotted module path (a family outside the package, e.g. ``my_pkg.my_family``).

  Raises:
    UserError: no such module, or it lacks a name of the family contract.
  """
  path = name if "." in str(name) else f"{PACKAGE}.{name}"
  try:
    module = importlib.import_module(path)
  except ModuleNotFoundError as e:
    if e.name is None or not path.startswith(e.name):
      raise  # the family exists but one of its own imports is missing
    raise UserError(f"config.model.name={name!r} is unknown; expected one of {known_families()} "
                    f"(a module mbaf_jax/models/<name>.py) or the dotted path of a module "
                    "that defines the family contract.") from None
  missing = [n for n in CONTRACT if not hasattr(module, n)]
  if missing:
    raise UserError(f"config.model.name={name!r}: module {path} is not a model family; it lacks "
                    f"{missing} (every family defines {list(CONTRACT)}).")
  return module


def as_dict(cfg) -> dict:
  """A config section (ConfigDict, dict or None) as a plain dict, lists as tuples."""
  if cfg is None:
    return {}
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(cfg).items()}


def compute_dtype(model_config):
  """The compute dtype ``config.model.dtype`` asks for: None for "float32" (every module keeps
  its own default, so a float32 model is exactly the model built without the field — configs
  stored before it existed lack it and mean "float32"), ``jnp.bfloat16`` for "bfloat16".
  Parameters, optimiser state, memory and the loss stay float32 either way.

  Raises:
    ValueError: any other value.
  """
  name = model_config.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is unknown; expected one of {DTYPES} "
                     "(the compute dtype, e.g. --config.model.dtype=bfloat16).")
  return None if name == "float32" else jnp.bfloat16


def head_kwargs(model_config, dtype) -> dict:
  """The classification head's fields of a full model, from ``config.model``."""
  return dict(head_features=tuple(model_config.head_features),
              head_dropout=float(model_config.head_dropout),
              head_activation=model_config.head_activation,
              num_classes=int(model_config.num_classes), dtype=dtype)


def make_fusion(kind: str, fusion_config: Any = None, dtype: Any = None):
  """The fusion layer ``kind`` ("dmf" | "naive" | "mbaf") with the options of
  ``fusion_config[kind]`` (a dict of the layer's fields); ``dtype`` (not None) sets its
  compute dtype (``compute_dtype``), parameters and memory stay in its ``param_dtype``.

  Raises:
    ValueError: unknown kind, or an option the layer does not have.
  """
  if kind not in FUSION_KINDS:
    raise ValueError(f"fusion kind {kind!r} is unknown; expected one of {FUSION_KINDS} "
                     "(config.fusions).")
  options = as_dict((fusion_config or {}).get(kind) if fusion_config is not None else None)
  cls = {"dmf": fusion.DualMemoryFusion, "naive": fusion.NaiveFusion, "mbaf": fusion.MBAF}[kind]
  if dtype is not None:
    options["dtype"] = dtype
  try:
    return cls(**options)
  except TypeError as e:
    raise ValueError(f"config.model.fusion.{kind} has an option {cls.__name__} does not accept "
                     f"({e}); remove it or check the spelling.") from e


def build_model(model_config, fusion_kind: str, vocab_size: int | None = None,
                max_tokens: int | None = None, text_embedding=None):
  """Builds the full model of the family ``model_config.name`` (its ``build``).

  Args:
    model_config: ``config.model`` (see configs/common.py). ``model_config.dtype``
      ("float32" | "bfloat16", ``compute_dtype``) is the compute dtype of the encoders, the
      fusion layer and the head; parameters, memory and the log-probabilities stay float32.
    fusion_kind: "dmf" | "naive" | "mbaf" (the kinds the family accepts).
    vocab_size: size of the run's text vocabulary (random-init text encoders); None: the
      encoder config's own.
    max_tokens: text length (for text encoders with a fixed length).
    text_embedding: a (vocab_size, embed_dim) word-embedding matrix for the text encoder (the
      family's ``text_embedding``), returned in ``pretrained``; None: random init (or, for
      inference, the checkpoint's embedding).

  Returns:
    ``(model, pretrained)`` where ``pretrained`` maps a parameter path ("audio", "text",
    "text/embedding") to loaded params to substitute after init (``merge_pretrained``; empty
    for random init).

  Raises:
    UserError: unknown family.
    ValueError: unknown fusion / dtype, bad options, or a ``text_embedding`` of the wrong shape.
  """
  return family(model_config.name).build(model_config, fusion_kind, vocab_size=vocab_size,
                                         max_tokens=max_tokens, text_embedding=text_embedding)


def audio_text_inputs(data, model) -> tuple:
  """``raw_inputs`` of an audio + text family: ``waves`` (mono, at ``data.sample_rate``) and
  ``texts`` (one transcript per waveform)."""
  del model
  return (RawInput("waves", "audio", sample_rate=int(data.sample_rate),
                   note="a mono waveform (1-D float array); longer ones are cut to "
                        "data.max_seconds"),
          RawInput("texts", "text", note="its transcript"))


def audio_text_examples(data, model, columns) -> dict:
  """``raw_examples`` of an audio + text family: ``(waves, texts)`` columns → the raw examples
  ``{"waves", "texts"}``."""
  del data, model
  waves, texts = columns
  return {"waves": list(waves), "texts": [str(t) for t in texts]}


def spec_batch(spec, batch_size: int):
  """A batch of ``batch_size`` rows from an input schema (``Field`` leaves, each row filled
  with the field's ``fill``)."""
  return jax.tree.map(lambda f: np.full((batch_size,) + tuple(f.shape), f.fill, f.dtype), spec)


def dummy_batch(data, model, batch_size: int) -> dict:
  """A batch with the shapes and dtypes of a real batch (for init / eval_shape): the
  ``input_spec(data, model)`` of the family ``model.name`` filled with zeros (masks with ones,
  lengths full)."""
  return spec_batch(family(model.name).input_spec(data, model), batch_size)


def conform(spec, batch):
  """Checks a batch a family's ``make_inputs`` produced against its ``input_spec`` and casts
  every array to the declared dtype.

  Raises:
    ValueError: a key or shape that differs from the schema (a bug in the family).
  """
  if jax.tree.structure(spec) != jax.tree.structure(batch):
    raise ValueError(f"make_inputs produced the keys {jax.tree.structure(batch)} but the "
                     f"family's input_spec declares {jax.tree.structure(spec)}.")

  def one(f, x):
    x = np.asarray(x)
    if x.shape[1:] != tuple(f.shape):
      raise ValueError(f"make_inputs produced an array of shape {x.shape} where input_spec "
                       f"declares (batch,) + {tuple(f.shape)}.")
    return x.astype(f.dtype, copy=False)

  return jax.tree.map(one, spec, batch)


def merge_pretrained(params: Mapping, pretrained: Mapping) -> dict:
  """Replaces ``params[name]`` by loaded weights, checking every shape matches.

  Args:
    params: the model's initialised ``'params'`` collection.
    pretrained: parameter path → loaded params (``build_model``'s second return value). A path
      is a top-level name ("audio", "text": a whole encoder) or a "/"-separated path to a
      subtree or a single array ("text/embedding": the GloVe matrix).

  Returns:
    A new params dict with those subtrees replaced (as jax arrays); the rest is unchanged.

  Raises:
    ValueError: a path the model does not have, or a parameter missing / extra / of another
      shape; the message names the parameter path.
  """

  def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}

  def as_tree(x):
    return dict(x) if isinstance(x, Mapping) else x

  def replace(tree, keys, value):
    tree = dict(tree)
    tree[keys[0]] = value if len(keys) == 1 else replace(tree[keys[0]], keys[1:], value)
    return tree

  params = dict(params)
  for name, loaded in pretrained.items():
    keys = name.split("/")
    node = params
    for i, k in enumerate(keys):
      if not isinstance(node, Mapping) or k not in node:
        have = sorted(node) if isinstance(node, Mapping) else "an array"
        where = "/".join(keys[:i]) or "the model"
        raise ValueError(f"pretrained weights for '{name}' but {where} has no '{k}' "
                         f"parameters (it has {have}).")
      node = node[k]
    loaded = as_tree(loaded)
    want, got = flat(as_tree(node)), flat(loaded)
    for path in sorted(set(want) | set(got)):
      if want.get(path) != got.get(path):
        full = "/".join(p for p in (name, path) if p)
        raise ValueError(
            f"pretrained weights for '{name}' do not match the model: parameter "
            f"'{full}' is {got.get(path, 'missing')} in the checkpoint but "
            f"{want.get(path, 'absent')} in the model (different architecture or size; check "
            f"config.model.{keys[0]}).")
    params = replace(params, keys, jax.tree.map(jnp.asarray, loaded))
  return params
