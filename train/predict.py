r"""Inference from a training workdir: class probabilities for (wav, transcript) pairs (DMF and
MBAF IEMOCAP models) or for windows of physiological signals (CEBS).

  python -m train.predict --workdir=runs/demo --wav a.wav --text "I can't believe it"
  python -m train.predict --workdir=runs/demo --manifest pairs.csv --output probs.csv
  python -m train.predict --workdir=runs/demo --wav_dir wavs/ --transcripts texts.txt
  python -m train.predict --workdir=runs/cebs --npy ecg.npy resp.npy      (CEBS)

``--manifest``: a CSV with a header and columns ``wav,text``, or a training manifest as it is
(``train.manifest_data``: columns ``audio,text,label,group``, CSV or JSONL); relative paths are
relative to the manifest's folder. A bad row (empty path, missing or unreadable audio file) is
left out and reported by line with its reason; the other rows are written and the exit status
is 1 (``--strict``: stop at the first bad row, exit 2). ``--output`` is checked for writability
before anything is computed. ``--wav_dir`` + ``--transcripts``: a text file of lines
``<file name or stem> <transcript>`` (first whitespace separates them; a line naming no file is a
bad row, as above). Batch modes print a CSV (``wav,text,pred,
p_<class>...``) to stdout or write it to ``--output``. ``--npy`` (CEBS): one ``.npy`` file per mode
of the run's pair (F-IV: ECG then RESP), each ``(N, 6, 1000)`` windows (or one ``(6, 1000)``
window) already cut and normalised as ``mbaf_jax.data.cebs.load_cebs`` does; prints a CSV
``row,pred,p_<class>...``.

Python API::

  from train import predict
  predictor = predict.load("runs/demo")              # config.json + the best checkpoint
  probs = predictor(waves, texts)                    # (N, K) numpy, rows sum to 1
  predictor.classes                                  # ("ang", "hap", "neu", "sad")
  probs = predict.load("runs/cebs")(ecg, resp)       # CEBS: one (N, 6, 1000) array per mode

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
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from mbaf_jax.data import cebs as cebs_data
from mbaf_jax.data.audio import read_wav
from mbaf_jax.data.report import DataError
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory
from train import checkpoints as ckpt_lib
from train import datasets
from train import steps

CHECKPOINT_KINDS = ckpt_lib.KINDS


class PredictError(UserError):
  """A problem with the workdir, checkpoint or inputs; the message says what to do."""


# --------------------------------------------------------------------------- workdir
def _read_config(workdir: str):
  """``(config, fingerprint)`` of the workdir's config.json (``checkpoints.read_workdir_config``)."""
  try:
    return ckpt_lib.read_workdir_config(workdir)
  except UserError as e:
    raise PredictError(str(e)) from None


def find_checkpoint(workdir: str, fusion: str | None = None, fold: str | None = None,
                    checkpoint: str = "best") -> ckpt_lib.CheckpointRef:
  """Locates ``ckpt/<fusion>/<fold>/<best|latest>/<step>`` in a workdir
  (``checkpoints.find_checkpoint``; "best" falls back to "latest" when the run had no
  validation set).

  Returns:
    The ``checkpoints.CheckpointRef`` (fusion, fold, kind, step).

  Raises:
    PredictError: an unknown kind, fusion or fold, or no finished checkpoint.
  """
  try:
    return ckpt_lib.find_checkpoint(workdir, fusion, fold, checkpoint)
  except UserError as e:
    raise PredictError(str(e)) from None


def _restore_variables(workdir: str, ref: ckpt_lib.CheckpointRef, fingerprint: str | None,
                       target: dict) -> dict:
  """The model variables of the checkpoint ``ref``, read into the shapes of ``target``
  (``checkpoints.inference_target``) with the trainer's restore."""
  ck = ckpt_lib.FoldCheckpointer(ckpt_lib.fold_dir(workdir, ref.fusion, ref.fold),
                                 fingerprint=fingerprint or "", create=False)
  where = ck.path(ref.kind, ref.step)
  try:
    tree, _ = ck.restore(ref.kind, ref.step, target)
  except ckpt_lib.CheckpointMismatchError as e:
    raise PredictError(f"{e.problem}; it does not fit the model of "
                       f"{ckpt_lib.config_path(workdir)}: the workdir is inconsistent (its "
                       "config.json and ckpt/ come from different runs).") from None
  except Exception as e:  # orbax raises many types on damaged checkpoints
    raise PredictError(f"could not read the checkpoint {where} ({type(e).__name__}: {e}); it may "
                       "be damaged — use --checkpoint=latest or another --fold.") from None
  finally:
    ck.close()
  return jax.tree.map(jax.numpy.asarray, steps.TrainState.from_saved(tree).variables())


