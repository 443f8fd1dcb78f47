"""The training workdir's layout and its checkpoints: paths, config.json, fingerprint, save and
restore.

Workdir layout (every path is built here)::

  config.json                         the run's config and its fingerprint (prepare_workdir)
  ckpt/<fusion>/<fold>/latest/<step>/  keep-N newest checkpoints (resume)
  ckpt/<fusion>/<fold>/best/<step>/    the best-by-validation-UA checkpoint (max_to_keep=1)

Each checkpoint holds two orbax items: ``"state"``, the ``TrainState.saveable()`` pytree (params,
optimiser state, batch stats, constants, memory, step, first non-finite step;
``ocp.args.StandardSave``), and ``"meta"``, a JSON dict (step, data position from
``Batcher.state()``, best validation UA so far, done flag, fold, fusion and the fingerprint of
the model config). :meth:`FoldCheckpointer.restore` is the one restore: the trainer resumes with
it and ``train.predict`` loads with it. It checks the fingerprint, then the saved shapes against
the target's, before orbax reads any array, so a checkpoint of another config fails with a clear
message instead of a shape error deep inside orbax.
"""
import hashlib
import json
import logging
import os
import sys
from typing import Any, NamedTuple, Optional

import jax
import ml_collections as mlc
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
def prepare_workdir(workdir: str, config, write: bool = True) -> None:
  """Creates the workdir and stores the config in its config.json.

  Args:
    workdir: the training workdir (created when missing).
    config: the run's config.
    write: False checks only (processes other than 0 of a multi-host run).

  Raises:
    UserError: the workdir is empty, a file, or holds a config.json that is not JSON or was
      written by a different model/optimiser config (its checkpoints would not fit).
  """
  if not workdir:
    raise UserError("--workdir is empty; give a directory for checkpoints and metrics.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir!r} is a file, not a directory. Pass a new or existing "
                    "directory (it will hold checkpoints, metrics.json and TensorBoard events).")
  os.makedirs(workdir, exist_ok=True)
  path = config_path(workdir)
  fp = model_fingerprint(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"{path} exists but is not readable JSON ({e}); remove it or use a fresh "
                      "--workdir.") from e
    if old.get("fingerprint") not in (None, fp):
      raise UserError(f"--workdir={workdir!r} holds a run of a different model/optimiser config "
                      f"(see {path}); resuming it with this config would mix checkpoints. Use a "
                      "fresh --workdir, or rerun with the config stored there.")
  if write:
    metrics_lib.write_json(path, {"fingerprint": fp,
                                  "config": json.loads(config.to_json_best_effort())})


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

  def save_latest(self, step: int, state_tree, meta: dict) -> None:
    """Saves (replacing an existing checkpoint of the same step)."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=self._args(state_tree, meta))
    self.latest.wait_until_finished()

  def save_best(self, step: int, state_tree, meta: dict, val_ua: float) -> None:
    """Offers a checkpoint to the best-by-UA manager (kept only if it is the best so far)."""
    if step in self.best.all_steps():
      return
    self.best.save(step, args=self._args(state_tree, meta), metrics={"val_ua": float(val_ua)})
    self.best.wait_until_finished()

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
        or its arrays differ from the target's in number or shapes.
    """
    manager = self._manager(kind)
    where = self.path(kind, step)
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    found = meta.get("fingerprint")
    if self.fingerprint and found != self.fingerprint:
      raise CheckpointMismatchError(
          f"the checkpoint {where} was written by a run with a different model/optimiser config "
          f"(fingerprint {found} vs {self.fingerprint} now)",
          "Use a fresh --workdir for a new configuration, or run with the config that wrote it "
          "(its copy is in the workdir's config.json).")
    saved = manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
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
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"the checkpoint {where} does not match this model's state ({type(e).__name__}: {e})",
          "Use a fresh --workdir.") from e
    return restored, meta

  def restore_latest(self, target) -> Optional[tuple[Any, dict]]:
    """``(state_tree, meta)`` of the newest checkpoint, or None when there is none."""
    step = self.latest_step()
    return None if step is None else self.restore("latest", step, target)

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
