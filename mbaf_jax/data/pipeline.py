"""Fixed-shape batching with padding masks, seeded shuffling and a savable position.

The training loop never sees a batch of a new shape: the last (short) batch of
an epoch is *padded* to ``batch_size`` with valid indices and a ``False`` mask,
so a jitted step compiles once (ARCHITECTURE "Conventions": fixed shapes + masks).

* :class:`Batcher` — epoch-based seeded shuffling. The order of epoch ``e`` is
  ``np.random.default_rng([seed, e]).permutation(N)``: a pure function of
  ``(seed, epoch)``, so the position ``(epoch, position)`` is all the state
  there is; :meth:`Batcher.state` / :meth:`Batcher.restore` resume exactly.
* :func:`eval_batches` — every example exactly once, in order, last batch padded.
* :func:`gather` — ``{name: array[indices]}`` for a dict of in-memory arrays.
* :func:`prefetch` — runs an iterator in a background thread, keeping its order.

Example::

    b = Batcher(len(labels), batch_size=32, seed=0)
    for epoch in range(3):
      for idx, mask in b:                  # one epoch per ``for`` loop
        batch = gather({"x": x, "y": labels}, idx)
        ...                                # mask: (32,) bool, False on padded rows
    ckpt["data"] = b.state()               # {"epoch": 3, "position": 0, ...}
"""
import queue
import threading
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np

_STATE_VERSION = 1


