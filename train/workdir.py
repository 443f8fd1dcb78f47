"""Every path of a training workdir, and the atomic JSON write its files use.

Layout::

  config.json                          the run's config, its model fingerprint and the fingerprint
                                       of the data it loaded (train.run_identity)
  metrics.json                         {fusion: {"folds": {...}, "summary": {...}}, "table": ...}
  confusion_<fusion>_<fold>.png        per fold; confusion_<fusion>_mean.png averaged
  tb/<fusion>/<fold>/                  TensorBoard events
  ckpt/<fusion>/<fold>/{latest,best}/  orbax checkpoints (train.checkpoints)
  data/                                a generated synthetic corpus (no config.data.data_dir)
  cache/                               decoded audio (no config.data.cache_dir)

The model families keep their fitted preprocessing beside these (``mbaf_jax.models``: DMF
``tokenizer/``, MBAF IEMOCAP ``vocab.json``).
"""
import json
import os
import tempfile

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "ckpt"
EVENTS_DIR = "tb"
DATA_DIR = "data"
CACHE_DIR = "cache"
_CONFUSION = "confusion_{fusion}_{fold}.png"
# What --config.train.restart=True removes: every output of a run (a name or a file pattern).
RUN_OUTPUTS = (CHECKPOINT_DIR, EVENTS_DIR, METRICS_FILE, _CONFUSION.format(fusion="*", fold="*"),
               CONFIG_FILE)


def config_path(workdir: str) -> str:
  """``<workdir>/config.json``."""
  return os.path.join(workdir, CONFIG_FILE)


def metrics_path(workdir: str) -> str:
  """``<workdir>/metrics.json``."""
  return os.path.join(workdir, METRICS_FILE)


def confusion_path(workdir: str, fusion: str, fold: str) -> str:
  """``<workdir>/confusion_<fusion>_<fold>.png`` (fold "mean": the average over folds)."""
  return os.path.join(workdir, _CONFUSION.format(fusion=fusion, fold=fold))


def events_dir(workdir: str, fusion: str, fold: str) -> str:
  """``<workdir>/tb/<fusion>/<fold>``: one fold's TensorBoard events."""
  return os.path.join(workdir, EVENTS_DIR, fusion, fold)


def data_dir(workdir: str) -> str:
  """``<workdir>/data``: where a synthetic corpus is generated."""
  return os.path.join(workdir, DATA_DIR)


def cache_dir(workdir: str) -> str:
  """``<workdir>/cache``: decoded audio, when ``config.data.cache_dir`` is unset."""
  return os.path.join(workdir, CACHE_DIR)


def checkpoint_root(workdir: str) -> str:
  """``<workdir>/ckpt``: one folder per fusion kind."""
  return os.path.join(workdir, CHECKPOINT_DIR)


def fusion_dir(workdir: str, fusion: str) -> str:
  """``<workdir>/ckpt/<fusion>``: one folder per fold."""
  return os.path.join(checkpoint_root(workdir), fusion)


def fold_dir(workdir: str, fusion: str, fold: str) -> str:
  """``<workdir>/ckpt/<fusion>/<fold>``: the directory of a ``FoldCheckpointer``."""
  return os.path.join(fusion_dir(workdir, fusion), fold)


def slot_dir(workdir: str, fusion: str, fold: str, slot: str) -> str:
  """``<workdir>/ckpt/<fusion>/<fold>/<slot>`` (slot "best" or "latest"): one orbax manager's
  directory, one ``<step>`` folder per checkpoint."""
  return os.path.join(fold_dir(workdir, fusion, fold), slot)


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as indented JSON, atomically: a temporary file in the same folder, renamed
  into place, so a reader never sees half a file.

  Raises:
    OSError: the folder cannot be written (the caller says what that means for the run).
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
