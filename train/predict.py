r"""The inference command line: class probabilities from a training workdir
(``train.inference``), for (wav, transcript) pairs or for arrays such as CEBS windows.

  python -m train.predict --workdir=runs/demo --wav a.wav --text "I can't believe it"
  python -m train.predict --workdir=runs/demo --manifest pairs.csv --output probs.csv
  python -m train.predict --workdir=runs/demo --wav_dir wavs/ --transcripts texts.txt
  python -m train.predict --workdir=runs/cebs --npy ecg.npy resp.npy      (CEBS)

Which inputs apply is what the workdir's model family declares (its ``raw_inputs``): ``--wav``,
``--manifest`` and ``--wav_dir`` for a model that takes a waveform and a transcript (DMF, MBAF
IEMOCAP); ``--npy`` for a model whose inputs are all arrays (CEBS: one per mode of the run's
pair, F-IV: ECG then RESP).

``--manifest``: a CSV with a header and columns ``wav,text``, or a training manifest as it is
(``mbaf_jax.data.manifest``: columns ``audio,text,label,group``, CSV/TSV or JSONL); relative paths
are relative to the manifest's folder. A bad row (empty path or text, a line that is not a JSON
object, a missing or unreadable audio file) is left out and reported by line with its reason;
the other rows are written and the exit status is 1 (``--strict``: stop at the first bad row,
exit 2). ``--output`` is checked for writability before anything is computed. ``--wav_dir`` +
``--transcripts``: a text file of lines ``<file name or stem> <transcript>`` (first whitespace
separates them; a line naming no file is a bad row, as above). Batch modes print a CSV
(``wav,text,pred,p_<class>...``) to stdout or write it to ``--output``. ``--npy``: one ``.npy``
file per input, each ``(N,) + shape`` (CEBS: ``(N, 6, 1000)`` windows, or one ``(6, 1000)``
window, cut and normalised as ``mbaf_jax.data.cebs.load_cebs`` does); prints a CSV
``row,pred,p_<class>...``.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from typing import NamedTuple, Sequence

import numpy as np

from mbaf_jax.data import manifest as manifest_lib
from mbaf_jax.errors import UserError
from train import cli
from train import inference
from train.inference import PredictError

MANIFEST_HINT = ("predict reads the columns 'wav' and 'text' (or 'audio' and 'text', as a "
                 "training manifest names them) from a header row (CSV) or from each JSON object "
                 "(.jsonl).")


class InputRow(NamedTuple):
  """One input of a batch mode (a manifest row or a ``--transcripts`` line)."""
  line: int  # line number in the manifest / transcripts file (1-based; a CSV's header is 1)
  path: str  # the audio file (resolved)
  text: str  # its transcript
  problem: str  # why the row cannot be used ("" when it can)


def read_manifest_rows(path: str) -> list[InputRow]:
  """A manifest → one :class:`InputRow` per data row, bad rows included (with their problem).

  Accepts predict's own CSV (columns ``wav,text``) and a training manifest as it is (columns
  ``audio,text,label,group``, CSV/TSV or JSONL; other columns are ignored), read by
  ``mbaf_jax.data.manifest.read_manifest``. Relative paths are relative to the manifest's folder.

  Raises:
    PredictError: the file cannot be read, or has no audio-path or text column or no rows.
  """
  source = f"--manifest={path!r}"
  try:
    rows = manifest_lib.read_manifest(path, [("wav", "audio"), "text"], may_be_empty=("text",),
                                      path_columns=("wav",), source=source, hint=MANIFEST_HINT)
  except UserError as e:
    raise PredictError(str(e)) from None
  if not rows:
    raise PredictError(f"{source} has no data rows; {MANIFEST_HINT}")
  return [InputRow(r.line, r.values["wav"], r.values["text"], r.problem) for r in rows]


def read_wav_dir_rows(wav_dir: str, transcripts: str) -> list[InputRow]:
  """``--wav_dir`` + ``--transcripts`` (lines ``<file or stem> <text>``, the first run of
  whitespace between them, a tab included) → one :class:`InputRow` per non-empty line; a line
  naming no file of ``wav_dir``, or that is not UTF-8, has a problem (lines are split at LF, read
  as ``mbaf_jax.data.manifest.read_lines`` reads them).

  Raises:
    PredictError: ``wav_dir`` is not a directory, or ``transcripts`` cannot be read or is empty.
  """
  if not os.path.isdir(wav_dir):
    raise PredictError(f"--wav_dir={wav_dir!r} is not a directory.")
  source = f"--transcripts={transcripts!r}"
  try:
    lines = [(i, ln, ok) for i, ln, ok in manifest_lib.read_lines(transcripts, source) if ln.strip()]
  except UserError as e:
    raise PredictError(f"{e} Give a text file of lines '<wav file name or stem> <transcript>'.") from None
  files = {f: f for f in os.listdir(wav_dir)}
  files.update({os.path.splitext(f)[0]: f for f in os.listdir(wav_dir)})
  rows = []
  for i, ln, ok in lines:
    if not ok:
      rows.append(InputRow(i, "", "", "the line is not UTF-8 text"))
      continue
    name, text = (ln.strip().split(None, 1) + [""])[:2]  # the first run of whitespace separates them
    if name not in files:
      rows.append(InputRow(i, os.path.join(wav_dir, name), text.strip(),
                           f"names {name!r}, which is not a file in --wav_dir={wav_dir!r}"))
    else:
      rows.append(InputRow(i, os.path.join(wav_dir, files[name]), text.strip(), ""))
  if not rows:
    raise PredictError(f"--transcripts={transcripts!r} has no lines.")
  return rows


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
        waves.append(inference.read_waves([r.path], sample_rate)[0])
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


def format_npy_csv(probs, classes) -> str:
  """CSV text of ``--npy`` inputs: ``row,pred,p_<class>...`` one row per example."""
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["row", "pred"] + [f"p_{c}" for c in classes])
  for i, row in enumerate(probs):
    w.writerow([i, classes[int(np.argmax(row))]] + [f"{x:.6f}" for x in row])
  return buf.getvalue()


def _check_inputs(predictor: inference.Predictor, npy: bool) -> None:
  """Refuses an input format the model's declared inputs do not take."""
  media = [i.medium for i in predictor.inputs]
  takes = ", ".join(f"{i.name} ({i.medium})" for i in predictor.inputs)
  if media == ["audio", "text"] and npy:
    raise PredictError(f"--npy is for CEBS models and others whose inputs are all arrays; this "
                       f"workdir's model takes {takes} (--wav/--text, --manifest or --wav_dir).")
  if media == ["audio", "text"] or (npy and set(media) == {"array"}):
    return
  if set(media) == {"array"}:
    raise PredictError(f"this workdir's model takes arrays, not audio: pass --npy with one .npy "
                       f"per input ({' '.join(i.name for i in predictor.inputs)}), or use the "
                       "Python API train.inference.load(workdir)(*arrays).")
  raise PredictError(f"this workdir's model takes {takes}; the command line reads audio + text "
                     "or arrays only: use the Python API train.inference.load(workdir).")


