"""A fold's orbax checkpoints: save, restore with checks, fall back past a damaged one, find.

A fold has two checkpoint slots (``workdir.slot_dir``): ``latest/`` (keep-N, the resume point) and
``best/`` (the best by validation UA). Each checkpoint holds two orbax items: ``"state"``, the
``TrainState.saveable()`` pytree (``ocp.args.StandardSave``), and ``"meta"``, a JSON dict (step,
data position from ``Batcher.state()``, best validation UA so far, done flag, fold, fusion and
the model fingerprint). :meth:`FoldCheckpointer.restore` is the one restore: training resumes
with it and inference loads with it. It checks the fingerprint, then the saved shapes against the
target's, before orbax reads any array, so a checkpoint of another config fails with a clear
message instead of a shape error deep inside orbax; a checkpoint whose files cannot be read is
"damaged" (:class:`CheckpointDamagedError`), and :meth:`FoldCheckpointer.restore_latest` falls
back to the newest readable one. A failed write is a one-paragraph
:class:`~mbaf_jax.errors.UserError` that says nothing saved is lost.
"""
import logging
import os
import shutil
import sys
import json
from typing import Any, NamedTuple, Optional

import jax
import optax
import orbax.checkpoint as ocp

from mbaf_jax.errors import UserError
from train import steps
from train import workdir as workdir_lib

SLOTS = ("best", "latest")  # a fold's two checkpoint slots (and predict's --checkpoint choices)


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
    directory: the fold's directory (``workdir.fold_dir``).
    keep: how many ``latest`` checkpoints to keep (``config.train.keep_checkpoints``).
    fingerprint: ``run_identity.model_fingerprint`` of the config; saved in every checkpoint's meta and
      checked on restore ("" saves none and checks none).
    create: False opens the managers without creating their directories (reading only).
  """

  def __init__(self, directory: str, keep: int = 2, fingerprint: str = "", create: bool = True):
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

  def _manager(self, slot: str) -> ocp.CheckpointManager:
    if slot not in SLOTS:
      raise ValueError(f"checkpoint slot {slot!r}; expected one of {SLOTS}.")
    return self.best if slot == "best" else self.latest

  def _save(self, slot: str, step: int, state_tree, meta: dict, **metrics) -> None:
    """One orbax save; a failed write is a :class:`CheckpointWriteError` (the previous
    checkpoints stay intact: orbax writes into a temporary folder and renames it at the end)."""
    manager = self._manager(slot)
    try:
      manager.save(step, args=self._args(state_tree, meta), **metrics)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not (isinstance(e, OSError) or any(f in str(e) for f in _WRITE_FAULTS)):
        raise
      reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
      raise CheckpointWriteError(
          f"cannot write the {slot} checkpoint of step {step} in {manager.directory} "
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

  def step(self, slot: str) -> Optional[int]:
    """The step of the ``slot`` ("best" or "latest") checkpoint, or None when there is none."""
    return self.best_step() if slot == "best" else self._manager(slot).latest_step()

  def find(self, slot: str = "best") -> Optional[tuple[str, int]]:
    """``(slot, step)`` of the checkpoint to load: ``slot``'s, or the latest one when a "best"
    is asked for and there is none (a run without a validation set); None when there is none."""
    for k in (slot, "latest"):
      step = self.step(k)
      if step is not None:
        return k, step
    return None

  def path(self, slot: str, step: int) -> str:
    """``<directory>/<slot>/<step>``: the folder of one checkpoint."""
    return os.path.join(self._manager(slot).directory, str(step))

  def restore(self, slot: str, step: int, target) -> tuple[Any, dict]:
    """Reads one checkpoint into the shapes of ``target``.

    Args:
      slot: "best" or "latest".
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
    manager = self._manager(slot)
    where = self.path(slot, step)

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
  slot: str  # "best" or "latest" (the one found, after the fallback)
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
                    slot: str = "best") -> CheckpointRef:
  """Locates the checkpoint to load in a training workdir.

  Args:
    workdir: the training workdir.
    fusion: fusion kind (default: the first in alphabetical order that has checkpoints).
    fold: fold name (default: the first in alphabetical order).
    slot: "best" (by validation UA; falls back to "latest" when the run had no validation set)
      or "latest".

  Returns:
    The :class:`CheckpointRef`; open it with ``FoldCheckpointer(workdir.fold_dir(workdir, ref.fusion,
    ref.fold), create=False)``.

  Raises:
    UserError: an unknown slot, fusion or fold, or no finished checkpoint (messages name
      ``train.predict``'s flags).
  """
  if slot not in SLOTS:
    raise UserError(f"--checkpoint={slot!r}; expected one of {SLOTS}.")
  root = workdir_lib.checkpoint_root(workdir)
  fusion = _pick(_subdirs(root), fusion, "fusion", root)
  where = workdir_lib.fusion_dir(workdir, fusion)
  fold = _pick(_subdirs(where), fold, "fold", where)
  ck = FoldCheckpointer(workdir_lib.fold_dir(workdir, fusion, fold), create=False)
  try:
    found = ck.find(slot)
  finally:
    ck.close()
  if found is None:
    raise UserError(f"no finished checkpoint in {workdir_lib.fold_dir(workdir, fusion, fold)} (best/ and "
                    "latest/ are empty or missing); the run may have been stopped before its "
                    "first save.")
  return CheckpointRef(fusion, fold, *found)
