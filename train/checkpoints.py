"""The training workdir's layout and its checkpoints: paths, config.json, fingerprint, save and
restore.

Workdir layout (every path is built here)::

  config.json                         the run's config, its model fingerprint and the fingerprint
                                      of the data it loaded (prepare_workdir, check_dataset)
  ckpt/<fusion>/<fold>/latest/<step>/  keep-N newest checkpoints (resume)
  ckpt/<fusion>/<fold>/best/<step>/    the best-by-validation-UA checkpoint (max_to_keep=1)

Each checkpoint holds two orbax items: ``"state"``, the ``TrainState.saveable()`` pytree (params,
optimiser state, batch stats, constants, memory, step, first non-finite step;
``ocp.args.StandardSave``), and ``"meta"``, a JSON dict (step, data position from
``Batcher.state()``, best validation UA so far, done flag, fold, fusion and the fingerprint of
the model config). :meth:`FoldCheckpointer.restore` is the one restore: the trainer resumes with
it and ``train.predict`` loads with it. It checks the fingerprint, then the saved shapes against
the target's, before orbax reads any array, so a checkpoint of another config fails with a clear
message instead of a shape error deep inside orbax; a checkpoint whose files cannot be read is
"damaged" (:class:`CheckpointDamagedError`), and :meth:`FoldCheckpointer.restore_latest` falls
back to the newest readable one. A rerun in a workdir resumes the same run or is refused
(:func:`prepare_workdir`, :func:`check_dataset`); a failed write is a one-paragraph
:class:`~mbaf_jax.errors.UserError` that says nothing saved is lost.
"""
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any, NamedTuple, Optional

import jax
import ml_collections as mlc
import numpy as np
import optax
import orbax.checkpoint as ocp

from configs.common import fusion_kinds
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory
from train import metrics as metrics_lib
from train import steps

CONFIG_FILE = "config.json"  # the run's config + fingerprint, in the workdir
CHECKPOINT_DIR = "ckpt"  # the checkpoints' root, in the workdir
KINDS = ("best", "latest")  # the two managers of a fold (and predict's --checkpoint choices)


# --------------------------------------------------------------------------- paths
def config_path(workdir: str) -> str:
  """``<workdir>/config.json``."""
  return os.path.join(workdir, CONFIG_FILE)


def checkpoint_root(workdir: str) -> str:
  """``<workdir>/ckpt``: one folder per fusion kind."""
  return os.path.join(workdir, CHECKPOINT_DIR)


def fusion_dir(workdir: str, fusion: str) -> str:
  """``<workdir>/ckpt/<fusion>``: one folder per fold."""
  return os.path.join(checkpoint_root(workdir), fusion)


def fold_dir(workdir: str, fusion: str, fold: str) -> str:
  """``<workdir>/ckpt/<fusion>/<fold>``: the directory of a :class:`FoldCheckpointer`."""
  return os.path.join(fusion_dir(workdir, fusion), fold)


def kind_dir(workdir: str, fusion: str, fold: str, kind: str) -> str:
  """``<workdir>/ckpt/<fusion>/<fold>/<kind>`` (kind "best" or "latest"): one orbax manager's
  directory, one ``<step>`` folder per checkpoint."""
  return os.path.join(fold_dir(workdir, fusion, fold), kind)


# --------------------------------------------------------------------------- orbax logs
class _QuietOrbax(logging.Filter):
  """Drops orbax's below-WARNING records (it logs every save/restore step at INFO through absl)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    where = f"{record.name} {record.pathname}".replace("\\", "/")
    if "/absl/" in where:  # absl's logger class was not installed: find the real caller
      where = _calling_file()
    return "orbax" not in where


def _calling_file() -> str:
  """The first stack frame outside the logging machinery and this module."""
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None:
    name = frame.f_code.co_filename.replace("\\", "/")
    if not ("/absl/" in name or "/logging/" in name or name == __file__):
      return name
    frame = frame.f_back
  return ""


_QUIET = _QuietOrbax()


def _closed_loop_noise(unraisable) -> bool:
  """Whether an unraisable exception is the "Event loop is closed" that tensorstore's late
  callbacks raise after orbax gave up reading a damaged checkpoint (its other reads still
  finish, into an event loop that is gone); the failure itself is reported, so these are noise."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


