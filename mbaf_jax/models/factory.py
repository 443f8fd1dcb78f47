"""Config → model. ``build_model(model_config, fusion_kind)`` is the one place the training
pipeline turns an ``ml_collections`` model config into a linen module (+ pretrained weights)."""
import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

FUSION_KINDS = ("dmf", "naive", "mbaf")
MODEL_NAMES = ("dmf", "mbaf_iemocap", "cebs")
DTYPES = ("float32", "bfloat16")  # config.model.dtype: the compute dtype


def _as_dict(cfg) -> dict:
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


def make_fusion(kind: str, fusion_config: Any = None, dtype: Any = None):
  """The fusion layer ``kind`` ("dmf" | "naive" | "mbaf") with the options of
  ``fusion_config[kind]`` (a dict of the layer's fields); ``dtype`` (not None) sets its
  compute dtype (``compute_dtype``), parameters and memory stay in its ``param_dtype``.

  Raises:
    ValueError: unknown kind, or an option the layer does not have.
  """
  from mbaf_jax import fusion  # pylint: disable=g-import-not-at-top
  if kind not in FUSION_KINDS:
    raise ValueError(f"fusion kind {kind!r} is unknown; expected one of {FUSION_KINDS} "
                     "(config.fusions).")
  options = _as_dict((fusion_config or {}).get(kind) if fusion_config is not None else None)
  cls = {"dmf": "DualMemoryFusion", "naive": "NaiveFusion", "mbaf": "MBAF"}[kind]
  cls = getattr(fusion, cls)
  if dtype is not None:
    options["dtype"] = dtype
  try:
    return cls(**options)
  except TypeError as e:
    raise ValueError(f"config.model.fusion.{kind} has an option {cls.__name__} does not accept "
                     f"({e}); remove it or check the spelling.") from e


def _encoder_config(cls, enc_cfg):
  size = enc_cfg.get("size", "base")
  overrides = _as_dict(enc_cfg.get("overrides", None))
  if size not in ("base", "tiny"):
    raise ValueError(f"encoder size={size!r}; expected 'base' or 'tiny' (or set pretrained to a "
                     "local Hugging Face directory).")
  return getattr(cls, size)(**overrides)


def _pretrained(path: str, what: str):
  """Loads a local Hugging Face encoder directory; every failure becomes a ValueError that says
  which config field to fix (a ``pytorch_model.bin`` needs torch installed)."""
  from mbaf_jax import encoders  # pylint: disable=g-import-not-at-top
  try:
    model, params, report = encoders.from_pretrained(path)
  except ImportError as e:
    raise ValueError(f"config.model.{what}.pretrained={path!r} could not be loaded: a package it "
                     f"needs is missing ({e}); a pytorch_model.bin checkpoint needs torch — "
                     "install torch, or convert the directory to model.safetensors.") from e
  except (OSError, ValueError) as e:
    raise ValueError(f"config.model.{what}.pretrained={path!r} could not be loaded: {e}") from e
  return model.config, params, report


def make_fusion_block(kind: str, model_config, dtype: Any = None):
  """The MBAF IEMOCAP fusion block (MBAF Fig. 2): ``FusionBlock(placement, "mbaf"|"naive")``
  with the MBAF options of ``model_config.fusion.mbaf``; ``dtype`` (not None) sets the compute
  dtype of the block, its self-attention and its fusion layer.

  Raises:
    ValueError: a kind the block does not have (only "mbaf" and "naive"), bad options.
  """
  from mbaf_jax.fusion import mbaf_blocks  # pylint: disable=g-import-not-at-top
  if kind not in ("mbaf", "naive"):
    raise ValueError(f"fusion kind {kind!r} does not apply to model 'mbaf_iemocap'; it trains "
                     "MBAF-I/II/III ('mbaf') and NF-I/II/III ('naive') (config.fusions).")
  placement = model_config.placement
  if placement not in mbaf_blocks.PLACEMENTS:
    raise ValueError(f"config.model.placement={placement!r}; expected one of "
                     f"{mbaf_blocks.PLACEMENTS} (MBAF-I/II/III, Fig. 2).")
  gate = model_config.attention_gate
  if gate not in mbaf_blocks.GATES:
    raise ValueError(f"config.model.attention_gate={gate!r}; expected one of {mbaf_blocks.GATES}.")
  options = None
  if kind == "mbaf":
    options = _as_dict(model_config.fusion.get("mbaf") if model_config.fusion is not None
                       else None)
    from mbaf_jax.fusion import MBAF  # pylint: disable=g-import-not-at-top
    try:
      MBAF(**options)
    except TypeError as e:
      raise ValueError(f"config.model.fusion.mbaf has an option MBAF does not accept ({e}); "
                       "remove it or check the spelling.") from e
    if dtype is not None:
      options["dtype"] = dtype
  return mbaf_blocks.FusionBlock(placement=placement, fusion=kind, mbaf_kwargs=options,
                                 gate=gate, dtype=dtype)


