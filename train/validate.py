"""Reads a run's config once, into a frozen :class:`RunPlan`, after checking all of it.

:func:`plan` is the one reader of the config: everything after it in ``train/`` takes the plan or
the part of it that it uses. It finds every problem a user can fix in one pass — numeric fields out of
range, unknown options (data set, protocol, mode pair, model family, fusion kind, optimiser), a
fusion layer or encoder option the model rejects, a layout the devices cannot hold — and raises
one :class:`~mbaf_jax.errors.UserError` that lists them all. The model is checked by an abstract
initialisation (``jax.eval_shape``: shapes only, no weights, no data), so an option that only
fails when the layer is set up (``slots=0``) is caught before the data set is loaded.
"""
import dataclasses
import json
import re
import types
import warnings

import jax
import ml_collections as mlc
import numpy as np

from configs.common import fusion_kinds
from mbaf_jax import models
from mbaf_jax.data import cebs as cebs_data
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory
from mbaf_jax.models import heads
from train import datasets
from train import optimizers
from train import parallel
from train import run_identity
from train import steps

# Dotted config field → (lowest allowed value, what the field is). Integers unless listed in
# _FLOATS; "min" is inclusive.
_AT_LEAST = {
    "seed": (0, "the PRNG seed"),
    "train.batch_size": (1, "the global training batch"),
    "train.eval_batch_size": (1, "the evaluation batch"),
    "train.epochs": (1, "passes over each fold's training set"),
    "train.max_steps": (0, "steps per fold (0: epochs decide)"),
    "train.eval_every_epochs": (1, "validation every n epochs"),
    "train.log_every_steps": (1, "TensorBoard training scalars every n steps"),
    "train.checkpoint_every_steps": (1, "a resume checkpoint every n steps"),
    "train.keep_checkpoints": (1, "checkpoints kept per fold"),
    "train.num_devices": (0, "devices used (0: all)"),
    "data.max_folds": (0, "folds trained (0: all)"),
    "data.max_examples": (0, "examples used (0: all)"),
    "data.max_tokens": (1, "tokens per transcript"),
    "data.sample_rate": (1, "the audio sampling rate in Hz"),
    "data.chunks": (1, "chunks per CEBS window"),
    "data.chunk_samples": (1, "samples per CEBS chunk"),
    "data.num_groups": (2, "folds of the grouped cross-validation"),
    "model.num_classes": (2, "classes"),
    "optim.grad_clip_norm": (0.0, "the gradient-norm clip (0: off)"),
}
_ABOVE_ZERO = {
    "data.max_seconds": "seconds of audio per utterance",
    "optim.learning_rate": "the network's learning rate",
    "optim.memory_learning_rate": "the memory module's learning rate",
}
# Data set → (the protocols that apply to it, the classes its loader gives; None: from the data).
_DATASETS = {"iemocap": (("loso", "8:1:1"), 4), "cebs": (("logo",), 3),
             "manifest": (("group",), None)}
_LOSO_VALIDATION = ("speaker", "random20")  # config.data.validation of IEMOCAP LOSO


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def _ranges(config) -> list:
  problems = []
  for field, (low, what) in _AT_LEAST.items():
    value = _get(config, field)
    if value is not None and value < low:
      problems.append(f"config.{field}={value} must be >= {low} ({what})")
  for field, what in _ABOVE_ZERO.items():
    value = _get(config, field)
    if value is not None and not value > 0:
      problems.append(f"config.{field}={value} must be > 0 ({what})")
  dropout = config.model.get("head_dropout", 0.0)
  if not 0.0 <= dropout < 1.0:
    problems.append(f"config.model.head_dropout={dropout} must be in [0, 1)")
  features = config.model.get("head_features", ())
  if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in features):
    problems.append(f"config.model.head_features={tuple(features)} must be positive integers "
                    "(the head's hidden layer widths)")
  try:
    heads.activation(config.model.get("head_activation", "relu"))
  except (ValueError, TypeError) as e:
    problems.append(f"config.model.head_{str(e).rstrip('.')}")
  return problems