def _parser() -> argparse.ArgumentParser:
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
  p.add_argument("--checkpoint", default="best", choices=inference.CHECKPOINT_SLOTS)
  p.add_argument("--batch_size", type=int, default=8)
  return p


def run(argv: Sequence[str] | None = None) -> int:
  """The command line (see module doc).

  Returns:
    The exit status: 0 every input predicted; 1 a batch mode (``--manifest``, ``--wav_dir``)
    left out some rows (the others are written; the bad ones are reported by line with their
    reason); 2 a user error (nothing predicted), including the first bad row under ``--strict``.
  """
  args = _parser().parse_args(argv)
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
    predictor = inference.load(args.workdir, args.fusion, args.fold, args.checkpoint,
                               args.batch_size)
    print(f"{predictor.describe()} from {args.workdir}", file=sys.stderr, flush=True)
    _check_inputs(predictor, bool(args.npy))
    if args.npy:
      probs = predictor(*inference.read_npy(args.npy, predictor.inputs))
      text = format_npy_csv(probs, predictor.classes)
    elif args.wav:
      probs = predictor.predict_files([args.wav], [args.text])
    else:
      total = len(rows)
      rows, waves, bad = _decode_rows(rows, predictor.sample_rate, args.strict, source)
      probs = predictor(waves, [r.text for r in rows])
      text = format_csv([r.path for r in rows], [r.text for r in rows], probs, predictor.classes)
  except (UserError, FileNotFoundError, NotADirectoryError) as e:
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


def main() -> None:
  """``python -m train.predict``: a Ctrl-C (nothing to save) stops at once with status 130."""
  cli.plain_warnings()
  try:
    status = run()
  except KeyboardInterrupt:
    print("\nstopped: interrupted; no output was written.", file=sys.stderr, flush=True)
    status = cli.INTERRUPTED
  cli.exit_now(status)


if __name__ == "__main__":
  main()