# --------------------------------------------------------------------------- predictor
@dataclasses.dataclass
class Predictor:
  """A loaded model: ``predictor(waves, texts)`` (audio + text models) or ``predictor(*modes)``
  (CEBS) → ``(N, K)`` class probabilities.

  Attributes:
    classes: class names, in output column order.
    sample_rate: sampling rate ``waves`` must have (Hz; CEBS: the signals' 5 kHz).
    batch_size: rows per compiled call (inputs are padded to a multiple).
    fusion, fold, checkpoint, step: which checkpoint was loaded (``checkpoint``: "best" or
      "latest", the kind found after the fallback).
    variables: the model variables (params, memory, batch stats, constants); read-only.
    input_kind: "audio_text" (waves, texts) or "modes" (one array per physiological mode).
  """
  classes: tuple  # class names, output column order
  sample_rate: int  # Hz expected by __call__
  batch_size: int  # rows per compiled call
  fusion: str  # fusion kind of the checkpoint
  fold: str  # fold of the checkpoint
  checkpoint: str  # "best" or "latest": the kind loaded
  step: int  # training step of the checkpoint
  variables: dict  # model variables (never written)
  _prepare: Callable  # list of per-example inputs -> model input dict
  _apply: Callable  # jitted (variables, inputs, mask) -> log-probs
  input_kind: str = "audio_text"  # "audio_text" | "modes"
  mode_names: tuple = ()  # CEBS: the modes, in argument order (e.g. ("ECG", "RESP"))
  window_shape: tuple = ()  # CEBS: (chunks, chunk_samples) of one window

  def describe(self) -> str:
    """One line: which fusion, fold, checkpoint kind and step this predictor loaded."""
    return (f"loaded {self.fusion}/{self.fold}, {self.checkpoint} checkpoint at step "
            f"{self.step}")

  def __call__(self, *inputs) -> np.ndarray:
    """Class probabilities.

    Args:
      *inputs: audio + text models: ``(waves, texts)``, N mono waveforms (1-D float arrays at
        ``sample_rate``; longer ones are cut to the model's ``max_seconds``) and N transcripts.
        CEBS: one array per mode (``mode_names``), each ``(N, chunks, chunk_samples)``
        windows normalised as in training (or one ``(chunks, chunk_samples)`` window).

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
      inputs = self._prepare(*part)
      mask = np.arange(b) < m
      out.append(np.exp(np.asarray(self._apply(self.variables, inputs, mask)))[:m])
    return np.concatenate(out).astype(np.float32)

  def _columns(self, inputs) -> list:
    """Checks the call's arguments; returns one list of per-example items per argument."""
    if self.input_kind == "modes":
      names = " and ".join(self.mode_names) or "each mode"
      if len(inputs) != len(self.mode_names):
        raise PredictError(f"this CEBS model takes {len(self.mode_names)} arrays ({names}), got "
                           f"{len(inputs)} argument(s); call predictor(" +
                           ", ".join(m.lower() for m in self.mode_names) + ").")
      cols = []
      for name, x in zip(self.mode_names, inputs):
        x = np.asarray(x, np.float32)
        if x.ndim == 2:
          x = x[None]
        if x.ndim != 3 or x.shape[1:] != self.window_shape:
          raise PredictError(f"the {name} input must have shape (N, {self.window_shape[0]}, "
                             f"{self.window_shape[1]}) (windows as mbaf_jax.data.cebs.load_cebs "
                             f"cuts them), got {tuple(np.shape(x))}.")
        cols.append(list(x))
      if len({len(c) for c in cols}) != 1:
        raise PredictError(f"the mode arrays have different numbers of windows "
                           f"{[len(c) for c in cols]}; pass the same N windows of every mode.")
      return cols
    if len(inputs) != 2:
      raise PredictError(f"this model takes (waves, texts), got {len(inputs)} argument(s).")
    waves, texts = inputs
    if isinstance(texts, str):
      raise PredictError("texts must be a list of strings (one per waveform), got one string; "
                         "wrap it in a list.")
    waves, texts = list(waves), list(texts)
    if len(waves) != len(texts):
      raise PredictError(f"got {len(waves)} waveforms but {len(texts)} texts; pass one transcript "
                         "per waveform.")
    return [waves, [str(t) for t in texts]]

  def predict_files(self, paths: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """Reads ``paths`` (resampled to ``sample_rate``) and predicts; see ``__call__``."""
    if self.input_kind != "audio_text":
      raise PredictError("audio files do not apply to a CEBS model; pass --npy arrays (one per "
                         "mode) or call the Python API predictor(*mode_arrays).")
    return self(read_waves(paths, self.sample_rate), texts)


def read_waves(paths: Sequence[str], sample_rate: int) -> list[np.ndarray]:
  """Decodes audio files (mono, resampled); an unreadable file raises naming it."""
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
  return datasets.IEMOCAP_CLASSES if config.data.dataset == "iemocap" else datasets.CEBS_CLASSES


def _preparer(config, family, pre, input_kind: str):
  """Per-example argument columns → the model's batch: the family's ``make_inputs`` with the
  preprocessing training saved (``pre``), exactly as training builds its inputs."""
  if input_kind == "modes":
    return lambda *modes: family.make_inputs(config.data, config.model, {"modes": modes}, pre)
  return lambda waves, texts: family.make_inputs(config.data, config.model,
                                                {"waves": waves, "texts": texts}, pre)


def load(workdir: str, fusion: str | None = None, fold: str | None = None,
         checkpoint: str = "best", batch_size: int = 8) -> Predictor:
  """Loads a training workdir for inference.

  Args:
    workdir: directory written by ``python -m train.main`` (config.json, ckpt/, and tokenizer/
      (DMF) or vocab.json (MBAF IEMOCAP)).
    fusion: fusion kind to load ("dmf", "naive", "mbaf"; default: the first with checkpoints).
    fold: fold name (default: the first, e.g. "loso_s1").
    checkpoint: "best" (validation UA) or "latest".
    batch_size: rows per compiled call.

  Returns:
    A :class:`Predictor`.

  Raises:
    PredictError: missing/invalid workdir, config, checkpoint, tokenizer or vocabulary.
  """
  if not (isinstance(batch_size, int) and batch_size >= 1):
    raise PredictError(f"batch_size={batch_size!r} must be a positive integer.")
  config, fingerprint = _read_config(workdir)
  name = config.model.get("name")
  try:
    family = factory.family(name)
  except UserError as e:
    raise PredictError(f"the workdir's model cannot be loaded: {e}") from None
  ref = find_checkpoint(workdir, fusion, fold, checkpoint)
  fusion = ref.fusion
  extra = {}
  d = config.data
  rate = int(d.sample_rate)
  if name == "cebs":
    extra = dict(input_kind="modes", mode_names=tuple(cebs_data.MODE_PAIRS[d.mode_pair]),
                 window_shape=(int(d.chunks), int(d.chunk_samples)))
    rate = int(cebs_data.FS)
  try:
    pre = family.preprocessor(config.data, config.model, workdir)  # the saved tokenizer / vocab
  except UserError as e:
    raise PredictError(str(e)) from None
  prepare = _preparer(config, family, pre, extra.get("input_kind", "audio_text"))
  model, _ = family.build(config.model, fusion, vocab_size=pre.vocab_size,
                          max_tokens=d.max_tokens)

  # The checkpoint must fit the model the config builds (shapes checked before reading arrays).
  if extra:
    dummy = prepare(*[[np.zeros(extra["window_shape"], np.float32)] * batch_size] * 2)
  else:
    dummy = prepare([np.zeros((1,), np.float32)] * batch_size, [""] * batch_size)
  target = ckpt_lib.inference_target(model, dict(dummy, mask=np.ones((batch_size,), bool)))
  variables = _restore_variables(workdir, ref, fingerprint, target)

  @jax.jit
  def apply(variables, inputs, mask):
    # train=False and no mutable collections: memory read-only, running BN statistics.
    return model.apply(variables, inputs, mask=mask, train=False).log_probs

  return Predictor(classes=_class_names(workdir, config), sample_rate=rate,
                   batch_size=batch_size, fusion=ref.fusion, fold=ref.fold,
                   checkpoint=ref.kind, step=int(ref.step),
                   variables=variables, _prepare=prepare, _apply=apply, **extra)


def read_npy_modes(paths: Sequence[str]) -> list[np.ndarray]:
  """``--npy`` files (one per CEBS mode) → float32 arrays; an unreadable file raises naming it."""
  arrays = []
  for p in paths:
    try:
      arrays.append(np.asarray(np.load(p, allow_pickle=False), np.float32))
    except (OSError, ValueError) as e:
      raise PredictError(f"--npy {p!r} cannot be read as a NumPy array ({e}); save each mode "
                         "with numpy.save(path, windows) where windows is (N, 6, 1000).") from None
  return arrays


def format_modes_csv(probs, classes) -> str:
  """CSV text: ``row,pred,p_<class>...`` one row per window."""
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["row", "pred"] + [f"p_{c}" for c in classes])
  for i, row in enumerate(probs):
    w.writerow([i, classes[int(np.argmax(row))]] + [f"{x:.6f}" for x in row])
  return buf.getvalue()


