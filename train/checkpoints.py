"""Orbax checkpoints of a fold's training run: keep-N latest + best-by-validation-UA.

Each checkpoint holds the ``TrainState`` pytree (params, optimiser state, batch stats, constants,
memory, step; ``ocp.args.StandardSave``) and a JSON item (data position from
``Batcher.state()``, epoch, best validation UA so far, the config and a fingerprint of the
model config). Restoring checks the fingerprint first so a checkpoint of a different model
config fails with a clear message instead of a shape error deep inside orbax.
"""
import hashlib
import json
import logging
import os
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from configs.common import fusion_kinds
from mbaf_jax.errors import UserError


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
  """A checkpoint in the workdir does not belong to this config."""


def model_fingerprint(config) -> str:
  """A hash of everything that fixes the shapes of the saved state (model, optimiser, data
  shapes); changing any of it makes old checkpoints unusable. Left out: ``model.text.glove``
  (a file path that only initialises the embedding at step 0; a checkpoint holds the trained
  one, so a moved GloVe file must not refuse a resume) and ``model.dtype`` (the compute dtype;
  everything saved is float32 either way, so a run may resume in bfloat16 or back), and the
  options of fusion layers the run does not train (``model.fusion`` keeps only the kinds in
  ``config.fusions``)."""
  model = {k: v for k, v in config.model.to_dict().items() if k != "dtype"}
  kinds = set(fusion_kinds(config))
  if kinds and isinstance(model.get("fusion"), dict):
    model["fusion"] = {k: v for k, v in model["fusion"].items() if k in kinds}
  if isinstance(model.get("text"), dict):
    model["text"] = {k: v for k, v in model["text"].items() if k != "glove"}
  relevant = {"model": model, "optim": config.optim.to_dict(),
              "shapes": {k: config.data[k] for k in ("max_seconds", "sample_rate", "max_tokens",
                                                     "chunks", "chunk_samples", "mode_pair")}}
  text = json.dumps(relevant, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_safe(obj):
  return json.loads(json.dumps(obj, default=str))


class FoldCheckpointer:
  """Two orbax managers under ``directory``: ``latest/`` (keep-N, resume) and ``best/``
  (max_to_keep=1, ``best_fn`` = validation UA)."""

  def __init__(self, directory: str, keep: int = 2, fingerprint: str = ""):
    if keep < 1:
      raise ValueError(f"config.train.keep_checkpoints={keep} must be >= 1.")
    quiet_orbax_logs()
    self.directory = os.path.abspath(directory)
    self.fingerprint = fingerprint
    opts = dict(enable_async_checkpointing=False, create=True)
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

  def _restore(self, manager, step: int, target) -> tuple[Any, dict]:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    found = meta.get("fingerprint")
    if self.fingerprint and found != self.fingerprint:
      raise CheckpointMismatchError(
          f"the checkpoint {os.path.join(manager.directory, str(step))} was written by a run with "
          f"a different model/optimiser config (fingerprint {found} vs {self.fingerprint} now). "
          "Use a fresh --workdir for a new configuration, or run with the config that wrote it "
          "(its copy is in the workdir's config.json).")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    saved = manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    have = sorted(str(tuple(x.shape)) for x in jax.tree.leaves(saved))
    want = sorted(str(tuple(x.shape)) for x in jax.tree.leaves(abstract))
    if have and have != want:
      raise CheckpointMismatchError(
          f"the checkpoint {os.path.join(manager.directory, str(step))} does not match this "
          f"model's state ({len(have)} saved arrays vs {len(want)} expected, or different "
          "shapes): it was written by another model configuration. Use a fresh --workdir.")
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"the checkpoint {os.path.join(manager.directory, str(step))} does not match this "
          f"model's state ({type(e).__name__}: {e}). Use a fresh --workdir.") from e
    return restored, meta

  def restore_latest(self, target) -> Optional[tuple[Any, dict]]:
    """``(state_tree, meta)`` of the newest checkpoint, or None when there is none."""
    step = self.latest_step()
    return None if step is None else self._restore(self.latest, step, target)

  def restore_best(self, target) -> Optional[tuple[Any, dict]]:
    """``(state_tree, meta)`` of the best-by-validation-UA checkpoint, or None."""
    step = self.best_step()
    return None if step is None else self._restore(self.best, step, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
