"""Cross-validation driver: ``train_and_evaluate(config, workdir)`` trains every fusion kind of
``config.fusions`` on every fold, evaluates, and writes metrics.json, TensorBoard events and
confusion-matrix PNGs.

Workdir layout::

  config.json                       the run's config (a resumed run must match it)
  metrics.json                      {fusion: {"folds": {...}, "summary": {...}}, "table": ...}
  confusion_<fusion>_<fold>.png     per fold;  confusion_<fusion>_mean.png averaged (row-normalised)
  tb/<fusion>/<fold>/               TensorBoard events (tensorboardX)
  ckpt/<fusion>/<fold>/{latest,best}/  orbax checkpoints (resume; best by validation UA)

Before the folds, every fusion kind's initialisation, train step and eval step are compiled once
(concurrently for the kinds of a single-process run; :func:`compile_models`), so no fold's
progress bar or ETA counts compilation. Per fold (:func:`train_fold`): a fresh model (same key),
one flat loop ``for step in range(start, total)`` over an endless, resumable batch stream (a
seeded Batcher, padded last batch: one compilation for all batches and folds); :func:`is_time`
decides logging, validation (UA, every ``eval_every_epochs``) and checkpointing; the best state is
kept in host memory and written as the best checkpoint with the next "latest" checkpoint, so a
resume finds both consistent; the test metrics are those of the best state (the final one when
there is no validation set). Memory is read, never written, in evaluation. A
:class:`StopRequest` (``train_and_evaluate(..., stop=...)``; ``train.main`` sets it on SIGINT /
SIGTERM) makes every fold being trained checkpoint at its next step and stop.

What the run prints (``train.progress``): what it trains, then a line per phase (generating the
corpus, loading it, compiling) with its time, per-fold progress (a tqdm bar on a terminal, plain
lines otherwise), each fold's test metrics and the table.

Devices (``train.distributed``, docs/SCALING.md): ``config.train.parallelism`` = "jit" (batch
sharded over a device mesh, state replicated) or "pmap" (``jax.pmap``, gradients and batch
statistics synced, the fusion writer all-gathers the batch); both equal the one-device run.
Multi-host: ``distributed.initialize_multihost`` (environment ``MBAF_COORDINATOR_ADDRESS`` /
``MBAF_NUM_PROCESSES`` / ``MBAF_PROCESS_ID``); every process loads the same data set and feeds
its own contiguous block of every global batch; only process 0 writes metrics, TensorBoard
events, PNGs and config.json (:class:`RunOutput`; checkpoints are written by orbax with every
process taking part).
"""
import concurrent.futures
import contextlib
import os
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from configs.common import fusion_kinds
from mbaf_jax import models
from mbaf_jax.data.pipeline import Batcher, eval_batches, gather
from mbaf_jax.models import factory
from mbaf_jax.models.factory import merge_pretrained
from train import checkpoints as ckpt_lib
from train import datasets
from train import distributed as dist
from train import metrics as metrics_lib
from train import optimizers
from train import progress as progress_lib
from train import steps
from train import validate
from train.errors import NonFiniteLossError, UserError


class StopRequest:
  """A request to stop training at the next step boundary, with a checkpoint (Ctrl-C, SIGTERM, a
  failed fusion kind, a test). :meth:`honoured` tells a signal handler whether a training loop
  is running that will act on it; before the first step (loading, compiling) there is none, and
  the caller should stop at once instead."""

  def __init__(self):
    self._event = threading.Event()  # set: stop at the next step
    self._lock = threading.Lock()
    self._loops = 0  # training loops running now (fusion kinds trained at once)

  def set(self) -> None:
    self._event.set()

  def is_set(self) -> bool:
    return self._event.is_set()

  def wait(self, timeout: float | None = None) -> bool:
    return self._event.wait(timeout)

  def honoured(self) -> bool:
    """Whether a training loop is running (and will checkpoint and stop when this is set)."""
    with self._lock:
      return self._loops > 0

  @contextlib.contextmanager
  def training(self):
    """Marks a training loop as running for the duration of the ``with`` block."""
    with self._lock:
      self._loops += 1
    try:
      yield
    finally:
      with self._lock:
        self._loops -= 1


