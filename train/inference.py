r"""Inference from a training workdir: load its config and a checkpoint, predict class
probabilities.

  from train import inference
  predictor = inference.load("runs/demo")          # config.json + the best checkpoint
  probs = predictor(waves, texts)                  # (N, K) numpy, rows sum to 1
  predictor.classes                                # ("ang", "hap", "neu", "sad")
  probs = inference.load("runs/cebs")(ecg, resp)   # CEBS: one (N, 6, 1000) array per mode

What a predictor takes is declared by its model family (``raw_inputs``: ``predictor.inputs``, one
``factory.RawInput`` per argument, e.g. waveforms and transcripts, or one window array per
physiological mode); the family's ``raw_examples`` and ``make_inputs`` with the preprocessing
training saved (``preprocessor``) turn them into the model's batch, exactly as training builds its
inputs. The model runs with ``train=False`` (DMF §2.2: "the memory update process is not carried
out during inference"): the memory is read, never written, and batch norm uses its running
statistics. One jitted function with fixed shapes (``batch_size`` rows, padded and masked) serves
every call. ``python -m train.predict`` is the command line over this module.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

import jax
import numpy as np

from mbaf_jax.data.audio import read_wav
from mbaf_jax.data.report import DataError
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory
from train import checkpoints as ckpt_lib
from train import datasets
from train import run_identity
from train import steps
from train import workdir as workdir_lib

CHECKPOINT_SLOTS = ckpt_lib.SLOTS  # "best", "latest"


class PredictError(UserError):
  """A problem with the workdir, checkpoint or inputs; the message says what to do."""


# --------------------------------------------------------------------------- workdir
def read_config(workdir: str):
  """``(config, fingerprint)`` of the workdir's config.json.

  Raises:
    PredictError: the workdir or its config.json is missing or unreadable.
  """
  try:
    return run_identity.read_workdir_config(workdir)
  except UserError as e:
    raise PredictError(str(e)) from None


def find_checkpoint(workdir: str, fusion: str | None = None, fold: str | None = None,
                    checkpoint: str = "best") -> ckpt_lib.CheckpointRef:
  """Locates ``ckpt/<fusion>/<fold>/<best|latest>/<step>`` in a workdir ("best" falls back to
  "latest" when the run had no validation set).

  Returns:
    The ``checkpoints.CheckpointRef`` (fusion, fold, slot, step).

  Raises:
    PredictError: an unknown slot, fusion or fold, or no finished checkpoint.
  """
  try:
    return ckpt_lib.find_checkpoint(workdir, fusion, fold, checkpoint)
  except UserError as e:
    raise PredictError(str(e)) from None


def _restore_variables(workdir: str, ref: ckpt_lib.CheckpointRef, fingerprint: str | None,
                       target: dict) -> dict:
  """The model variables of the checkpoint ``ref``, read into the shapes of ``target``
  (``checkpoints.inference_target``) with the trainer's restore."""
  ck = ckpt_lib.FoldCheckpointer(workdir_lib.fold_dir(workdir, ref.fusion, ref.fold),
                                 fingerprint=fingerprint or "", create=False)
  where = ck.path(ref.slot, ref.step)
  try:
    tree, _ = ck.restore(ref.slot, ref.step, target)
  except ckpt_lib.CheckpointMismatchError as e:
    raise PredictError(f"{e.problem}; it does not fit the model of "
                       f"{workdir_lib.config_path(workdir)}: the workdir is inconsistent (its "
                       "config.json and ckpt/ come from different runs).") from None
  except Exception as e:  # orbax raises many types on damaged checkpoints
    raise PredictError(f"could not read the checkpoint {where} ({type(e).__name__}: {e}); it may "
                       "be damaged — use --checkpoint=latest or another --fold.") from None
  finally:
    ck.close()
  return jax.tree.map(jax.numpy.asarray, steps.TrainState.from_saved(tree).variables())


def class_names(workdir: str, data, model) -> tuple:
  """The class names of a training workdir, in output column order: those metrics.json lists,
  else those of the run's data set (``train.datasets.class_names``: IEMOCAP's, CEBS's, or the
  manifest's ``class_names`` / sorted labels).

  Raises:
    PredictError: neither gives them (a manifest run without metrics.json whose manifest cannot
      be read), or their number differs from the model's classes.
  """
  path = workdir_lib.metrics_path(workdir)
  names = None
  try:
    with open(path) as f:
      names = json.load(f).get("class_names")
  except (OSError, ValueError, AttributeError):
    pass
  if not names:
    try:
      names = datasets.class_names(data)
    except UserError as e:
      raise PredictError(f"the class names of this run are unknown: {path} is missing and the "
                         f"data set cannot tell them ({e}). Restore metrics.json, or set "
                         "config.data.class_names in config.json.") from None
  names = tuple(str(n) for n in names)
  k = model.get("num_classes")
  if k is not None and len(names) != int(k):
    raise PredictError(f"the run's data set has {len(names)} classes {list(names)} but its model "
                       f"has {k} outputs ({workdir_lib.config_path(workdir)}); the workdir is "
                       "inconsistent.")
  return names


