r"""Inference from a training workdir: class probabilities for (wav, transcript) pairs.

  python -m train.predict --workdir=runs/demo --wav a.wav --text "I can't believe it"
  python -m train.predict --workdir=runs/demo --manifest pairs.csv --output probs.csv
  python -m train.predict --workdir=runs/demo --wav_dir wavs/ --transcripts texts.txt

``--manifest``: a CSV with a header and columns ``wav,text`` (relative paths are relative to the
CSV's folder). ``--wav_dir`` + ``--transcripts``: a text file of lines ``<file name or stem>
<transcript>`` (first whitespace separates them). Batch modes print a CSV (``wav,text,pred,
p_<class>...``) to stdout or write it to ``--output``.

Python API::

  from train import predict
  predictor = predict.load("runs/demo")              # config.json + the best checkpoint
  probs = predictor(waves, texts)                    # (N, K) numpy, rows sum to 1
  predictor.classes                                  # ("ang", "hap", "neu", "sad")

The model runs with ``train=False`` (DMF §2.2: "the memory update process is not carried out
during inference"): the memory is read, never written, and batch norm uses its running
statistics. One jitted function with fixed shapes (``batch_size`` rows, padded and masked) serves
every call.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from typing import Callable, Sequence

import jax
import numpy as np

CHECKPOINT_KINDS = ("best", "latest")


class PredictError(ValueError):
  """A problem with the workdir, checkpoint or inputs; the message says what to do."""


# --------------------------------------------------------------------------- workdir
def _read_config(workdir: str):
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise PredictError("--workdir is empty; pass the directory a training run wrote "
                       "(it holds config.json and ckpt/).")
  if not os.path.isdir(workdir):
    what = "is a file" if os.path.exists(workdir) else "does not exist"
    raise PredictError(f"workdir {workdir!r} {what}; pass the directory of a training run "
                       "(python -m train.main --workdir=...), which holds config.json and ckpt/.")
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      stored = json.load(f)
    config = mlc.ConfigDict(stored["config"])
  except FileNotFoundError:
    raise PredictError(f"{path} not found: {workdir!r} is not a training workdir (train first with "
                       "python -m train.main --workdir=...).") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PredictError(f"{path} is not a readable training config ({type(e).__name__}: {e}); "
                       "it should be the config.json written by train.main.") from None
  return config, stored.get("fingerprint")


def _pick(options: Sequence[str], wanted: str | None, what: str, where: str) -> str:
  if not options:
    raise PredictError(f"no checkpoints found in {where}: the run wrote none yet (train longer, or "
                       "check --workdir).")
  if wanted is None:
    return sorted(options)[0]
  if wanted not in options:
    raise PredictError(f"--{what}={wanted!r} has no checkpoints in {where}; available: "
                       f"{sorted(options)}.")
  return wanted


def _subdirs(path: str) -> list[str]:
  return [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))] \
      if os.path.isdir(path) else []


def _steps(path: str) -> list[int]:
  return sorted(int(d) for d in _subdirs(path) if d.isdigit())


def find_checkpoint(workdir: str, fusion: str | None = None, fold: str | None = None,
                    checkpoint: str = "best") -> tuple[str, int, str, str]:
  """Locates ``ckpt/<fusion>/<fold>/<best|latest>/<step>`` in a workdir.

  Args:
    workdir: the training workdir.
    fusion: fusion kind (default: the first in alphabetical order that has checkpoints).
    fold: fold name (default: the first in alphabetical order).
    checkpoint: "best" (by validation UA; falls back to "latest" when the run had no validation
      set) or "latest".

  Returns:
    ``(manager_dir, step, fusion, fold)``.
  """
  if checkpoint not in CHECKPOINT_KINDS:
    raise PredictError(f"--checkpoint={checkpoint!r}; expected one of {CHECKPOINT_KINDS}.")
  root = os.path.join(workdir, "ckpt")
  fusion = _pick(_subdirs(root), fusion, "fusion", root)
  fold_root = os.path.join(root, fusion)
  fold = _pick(_subdirs(fold_root), fold, "fold", fold_root)
  for kind in (checkpoint, "latest"):
    d = os.path.join(fold_root, fold, kind)
    steps = _steps(d)
    if steps:
      return d, steps[-1], fusion, fold
  raise PredictError(f"no finished checkpoint in {os.path.join(fold_root, fold)} (best/ and latest/ "
                     "are empty or missing); the run may have been stopped before its first save.")


def _restore(manager_dir: str, step: int, fingerprint: str | None) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mgr = ocp.CheckpointManager(manager_dir, item_names=("state", "meta"))
  try:
    got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                    meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types on damaged checkpoints
    raise PredictError(f"could not read the checkpoint {os.path.join(manager_dir, str(step))} "
                       f"({type(e).__name__}: {e}); it may be damaged — use --checkpoint=latest "
                       "or another --fold.") from None
  finally:
    mgr.close()
  found = (got["meta"] or {}).get("fingerprint")
  if fingerprint and found and found != fingerprint:
    raise PredictError(f"the checkpoint {os.path.join(manager_dir, str(step))} was written with a "
                       f"different model config (fingerprint {found}) than the workdir's "
                       f"config.json ({fingerprint}); the workdir is inconsistent.")
  return got["state"]


# --------------------------------------------------------------------------- predictor
@dataclasses.dataclass
class Predictor:
  """A loaded model: ``predictor(waves, texts) -> (N, K)`` class probabilities.

  Attributes:
    classes: class names, in output column order.
    sample_rate: sampling rate ``waves`` must have (Hz).
    batch_size: rows per compiled call (inputs are padded to a multiple).
    fusion, fold, step: which checkpoint was loaded.
    variables: the model variables (params, memory, batch stats, constants); read-only.
  """
  classes: tuple  # class names, output column order
  sample_rate: int  # Hz expected by __call__
  batch_size: int  # rows per compiled call
  fusion: str  # fusion kind of the checkpoint
  fold: str  # fold of the checkpoint
  step: int  # training step of the checkpoint
  variables: dict  # model variables (never written)
  _prepare: Callable  # (waves, texts) -> model input dict
  _apply: Callable  # jitted (variables, inputs, mask) -> log-probs

  def __call__(self, waves: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """Class probabilities.

    Args:
      waves: N mono waveforms (1-D float arrays at ``sample_rate``; longer ones are cut to the
        model's ``max_seconds``).
      texts: N transcripts.

    Returns:
      ``(N, K)`` float32 probabilities (rows sum to 1).
    """
    if isinstance(texts, str):
      raise PredictError("texts must be a list of strings (one per waveform), got one string; "
                         "wrap it in a list.")
    waves, texts = list(waves), list(texts)
    if len(waves) != len(texts):
      raise PredictError(f"got {len(waves)} waveforms but {len(texts)} texts; pass one transcript "
                         "per waveform.")
    if not waves:
      return np.zeros((0, len(self.classes)), np.float32)
    out = []
    b = self.batch_size
    for start in range(0, len(waves), b):
      w, t = waves[start:start + b], texts[start:start + b]
      n = len(w)
      pad = b - n
      inputs = self._prepare(w + [w[-1]] * pad, t + [t[-1]] * pad)  # pads are masked out
      mask = np.arange(b) < n
      out.append(np.exp(np.asarray(self._apply(self.variables, inputs, mask)))[:n])
    return np.concatenate(out).astype(np.float32)

  def predict_files(self, paths: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """Reads ``paths`` (resampled to ``sample_rate``) and predicts; see ``__call__``."""
    return self(read_waves(paths, self.sample_rate), texts)


def read_waves(paths: Sequence[str], sample_rate: int) -> list[np.ndarray]:
  """Decodes audio files (mono, resampled); an unreadable file raises naming it."""
  from mbaf_jax.data.audio import read_wav  # pylint: disable=g-import-not-at-top
  from mbaf_jax.data.report import DataError  # pylint: disable=g-import-not-at-top
  waves = []
  for p in paths:
    try:
      waves.append(read_wav(p, sr=sample_rate))
    except DataError as e:
      raise PredictError(f"cannot use audio file ({e}); pass a readable, non-empty "
                         "wav/flac/ogg file.") from None
  return waves


def _class_names(workdir: str, config) -> tuple:
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      names = json.load(f).get("class_names")
    if names:
      return tuple(names)
  except (OSError, ValueError):
    pass
  from train.datasets import CEBS_CLASSES, IEMOCAP_CLASSES  # pylint: disable=g-import-not-at-top
  return IEMOCAP_CLASSES if config.data.dataset == "iemocap" else CEBS_CLASSES


def _dmf_preparer(workdir: str, config):
  """(waves, texts) → the DMF model's batch, as ``train.datasets`` builds it for training."""
  from mbaf_jax import encoders  # pylint: disable=g-import-not-at-top
  d, m = config.data, config.model
  tok_dir = d.tokenizer or m.text.pretrained or os.path.join(workdir, "tokenizer")
  if not os.path.isdir(tok_dir):
    raise PredictError(f"the text tokenizer {tok_dir!r} is missing (the training run writes "
                       f"<workdir>/tokenizer when it builds its own vocabulary); restore it or set "
                       f"config.data.tokenizer in {os.path.join(workdir, 'config.json')}.")
  audio = encoders.AudioPreprocessor(m.audio.pretrained or None, max_seconds=d.max_seconds,
                                     sampling_rate=d.sample_rate)
  text = encoders.TextPreprocessor(tok_dir, max_length=d.max_tokens)

  def prepare(waves, texts):
    a = audio(list(waves))
    t = text([str(x) for x in texts])
    return {"input_values": a["input_values"], "audio_mask": a["attention_mask"],
            "input_ids": t["input_ids"], "text_mask": t["attention_mask"],
            "token_type_ids": t["token_type_ids"]}

  return prepare, len(text.tokenizer)


def load(workdir: str, fusion: str | None = None, fold: str | None = None,
         checkpoint: str = "best", batch_size: int = 8) -> Predictor:
  """Loads a training workdir for inference.

  Args:
    workdir: directory written by ``python -m train.main`` (config.json, ckpt/, tokenizer/).
    fusion: fusion kind to load ("dmf", "naive"; default: the first with checkpoints).
    fold: fold name (default: the first, e.g. "loso_s1").
    checkpoint: "best" (validation UA) or "latest".
    batch_size: rows per compiled call.

  Returns:
    A :class:`Predictor`.

  Raises:
    PredictError: missing/invalid workdir, config, checkpoint or tokenizer; a model kind
      without a (wav, text) interface.
  """
  from mbaf_jax import models  # pylint: disable=g-import-not-at-top
  if not (isinstance(batch_size, int) and batch_size >= 1):
    raise PredictError(f"batch_size={batch_size!r} must be a positive integer.")
  config, fingerprint = _read_config(workdir)
  if config.model.name != "dmf":
    raise PredictError(f"the workdir's model is {config.model.name!r}; wav + text inference "
                       "supports the DMF model (configs/iemocap.py). For other models use "
                       "train.trainer.evaluate on a dataset.")
  manager_dir, step, fusion, fold = find_checkpoint(workdir, fusion, fold, checkpoint)
  state = _restore(manager_dir, step, fingerprint)
  prepare, vocab_size = _dmf_preparer(workdir, config)
  model, _ = models.build_model(config.model, fusion, vocab_size=vocab_size,
                                max_tokens=config.data.max_tokens)
  variables = {"params": state["params"]}
  for name in ("memory", "batch_stats", "constants"):
    if state.get(name):
      variables[name] = state[name]
  variables = jax.tree.map(jax.numpy.asarray, variables)

  # The checkpoint must fit the model the config builds (shapes checked before compiling).
  dummy = prepare([np.zeros((1,), np.float32)] * batch_size, [""] * batch_size)
  want = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "memory": jax.random.key(1)}, dummy,
      mask=np.ones((batch_size,), bool), train=False))
  want_shapes = {k: jax.tree.map(lambda x: tuple(x.shape), want[k]) for k in variables}
  got_shapes = {k: jax.tree.map(lambda x: tuple(x.shape), variables[k]) for k in variables}
  if want_shapes != got_shapes or set(want) - set(variables) - {"params"}:
    raise PredictError(f"the checkpoint {os.path.join(manager_dir, str(step))} does not fit the "
                       f"model built from {os.path.join(workdir, 'config.json')} (different "
                       "shapes or collections); the workdir is inconsistent.")

  @jax.jit
  def apply(variables, inputs, mask):
    # train=False and no mutable collections: memory read-only, running BN statistics.
    return model.apply(variables, inputs, mask=mask, train=False).log_probs

  return Predictor(classes=_class_names(workdir, config), sample_rate=int(config.data.sample_rate),
                   batch_size=batch_size, fusion=fusion, fold=fold, step=int(step),
                   variables=variables, _prepare=prepare, _apply=apply)