def is_time(step: int, every: int) -> bool:
  """Whether ``step`` (steps done, 1-based) is a multiple of ``every`` (never when
  ``every <= 0``)."""
  return every > 0 and step % every == 0


class _NullScalars:
  """Scalar writer of a process that writes nothing."""

  def scalars(self, step: int, values: dict, prefix: str) -> None:
    del step, values, prefix

  def close(self) -> None:
    pass


class _Scalars:
  """TensorBoard scalars of one fold (tensorboardX)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.logdir = logdir
    with _writing(logdir):
      self.writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: dict, prefix: str) -> None:
    with _writing(self.logdir):
      for k, v in values.items():
        self.writer.add_scalar(f"{prefix}/{k}", float(v), int(step))
      self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class _NullBar:
  """Progress of a fold that shows none."""

  def update(self, n: int = 1) -> None:
    del n

  def set_postfix(self, **values) -> None:
    del values

  def close(self) -> None:
    pass


@contextlib.contextmanager
def _writing(path: str):
  """An OSError (disk full, read-only, permissions) while writing a run's output ``path`` becomes
  a UserError that says what happened and that the checkpoints are intact."""
  try:
    yield
  except OSError as e:
    raise UserError(f"cannot write {path} ({e.strerror or e}); the checkpoints already saved are "
                    "intact. Free disk space or fix the permissions, then rerun the same command "
                    "to resume.") from None


class RunOutput:
  """Everything a run reports: printed lines, TensorBoard scalars, progress, metrics.json and the
  confusion PNGs. Process 0 writes them; on every other process each method does nothing, so the
  training code has no process-0 branches. Thread-safe for the fusion kinds trained at once.
  """

  def __init__(self, workdir: str, enabled: bool, show_progress: bool = True):
    self.workdir = workdir  # the run's --workdir
    self.enabled = enabled  # False: every method does nothing (processes other than 0)
    self.show_progress = enabled and show_progress  # config.train.progress
    self._lock = threading.Lock()  # metrics.json and pyplot (not thread-safe)

  def say(self, line: str) -> None:
    """Prints one line of the run's log."""
    if self.enabled:
      print(line, flush=True)

  def scalars(self, *parts: str):
    """A TensorBoard writer for ``workdir/tb/<parts>`` (``.scalars(step, values, prefix)``)."""
    return _Scalars(os.path.join(self.workdir, "tb", *parts)) if self.enabled else _NullScalars()

  def progress(self, total: int, initial: int, desc: str, position: int = 0):
    """A fold's progress bar (``train.progress.progress``) or one that shows nothing."""
    bar = progress_lib.progress(self.show_progress, total, initial, desc, position=position)
    return _NullBar() if bar is None else bar

  def write_json(self, name: str, obj) -> None:
    """Writes ``workdir/<name>`` atomically."""
    if self.enabled:
      with self._lock, _writing(os.path.join(self.workdir, name)):
        metrics_lib.write_json(os.path.join(self.workdir, name), obj)

  def plot_confusion(self, cm, class_names, name: str, title: str) -> None:
    """Writes the confusion-matrix PNG ``workdir/<name>``."""
    if self.enabled:
      path = os.path.join(self.workdir, name)
      with self._lock, _writing(path):
        metrics_lib.plot_confusion(cm, class_names, path, title)


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


def evaluate(eval_fn: dist.ParallelStep, state, ds: datasets.Dataset, indices: np.ndarray,
             batch_size: int, num_classes: int) -> dict:
  """WA/UA/F1/confusion of ``state`` (device layout) on ``ds[indices]`` (padded fixed-size
  batches; each process feeds its block, every process gets the global predictions)."""
  preds = []
  for pos, mask in eval_batches(len(indices), batch_size):
    batch = _batch(ds, indices[pos], mask)
    lp = eval_fn.get_rows(eval_fn(state, eval_fn.put_batch(batch)))
    preds.append(np.argmax(lp, -1)[mask])
  preds = np.concatenate(preds) if preds else np.zeros((0,), np.int64)
  return metrics_lib.classification_metrics(ds.labels[indices], preds, num_classes)


