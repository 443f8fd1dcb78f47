"""A run's identity: what makes a rerun in a workdir the same run (resumed) or another one
(refused, naming the fields), the restart that clears a workdir, and the fingerprints of the model
and of the data a run loaded, stored in config.json.
"""
import glob
import hashlib
import json
import os
import shutil
from typing import Any, Optional

import ml_collections as mlc
import numpy as np

from configs.common import fusion_kinds
from mbaf_jax.errors import UserError
from train import workdir as workdir_lib


def model_fingerprint(record: dict, data_fields) -> str:
  """A hash of everything that fixes the shapes of the saved state (model, optimiser, and the
  data shapes: the model family's ``DATA_FIELDS`` of ``data``); changing any of it makes
  old checkpoints unusable. Left out: ``model.text.glove`` (a file path that only initialises
  the embedding at step 0; a checkpoint holds the trained one, so a moved GloVe file must not
  refuse a resume) and ``model.dtype`` (the compute dtype; everything saved is float32 either
  way, so a run may resume in bfloat16 or back), and the options of fusion layers the run does
  not train (``model.fusion`` keeps only the kinds in ``config.fusions``)."""
  model = {k: v for k, v in record["model"].items() if k != "dtype"}
  kinds = set(fusion_kinds(record))
  if kinds and isinstance(model.get("fusion"), dict):
    model["fusion"] = {k: v for k, v in model["fusion"].items() if k in kinds}
  if isinstance(model.get("text"), dict):
    model["text"] = {k: v for k, v in model["text"].items() if k != "glove"}
  relevant = {"model": model, "optim": record["optim"],
              "shapes": {k: record["data"][k] for k in data_fields}}
  text = json.dumps(relevant, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- config.json
# Config fields a rerun may change without refusing: none of them changes which steps run, what
# they compute, or which state is "best" (prepare_workdir's docstring gives the rule).
FREE_FIELDS = frozenset({
    "name",  # the experiment's label in metrics.json
    "fusions",  # each fusion kind has its own ckpt/<fusion>; a kind's options are compared
    "data.cache_dir",  # where decoded audio is cached (the audio is the same)
    "data.strict",  # only whether a skipped item is an error (the data fingerprint checks the rest)
    "model.dtype",  # compute dtype; the state is saved in float32 (model_fingerprint)
    "model.text.glove",  # a file path; the trained embedding is in the checkpoint
    "train.eval_batch_size",  # evaluation rows per call (padded and masked)
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.num_devices", "train.parallelism", "train.concurrent_kinds",  # equal results
    "train.progress", "train.restart",  # what is shown; the restart request itself
})
DATA_FINGERPRINT = "data_fingerprint"  # config.json key of dataset_fingerprint()


def _flatten(tree, prefix: str = "") -> dict:
  """A nested config dict → ``{"a.b.c": value}`` (tuples and lists compared as lists)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out if out or not prefix else {prefix[:-1]: {}}
  return {prefix[:-1]: list(tree) if isinstance(tree, (tuple, list)) else tree}


def _fusion_option_is_free(key: str, old: dict, new: dict) -> bool:
  """Options of a fusion kind that one of the two runs does not train never refuse."""
  parts = key.split(".")
  if len(parts) < 3 or parts[:2] != ["model", "fusion"]:
    return False
  kinds = [set(k.strip() for k in str(c.get("fusions", "")).split(",") if k.strip())
           for c in (old, new)]
  return not (parts[2] in kinds[0] and parts[2] in kinds[1])


def config_differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """The fields that make two runs different runs.

  Args:
    old: the config stored in a workdir's config.json (a dict).
    new: this run's config, as a dict (``json.loads(config.to_json_best_effort())``).

  Returns:
    ``[(field, old value, new value)]`` of every field outside :data:`FREE_FIELDS` (and outside
    the options of a fusion kind that one of the runs does not train) whose value differs, in
    sorted order; a field missing on one side has the value ``"(absent)"``.
  """
  a, b = _flatten(old), _flatten(new)
  out = []
  for key in sorted(set(a) | set(b)):
    x, y = a.get(key, "(absent)"), b.get(key, "(absent)")
    if x == y or key in FREE_FIELDS or _fusion_option_is_free(key, old, new):
      continue
    out.append((key, x, y))
  return out


def _describe(differences: list) -> str:
  return ", ".join(f"{k}: {x!r} then, {y!r} now" for k, x, y in differences)


def _writable(path: str) -> Optional[str]:
  """The folder that makes ``path`` unwritable (``path`` itself when it exists, else its
  nearest existing parent), or None when it can be created and written."""
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  return None if os.access(probe, os.W_OK | os.X_OK) else probe


def _remove_run(workdir: str, old: Optional[dict], new: dict, report) -> None:
  """Removes the previous run of ``workdir`` (``workdir.RUN_OUTPUTS``; also the generated synthetic
  corpus ``data/`` when the data set or its size changed) and says so in one line."""
  removed = []
  names = list(workdir_lib.RUN_OUTPUTS)
  od, nd = (old or {}).get("data", {}), new.get("data", {})
  if old and not nd.get("data_dir") and any(od.get(k) != nd.get(k)
                                             for k in ("dataset", "synthetic_size")):
    names.append(workdir_lib.DATA_DIR)
  for name in names:
    for path in sorted(glob.glob(os.path.join(glob.escape(workdir), name))):
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
      removed.append(os.path.basename(path))
  report(f"config.train.restart=True: removed the previous run from {workdir} "
         f"({', '.join(removed) or 'nothing there'}); starting afresh.")


def _os_error(what: str, path: str, e: OSError) -> UserError:
  """A write that failed (disk full, read-only, no permission) as one paragraph."""
  return UserError(f"cannot {what} {path} ({e.strerror or e}); nothing already saved is lost. "
                   "Free disk space or fix the folder's permissions, then rerun the same command "
                   "to resume (or pass a writable --workdir).")


def prepare_workdir(workdir: str, record: dict, fingerprint: str, write: bool = True,
                    report=print) -> None:
  """Creates the workdir and stores the config in its config.json, or refuses a rerun that
  would mix two different runs.

  The rule: a rerun in a workdir that holds a config.json resumes it when every field that can
  change a result is equal: the seed, the schedule (``train.epochs``, ``max_steps``,
  ``batch_size``, ``eval_every_epochs``), the data (every ``data.*`` field: dataset, data_dir,
  protocol, validation, max_folds, max_examples, synthetic, synthetic_size, mode_pair, ...), the
  model and the optimiser. The fields of :data:`FREE_FIELDS` may change (they only change what
  is shown or logged, how often a checkpoint is written, the device layout, the compute dtype,
  file locations, or the label), and so may the options of a fusion kind that one of the two
  runs does not train. Anything else refuses with one paragraph naming each differing field
  with its old and new values, and config.json is left as it was. The data actually loaded is
  checked later, by :func:`check_dataset`.

  Args:
    workdir: the training workdir (created when missing).
    record: the run's config as JSON (``RunPlan.record``); its ``train.restart`` True removes
      the workdir's previous run
      (``workdir.RUN_OUTPUTS``: checkpoints, TensorBoard events, metrics, confusion PNGs,
      config.json; also the generated synthetic corpus when its data set or size changed, never
      the audio cache) and starts afresh.
    fingerprint: :func:`model_fingerprint` of ``record``.
    write: False checks only (processes other than 0 of a multi-host run).
    report: prints the one line that says what a restart removed.

  Raises:
    UserError: the workdir is empty, a file, not writable (or its parent, when it does not
      exist yet), holds a config.json that is not JSON, or holds a different run.
  """
  if not workdir:
    raise UserError("--workdir is empty; give a directory for checkpoints and metrics.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir!r} is a file, not a directory. Pass a new or existing "
                    "directory (it will hold checkpoints, metrics.json and TensorBoard events).")
  blocked = _writable(workdir)
  if blocked is not None:
    raise UserError(f"--workdir={workdir!r} cannot be written: {blocked!r} is read-only or not "
                    "yours. Pass a --workdir in a writable folder, or fix its permissions.")
  path = workdir_lib.config_path(workdir)
  new = record
  restart = bool(record["train"]["restart"])
  stored = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        stored = json.load(f)
    except (OSError, ValueError) as e:
      if not restart:
        raise UserError(f"{path} exists but is not readable JSON ({e}); remove it, use a fresh "
                        "--workdir, or pass --config.train.restart=True.") from e
  if restart and write and os.path.isdir(workdir):
    _remove_run(workdir, (stored or {}).get("config"), new, report)
    stored = None
  elif stored is not None and not restart:
    if isinstance(stored.get("config"), dict):
      differences = config_differences(stored["config"], new)
    elif stored.get("fingerprint") not in (None, fingerprint):
      differences = [("model/optimiser fingerprint", stored.get("fingerprint"), fingerprint)]
    else:
      differences = []
    if differences:
      model = any(k.split(".")[0] in ("model", "optim") for k, _, _ in differences)
      raise UserError(
          f"--workdir={workdir!r} holds a different run "
          f"({'of a different model/optimiser config; ' * model}its config.json differs in "
          f"{_describe(differences)}); resuming it would mix the two runs' checkpoints and "
          "results. Pass --workdir=<a new folder> for the new run, or "
          "--config.train.restart=True to delete that run (checkpoints, metrics, TensorBoard "
          "events) and start afresh; config.json was left as it was.")
  if write:
    content = {"fingerprint": fingerprint, "config": new}
    if stored and DATA_FINGERPRINT in stored:
      content[DATA_FINGERPRINT] = stored[DATA_FINGERPRINT]
    try:
      os.makedirs(workdir, exist_ok=True)
      workdir_lib.write_json(path, content)
    except OSError as e:
      raise _os_error("write", path, e) from None


def dataset_fingerprint(labels, folds, inputs) -> str:
  """A hash of the data set a run loaded: its labels, every fold's name and indices, and every
  input array (``blake2b`` over the bytes; an array over 256 MB is hashed over an even stride of
  its rows, plus its shape).

  Args:
    labels: (N,) labels.
    folds: ``mbaf_jax.data.folds.Fold`` s (``name``, ``train``, ``val``, ``test``).
    inputs: the model-input arrays (a dict of arrays, or of tuples of arrays).

  Returns:
    ``"<N> examples, <K> folds, <hex digest>"`` (:func:`check_dataset` reads the counts back).
  """
  h = hashlib.blake2b(digest_size=16)

  def add(x):
    x = np.asarray(x)
    h.update(f"{x.dtype}{x.shape}".encode())
    if x.dtype == object:
      h.update(repr(x.tolist()).encode())
      return
    if x.nbytes > _HASH_BYTES and x.ndim and len(x) > 1:
      x = x[::-(-x.nbytes // _HASH_BYTES)]
    h.update(np.ascontiguousarray(x).data)

  add(labels)
  for fold in folds:
    h.update(str(fold.name).encode())
    for part in (fold.train, fold.val, fold.test):
      add(np.asarray(part, np.int64))
  for key in sorted(inputs):
    for x in inputs[key] if isinstance(inputs[key], tuple) else (inputs[key],):
      h.update(str(key).encode())
      add(x)
  return f"{len(labels)} examples, {len(folds)} folds, {h.hexdigest()}"


_HASH_BYTES = 256 << 20  # an input array larger than this is hashed over a stride of its rows


def check_dataset(workdir: str, fingerprint: str, write: bool = True) -> None:
  """Compares the data set just loaded with the one the workdir's run was trained on.

  Args:
    workdir: the training workdir (its config.json, written by :func:`prepare_workdir`).
    fingerprint: :func:`dataset_fingerprint` of the data set just loaded.
    write: True stores ``fingerprint`` in config.json when it holds none yet (the first run);
      False checks only.

  Raises:
    UserError: config.json holds another data fingerprint (the data under ``data_dir``
      changed since the run started), or it cannot be written.
  """
  path = workdir_lib.config_path(workdir)
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return  # prepare_workdir wrote it, or refused; nothing to compare with
  old = stored.get(DATA_FINGERPRINT)
  if old == fingerprint:
    return
  if old is not None:
    data_dir = stored.get("config", {}).get("data", {}).get("data_dir") or \
        workdir_lib.data_dir(workdir)
    counts = lambda fp: fp.rsplit(", ", 1)[0]  # noqa: E731
    raise UserError(
        f"the data under {data_dir} changed since this workdir was written: {counts(fingerprint)} "
        f"now vs {counts(old)} then (labels, folds or inputs differ); its checkpoints and results "
        "belong to the old data. Restore the data, pass --workdir=<a new folder>, or "
        "--config.train.restart=True to start afresh on the new data.")
  if write:
    try:
      workdir_lib.write_json(path, dict(stored, **{DATA_FINGERPRINT: fingerprint}))
    except OSError as e:
      raise _os_error("write", path, e) from None


def read_workdir_config(workdir: str) -> tuple[mlc.ConfigDict, Optional[str]]:
  """The config a training run stored in its workdir.

  Args:
    workdir: the training workdir.

  Returns:
    ``(config, fingerprint)``; the fingerprint is None in a config.json without one.

  Raises:
    UserError: the workdir is empty, missing or a file, or its config.json is missing or
      unreadable.
  """
  if not workdir:
    raise UserError("--workdir is empty; pass the directory a training run wrote "
                    "(it holds config.json and ckpt/).")
  if not os.path.isdir(workdir):
    what = "is a file" if os.path.exists(workdir) else "does not exist"
    raise UserError(f"workdir {workdir!r} {what}; pass the directory of a training run "
                    "(python -m train.main --workdir=...), which holds config.json and ckpt/.")
  path = workdir_lib.config_path(workdir)
  try:
    with open(path) as f:
      stored = json.load(f)
    config = mlc.ConfigDict(stored["config"])
  except FileNotFoundError:
    raise UserError(f"{path} not found: {workdir!r} is not a training workdir (train first with "
                    "python -m train.main --workdir=...).") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is not a readable training config ({type(e).__name__}: {e}); "
                    "it should be the config.json written by train.main.") from None
  return config, stored.get("fingerprint")


