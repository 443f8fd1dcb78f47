"""What a run reports: its header line, printed lines, progress, TensorBoard scalars, metrics.json
and the confusion-matrix PNGs. Process 0 writes them; on every other process each writer does
nothing, so the training loop has no process-0 branches.
"""
import contextlib
import threading

from mbaf_jax.errors import UserError
from train import metrics as metrics_lib
from train import progress as progress_lib
from train import workdir as workdir_lib


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

  def scalars(self, fusion: str, fold: str):
    """A fold's TensorBoard writer (``.scalars(step, values, prefix)``)."""
    if not self.enabled:
      return _NullScalars()
    return _Scalars(workdir_lib.events_dir(self.workdir, fusion, fold))

  def progress(self, total: int, initial: int, desc: str, position: int = 0):
    """A fold's progress bar (``train.progress.progress``) or one that shows nothing."""
    bar = progress_lib.progress(self.show_progress, total, initial, desc, position=position)
    return _NullBar() if bar is None else bar

  def write_metrics(self, results: dict) -> None:
    """Writes metrics.json atomically."""
    if self.enabled:
      path = workdir_lib.metrics_path(self.workdir)
      with self._lock, _writing(path):
        workdir_lib.write_json(path, results)

  def plot_confusion(self, cm, class_names, fusion: str, fold: str, title: str) -> None:
    """Writes a confusion-matrix PNG (fold "mean": the average over folds)."""
    if self.enabled:
      path = workdir_lib.confusion_path(self.workdir, fusion, fold)
      with self._lock, _writing(path):
        metrics_lib.plot_confusion(cm, class_names, path, title)




DATASET_NAMES = {"iemocap": "IEMOCAP", "cebs": "PhysioNet CEBS", "manifest": "a manifest"}


def run_header(kinds, data, family, num_devices: int, parallelism: str, processes: int) -> str:
  """The run's first line: what it trains (the fusion kinds of ``config.fusions``, not the
  config's name: ``configs/iemocap.py --config.fusions=naive`` trains naive fusion only), on
  which data (``config.data``) and devices, with the model family's encoders.

  Returns:
    e.g. "Training dmf and naive fusion (Wav2Vec2 + BERT encoders) on a synthetic IEMOCAP-format
    corpus, loso folds; 1 device (jit, 1 process)".
  """
  what = DATASET_NAMES.get(data.dataset, data.dataset)
  if data.synthetic and not data.data_dir and data.dataset != "manifest":
    what = f"a synthetic {what}-format corpus"
  elif data.data_dir:
    what = f"{what} ({data.data_dir})"
  name = family.__name__.rsplit(".", 1)[-1]
  encoders = getattr(family, "ENCODERS", f"model {name}")
  return (f"Training {' and '.join(kinds)} fusion ({encoders}) on {what}, {data.protocol} folds; "
          f"{num_devices} device{'s' * (num_devices > 1)} ({parallelism}, {processes} "
          f"process{'es' * (processes > 1)})")