class CompiledModel:
  """The model, optimiser and compiled steps of one fusion kind, shared by all its folds.

  ``train_fn`` / ``eval_fn`` are ``distributed.ParallelStep`` s of ``config.train.parallelism``;
  their ``traces`` count compilations (reported in metrics.json).
  """

  def __init__(self, config, fusion_kind: str, ds: datasets.Dataset, parallelism: str = "jit",
               devices=None):
    self.config, self.kind, self.ds = config, fusion_kind, ds
    self.model, self.pretrained = models.build_model(config.model, fusion_kind,
                                                     vocab_size=ds.vocab_size,
                                                     max_tokens=config.data.max_tokens,
                                                     text_embedding=ds.text_embedding)
    b = config.train.batch_size
    self.dummy = dict(gather(ds.inputs, np.zeros((b,), np.int64)), mask=np.ones((b,), bool),
                      label=np.zeros((b,), np.int32))
    key = jax.random.key(config.seed)
    shapes = steps.abstract_variables(self.model, self.dummy, key)
    self.tx = optimizers.make_optimizer(config.optim, shapes["params"], shapes.get("memory", {}))
    model, tx = self.model, self.tx
    self.train_fn = dist.make_parallel_train_step(
        lambda ax: steps.make_train_step(steps.with_axis_name(model, ax).apply, tx, ax),
        parallelism, devices=devices)
    self.eval_fn = dist.make_parallel_eval_step(
        lambda ax: steps.make_eval_step(steps.with_axis_name(model, ax).apply),
        parallelism, devices=devices)
    self.position = 0  # line of this kind's progress bar (kinds trained at the same time)

  def init_host_state(self, fold_index: int) -> steps.TrainState:
    """The step-0 state of a fold, on the host (identical on every process)."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), fold_index)
    variables = steps.init_variables(self.model, self.dummy, key)
    if self.pretrained:
      variables["params"] = merge_pretrained(variables["params"], self.pretrained)
    return dist.fetch(steps.create_state(variables, self.tx))

  def compile(self) -> None:
    """Compiles initialisation, the train step and the eval step: runs each once on warm-up
    batches of real shapes (results discarded), so the folds find them compiled."""
    host = self.init_host_state(0)
    t = self.config.train
    key = self.train_fn.put_key(jax.random.key(self.config.seed))
    state, _ = self.train_fn(self.train_fn.put_state(host), self.train_fn.put_batch(
        _warmup_batch(self.ds, t.batch_size, True)), key)
    jax.block_until_ready(state)
    out = self.eval_fn(self.train_fn.put_state(host), self.eval_fn.put_batch(
        _warmup_batch(self.ds, t.eval_batch_size, False)))
    jax.block_until_ready(out)

  def host(self, state) -> steps.TrainState:
    """Device-layout state → one host (NumPy) copy."""
    return self.train_fn.get_state(state)


def _check_finite(state, fold_name: str, kind: str) -> None:
  bad = int(np.ravel(dist.fetch(state.first_nonfinite))[0])  # pmap: one copy per device
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


def _train_scalars(train_fn: dist.ParallelStep, window: list, seconds: float) -> dict:
  """Mean training loss, aux loss, accuracy, steps/s and the fusion layer's ``memory/*``
  dynamics (docs/DMF.md) of the steps in ``window`` (their metrics, on device)."""
  host = [train_fn.get_metrics(x) for x in window]
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


def train_fold(model: CompiledModel, fold, fold_index: int, out: RunOutput,
               stop: StopRequest, on_step=None) -> dict:
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
    stop: when set, the fold checkpoints at the next step boundary and raises KeyboardInterrupt.
    on_step: optional ``on_step(kind, fold_name, step)``, called after every train step.

  Returns:
    The test metrics of the best state (``train.metrics.classification_metrics``) with
    ``best_step``, ``best_val_ua``, ``sizes`` and ``steps``.
  """
  c, kind, ds = model.config, model.kind, model.ds
  t = c.train
  if len(fold.train) == 0 or len(fold.test) == 0:
    raise UserError(f"fold {fold.name} has {len(fold.train)} training and {len(fold.test)} test "
                    "examples; the data set is too small for this protocol "
                    "(raise config.data.max_examples or use more data).")
  ckpt = ckpt_lib.FoldCheckpointer(ckpt_lib.fold_dir(out.workdir, kind, fold.name),
                                   keep=t.keep_checkpoints,
                                   fingerprint=ckpt_lib.model_fingerprint(c))
  host_state = model.init_host_state(fold_index)
  target = host_state.saveable()  # shapes/dtypes for restoring
  batcher = Batcher(len(fold.train), t.batch_size, seed=c.seed + fold_index, shuffle=True)
  total = t.max_steps or t.epochs * batcher.steps_per_epoch
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
  key = model.train_fn.put_key(jax.random.key(c.seed))
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
        m = evaluate(model.eval_fn, state, ds, fold.val, t.eval_batch_size, c.model.num_classes)
        tb.scalars(step, {"wa": m["wa"], "ua": m["ua"], "f1": m["f1"]}, "val")
        if m["ua"] > best_val_ua:  # only an improvement counts (ties keep the earlier step)
          best_val_ua = m["ua"]
          # A copy: the host arrays may alias device buffers that the next step donates.
          best = (step, jax.tree.map(np.array, model.host(state).saveable()),
                  _meta(step, total, batcher, best_val_ua, fold.name, kind), m["ua"])
      stopping = stop.is_set() and not last
      if is_time(step, t.checkpoint_every_steps) or last or stopping:
        if best is not None and best_written != best[0]:
          ckpt.save_best(*best)
          best_written = best[0]
        ckpt.save_latest(step, model.host(state).saveable(),
                         _meta(step, total, batcher, best_val_ua, fold.name, kind))
      if stopping:
        bar.close()
        tb.close()
        ckpt.close()
        raise KeyboardInterrupt(f"checkpointed after step {step} of fold {fold.name} ({kind} "
                                "fusion)")
  bar.close()

  final_state, best_step = state, total
  if best is None:  # no improvement in this call: the best on disk, if any (a resumed fold)
    on_disk = ckpt.restore_best(target)
    best = None if on_disk is None else (int(on_disk[1]["step"]), on_disk[0])
  if best is not None:
    final_state = model.train_fn.put_state(steps.TrainState.from_saved(best[1]))
    best_step = int(best[0])
  result = evaluate(model.eval_fn, final_state, ds, fold.test, t.eval_batch_size,
                    c.model.num_classes)
  result.update(best_step=best_step, best_val_ua=best_val_ua, sizes=fold.sizes(), steps=total)
  tb.scalars(total, {"wa": result["wa"], "ua": result["ua"], "f1": result["f1"]}, "test")
  tb.close()
  ckpt.close()
  return result


