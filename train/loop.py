"""The cross-validation loop: ``train_and_evaluate(config, workdir)`` reads the config into a run
plan (``train.validate.plan``) and trains every fusion kind of the plan on every fold, evaluates,
and reports (``train.reporting``: metrics.json, TensorBoard events, confusion-matrix PNGs).

Before the folds, every fusion kind's initialisation, train step and eval step are compiled once
(concurrently for the kinds of a single-process run; :func:`compile_models`), so no fold's
progress bar or ETA counts compilation. Per fold (:func:`train_fold`): a fresh model (same key),
one flat loop ``for step in range(start, total)`` over an endless, resumable batch stream (a
seeded Batcher, padded last batch: one compilation for all batches and folds); :func:`is_time`
decides logging, validation (UA, every ``eval_every_epochs``) and checkpointing; the best state is
kept in host memory and written as the best checkpoint with the next "latest" checkpoint, so a
resume finds both consistent; the test metrics are those of the best state (the final one when
there is no validation set). Memory is read, never written, in evaluation.

A stop request (``train.cli.StopRequest``: a signal, a failed fusion kind) is acted on at points
chosen here: between two steps (after a checkpoint), after loading the data, after compiling and
before each fold; each raises ``train.errors.Stopped`` saying where.

Devices (``train.parallel``, docs/SCALING.md): the plan's parallelism, "jit" (batch sharded over a
device mesh, state replicated) or "pmap"; both equal the one-device run. Multi-host
(``multihost.initialize_multihost``, from the environment): every process loads the same data set
and feeds its own contiguous block of every global batch; only process 0 reports
(:class:`~train.reporting.RunOutput`); checkpoints are written by orbax with every process taking
part.
"""
import concurrent.futures
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from mbaf_jax import models
from mbaf_jax.data.pipeline import Batcher, eval_batches, gather
from mbaf_jax.models.factory import merge_pretrained
from train import checkpoints as ckpt_lib
from train import cli
from train import datasets
from train import metrics as metrics_lib
from train import optimizers
from train import multihost
from train import parallel
from train import progress as progress_lib
from train import reporting
from train import run_identity
from train import steps
from train import validate
from train import workdir as workdir_lib
from train.errors import NonFiniteLossError, Stopped, UserError


def is_time(step: int, every: int) -> bool:
  """Whether ``step`` (steps done, 1-based) is a multiple of ``every`` (never when
  ``every <= 0``)."""
  return every > 0 and step % every == 0