def build_model(model_config, fusion_kind: str, vocab_size: int | None = None,
                max_tokens: int | None = None, text_embedding=None):
  """Builds the full model.

  Args:
    model_config: ``config.model`` (see configs/common.py). ``model_config.dtype``
      ("float32" | "bfloat16", ``compute_dtype``) is the compute dtype of the encoders, the
      fusion layer and the head; parameters, memory and the log-probabilities stay float32.
    fusion_kind: "dmf" | "naive" | "mbaf" ("mbaf_iemocap": "mbaf" | "naive", wrapped in the
      ``FusionBlock`` of ``model_config.placement``).
    vocab_size: size of the run's text vocabulary (random-init text encoders); None: the
      encoder config's own.
    max_tokens: text length (MBAF text encoder's ``max_tokens``).
    text_embedding: ("mbaf_iemocap" only) the (vocab_size, embed_dim) word-embedding matrix
      loaded from ``model_config.text.glove`` (``train.datasets.glove_embedding``); it is
      returned in ``pretrained`` as ``"text/embedding"``. None: random init (or, for inference,
      the checkpoint's embedding). When ``model_config.text.glove`` is set the encoder does not
      warn about its random init, as the embedding is replaced after init either way.

  Returns:
    ``(model, pretrained)`` where ``pretrained`` maps a parameter path ("audio", "text",
    "text/embedding") to loaded params to substitute after init (``merge_pretrained``; empty
    for random init).

  Raises:
    ValueError: unknown model / fusion / dtype, bad options, or a ``text_embedding`` of the
      wrong shape.
  """
  from mbaf_jax.models.cebs import CebsModel  # pylint: disable=g-import-not-at-top
  from mbaf_jax.models.dmf import DMFModel  # pylint: disable=g-import-not-at-top
  from mbaf_jax.models.mbaf_iemocap import MBAFIemocapModel  # pylint: disable=g-import-not-at-top
  name = model_config.name
  if name not in MODEL_NAMES:
    raise ValueError(f"config.model.name={name!r} is unknown; expected one of {MODEL_NAMES}.")
  dtype = compute_dtype(model_config)
  if name == "mbaf_iemocap":
    fusion = make_fusion_block(fusion_kind, model_config, dtype)
  else:
    fusion = make_fusion(fusion_kind, model_config.fusion, dtype)
  head = dict(head_features=tuple(model_config.head_features),
              head_dropout=float(model_config.head_dropout),
              head_activation=model_config.head_activation,
              num_classes=int(model_config.num_classes), dtype=dtype)
  pretrained = {}
  if name == "dmf":
    from mbaf_jax import encoders  # pylint: disable=g-import-not-at-top
    cfgs = {}
    for part, cls in (("audio", encoders.Wav2Vec2Config), ("text", encoders.BertConfig)):
      enc = model_config[part]
      if enc.pretrained:
        cfgs[part], pretrained[part], _ = _pretrained(enc.pretrained, part)
      else:
        cfgs[part] = _encoder_config(cls, enc)
        if part == "text" and vocab_size:
          cfgs[part] = dataclasses.replace(cfgs[part], vocab_size=int(vocab_size))
      if dtype is not None:  # also over a pretrained config and overrides.dtype
        cfgs[part] = dataclasses.replace(cfgs[part], dtype=dtype)
    model = DMFModel(cfgs["audio"], cfgs["text"], fusion, **head)
  elif name == "mbaf_iemocap":
    text_kwargs = _as_dict(model_config.text.kwargs)
    if vocab_size:
      text_kwargs["vocab_size"] = int(vocab_size)
    if max_tokens:
      text_kwargs["max_tokens"] = int(max_tokens)
    if "vocab_size" not in text_kwargs:
      raise ValueError("the MBAF text encoder needs a vocabulary size (build_model(..., "
                       "vocab_size=len(vocab))).")
    if model_config.text.get("glove", "") or text_embedding is not None:
      text_kwargs["warn_random_embedding"] = False  # the embedding is replaced after init
    if text_embedding is not None:
      want = (text_kwargs["vocab_size"], text_kwargs.get("embed_dim", 300))
      if tuple(np.shape(text_embedding)) != want:
        raise ValueError(f"text_embedding has shape {tuple(np.shape(text_embedding))} but the "
                         f"text encoder's embedding is (vocab_size, embed_dim) = {want}; load "
                         "it for the run's vocabulary with dim=config.model.text.kwargs.embed_dim.")
      pretrained["text/embedding"] = np.asarray(text_embedding, np.float32)
    audio_kwargs = _as_dict(model_config.audio.kwargs)
    if dtype is not None:
      audio_kwargs["dtype"] = text_kwargs["dtype"] = dtype
    model = MBAFIemocapModel(fusion, audio_kwargs, text_kwargs, **head)
  else:
    model = CebsModel(fusion, hidden=model_config.hidden, num_layers=model_config.num_layers,
                      **head)
  return model, pretrained


def dummy_batch(config, batch_size: int) -> dict:
  """Zeros with the shapes and dtypes of a real batch of ``config`` (for init / eval_shape)."""
  d, m = config.data, config.model
  if m.name == "dmf":
    s = int(round(d.max_seconds * d.sample_rate))
    return {"input_values": np.zeros((batch_size, s), np.float32),
            "audio_mask": np.ones((batch_size, s), np.int32),
            "input_ids": np.zeros((batch_size, d.max_tokens), np.int32),
            "text_mask": np.ones((batch_size, d.max_tokens), np.int32),
            "token_type_ids": np.zeros((batch_size, d.max_tokens), np.int32)}
  if m.name == "mbaf_iemocap":
    s = int(round(d.max_seconds * d.sample_rate))
    return {"waves": np.zeros((batch_size, s), np.float32),
            "lengths": np.full((batch_size,), s, np.int32),
            "token_ids": np.zeros((batch_size, d.max_tokens), np.int32),
            "text_mask": np.ones((batch_size, d.max_tokens), np.int32)}
  return {"modes": tuple(np.zeros((batch_size, d.chunks, d.chunk_samples), np.float32)
                         for _ in range(2))}


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
  import jax  # pylint: disable=g-import-not-at-top

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