DATASET_NAMES = {"iemocap": "IEMOCAP", "cebs": "PhysioNet CEBS", "manifest": "a manifest"}


def run_header(config, kinds: list, num_devices: int, parallelism: str, processes: int) -> str:
  """The run's first line: what it trains (the fusion kinds of ``config.fusions``, not the
  config's name: ``configs/iemocap.py --config.fusions=naive`` trains naive fusion only), on
  which data and devices.

  Returns:
    e.g. "Training dmf and naive fusion (Wav2Vec2 + BERT encoders) on a synthetic IEMOCAP-format
    corpus, loso folds; 1 device (jit, 1 process)".
  """
  d = config.data
  data = DATASET_NAMES.get(d.dataset, d.dataset)
  if d.synthetic and not d.data_dir and d.dataset != "manifest":
    data = f"a synthetic {data}-format corpus"
  elif d.data_dir:
    data = f"{data} ({d.data_dir})"
  encoders = getattr(factory.family(config.model.name), "ENCODERS", f"model {config.model.name}")
  return (f"Training {' and '.join(kinds)} fusion ({encoders}) on {data}, {d.protocol} folds; "
          f"{num_devices} device{'s' * (num_devices > 1)} ({parallelism}, {processes} "
          f"process{'es' * (processes > 1)})")


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


def run_kinds(run_kind, kinds: list, stop: StopRequest, at_once: bool = True) -> None:
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
  except BaseException:
    stop.set()
    raise
  finally:
    pool.shutdown(wait=True)


def _load_dataset(config, workdir: str) -> datasets.Dataset:
  """Loads the data set; with several processes, process 0 first (it may generate the synthetic
  corpus, fill the audio cache and build the vocabulary), then the others read the same."""
  if jax.process_count() == 1:
    return datasets.load_dataset(config, workdir)
  ds = datasets.load_dataset(config, workdir) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("mbaf_jax:dataset_ready")
  return ds if ds is not None else datasets.load_dataset(config, workdir)