# --------------------------------------------------------------------------- batch inputs
class InputRow(NamedTuple):
  """One input of a batch mode (a manifest row or a ``--transcripts`` line)."""
  line: int  # line number in the manifest / transcripts file (1-based; a CSV's header is 1)
  path: str  # the audio file (resolved)
  text: str  # its transcript
  problem: str  # why the row cannot be used ("" when it can)


_PATH_COLUMNS = ("wav", "audio")  # predict's own manifest names it wav; a training manifest audio


def _manifest_records(path: str) -> list[tuple[int, dict | None]]:
  """``(line, row dict with lower-cased keys)`` of a CSV/TSV (header line 1) or JSONL manifest;
  a JSONL line that is not a JSON object gives ``(line, None)``."""
  ext = os.path.splitext(path)[1].lower()
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      if ext in (".jsonl", ".ndjson", ".json"):
        records = []
        for i, line in enumerate(f, 1):
          if line.strip():
            try:
              obj = json.loads(line)
            except ValueError:
              obj = None
            records.append((i, {str(k).strip().lower(): v for k, v in obj.items()}
                               if isinstance(obj, dict) else None))
        return records
      reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
      return [(i, {str(k).strip().lower(): v for k, v in r.items() if k is not None})
              for i, r in enumerate(reader, 2)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise PredictError(f"--manifest={path!r} cannot be read ({e}).") from None


def read_manifest_rows(path: str) -> list[InputRow]:
  """A manifest → one :class:`InputRow` per data row, bad rows included (with their problem).

  Accepts predict's own CSV (columns ``wav,text``) and a training manifest as it is
  (``train.manifest_data``: columns ``audio,text,label,group``, CSV/TSV or JSONL; other columns
  are ignored). Relative paths are relative to the manifest's folder.

  Raises:
    PredictError: the file cannot be read, or has no audio-path or text column or no rows.
  """
  records = _manifest_records(path)
  keys = set().union(*(r for _, r in records if r)) if records else set()
  column = next((c for c in _PATH_COLUMNS if c in keys), None)
  if column is None or "text" not in keys:
    raise PredictError(f"--manifest={path!r} must name the columns 'wav' and 'text' (or 'audio' "
                       "and 'text', as a training manifest does) in a header row (CSV) or in "
                       "each JSON object (.jsonl), and hold at least one data row.")
  base = os.path.dirname(os.path.abspath(path))
  rows = []
  for i, r in records:
    if r is None:
      rows.append(InputRow(i, "", "", "the line is not a JSON object"))
      continue
    audio = r.get(column)
    audio = "" if audio is None else str(audio).strip()
    text = r.get("text")
    text = "" if text is None else str(text)
    problem = "" if audio else f"empty '{column}' column"
    where = os.path.join(base, os.path.expanduser(audio)) if audio else ""
    rows.append(InputRow(i, where, text, problem))
  return rows


def read_manifest(path: str) -> tuple[list[str], list[str]]:
  """A manifest (:func:`read_manifest_rows`) → ``(paths, texts)``; the first bad row raises,
  naming its line."""
  rows = read_manifest_rows(path)
  for r in rows:
    if r.problem:
      raise PredictError(f"--manifest={path!r} line {r.line}: {r.problem}.")
  return [r.path for r in rows], [r.text for r in rows]


def read_wav_dir_rows(wav_dir: str, transcripts: str) -> list[InputRow]:
  """``--wav_dir`` + ``--transcripts`` (lines ``<file or stem> <text>``) → one
  :class:`InputRow` per non-empty line; a line naming no file of ``wav_dir`` has a problem.

  Raises:
    PredictError: ``wav_dir`` is not a directory, or ``transcripts`` cannot be read or is empty.
  """
  if not os.path.isdir(wav_dir):
    raise PredictError(f"--wav_dir={wav_dir!r} is not a directory.")
  try:
    with open(transcripts, encoding="utf-8") as f:
      lines = [(i, ln.rstrip("\n")) for i, ln in enumerate(f, 1) if ln.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise PredictError(f"--transcripts={transcripts!r} cannot be read ({e}); give a text file of "
                       "lines '<wav file name or stem> <transcript>'.") from None
  files = {f: f for f in os.listdir(wav_dir)}
  files.update({os.path.splitext(f)[0]: f for f in os.listdir(wav_dir)})
  rows = []
  for i, ln in lines:
    name, _, text = ln.strip().partition(" ")
    name = name.split("\t")[0] if "\t" in name else name
    if name not in files:
      rows.append(InputRow(i, os.path.join(wav_dir, name), text.strip(),
                           f"names {name!r}, which is not a file in --wav_dir={wav_dir!r}"))
    else:
      rows.append(InputRow(i, os.path.join(wav_dir, files[name]), text.strip(), ""))
  if not rows:
    raise PredictError(f"--transcripts={transcripts!r} has no lines.")
  return rows


def read_wav_dir(wav_dir: str, transcripts: str) -> tuple[list[str], list[str]]:
  """:func:`read_wav_dir_rows` → ``(paths, texts)``; the first bad line raises, naming it."""
  rows = read_wav_dir_rows(wav_dir, transcripts)
  for r in rows:
    if r.problem:
      raise PredictError(f"--transcripts={transcripts!r} line {r.line} {r.problem}.")
  return [r.path for r in rows], [r.text for r in rows]


def _decode_rows(rows: list[InputRow], sample_rate: int, strict: bool,
                 source: str) -> tuple[list[InputRow], list, list[InputRow]]:
  """Decodes the audio of every usable row.

  Returns:
    ``(good rows, their waveforms, bad rows)``; a bad row's ``problem`` says why.

  Raises:
    PredictError: ``strict`` and a row is bad (the first one, by line).
  """
  good, waves, bad = [], [], []
  for r in rows:
    if not r.problem:
      try:
        waves.append(read_waves([r.path], sample_rate)[0])
        good.append(r)
        continue
      except PredictError as e:
        r = r._replace(problem=str(e))
    if strict:
      raise PredictError(f"{source} line {r.line}: {r.problem} (--strict stops at the first bad "
                         "row; leave it out to predict the other rows).")
    bad.append(r)
  return good, waves, bad


def _bad_rows_message(bad: list[InputRow], total: int, source: str, shown: int = 5) -> str:
  """One paragraph: how many rows failed, and the first ``shown`` by line with their reason."""
  first = "; ".join(f"line {r.line}: {r.problem}" for r in bad[:shown])
  more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
  return (f"{len(bad)} of {total} rows of {source} could not be used and were left out of the "
          f"output: {first}{more}.")


def _check_output(path: str) -> None:
  """Refuses an ``--output`` that cannot be written, before anything is computed."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise PredictError(f"--output={path!r} is a directory; give a file path, e.g. "
                       f"{os.path.join(path, 'predictions.csv')}.")
  if not os.path.isdir(folder):
    raise PredictError(f"--output={path!r}: the folder {folder!r} does not exist; create it "
                       "first or write the CSV elsewhere.")
  if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and
                                                   not os.access(path, os.W_OK)):
    raise PredictError(f"--output={path!r} cannot be written (no permission in {folder!r}); "
                       "choose a writable path.")


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
  """The command line (see module doc).

  Returns:
    The exit status: 0 every input predicted; 1 a batch mode (``--manifest``, ``--wav_dir``)
    left out some rows (the others are written; the bad ones are reported by line with their
    reason); 2 a user error (nothing predicted), including the first bad row under ``--strict``.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="python -m train.predict",
                              description="Class probabilities from a trained workdir.")
  p.add_argument("--workdir", required=True, help="directory written by train.main")
  p.add_argument("--wav", help="one audio file")
  p.add_argument("--text", help="its transcript (with --wav)")
  p.add_argument("--manifest", help="CSV with columns wav,text, or a training manifest "
                 "(audio,text,label,group; CSV or JSONL)")
  p.add_argument("--wav_dir", help="folder of audio files (with --transcripts)")
  p.add_argument("--transcripts", help="lines '<file or stem> <transcript>' (with --wav_dir)")
  p.add_argument("--npy", nargs="+", help="CEBS: one .npy of (N, 6, 1000) windows per mode")
  p.add_argument("--output", help="write the CSV here instead of stdout (batch modes)")
  p.add_argument("--strict", action="store_true",
                 help="stop at the first bad manifest row / transcripts line (exit 2) instead of "
                      "leaving it out (exit 1)")
  p.add_argument("--fusion", default=None, help="fusion kind to load (default: first)")
  p.add_argument("--fold", default=None, help="fold to load (default: first)")
  p.add_argument("--checkpoint", default="best", choices=CHECKPOINT_KINDS)
  p.add_argument("--batch_size", type=int, default=8)
  args = p.parse_args(argv)
  modes = [bool(args.wav), bool(args.manifest), bool(args.wav_dir), bool(args.npy)]
  bad, total, source = [], 0, ""
  try:
    if sum(modes) != 1:
      raise PredictError("give exactly one input: --wav FILE --text \"...\", --manifest CSV, "
                         "--wav_dir DIR --transcripts FILE, or (CEBS) --npy MODE1.npy MODE2.npy.")
    if args.wav and args.text is None:
      raise PredictError("--wav needs --text \"<transcript>\" (the model uses audio and text).")
    if args.wav_dir and not args.transcripts:
      raise PredictError("--wav_dir needs --transcripts FILE (lines '<file or stem> <text>').")
    if args.output:
      _check_output(args.output)  # before any work that a failed write would throw away
    rows = None
    if args.manifest:
      rows, source = read_manifest_rows(args.manifest), f"--manifest={args.manifest}"
    elif args.wav_dir:
      rows = read_wav_dir_rows(args.wav_dir, args.transcripts)
      source = f"--transcripts={args.transcripts}"
    predictor = load(args.workdir, args.fusion, args.fold, args.checkpoint, args.batch_size)
    print(f"{predictor.describe()} from {args.workdir}", file=sys.stderr, flush=True)
    if (predictor.input_kind == "modes") != bool(args.npy):
      if args.npy:
        raise PredictError("--npy is for CEBS models; this workdir's model takes audio and text "
                           "(--wav/--text, --manifest or --wav_dir).")
      raise PredictError(f"this workdir holds a CEBS model, which takes physiological windows, "
                         f"not audio: pass --npy with one .npy per mode "
                         f"({' '.join(predictor.mode_names)}), or use the Python API "
                         "predict.load(workdir)(*mode_arrays).")
    if args.npy:
      probs = predictor(*read_npy_modes(args.npy))
      text = format_modes_csv(probs, predictor.classes)
    elif args.wav:
      probs = predictor.predict_files([args.wav], [args.text])
    else:
      total = len(rows)
      rows, waves, bad = _decode_rows(rows, predictor.sample_rate, args.strict, source)
      probs = predictor(waves, [r.text for r in rows])
      text = format_csv([r.path for r in rows], [r.text for r in rows], probs, predictor.classes)
  except (PredictError, FileNotFoundError, NotADirectoryError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  if args.wav:
    row = probs[0]
    print(f"{args.wav}: {predictor.classes[int(np.argmax(row))]}  ("
          + ", ".join(f"{c} {x:.4f}" for c, x in zip(predictor.classes, row)) + ")")
    return 0
  if args.output:
    try:
      with open(args.output, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    except OSError as e:
      print(f"error: cannot write --output={args.output!r} ({e.strerror or e}).", file=sys.stderr,
            flush=True)
      return 2
    print(f"wrote {len(probs)} rows to {args.output}")
  else:
    sys.stdout.write(text)
  if bad:
    print(f"error: {_bad_rows_message(bad, total, source)} Fix or remove them and rerun "
          "(--strict stops at the first one).", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(run())