# --------------------------------------------------------------------------- reading inputs
def read_waves(paths: Sequence[str], sample_rate: int) -> list[np.ndarray]:
  """Decodes audio files (mono, resampled to ``sample_rate``).

  Raises:
    PredictError: an unreadable file, named.
  """
  waves = []
  for p in paths:
    try:
      waves.append(read_wav(p, sr=sample_rate))
    except DataError as e:
      raise PredictError(f"cannot use audio file ({e}); pass a readable, non-empty "
                         "wav/flac/ogg file.") from None
  return waves


def read_npy(paths: Sequence[str], inputs: Sequence[factory.RawInput]) -> list[np.ndarray]:
  """One ``.npy`` file per array input (``inputs`` order) → float32 arrays.

  Raises:
    PredictError: another number of files than inputs, or an unreadable file (named, with the
      shape its input needs).
  """
  if len(paths) != len(inputs):
    raise PredictError(f"--npy takes one file per input of the model ({_names(inputs)}), got "
                       f"{len(paths)} file(s).")
  arrays = []
  for p, spec in zip(paths, inputs):
    try:
      arrays.append(np.asarray(np.load(p, allow_pickle=False), np.float32))
    except (OSError, ValueError) as e:
      raise PredictError(f"--npy {p!r} cannot be read as a NumPy array ({e}); save each input "
                         f"with numpy.save(path, x) where x is (N, "
                         f"{', '.join(map(str, spec.shape))}).") from None
  return arrays


# --------------------------------------------------------------------------- predictor
def _names(inputs: Sequence[factory.RawInput]) -> str:
  """The inputs' names, "ECG and RESP"."""
  return " and ".join(i.name for i in inputs)


@dataclasses.dataclass
class Predictor:
  """A loaded model: ``predictor(*inputs)`` → ``(N, K)`` class probabilities, one argument per
  raw input of its family (``inputs``: audio + text models ``(waves, texts)``, CEBS one window
  array per mode).

  Attributes:
    classes: class names, in output column order.
    inputs: the family's ``raw_inputs``: the arguments, in order, with their kind and shape.
    batch_size: rows per compiled call (inputs are padded to a multiple).
    fusion, fold, checkpoint, step: which checkpoint was loaded (``checkpoint``: "best" or
      "latest", the slot found after the fallback).
    variables: the model variables (params, memory, batch stats, constants); read-only.
  """
  classes: tuple  # class names, output column order
  inputs: tuple  # factory.RawInput per argument
  batch_size: int  # rows per compiled call
  fusion: str  # fusion kind of the checkpoint
  fold: str  # fold of the checkpoint
  checkpoint: str  # "best" or "latest": the slot loaded
  step: int  # training step of the checkpoint
  variables: dict  # model variables (never written)
  _batch: Callable  # per-input columns of examples -> model input dict
  _apply: Callable  # jitted (variables, inputs, mask) -> log-probs

  @property
  def sample_rate(self) -> int | None:
    """Hz of the first input that has a rate (the waveforms; CEBS: the signals' 5 kHz)."""
    return next((i.sample_rate for i in self.inputs if i.sample_rate), None)

  def describe(self) -> str:
    """One line: which fusion, fold, checkpoint slot and step this predictor loaded."""
    return (f"loaded {self.fusion}/{self.fold}, {self.checkpoint} checkpoint at step "
            f"{self.step}")

  def __call__(self, *inputs) -> np.ndarray:
    """Class probabilities.

    Args:
      *inputs: one per ``self.inputs``, each N examples: waveforms (1-D float arrays at their
        ``sample_rate``; longer ones are cut to the model's ``max_seconds``), transcripts (a
        list of strings), or arrays ``(N,) + shape`` (one example: ``shape``).

    Returns:
      ``(N, K)`` float32 probabilities (rows sum to 1).
    """
    columns = self._columns(inputs)
    n = len(columns[0])
    if not n:
      return np.zeros((0, len(self.classes)), np.float32)
    out = []
    b = self.batch_size
    for start in range(0, n, b):
      part = [c[start:start + b] for c in columns]
      m = len(part[0])
      part = [list(c) + [c[-1]] * (b - m) for c in part]  # pads are masked out
      mask = np.arange(b) < m
      out.append(np.exp(np.asarray(self._apply(self.variables, self._batch(part), mask)))[:m])
    return np.concatenate(out).astype(np.float32)

  def _check_count(self, inputs) -> None:
    """Refuses another number of arguments than ``self.inputs``."""
    if len(inputs) != len(self.inputs):
      noun = "arrays" if all(i.medium == "array" for i in self.inputs) else "inputs"
      raise PredictError(f"this model takes {len(self.inputs)} {noun} ({_names(self.inputs)}), "
                         f"got {len(inputs)} argument(s); call predictor("
                         + ", ".join(i.name.lower() for i in self.inputs) + ").")

  def _columns(self, inputs) -> list:
    """Checks the call's arguments against ``self.inputs``; one list of examples per input."""
    self._check_count(inputs)
    columns = []
    for spec, x in zip(self.inputs, inputs):
      if spec.medium == "array":
        x = np.asarray(x, np.float32)
        if x.ndim == len(spec.shape):
          x = x[None]
        if x.shape[1:] != tuple(spec.shape):
          shape = ", ".join(map(str, spec.shape))
          raise PredictError(f"the {spec.name} input must have shape (N, {shape})"
                             f"{f' ({spec.note})' if spec.note else ''}, got {tuple(np.shape(x))}.")
        columns.append(list(x))
      elif spec.medium == "text":
        if isinstance(x, str):
          raise PredictError(f"{spec.name} must be a list of strings (one per example), got one "
                             "string; wrap it in a list.")
        columns.append([str(t) for t in x])
      else:
        columns.append(list(x))
    sizes = [len(c) for c in columns]
    if len(set(sizes)) != 1:
      raise PredictError("the inputs have different numbers of examples ("
                         + ", ".join(f"{s.name} {n}" for s, n in zip(self.inputs, sizes))
                         + "); pass the same N examples for every input.")
    return columns

  def predict_files(self, *inputs) -> np.ndarray:
    """Like ``__call__``, with every audio input given as file paths (read at its rate)."""
    if not any(i.medium == "audio" for i in self.inputs):
      raise PredictError(f"this model takes no audio files but {_names(self.inputs)}; call "
                         "predictor(...) with them (the command line: --npy).")
    self._check_count(inputs)
    return self(*[read_waves(x, spec.sample_rate) if spec.medium == "audio" else x
                  for spec, x in zip(self.inputs, inputs)])