def _drop_closed_loop_noise() -> None:
  """Wraps ``sys.unraisablehook`` (once) so that :func:`_closed_loop_noise` is not printed as a
  traceback; every other unraisable exception is passed on."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_noise", False):
    return

  def hook(unraisable):
    if not _closed_loop_noise(unraisable):
      previous(unraisable)
  hook.drops_closed_loop_noise = True
  sys.unraisablehook = hook


def quiet_orbax_logs() -> None:
  """Silences orbax's INFO/DEBUG logs (idempotent); called by every :class:`FoldCheckpointer`, so
  every entry point that saves checkpoints (train.main, the trainer, predict, tests) is quiet
  while warnings and errors still show."""
  for name in ("absl", "orbax", "orbax.checkpoint"):
    logger = logging.getLogger(name)
    if _QUIET not in logger.filters:
      logger.addFilter(_QUIET)
  logging.getLogger("orbax").setLevel(logging.WARNING)


class CheckpointMismatchError(UserError):
  """A checkpoint in the workdir does not belong to this config.

  Attributes:
    problem: what does not match (the message without the advice), for callers that give
      their own advice (``train.predict``).
  """

  def __init__(self, problem: str, advice: str):
    super().__init__(f"{problem}. {advice}")
    self.problem = problem  # what does not match, without the advice


class CheckpointDamagedError(UserError):
  """A checkpoint cannot be read (a missing or truncated array file, a damaged ``meta``): unlike
  :class:`CheckpointMismatchError`, it belongs to this config, and an older one may be read.

  Attributes:
    step: the damaged checkpoint's step.
    reason: what failed (the exception's type and message).
  """

  def __init__(self, where: str, step: int, reason: str):
    super().__init__(f"the checkpoint {where} cannot be read ({reason}); it is damaged. Delete "
                     "that folder to use the previous checkpoint, or use a fresh --workdir.")
    self.step = step  # the damaged checkpoint's step
    self.reason = reason  # the exception's type and message


class CheckpointWriteError(UserError):
  """Writing a checkpoint failed (disk full, read-only file system, no permission)."""


# Substrings of the messages of errors that orbax / tensorstore raise for a failed write (they
# do not always keep the OSError).
_WRITE_FAULTS = ("No space left", "Read-only file system", "Permission denied", "Disk quota")


def model_fingerprint(config) -> str:
  """A hash of everything that fixes the shapes of the saved state (model, optimiser, and the
  data shapes: the model family's ``DATA_FIELDS`` of ``config.data``); changing any of it makes
  old checkpoints unusable. Left out: ``model.text.glove`` (a file path that only initialises
  the embedding at step 0; a checkpoint holds the trained one, so a moved GloVe file must not
  refuse a resume) and ``model.dtype`` (the compute dtype; everything saved is float32 either
  way, so a run may resume in bfloat16 or back), and the options of fusion layers the run does
  not train (``model.fusion`` keeps only the kinds in ``config.fusions``)."""
  model = {k: v for k, v in config.model.to_dict().items() if k != "dtype"}
  kinds = set(fusion_kinds(config))
  if kinds and isinstance(model.get("fusion"), dict):
    model["fusion"] = {k: v for k, v in model["fusion"].items() if k in kinds}
  if isinstance(model.get("text"), dict):
    model["text"] = {k: v for k, v in model["text"].items() if k != "glove"}
  data_fields = factory.family(config.model.name).DATA_FIELDS
  relevant = {"model": model, "optim": config.optim.to_dict(),
              "shapes": {k: config.data[k] for k in data_fields}}
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
# What --config.train.restart=True removes from a workdir (a file, a folder, or a file pattern).
RUN_OUTPUTS = ("ckpt", "tb", "metrics.json", "confusion_*.png", CONFIG_FILE)
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
  """Removes the previous run of ``workdir`` (:data:`RUN_OUTPUTS`; also the generated synthetic
  corpus ``data/`` when the data set or its size changed) and says so in one line."""
  removed = []
  names = list(RUN_OUTPUTS)
  od, nd = (old or {}).get("data", {}), new.get("data", {})
  if old and not nd.get("data_dir") and any(od.get(k) != nd.get(k)
                                             for k in ("dataset", "synthetic_size")):
    names.append("data")
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


def prepare_workdir(workdir: str, config, write: bool = True, report=print) -> None:
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
    config: the run's config; ``config.train.restart`` True removes the workdir's previous run
      (:data:`RUN_OUTPUTS`: checkpoints, TensorBoard events, metrics, confusion PNGs,
      config.json; also the generated synthetic corpus when its data set or size changed, never
      the audio cache) and starts afresh.
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
  path = config_path(workdir)
  new = json.loads(config.to_json_best_effort())
  restart = bool(config.train.get("restart", False))
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
    elif stored.get("fingerprint") not in (None, model_fingerprint(config)):
      differences = [("model/optimiser fingerprint", stored.get("fingerprint"),
                      model_fingerprint(config))]
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
    record = {"fingerprint": model_fingerprint(config), "config": new}
    if stored and DATA_FINGERPRINT in stored:
      record[DATA_FINGERPRINT] = stored[DATA_FINGERPRINT]
    try:
      os.makedirs(workdir, exist_ok=True)
      metrics_lib.write_json(path, record)
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
  path = config_path(workdir)
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
        os.path.join(workdir, "data")
    counts = lambda fp: fp.rsplit(", ", 1)[0]  # noqa: E731
    raise UserError(
        f"the data under {data_dir} changed since this workdir was written: {counts(fingerprint)} "
        f"now vs {counts(old)} then (labels, folds or inputs differ); its checkpoints and results "
        "belong to the old data. Restore the data, pass --workdir=<a new folder>, or "
        "--config.train.restart=True to start afresh on the new data.")
  if write:
    try:
      metrics_lib.write_json(path, dict(stored, **{DATA_FINGERPRINT: fingerprint}))
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
  path = config_path(workdir)
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


# --------------------------------------------------------------------------- save / restore
def _json_safe(obj):
  return json.loads(json.dumps(obj, default=str))


def inference_target(model, batch: dict) -> dict:
  """The restore target of a checkpoint used for inference: the model's variables as shapes
  (``jax.eval_shape``, nothing computed), the optimiser state as saved (``opt_state`` None: see
  :meth:`FoldCheckpointer.restore`), so inference needs no optimiser.

  Args:
    model: the full model.
    batch: a batch of the model's inputs with ``"mask"`` (shapes only matter).

  Returns:
    A ``TrainState.saveable()``-shaped dict of ``jax.ShapeDtypeStruct`` leaves.
  """
  variables = steps.abstract_variables(model, batch, jax.random.key(0))
  state = jax.eval_shape(lambda v: steps.create_state(v, optax.identity()), variables)
  return state.replace(opt_state=None).saveable()


class FoldCheckpointer:
  """Two orbax managers under ``directory``: ``latest/`` (keep-N, resume) and ``best/``
  (max_to_keep=1, ``best_fn`` = validation UA).

  Args:
    directory: the fold's directory (:func:`fold_dir`).
    keep: how many ``latest`` checkpoints to keep (``config.train.keep_checkpoints``).
    fingerprint: :func:`model_fingerprint` of the config; saved in every checkpoint's meta and
      checked on restore ("" saves none and checks none).
    create: False opens the managers without creating their directories (reading only).

  Raises:
    ValueError: ``keep`` < 1.
  """

  def __init__(self, directory: str, keep: int = 2, fingerprint: str = "", create: bool = True):
    if keep < 1:
      raise ValueError(f"config.train.keep_checkpoints={keep} must be >= 1.")
    quiet_orbax_logs()
    _drop_closed_loop_noise()
    self.directory = os.path.abspath(directory)
    self.fingerprint = fingerprint
    opts = dict(enable_async_checkpointing=False, create=create)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.directory, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts),
        item_handlers=self._handlers())
    self.best = ocp.CheckpointManager(
        os.path.join(self.directory, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["val_ua"],
                                             best_mode="max", **opts),
        item_handlers=self._handlers())

  @staticmethod
  def _handlers():
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}

  def _args(self, state_tree, meta):
    meta = dict(meta, fingerprint=self.fingerprint)
    return ocp.args.Composite(state=ocp.args.StandardSave(state_tree),
                              meta=ocp.args.JsonSave(_json_safe(meta)))

  def _manager(self, kind: str) -> ocp.CheckpointManager:
    if kind not in KINDS:
      raise ValueError(f"checkpoint kind {kind!r}; expected one of {KINDS}.")
    return self.best if kind == "best" else self.latest

  def _save(self, kind: str, step: int, state_tree, meta: dict, **metrics) -> None:
    """One orbax save; a failed write is a :class:`CheckpointWriteError` (the previous
    checkpoints stay intact: orbax writes into a temporary folder and renames it at the end)."""
    manager = self._manager(kind)
    try:
      manager.save(step, args=self._args(state_tree, meta), **metrics)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not (isinstance(e, OSError) or any(f in str(e) for f in _WRITE_FAULTS)):
        raise
      reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
      raise CheckpointWriteError(
          f"cannot write the {kind} checkpoint of step {step} in {manager.directory} "
          f"({reason}). Nothing is lost: the previous checkpoints are intact. Free disk space or "
          "fix the folder's permissions, then rerun the same command to resume from the last "
          "checkpoint.") from None

  def save_latest(self, step: int, state_tree, meta: dict) -> None:
    """Saves (an existing checkpoint of the same step is kept).

    Raises:
      CheckpointWriteError: the write failed (disk full, read-only, no permission).
    """
    if step in self.latest.all_steps():
      return
    self._save("latest", step, state_tree, meta)

  def save_best(self, step: int, state_tree, meta: dict, val_ua: float) -> None:
    """Offers a checkpoint to the best-by-UA manager (kept only if it is the best so far).

    Raises:
      CheckpointWriteError: the write failed (disk full, read-only, no permission).
    """
    if step in self.best.all_steps():
      return
    self._save("best", step, state_tree, meta, metrics={"val_ua": float(val_ua)})

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    return self.best.best_step()

  def step(self, kind: str) -> Optional[int]:
    """The step of the ``kind`` ("best" or "latest") checkpoint, or None when there is none."""
    return self.best_step() if kind == "best" else self._manager(kind).latest_step()

  def find(self, kind: str = "best") -> Optional[tuple[str, int]]:
    """``(kind, step)`` of the checkpoint to load: ``kind``'s, or the latest one when a "best"
    is asked for and there is none (a run without a validation set); None when there is none."""
    for k in (kind, "latest"):
      step = self.step(k)
      if step is not None:
        return k, step
    return None

  def path(self, kind: str, step: int) -> str:
    """``<directory>/<kind>/<step>``: the folder of one checkpoint."""
    return os.path.join(self._manager(kind).directory, str(step))

  def restore(self, kind: str, step: int, target) -> tuple[Any, dict]:
    """Reads one checkpoint into the shapes of ``target``.

    Args:
      kind: "best" or "latest".
      step: the checkpoint's step (:meth:`find`, :meth:`step`).
      target: a ``TrainState`` or its ``saveable()`` dict (arrays or ``jax.ShapeDtypeStruct``
        leaves); a top-level entry that is None (e.g. ``opt_state`` for inference:
        :func:`inference_target`) is read as saved, unchecked.

    Returns:
      ``(state_tree, meta)``: the saveable dict (``TrainState.from_saved`` makes the state)
      and the JSON meta item.

    Raises:
      CheckpointMismatchError: the checkpoint's fingerprint differs from this checkpointer's,
        or its arrays differ from the target's in number or shapes (another config wrote it).
      CheckpointDamagedError: the checkpoint cannot be read (its meta, its array metadata or an
        array file is missing or damaged) although its shapes fit.
    """
    manager = self._manager(kind)
    where = self.path(kind, step)

    def damaged(e):
      return CheckpointDamagedError(where, step, f"{type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''}")

    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      if not isinstance(meta, dict):
        raise ValueError(f"meta is a {type(meta).__name__}, not a JSON object")
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      raise damaged(e) from e
    found = meta.get("fingerprint")
    if self.fingerprint and found != self.fingerprint:
      raise CheckpointMismatchError(
          f"the checkpoint {where} was written by a run with a different model/optimiser config "
          f"(fingerprint {found} vs {self.fingerprint} now)",
          "Use a fresh --workdir for a new configuration, or run with the config that wrote it "
          "(its copy is in the workdir's config.json).")
    try:
      saved = manager.item_metadata(step)["state"]
      saved = getattr(saved, "tree", saved)
      if not saved:
        raise FileNotFoundError("the state item's metadata is missing")
    except Exception as e:  # pylint: disable=broad-except
      raise damaged(e) from e
    if isinstance(target, steps.TrainState):
      target = target.saveable()
    abstract = {k: jax.tree.map(_as_saved if v is None else ocp.utils.to_shape_dtype_struct,
                                saved.get(k) if v is None else v)
                for k, v in target.items()}
    have = sorted(str(tuple(x.shape)) for x in jax.tree.leaves(saved))
    want = sorted(str(tuple(x.shape)) for x in jax.tree.leaves(abstract))
    if have and have != want:
      raise CheckpointMismatchError(
          f"the checkpoint {where} does not match this model's state ({len(have)} saved arrays "
          f"vs {len(want)} expected, or different shapes): it was written by another model "
          "configuration", "Use a fresh --workdir.")
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # pylint: disable=broad-except  (shapes fit: the files are damaged)
      raise damaged(e) from e
    return restored, meta

  def restore_latest(self, target, report=print) -> Optional[tuple[Any, dict]]:
    """``(state_tree, meta)`` of the newest readable "latest" checkpoint, or None.

    A damaged checkpoint (:class:`CheckpointDamagedError`) is deleted and the next older kept
    one is tried; ``report`` gets one line saying which step was damaged and why, and which step
    the fold resumes from (or that it starts from step 0 when none is readable).

    Args:
      target: as :meth:`restore`.
      report: prints one line (the trainer passes its ``RunOutput.say``).

    Returns:
      ``(state_tree, meta)``, or None when there is no readable checkpoint.

    Raises:
      CheckpointMismatchError: a checkpoint of another config (never skipped).
    """
    damaged = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.restore("latest", step, target)
      except CheckpointDamagedError as e:
        damaged.append(e)
        shutil.rmtree(self.path("latest", step), ignore_errors=True)  # lets the step be saved again
        self.latest.reload()
        continue
      if damaged:
        report(f"{self._damage_note(damaged)}; resuming from step {step}, the newest readable "
               "checkpoint.")
      return restored
    if damaged:
      report(f"{self._damage_note(damaged)}; no readable checkpoint is left, so this fold starts "
             "again from step 0.")
    return None

  def _damage_note(self, damaged: list) -> str:
    steps_ = ", ".join(str(e.step) for e in damaged)
    return (f"the checkpoint(s) of step {steps_} in {os.path.join(self.directory, 'latest')} "
            f"could not be read ({damaged[0].reason}) and were removed")

  def restore_best(self, target) -> Optional[tuple[Any, dict]]:
    """``(state_tree, meta)`` of the best-by-validation-UA checkpoint, or None."""
    step = self.best_step()
    return None if step is None else self.restore("best", step, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _as_saved(leaf_metadata) -> jax.ShapeDtypeStruct:
  """A saved array's metadata → the host-array target orbax reads it into."""
  return jax.ShapeDtypeStruct(tuple(leaf_metadata.shape), leaf_metadata.dtype)


# --------------------------------------------------------------------------- finding
class CheckpointRef(NamedTuple):
  """Which checkpoint of a workdir :func:`find_checkpoint` picked."""
  fusion: str  # fusion kind (ckpt/<fusion>)
  fold: str  # fold name (ckpt/<fusion>/<fold>)
  kind: str  # "best" or "latest" (the one found, after the fallback)
  step: int  # the checkpoint's training step


def _subdirs(path: str) -> list[str]:
  return [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))] \
      if os.path.isdir(path) else []