def _class_names(config) -> list:
  """``config.data.class_names``: a comma-separated list of distinct names, as many as
  ``config.model.num_classes``; where the data set fixes its classes (IEMOCAP, CEBS) it is empty
  or exactly those names in label order (the loader labels by them, so another list would
  mislabel every result)."""
  d, raw = config.data, config.data.get("class_names", "")
  if not raw:
    return []
  names = datasets.manifest_class_names(d)
  fixed = {"iemocap": datasets.IEMOCAP_CLASSES, "cebs": datasets.CEBS_CLASSES}.get(d.dataset)
  if fixed is not None and tuple(names) != tuple(fixed):
    return [f"config.data.class_names={raw!r} is not {d.dataset}'s classes; leave it empty or "
            f"give them in label order: {','.join(fixed)!r}"]
  if len(set(names)) != len(names) or len(names) != config.model.num_classes:
    return [f"config.data.class_names={raw!r} names {len(names)} class"
            f"{'' if len(names) == 1 else 'es'} ({len(set(names))} distinct); expected "
            f"config.model.num_classes={config.model.num_classes} distinct comma-separated names"]
  return []


def data_problems(config) -> list:
  """The problems of ``config.data`` (data set, protocol, validation, mode pair, class count),
  one sentence each; ``train.datasets.load_dataset`` refuses a config with any."""
  d, problems = config.data, []
  if d.dataset not in _DATASETS:
    return [f"config.data.dataset={d.dataset!r} is unknown; expected one of {sorted(_DATASETS)}"]
  protocols, classes = _DATASETS[d.dataset]
  if d.protocol not in protocols:
    problems.append(f"config.data.protocol={d.protocol!r} does not apply to {d.dataset}; "
                    f"expected one of {protocols}")
  if d.dataset == "iemocap" and d.protocol == "loso" and d.validation not in _LOSO_VALIDATION:
    problems.append(f"config.data.validation={d.validation!r}; IEMOCAP LOSO validates on "
                    f"one of {_LOSO_VALIDATION}")
  if d.dataset == "cebs" and d.mode_pair not in cebs_data.MODE_PAIRS:
    problems.append(f"config.data.mode_pair={d.mode_pair!r}; expected one of "
                    f"{sorted(cebs_data.MODE_PAIRS)} (MBAF Table 2)")
  if d.dataset == "manifest" and not d.data_dir:
    problems.append("config.data.data_dir is empty; a manifest run needs the path of its "
                    "CSV/JSONL manifest")
  if classes is not None and config.model.num_classes != classes:
    problems.append(f"config.model.num_classes={config.model.num_classes} but {d.dataset} "
                    f"has {classes} classes")
  return problems


def _optimiser(config) -> list:
  try:
    fn = optimizers.optax_optimizer(config.optim.name)
    optimizers.optimizer_kwargs(config.optim, fn)
  except UserError as e:
    return [str(e).rstrip(".")]
  return []


def layout(train) -> tuple[str, tuple]:
  """``(parallelism, devices)`` of ``config.train`` (``parallel.layout``)."""
  return parallel.layout(train.parallelism, train.num_devices,
                         {"batch_size": train.batch_size,
                          "eval_batch_size": train.eval_batch_size})


def _layout(config) -> list:
  if min(config.train.batch_size, config.train.eval_batch_size) < 1:
    return []  # reported by _ranges
  try:
    layout(config.train)
  except UserError as e:
    return [str(e).rstrip(".")]
  return []


# The config.data fields the model's input shapes come from (named when they give none).
_INPUT_SIZES = ("max_seconds", "sample_rate", "max_tokens", "chunks", "chunk_samples")