def _train_kind(model: CompiledModel, out: RunOutput, stop: StopRequest, on_step) -> dict:
  """Every fold of one fusion kind: per-fold test metrics (printed, confusion PNGs) and their
  summary."""
  ds, kind = model.ds, model.kind
  folds = {}
  for i, fold in enumerate(ds.folds):
    f = folds[fold.name] = train_fold(model, fold, i, out, stop, on_step)
    out.plot_confusion(f["confusion"], ds.class_names, f"confusion_{kind}_{fold.name}.png",
                       f"{kind} {fold.name}")
    out.say(f"[{kind}/{fold.name}] test WA {100 * f['wa']:.2f} UA {100 * f['ua']:.2f} "
            f"F1 {f['f1']:.3f} (best step {f['best_step']})")
  summary = metrics_lib.summarize_folds(list(folds.values()))
  out.plot_confusion(summary["confusion_normalized"], ds.class_names,
                     f"confusion_{kind}_mean.png", f"{kind} mean over {len(folds)} fold(s)")
  return {"folds": folds, "summary": summary, "train_traces": model.train_fn.traces,
          "eval_traces": model.eval_fn.traces}


def train_and_evaluate(config, workdir: str, stop: StopRequest | None = None,
                       on_step=None) -> dict:
  """Runs the experiment of ``config`` in ``workdir`` (resuming what is there).

  Joins a multi-host run first when the environment asks for one
  (``distributed.initialize_multihost``).

  Args:
    config: the run's config (configs/*.py).
    workdir: the run's directory (see the module doc for its layout).
    stop: when set (from another thread or a signal handler), every fold being trained
      checkpoints at its next step boundary and the run raises KeyboardInterrupt; rerunning the
      same command resumes from there.
    on_step: optional ``on_step(kind, fold_name, step)``, called after every train step (on the
      training thread of that kind).

  Returns:
    The metrics dict also written to ``workdir/metrics.json`` (by process 0).
  """
  try:
    setup = dist.initialize_multihost(config)  # before anything asks JAX for its devices
  except ValueError as e:
    raise UserError(f"multi-host settings: {e}") from e
  validate.check_config(config)  # before any data is read or anything is written
  primary = setup.process_index == 0
  ckpt_lib.prepare_workdir(workdir, config, write=primary)
  out = RunOutput(workdir, primary, show_progress=config.train.progress)
  stop = stop or StopRequest()
  kinds = fusion_kinds(config)
  if not kinds:
    raise UserError("config.fusions is empty; expected e.g. 'dmf' or 'dmf,naive'.")
  parallelism, devices = dist.layout(config)
  out.say(run_header(config, kinds, len(devices), parallelism, setup.process_count))
  ds = _load_dataset(config, workdir)
  ckpt_lib.check_dataset(workdir, ckpt_lib.dataset_fingerprint(ds.labels, ds.folds, ds.inputs),
                         write=primary)
  if ds.summary is not None:  # what was read, per session / class, and what was not
    out.say(ds.summary.format())
  out.say(f"{len(ds.labels)} examples, {len(ds.folds)} fold(s): "
          f"{', '.join(f.name for f in ds.folds)}")
  with progress_lib.phase(f"Compiling the {' and '.join(kinds)} model{'s' * (len(kinds) > 1)} "
                          "(initialisation, train step, eval step)", enabled=primary):
    compiled = {kind: CompiledModel(config, kind, ds, parallelism, devices) for kind in kinds}
    compile_models(list(compiled.values()))
  for position, kind in enumerate(kinds):
    compiled[kind].position = position
  results = {"name": config.name, "class_names": list(ds.class_names),
             "devices": len(devices), "parallelism": parallelism,
             "processes": setup.process_count, "fusions": {}}

  def run_kind(kind):
    results["fusions"][kind] = _train_kind(compiled[kind], out, stop, on_step)
    out.write_json("metrics.json", dict(results, fusions=dict(results["fusions"])))  # a snapshot

  run_kinds(run_kind, kinds, stop, at_once=config.train.get("concurrent_kinds", True))
  results["fusions"] = {k: results["fusions"][k] for k in kinds}
  results["table"] = metrics_lib.format_table({k: v["summary"]
                                               for k, v in results["fusions"].items()})
  out.write_json("metrics.json", results)
  out.say(results["table"])
  return results