def _pick(options: list[str], wanted: Optional[str], what: str, where: str) -> str:
  if not options:
    raise UserError(f"no checkpoints found in {where}: the run wrote none yet (train longer, or "
                    "check --workdir).")
  if wanted is None:
    return sorted(options)[0]
  if wanted not in options:
    raise UserError(f"--{what}={wanted!r} has no checkpoints in {where}; available: "
                    f"{sorted(options)}.")
  return wanted


def find_checkpoint(workdir: str, fusion: Optional[str] = None, fold: Optional[str] = None,
                    kind: str = "best") -> CheckpointRef:
  """Locates the checkpoint to load in a training workdir.

  Args:
    workdir: the training workdir.
    fusion: fusion kind (default: the first in alphabetical order that has checkpoints).
    fold: fold name (default: the first in alphabetical order).
    kind: "best" (by validation UA; falls back to "latest" when the run had no validation set)
      or "latest".

  Returns:
    The :class:`CheckpointRef`; open it with ``FoldCheckpointer(fold_dir(workdir, ref.fusion,
    ref.fold), create=False)``.

  Raises:
    UserError: an unknown kind, fusion or fold, or no finished checkpoint (messages name
      ``train.predict``'s flags).
  """
  if kind not in KINDS:
    raise UserError(f"--checkpoint={kind!r}; expected one of {KINDS}.")
  root = checkpoint_root(workdir)
  fusion = _pick(_subdirs(root), fusion, "fusion", root)
  where = fusion_dir(workdir, fusion)
  fold = _pick(_subdirs(where), fold, "fold", where)
  ck = FoldCheckpointer(fold_dir(workdir, fusion, fold), create=False)
  try:
    found = ck.find(kind)
  finally:
    ck.close()
  if found is None:
    raise UserError(f"no finished checkpoint in {fold_dir(workdir, fusion, fold)} (best/ and "
                    "latest/ are empty or missing); the run may have been stopped before its "
                    "first save.")
  return CheckpointRef(fusion, fold, *found)