def load(workdir: str, fusion: str | None = None, fold: str | None = None,
         checkpoint: str = "best", batch_size: int = 8) -> Predictor:
  """Loads a training workdir for inference.

  Args:
    workdir: directory written by ``python -m train.main`` (config.json, ckpt/, and the
      preprocessing its family saved: tokenizer/ (DMF) or vocab.json (MBAF IEMOCAP)).
    fusion: fusion kind to load ("dmf", "naive", "mbaf"; default: the first with checkpoints).
    fold: fold name (default: the first, e.g. "loso_s1").
    checkpoint: "best" (validation UA) or "latest".
    batch_size: rows per compiled call.

  Returns:
    A :class:`Predictor`.

  Raises:
    PredictError: missing/invalid workdir, config, checkpoint, tokenizer, vocabulary or class
      names.
  """
  if not (isinstance(batch_size, int) and batch_size >= 1):
    raise PredictError(f"batch_size={batch_size!r} must be a positive integer.")
  config, fingerprint = read_config(workdir)
  data, model_config = config.data, config.model
  try:
    family = factory.family(model_config.get("name"))
  except UserError as e:
    raise PredictError(f"the workdir's model cannot be loaded: {e}") from None
  ref = find_checkpoint(workdir, fusion, fold, checkpoint)
  try:
    pre = family.preprocessor(data, model_config, workdir)  # the saved tokenizer / vocabulary
  except UserError as e:
    raise PredictError(str(e)) from None
  classes = class_names(workdir, config.data, config.model)
  model, _ = family.build(model_config, ref.fusion, vocab_size=pre.vocab_size,
                          max_tokens=data.max_tokens)

  def batch(columns):
    raw = family.raw_examples(data, model_config, columns)
    return family.make_inputs(data, model_config, raw, pre)

  # The checkpoint must fit the model the config builds (shapes checked before reading arrays).
  dummy = factory.dummy_batch(data, model_config, batch_size)
  target = ckpt_lib.inference_target(model, dict(dummy, mask=np.ones((batch_size,), bool)))
  variables = _restore_variables(workdir, ref, fingerprint, target)

  @jax.jit
  def apply(variables, inputs, mask):
    # train=False and no mutable collections: memory read-only, running BN statistics.
    return model.apply(variables, inputs, mask=mask, train=False).log_probs

  return Predictor(classes=classes, inputs=tuple(family.raw_inputs(data, model_config)),
                   batch_size=batch_size, fusion=ref.fusion, fold=ref.fold,
                   checkpoint=ref.slot, step=int(ref.step), variables=variables,
                   _batch=batch, _apply=apply)