def _leaves(section, prefix: str = "") -> dict:
  """Dotted path → value of every leaf of a config section."""
  out = {}
  for key, value in section.items():
    if hasattr(value, "items"):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _given_by(text: str, model) -> str:
  """``"; given by config.model.<field>=<value>"`` for the integer fields of ``model`` whose value
  an encoder's error message quotes ("... got 0"), or "" when none or too many match."""
  quoted = {int(x) for x in re.findall(r"got (-?\d+)\b", text)}
  named = [f"config.model.{k}={v!r}" for k, v in _leaves(model).items()
           if isinstance(v, int) and not isinstance(v, bool) and v in quoted]
  return f"; given by {', '.join(named)}" if 0 < len(named) <= 3 else ""


def _model(config) -> list:
  """Builds every fusion kind's model and initialises it abstractly; with pretrained encoder
  directories only their existence is checked here (loading them is the model build's work)."""
  m = config.model
  try:
    factory.family(m.name)
  except UserError as e:
    return [str(e).rstrip(".")]
  except (ImportError, TypeError, ValueError):  # e.g. "../x": not a module name at all
    return [f"config.model.name={m.name!r} is unknown; expected one of "
            f"{factory.known_families()}"]
  kinds = fusion_kinds(config)
  if not kinds:
    return ["config.fusions is empty; expected e.g. 'dmf' or 'dmf,naive'"]
  pretrained = [f"config.model.{part}.pretrained={m[part].pretrained!r}"
                for part in ("audio", "text")
                if part in m and "pretrained" in m[part] and m[part].pretrained]
  if pretrained:
    return []
  try:
    batch = dict(models.dummy_batch(config.data, config.model, 2), mask=np.ones((2,), bool),
                 label=np.zeros((2,), np.int32))
  except (ValueError, TypeError, KeyError, ArithmeticError, MemoryError) as e:
    sizes = ", ".join(f"{k}={config.data[k]!r}" for k in _INPUT_SIZES if k in config.data)
    return [f"config.data does not give the model's input shapes ({sizes}: {e})"]
  # The kinds the run trains, then those it does not: their options are checked too (a typo
  # there is still a typo, and a later run that trains the kind would meet it).
  unused = [k for k in factory.FUSION_KINDS if k not in kinds and k in m.get("fusion", {})]
  problems = []
  for kind in kinds + unused:
    try:
      with warnings.catch_warnings():  # e.g. "no GloVe matrix": init is only abstract here
        warnings.simplefilter("ignore")
        model, _ = models.build_model(m, kind, vocab_size=8,
                                      max_tokens=config.data.max_tokens)
        steps.abstract_variables(model, batch, jax.random.key(0))
    except (ValueError, TypeError, ArithmeticError) as e:
      text = str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__
      if "unexpected keyword argument" in text:  # the encoders' keyword arguments come from here
        given = [f"config.model.{p}.overrides={m[p].overrides.to_dict()}"
                 for p in ("audio", "text") if p in m and m[p].get("overrides")]
        text += f"; given by {', '.join(given)}" if given else ""
      if isinstance(e, ArithmeticError):  # a zero, negative or huge size: name those
        bad = ((lambda n: n <= 0) if isinstance(e, ZeroDivisionError) else
               (lambda n: abs(n) >= 2**31))
        named = [f"config.model.{k}={v!r}" for k, v in _leaves(m).items()
                 if any(isinstance(n, int) and not isinstance(n, bool) and bad(n)
                        for n in (v if isinstance(v, tuple) else (v,)))]
        word = "zero or negative" if isinstance(e, ZeroDivisionError) else "too large"
        text += f"; a size is {word}: {', '.join(named)}" if named else ""
      if "config." not in text:  # an encoder's own argument name: point at the config's values
        text += _given_by(text, m)
      if kind not in kinds and "does not apply to model" in text:
        continue  # a kind this model family never trains: its options are not its own
      if any(text in p for p in problems):
        continue  # not the fusion's: every kind fails the same way, reported once
      if kind in kinds:
        problems.append(f"the {kind} model cannot be built from config.model ({text})")
      else:
        problems.append(f"config.model.fusion.{kind} is invalid ({text}); this run does not "
                        f"train {kind} (config.fusions={config.fusions!r}), but its options are "
                        "checked all the same")
  return problems