def _local_block(n: int) -> slice:
  """This process's contiguous block of ``n`` global rows (all of them with one process)."""
  p, count = jax.process_index(), jax.process_count()
  return slice(p * (n // count), (p + 1) * (n // count))


def _batch(ds: datasets.Dataset, indices: np.ndarray, mask: np.ndarray) -> dict:
  """This process's block of the global batch ``ds[indices]``: model inputs, mask and labels."""
  block = _local_block(len(indices))
  idx = indices[block]
  return dict(gather(ds.inputs, idx), mask=mask[block], label=ds.labels[idx])


def _warmup_batch(ds: datasets.Dataset, size: int, mask_value: bool) -> dict:
  """A batch of ``size`` copies of row 0 (mask ``mask_value``): the shapes and dtypes of a real
  batch, for compiling."""
  return _batch(ds, np.zeros((size,), np.int64), np.full((size,), mask_value, bool))


def evaluate(eval_fn: parallel.ParallelStep, state, ds: datasets.Dataset, indices: np.ndarray,
             batch_size: int, num_classes: int) -> dict:
  """WA/UA/F1/confusion of ``state`` (device layout) on ``ds[indices]`` (padded fixed-size
  batches; each process feeds its block, every process gets the global predictions)."""
  preds = []
  for pos, mask in eval_batches(len(indices), batch_size):
    batch = _batch(ds, indices[pos], mask)
    lp = eval_fn.rows_to_host(eval_fn(state, eval_fn.put_batch(batch)))
    preds.append(np.argmax(lp, -1)[mask])
  preds = np.concatenate(preds) if preds else np.zeros((0,), np.int64)
  return metrics_lib.classification_metrics(ds.labels[indices], preds, num_classes)


class CompiledModel:
  """The model, optimiser and compiled steps of one fusion kind, shared by all its folds.

  ``train_fn`` / ``eval_fn`` are the plan's ``parallel.JitStep`` or ``PmapStep``; their
  ``traces`` count compilations (reported in metrics.json).
  """

  def __init__(self, plan: validate.RunPlan, fusion_kind: str, ds: datasets.Dataset):
    self.plan, self.kind, self.ds = plan, fusion_kind, ds
    self.model, self.pretrained = models.build_model(plan.model, fusion_kind,
                                                     vocab_size=ds.vocab_size,
                                                     max_tokens=plan.data.max_tokens,
                                                     text_embedding=ds.text_embedding)
    b = plan.schedule.batch_size
    self.dummy = dict(gather(ds.inputs, np.zeros((b,), np.int64)), mask=np.ones((b,), bool),
                      label=np.zeros((b,), np.int32))
    key = jax.random.key(plan.seed)
    shapes = steps.abstract_variables(self.model, self.dummy, key)
    self.tx = optimizers.make_optimizer(plan.optim, shapes["params"], shapes.get("memory", {}))
    model, tx = self.model, self.tx
    self.train_fn = parallel.make_parallel_train_step(
        lambda ax: steps.make_train_step(steps.with_axis_name(model, ax).apply, tx, ax),
        plan.parallelism, devices=plan.devices)
    self.eval_fn = parallel.make_parallel_eval_step(
        lambda ax: steps.make_eval_step(steps.with_axis_name(model, ax).apply),
        plan.parallelism, devices=plan.devices)
    self.position = 0  # line of this kind's progress bar (kinds trained at the same time)

  def init_host_state(self, fold_index: int) -> steps.TrainState:
    """The step-0 state of a fold, on the host (identical on every process)."""
    key = jax.random.fold_in(jax.random.key(self.plan.seed), fold_index)
    variables = steps.init_variables(self.model, self.dummy, key)
    if self.pretrained:
      variables["params"] = merge_pretrained(variables["params"], self.pretrained)
    return parallel.to_host(steps.create_state(variables, self.tx))

  def compile(self) -> None:
    """Compiles initialisation, the train step and the eval step: runs each once on warm-up
    batches of real shapes (results discarded), so the folds find them compiled."""
    host = self.init_host_state(0)
    t = self.plan.schedule
    key = self.train_fn.put_key(jax.random.key(self.plan.seed))
    state, _ = self.train_fn(self.train_fn.put_state(host), self.train_fn.put_batch(
        _warmup_batch(self.ds, t.batch_size, True)), key)
    jax.block_until_ready(state)
    out = self.eval_fn(self.train_fn.put_state(host), self.eval_fn.put_batch(
        _warmup_batch(self.ds, t.eval_batch_size, False)))
    jax.block_until_ready(out)


def _check_finite(state, fold_name: str, kind: str) -> None:
  bad = int(np.ravel(parallel.to_host(state.first_nonfinite))[0])  # pmap: one copy per device
  if bad >= 0:
    raise NonFiniteLossError(
        f"the training loss became NaN/inf at step {bad} of fold {fold_name} ({kind} fusion). "
        "Lower config.optim.learning_rate, set config.optim.grad_clip_norm, or check the data "
        "for NaN inputs.")


def _train_batches(batcher: Batcher, rows: np.ndarray, ds: datasets.Dataset):
  """Endless training batches of the examples ``ds[rows]``: this process's block of each global
  batch, with its mask and labels. The Batcher's ``(epoch, position)`` is the iterator's whole
  state (saved in every checkpoint), and it advances as each batch is taken."""
  while True:
    indices, mask = batcher.next()
    yield _batch(ds, rows[indices], mask)


def _train_scalars(train_fn: parallel.ParallelStep, window: list, seconds: float) -> dict:
  """Mean training loss, aux loss, accuracy, steps/s and the fusion layer's ``memory/*``
  dynamics (docs/DMF.md) of the steps in ``window`` (their metrics, on device)."""
  host = [train_fn.to_host(x) for x in window]
  n = max(sum(float(x["count"]) for x in host), 1.0)
  logs = {"loss": np.mean([float(x["loss"]) for x in host]),
          "aux": np.mean([float(x["aux"]) for x in host]),
          "accuracy": sum(float(x["correct"]) for x in host) / n,
          "steps_per_s": len(host) / max(seconds, 1e-9)}
  logs.update({k: np.mean([float(x[k]) for x in host]) for k in host[-1]
               if k.startswith("memory/")})
  return logs


def _meta(step: int, total: int, batcher: Batcher, best_val_ua: float, fold: str,
          kind: str) -> dict:
  """What a checkpoint stores beside the state: where the batches and the validation stand."""
  return {"step": step, "batcher": batcher.state(), "best_val_ua": best_val_ua,
          "done": step >= total, "fold": fold, "fusion": kind}


def train_fold(model: CompiledModel, fold, fold_index: int, out: reporting.RunOutput,
               stop: cli.StopRequest, on_step=None) -> dict:
  """Trains (or resumes) one fold and returns its test metrics (+ validation UA, best step).

  One flat loop over the fold's steps ``start + 1 .. total``: every step trains one batch; then
  :func:`is_time` decides logging (``log_every_steps``), validation (every
  ``eval_every_epochs`` epochs) and the "latest" checkpoint (``checkpoint_every_steps``); the last
  step does all three. The best validation state is kept in host memory and written as the best
  checkpoint together with the next latest one, so best/ on disk always matches latest/.

  Args:
    model: the fusion kind's compiled model.
    fold: a ``mbaf_jax.data.folds.Fold`` (train / val / test indices).
    fold_index: its position (seeds the initial parameters and the batch order).
    out: where the run reports.
    stop: when set, the fold checkpoints at the next step boundary and raises ``Stopped``.
    on_step: optional ``on_step(kind, fold_name, step)``, called after every train step.

  Returns:
    The test metrics of the best state (``train.metrics.classification_metrics``) with
    ``best_step``, ``best_val_ua``, ``sizes`` and ``steps``.
  """
  plan, kind, ds = model.plan, model.kind, model.ds
  t = plan.schedule
  if len(fold.train) == 0 or len(fold.test) == 0:
    raise UserError(f"fold {fold.name} has {len(fold.train)} training and {len(fold.test)} test "
                    "examples; the data set is too small for this protocol "
                    "(raise config.data.max_examples or use more data).")
  stop.check(f"before fold {fold.name} of the {kind} fusion")
  ckpt = ckpt_lib.FoldCheckpointer(workdir_lib.fold_dir(out.workdir, kind, fold.name),
                                   keep=t.keep_checkpoints, fingerprint=plan.fingerprint)
  host_state = model.init_host_state(fold_index)
  target = host_state.saveable()  # shapes/dtypes for restoring
  batcher = Batcher(len(fold.train), t.batch_size, seed=plan.seed + fold_index, shuffle=True)
  total = t.total_steps(batcher.steps_per_epoch)
  start, best_val_ua = 0, -1.0
  restored = ckpt.restore_latest(
      target, report=lambda line: out.say(f"[{kind}/{fold.name}] {line}"))
  if restored is not None:
    tree, meta = restored
    host_state = steps.TrainState.from_saved(tree)
    batcher.restore(meta["batcher"])
    start, best_val_ua = int(np.asarray(tree["step"])), float(meta["best_val_ua"])
    if meta["done"]:
      total = start
    out.say(f"[{kind}/{fold.name}] resumed at step {start}")
  state = model.train_fn.put_state(host_state)
  key = model.train_fn.put_key(jax.random.key(plan.seed))
  validate_every = t.eval_every_epochs * batcher.steps_per_epoch
  tb = out.scalars(kind, fold.name)
  bar = out.progress(total, start, f"{kind}/{fold.name}", position=model.position)
  batches = _train_batches(batcher, fold.train, ds)
  # This call's best validation state, on the host: (step, tree, meta, val UA); and its step
  # once written.
  best, best_written, window, t0 = None, None, [], time.time()

  with stop.training():  # a signal now stops at the next step (StopRequest)
    for step in range(start + 1, total + 1):
      state, metrics = model.train_fn(state, model.train_fn.put_batch(next(batches)), key)
      window.append(metrics)
      bar.update(1)
      if on_step is not None:
        on_step(kind, fold.name, step)
      last = step == total
      if is_time(step, t.log_every_steps) or last:
        _check_finite(state, fold.name, kind)
        logs = _train_scalars(model.train_fn, window, time.time() - t0)
        tb.scalars(step, logs, "train")
        bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['accuracy']:.2f}")
        window, t0 = [], time.time()
      if (is_time(step, validate_every) or last) and len(fold.val):
        _check_finite(state, fold.name, kind)
        m = evaluate(model.eval_fn, state, ds, fold.val, t.eval_batch_size, plan.model.num_classes)
        tb.scalars(step, {"wa": m["wa"], "ua": m["ua"], "f1": m["f1"]}, "val")
        if m["ua"] > best_val_ua:  # only an improvement counts (ties keep the earlier step)
          best_val_ua = m["ua"]
          # A copy: the host arrays may alias device buffers that the next step donates.
          best = (step, jax.tree.map(np.array, model.train_fn.to_host(state).saveable()),
                  _meta(step, total, batcher, best_val_ua, fold.name, kind), m["ua"])
      stopping = stop.is_set() and not last
      if is_time(step, t.checkpoint_every_steps) or last or stopping:
        if best is not None and best_written != best[0]:
          ckpt.save_best(*best)
          best_written = best[0]
        ckpt.save_latest(step, model.train_fn.to_host(state).saveable(),
                         _meta(step, total, batcher, best_val_ua, fold.name, kind))
      if stopping:
        bar.close()
        tb.close()
        ckpt.close()
        raise Stopped(f"{stop.reason}; checkpointed after step {step} of fold {fold.name} "
                      f"({kind} fusion)")
  bar.close()

  final_state, best_step = state, total
  if best is None:  # no improvement in this call: the best on disk, if any (a resumed fold)
    on_disk = ckpt.restore_best(target)
    best = None if on_disk is None else (int(on_disk[1]["step"]), on_disk[0])
  if best is not None:
    final_state = model.train_fn.put_state(steps.TrainState.from_saved(best[1]))
    best_step = int(best[0])
  result = evaluate(model.eval_fn, final_state, ds, fold.test, t.eval_batch_size,
                    plan.model.num_classes)
  result.update(best_step=best_step, best_val_ua=best_val_ua, sizes=fold.sizes(), steps=total)
  tb.scalars(total, {"wa": result["wa"], "ua": result["ua"], "f1": result["f1"]}, "test")
  tb.close()
  ckpt.close()
  return result


def compile_models(compiled: list) -> None:
  """Compiles every fusion kind's initialisation, train and eval steps
  (:meth:`CompiledModel.compile`): one thread per kind in a single-process run (XLA compiles on
  the calling thread, so two fusion kinds compile on two cores at once), one after the other with
  several processes (their collectives must start in the same order everywhere)."""
  if len(compiled) > 1 and jax.process_count() == 1:
    with concurrent.futures.ThreadPoolExecutor(len(compiled)) as pool:
      for future in [pool.submit(m.compile) for m in compiled]:
        future.result()
  else:
    for m in compiled:
      m.compile()


def run_kinds(run_kind, kinds, stop: cli.StopRequest, at_once: bool = True) -> None:
  """Calls ``run_kind(kind)`` for every fusion kind: at the same time, one thread each, when
  ``at_once`` and the run is a single process (the kinds are independent and XLA runs a step
  outside the GIL, so the kinds' steps share the cores); else one after the other (several
  processes must start their collectives in the same order). Each kind computes exactly what it
  computes alone.

  A Ctrl-C (or an error in one kind) sets ``stop``: every kind checkpoints and stops at its next
  step, and the first exception is raised here.
  """
  if not at_once or len(kinds) < 2 or jax.process_count() > 1:
    for kind in kinds:
      run_kind(kind)
    return
  pool = concurrent.futures.ThreadPoolExecutor(len(kinds))
  futures = [pool.submit(run_kind, kind) for kind in kinds]
  try:
    for future in concurrent.futures.as_completed(futures):
      if future.exception() is not None:
        raise future.exception()
  except BaseException as e:
    stop.set(f"the other fusion kind failed ({type(e).__name__})")
    raise
  finally:
    pool.shutdown(wait=True)


def _load_dataset(plan: validate.RunPlan, workdir: str) -> datasets.Dataset:
  """Loads the data set; with several processes, process 0 first (it may generate the synthetic
  corpus, fill the audio cache and build the vocabulary), then the others read the same."""
  args = (plan.data, plan.model, plan.family, plan.seed, workdir)
  if jax.process_count() == 1:
    return datasets.load_dataset(*args)
  ds = datasets.load_dataset(*args) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("mbaf_jax:dataset_ready")
  return ds if ds is not None else datasets.load_dataset(*args)


def _train_kind(model: CompiledModel, out: reporting.RunOutput, stop: cli.StopRequest,
                on_step) -> dict:
  """Every fold of one fusion kind: per-fold test metrics (printed, confusion PNGs) and their
  summary."""
  ds, kind = model.ds, model.kind
  folds = {}
  for i, fold in enumerate(ds.folds):
    f = folds[fold.name] = train_fold(model, fold, i, out, stop, on_step)
    out.plot_confusion(f["confusion"], ds.class_names, kind, fold.name, f"{kind} {fold.name}")
    out.say(f"[{kind}/{fold.name}] test WA {100 * f['wa']:.2f} UA {100 * f['ua']:.2f} "
            f"F1 {f['f1']:.3f} (best step {f['best_step']})")
  summary = metrics_lib.summarize_folds(list(folds.values()))
  out.plot_confusion(summary["confusion_normalized"], ds.class_names, kind, "mean",
                     f"{kind} mean over {len(folds)} fold(s)")
  return {"folds": folds, "summary": summary, "train_traces": model.train_fn.traces,
          "eval_traces": model.eval_fn.traces}


def train_and_evaluate(config, workdir: str, stop: cli.StopRequest | None = None,
                       on_step=None) -> dict:
  """Runs the experiment of ``config`` in ``workdir`` (resuming what is there).

  Joins a multi-host run first when the environment asks for one
  (``multihost.initialize_multihost``), then reads the config into a plan (``validate.plan``:
  every problem listed at once, before anything is read or written) and runs it (:func:`run`).

  Args:
    config: the run's config (configs/*.py).
    workdir: the run's directory (``train.workdir`` gives its layout).
    stop: when set (from another thread or a signal handler), the run stops at the next point it
      chooses (every fold being trained checkpoints at its next step) and raises ``Stopped``;
      rerunning the same command resumes from there.
    on_step: optional ``on_step(kind, fold_name, step)``, called after every train step (on the
      training thread of that kind).

  Returns:
    The metrics dict also written to ``workdir/metrics.json`` (by process 0).
  """
  setup = multihost.initialize_multihost()  # before anything asks JAX for its devices
  return run(validate.plan(config), workdir, setup, stop, on_step)


def run(plan: validate.RunPlan, workdir: str, setup: multihost.HostSetup,
        stop: cli.StopRequest | None = None, on_step=None) -> dict:
  """Runs a checked plan in ``workdir``; see :func:`train_and_evaluate`."""
  primary = setup.process_index == 0
  run_identity.prepare_workdir(workdir, plan.record, plan.fingerprint, write=primary)
  out = reporting.RunOutput(workdir, primary, show_progress=plan.schedule.progress)
  stop = stop or cli.StopRequest()
  kinds = list(plan.kinds)
  out.say(reporting.run_header(kinds, plan.data, plan.family, len(plan.devices),
                               plan.parallelism, setup.process_count))
  ds = _load_dataset(plan, workdir)
  run_identity.check_dataset(
      workdir, run_identity.dataset_fingerprint(ds.labels, ds.folds, ds.inputs), write=primary)
  if ds.summary is not None:  # what was read, per session / class, and what was not
    out.say(ds.summary.format())
  out.say(f"{len(ds.labels)} examples, {len(ds.folds)} fold(s): "
          f"{', '.join(f.name for f in ds.folds)}")
  stop.check("after loading the data; no step was trained")
  with progress_lib.phase(f"Compiling the {' and '.join(kinds)} model{'s' * (len(kinds) > 1)} "
                          "(initialisation, train step, eval step)", enabled=primary):
    compiled = {kind: CompiledModel(plan, kind, ds) for kind in kinds}
    compile_models(list(compiled.values()))
  stop.check("after compiling; no step was trained")
  for position, kind in enumerate(kinds):
    compiled[kind].position = position
  results = {"name": plan.name, "class_names": list(ds.class_names),
             "devices": len(plan.devices), "parallelism": plan.parallelism,
             "processes": setup.process_count, "fusions": {}}

  def run_kind(kind):
    results["fusions"][kind] = _train_kind(compiled[kind], out, stop, on_step)
    out.write_metrics(dict(results, fusions=dict(results["fusions"])))  # a snapshot

  run_kinds(run_kind, kinds, stop, at_once=plan.schedule.concurrent_kinds)
  results["fusions"] = {k: results["fusions"][k] for k in kinds}
  results["table"] = metrics_lib.format_table({k: v["summary"]
                                               for k, v in results["fusions"].items()})
  out.write_metrics(results)
  out.say(results["table"])
  return results