def _check_positive_int(name: str, value, owner: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
    raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
  return int(value)


def _padded(order: np.ndarray, start: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``order[start:start+B]`` padded to ``B`` by repeating its first index, with the mask."""
  chunk = order[start:start + batch_size]
  n = chunk.shape[0]
  idx = np.empty(batch_size, dtype=np.int64)
  idx[:n] = chunk
  idx[n:] = chunk[0]  # a valid index: gathering it is safe, the mask hides it
  mask = np.zeros(batch_size, dtype=bool)
  mask[:n] = True
  return idx, mask


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The visiting order of one epoch: a pure function of ``(seed, epoch)``.

  Args:
    num_examples: N.
    seed: the Batcher's seed.
    epoch: epoch number (0-based).
    shuffle: False gives ``arange(N)``.

  Returns:
    (N,) int64 permutation of ``range(N)``.
  """
  if not shuffle:
    return np.arange(num_examples, dtype=np.int64)
  rng = np.random.default_rng([int(seed), int(epoch)])
  return rng.permutation(num_examples).astype(np.int64)


class Batcher:
  """Seeded, epoch-based batches of ``(indices (B,) int64, mask (B,) bool)``.

  Iterating a Batcher yields the *remaining* batches of the current epoch and
  then moves to the next epoch (so ``for epoch ...: for idx, mask in b:`` runs
  whole epochs, and a restored Batcher finishes the interrupted one).
  :meth:`next` gives an endless stream across epochs.

  With ``drop_remainder=False`` (default) every example appears exactly once
  per epoch; the last batch holds ``N mod B`` real rows and is padded by
  repeating its first index with ``mask=False``. With ``drop_remainder=True``
  there are ``N // B`` full batches and the ``N mod B`` examples that the
  epoch's permutation puts last are not visited in that epoch.

  Attributes:
    num_examples: N.
    batch_size: B.
    seed: shuffling seed.
    shuffle: whether each epoch is a fresh permutation.
    drop_remainder: drop the short last batch instead of padding it.
    epoch: current epoch (0-based).
    position: batches of the current epoch already consumed.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
               drop_remainder: bool = False):
    self.num_examples = _check_positive_int("num_examples", num_examples, "Batcher")
    self.batch_size = _check_positive_int("batch_size", batch_size, "Batcher")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
      raise ValueError(f"Batcher: seed must be a non-negative int, got {seed!r}")
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    self.drop_remainder = bool(drop_remainder)
    if self.drop_remainder and self.num_examples < self.batch_size:
      raise ValueError(f"Batcher: drop_remainder=True with num_examples={num_examples} < "
                       f"batch_size={batch_size} would give no batch at all; lower batch_size or "
                       "use drop_remainder=False (the short batch is padded and masked)")
    self.epoch = 0
    self.position = 0
    self._cache = (None, None)  # (epoch, order) of the last permutation computed

  @property
  def steps_per_epoch(self) -> int:
    """Batches per epoch: ``ceil(N / B)``, or ``N // B`` with ``drop_remainder``."""
    if self.drop_remainder:
      return self.num_examples // self.batch_size
    return -(-self.num_examples // self.batch_size)

  def order(self, epoch: int) -> np.ndarray:
    """The (N,) visiting order of ``epoch`` (see :func:`epoch_order`)."""
    if self._cache[0] != epoch:
      self._cache = (epoch, epoch_order(self.num_examples, self.seed, epoch, self.shuffle))
    return self._cache[1]

  def batch_at(self, epoch: int, position: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``position`` of ``epoch`` without moving the Batcher: ``(indices, mask)``."""
    if not 0 <= position < self.steps_per_epoch:
      raise IndexError(f"Batcher.batch_at: position must be in [0, {self.steps_per_epoch}), got {position}")
    return _padded(self.order(epoch), position * self.batch_size, self.batch_size)

  def _advance(self):
    self.position += 1
    if self.position >= self.steps_per_epoch:
      self.epoch += 1
      self.position = 0

  def next(self) -> tuple[np.ndarray, np.ndarray]:
    """The next batch (crossing epoch boundaries), advancing the position."""
    out = self.batch_at(self.epoch, self.position)
    self._advance()
    return out

  def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields the remaining batches of the current epoch."""
    epoch = self.epoch
    while self.epoch == epoch:
      yield self.next()

  def iterate(self, arrays: Optional[Mapping[str, np.ndarray]] = None, prefetch_size: int = 0):
    """Remaining batches of the current epoch as dicts, optionally prefetched.

    Each item is ``{"indices": (B,), "mask": (B,), **gather(arrays, indices)}``.
    Batches are computed from ``(epoch, position)`` alone, so a background
    thread can work ahead without touching the Batcher; its position advances
    only as items are handed to the caller, and :meth:`state` stays exact.

    Args:
      arrays: optional dict of arrays with N rows to gather from.
      prefetch_size: 0: no thread; k > 0: keep up to k batches ready.

    Yields:
      dict batches, in order.
    """
    arrays = {} if arrays is None else arrays
    _check_rows(arrays, self.num_examples, "Batcher.iterate")
    start = self.position
    order = epoch_order(self.num_examples, self.seed, self.epoch, self.shuffle)
    steps, batch_size = self.steps_per_epoch, self.batch_size

    def produce():
      for p in range(start, steps):
        idx, mask = _padded(order, p * batch_size, batch_size)
        yield {"indices": idx, "mask": mask, **gather(arrays, idx)}

    items = produce() if prefetch_size <= 0 else prefetch(produce(), prefetch_size)
    for item in items:
      self._advance()
      yield item

  def state(self) -> dict:
    """A small JSON-able dict that :meth:`restore` resumes from exactly."""
    return {"version": _STATE_VERSION, "epoch": int(self.epoch), "position": int(self.position),
            "seed": self.seed, "num_examples": self.num_examples, "batch_size": self.batch_size,
            "shuffle": self.shuffle, "drop_remainder": self.drop_remainder}

  def restore(self, state: Mapping) -> "Batcher":
    """Moves to the position saved by :meth:`state`; returns ``self``.

    Raises:
      ValueError: the state is malformed, or was saved by a Batcher over a
        different data set / batch size / seed (resuming would then visit a
        different sequence).
    """
    if not isinstance(state, Mapping) or "epoch" not in state or "position" not in state:
      raise ValueError(f"Batcher.restore: state must be a dict from Batcher.state() with 'epoch' and "
                       f"'position', got {state!r}")
    for key in ("seed", "num_examples", "batch_size", "shuffle", "drop_remainder"):
      if key in state and state[key] != getattr(self, key):
        raise ValueError(f"Batcher.restore: the saved state has {key}={state[key]!r} but this Batcher has "
                         f"{key}={getattr(self, key)!r}; build the Batcher with the same settings (and data "
                         "set) as the run that saved it")
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or not 0 <= position < self.steps_per_epoch:
      raise ValueError(f"Batcher.restore: epoch must be >= 0 and position in [0, {self.steps_per_epoch}), "
                       f"got epoch={epoch}, position={position}")
    self.epoch, self.position = epoch, position
    return self


def eval_batches(num_examples: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Every example exactly once, in order: ``(indices (B,), mask (B,))``, the last batch padded.

  Args:
    num_examples: N (0 yields nothing).
    batch_size: B.

  Yields:
    ``ceil(N / B)`` batches; the real rows over all batches are ``0..N-1`` in order.
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
    raise ValueError(f"eval_batches: num_examples must be a non-negative int, got {num_examples!r}")
  batch_size = _check_positive_int("batch_size", batch_size, "eval_batches")
  order = np.arange(num_examples, dtype=np.int64)
  for start in range(0, num_examples, batch_size):
    yield _padded(order, start, batch_size)


def process_slice(indices: np.ndarray, mask: np.ndarray, process_index: int, process_count: int):
  """This process's contiguous part of a global batch (multi-host data parallelism).

  Every process runs the same Batcher (same seed) and so sees the same global
  batch; process ``p`` of ``P`` feeds rows ``[p B/P, (p+1) B/P)`` to its local
  devices, and the global array assembled from the parts equals the global batch.

  Args:
    indices: (B,) global batch indices.
    mask: (B,) global batch mask.
    process_index: this process, in [0, process_count).
    process_count: number of processes; must divide B.

  Returns:
    ``(indices[rows], mask[rows])`` of shape ``(B / P,)``.
  """
  b = int(np.shape(indices)[0])
  if not 0 <= process_index < process_count or b % process_count:
    raise ValueError(f"process_slice: need 0 <= process_index < process_count and batch size {b} divisible "
                     f"by process_count, got process_index={process_index}, process_count={process_count}")
  per = b // process_count
  rows = slice(process_index * per, (process_index + 1) * per)
  return indices[rows], mask[rows]


def _check_rows(arrays: Mapping[str, np.ndarray], n: int, owner: str):
  if not isinstance(arrays, Mapping):
    raise TypeError(f"{owner}: arrays must be a dict name -> array, got {type(arrays).__name__}")
  for name, a in arrays.items():
    if np.ndim(a) == 0 or np.shape(a)[0] != n:
      raise ValueError(f"{owner}: arrays[{name!r}] has shape {np.shape(a)} but every array needs "
                       f"{n} rows (one per example)")


def gather(arrays: Mapping[str, np.ndarray], indices: np.ndarray) -> dict:
  """``{name: array[indices]}`` along the first axis (nested dicts and tuples are gathered too).

  Args:
    arrays: dict of arrays (or nested dicts / tuples of arrays) sharing the first axis.
    indices: (B,) integer indices.

  Returns:
    dict of the same structure, each leaf of shape ``(B, ...)``.
  """
  indices = np.asarray(indices)
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"gather: indices must be a 1-D integer array, got shape {indices.shape} and "
                     f"dtype {indices.dtype}")
  if not isinstance(arrays, Mapping):
    raise TypeError(f"gather: arrays must be a dict name -> array, got {type(arrays).__name__}")
  out = {}
  for name, a in arrays.items():
    if isinstance(a, Mapping):
      out[name] = gather(a, indices)
      continue
    if isinstance(a, tuple):  # e.g. one array per physiological mode
      out[name] = tuple(gather({name: x}, indices)[name] for x in a)
      continue
    a = np.asarray(a)
    if a.ndim == 0:
      raise ValueError(f"gather: arrays[{name!r}] is a scalar; every array needs one row per example")
    if indices.size and (indices.min() < -a.shape[0] or indices.max() >= a.shape[0]):
      raise IndexError(f"gather: indices reach {indices.max()} but arrays[{name!r}] has only "
                       f"{a.shape[0]} rows")
    out[name] = np.take(a, indices, axis=0)
  return out


_END = object()


def prefetch(iterable: Iterable, size: int = 2) -> Iterator:
  """Runs ``iterable`` in a background thread, keeping up to ``size`` items ready, in order.

  Exceptions raised by the producer are re-raised in the consumer. Closing the
  returned generator early stops the thread.

  Args:
    iterable: any iterable (e.g. a generator of gathered batches).
    size: queue capacity (>= 1).

  Yields:
    the items of ``iterable`` in the same order.
  """
  size = _check_positive_int("size", size, "prefetch")
  q = queue.Queue(maxsize=size)
  stop = threading.Event()

  def worker():
    try:
      for item in iterable:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(_END)
    except BaseException as e:  # handed to the consumer  # pylint: disable=broad-except
      q.put(e)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _END:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():
      try:
        q.get_nowait()
      except queue.Empty:
        pass
      thread.join(timeout=0.05)