# --------------------------------------------------------------------------- batch inputs
def read_manifest(path: str) -> tuple[list[str], list[str]]:
  """``wav,text`` CSV (with header) → (paths resolved against the CSV's folder, texts)."""
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise PredictError(f"--manifest={path!r} cannot be read ({e}).") from None
  if not rows or not {"wav", "text"} <= set(rows[0]):
    raise PredictError(f"--manifest={path!r} must be a CSV with a header row naming the columns "
                       "'wav' and 'text' and at least one data row.")
  base = os.path.dirname(os.path.abspath(path))
  paths = [r["wav"] if os.path.isabs(r["wav"] or "") else os.path.join(base, r["wav"] or "")
           for r in rows]
  for i, r in enumerate(rows, start=2):
    if not r["wav"]:
      raise PredictError(f"--manifest={path!r} line {i}: empty 'wav' column.")
  return paths, [r["text"] or "" for r in rows]


def read_wav_dir(wav_dir: str, transcripts: str) -> tuple[list[str], list[str]]:
  """``--wav_dir`` + ``--transcripts`` (lines ``<file or stem> <text>``) → (paths, texts)."""
  if not os.path.isdir(wav_dir):
    raise PredictError(f"--wav_dir={wav_dir!r} is not a directory.")
  try:
    with open(transcripts, encoding="utf-8") as f:
      lines = [ln.rstrip("\n") for ln in f if ln.strip()]
  except OSError as e:
    raise PredictError(f"--transcripts={transcripts!r} cannot be read ({e}); give a text file of "
                       "lines '<wav file name or stem> <transcript>'.") from None
  files = {f: f for f in os.listdir(wav_dir)}
  files.update({os.path.splitext(f)[0]: f for f in os.listdir(wav_dir)})
  paths, texts = [], []
  for i, ln in enumerate(lines, start=1):
    name, _, text = ln.strip().partition(" ")
    name = name.split("\t")[0] if "\t" in name else name
    if name not in files:
      raise PredictError(f"--transcripts={transcripts!r} line {i} names {name!r}, which is not a "
                         f"file in --wav_dir={wav_dir!r}.")
    paths.append(os.path.join(wav_dir, files[name]))
    texts.append(text.strip())
  if not paths:
    raise PredictError(f"--transcripts={transcripts!r} has no lines.")
  return paths, texts