def problems(config) -> list:
  """Every problem of ``config`` a user must fix, one sentence each (empty: it can run)."""
  ranges = _ranges(config)
  # A model or data field out of range (num_classes=0, head_features=(0,), max_seconds=-1)
  # would fail the abstract initialisation with a less helpful message (or none): it is
  # reported once, by _ranges.
  skip_model = any(p.startswith(("config.model.", "config.data.")) for p in ranges)
  return (ranges + data_problems(config) + _class_names(config) + _optimiser(config) +
          _layout(config) + ([] if skip_model else _model(config)))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When a fold trains, validates, logs and checkpoints (``config.train``)."""
  batch_size: int  # global training batch
  eval_batch_size: int  # evaluation batch
  epochs: int  # passes over a fold's training set
  max_steps: int  # steps per fold (0: epochs decide)
  eval_every_epochs: int  # validation every n epochs
  log_every_steps: int  # training scalars every n steps
  checkpoint_every_steps: int  # a "latest" checkpoint every n steps
  keep_checkpoints: int  # "latest" checkpoints kept per fold
  progress: bool  # progress bars / lines
  concurrent_kinds: bool  # train the fusion kinds at the same time (one process)

  def total_steps(self, steps_per_epoch: int) -> int:
    """Steps of one fold."""
    return self.max_steps or self.epochs * steps_per_epoch


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """Everything a run needs from its config, read once and checked (:func:`plan`).

  The sections ``data``, ``model`` and ``optim`` are frozen copies of the config's, passed to the
  model family, the data loaders and the optimiser as they are.
  """
  name: str  # the experiment's label (metrics.json)
  seed: int  # the PRNG seed
  kinds: tuple  # the fusion kinds trained, in order
  family: types.ModuleType  # the model family module (mbaf_jax.models.<name>)
  parallelism: str  # "jit" or "pmap"
  devices: tuple  # the devices the steps run on
  schedule: Schedule  # config.train's steps, validation, logging, checkpoints
  data: mlc.FrozenConfigDict  # config.data
  model: mlc.FrozenConfigDict  # config.model
  optim: mlc.FrozenConfigDict  # config.optim
  record: dict  # the config as JSON: config.json and the rerun rule (train.run_identity)
  fingerprint: str  # run_identity.model_fingerprint of record


def plan(config) -> RunPlan:
  """Checks ``config`` (:func:`problems`) and reads it into a :class:`RunPlan`.

  Call it after ``multihost.initialize_multihost`` (the layout asks JAX for its devices).

  Raises:
    UserError: the config cannot run; the message lists each problem and how to fix it.
  """
  check_config(config)
  t = config.train
  parallelism, devices = layout(t)
  family = factory.family(config.model.name)
  record = json.loads(config.to_json_best_effort())
  return RunPlan(
      name=config.name, seed=int(config.seed), kinds=tuple(fusion_kinds(config)), family=family,
      parallelism=parallelism, devices=devices,
      schedule=Schedule(
          batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, epochs=t.epochs,
          max_steps=t.max_steps, eval_every_epochs=t.eval_every_epochs,
          log_every_steps=t.log_every_steps, checkpoint_every_steps=t.checkpoint_every_steps,
          keep_checkpoints=t.keep_checkpoints, progress=bool(t.progress),
          concurrent_kinds=bool(t.concurrent_kinds)),
      data=mlc.FrozenConfigDict(config.data), model=mlc.FrozenConfigDict(config.model),
      optim=mlc.FrozenConfigDict(config.optim), record=record,
      fingerprint=run_identity.model_fingerprint(record, family.DATA_FIELDS))


def check_config(config) -> None:
  """Raises one UserError listing every problem of ``config`` (see :func:`problems`).

  Raises:
    UserError: the config cannot run; the message lists each problem and how to fix it.
  """
  found = problems(config)
  if found:
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(found, 1))
    raise UserError(f"the config cannot run: {listed}. Nothing was read or written. Fix "
                    f"{'it' if len(found) == 1 else 'them'} with --config.<field>=<value> "
                    "(python -m train.main --help_config lists every field).")