def format_csv(paths, texts, probs, classes) -> str:
  """CSV text: ``wav,text,pred,p_<class>...`` one row per input."""
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["wav", "text", "pred"] + [f"p_{c}" for c in classes])
  for p, t, row in zip(paths, texts, probs):
    w.writerow([p, t, classes[int(np.argmax(row))]] + [f"{x:.6f}" for x in row])
  return buf.getvalue()


# --------------------------------------------------------------------------- CLI
def run(argv: Sequence[str] | None = None) -> int:
  """The command line (see module doc); returns the exit status (0 ok, 2 user error)."""
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="python -m train.predict",
                              description="Class probabilities from a trained workdir.")
  p.add_argument("--workdir", required=True, help="directory written by train.main")
  p.add_argument("--wav", help="one audio file")
  p.add_argument("--text", help="its transcript (with --wav)")
  p.add_argument("--manifest", help="CSV with columns wav,text")
  p.add_argument("--wav_dir", help="folder of audio files (with --transcripts)")
  p.add_argument("--transcripts", help="lines '<file or stem> <transcript>' (with --wav_dir)")
  p.add_argument("--output", help="write the CSV here instead of stdout (batch modes)")
  p.add_argument("--fusion", default=None, help="fusion kind to load (default: first)")
  p.add_argument("--fold", default=None, help="fold to load (default: first)")
  p.add_argument("--checkpoint", default="best", choices=CHECKPOINT_KINDS)
  p.add_argument("--batch_size", type=int, default=8)
  args = p.parse_args(argv)
  modes = [bool(args.wav), bool(args.manifest), bool(args.wav_dir)]
  try:
    if sum(modes) != 1:
      raise PredictError("give exactly one input: --wav FILE --text \"...\", --manifest CSV, or "
                         "--wav_dir DIR --transcripts FILE.")
    if args.wav and args.text is None:
      raise PredictError("--wav needs --text \"<transcript>\" (DMF uses audio and text).")
    if args.wav_dir and not args.transcripts:
      raise PredictError("--wav_dir needs --transcripts FILE (lines '<file or stem> <text>').")
    predictor = load(args.workdir, args.fusion, args.fold, args.checkpoint, args.batch_size)
    if args.wav:
      paths, texts = [args.wav], [args.text]
    elif args.manifest:
      paths, texts = read_manifest(args.manifest)
    else:
      paths, texts = read_wav_dir(args.wav_dir, args.transcripts)
    probs = predictor.predict_files(paths, texts)
  except (PredictError, FileNotFoundError, NotADirectoryError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  if args.wav:
    row = probs[0]
    print(f"{args.wav}: {predictor.classes[int(np.argmax(row))]}  ("
          + ", ".join(f"{c} {x:.4f}" for c, x in zip(predictor.classes, row)) + ")")
    return 0
  text = format_csv(paths, texts, probs, predictor.classes)
  if args.output:
    with open(args.output, "w", encoding="utf-8", newline="") as f:
      f.write(text)
    print(f"wrote {len(paths)} rows to {args.output}")
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(run())
