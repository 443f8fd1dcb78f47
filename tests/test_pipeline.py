"""Tests of mbaf_jax.data.pipeline: fixed-shape batches, masks, seeded order, exact restore."""
import json
import threading

import numpy as np
import pytest

from mbaf_jax.data import pipeline
from mbaf_jax.data.pipeline import Batcher, eval_batches, gather, prefetch


def _epoch(b):
  return [(i.copy(), m.copy()) for i, m in b]


@pytest.mark.parametrize("n,bs", [(10, 4), (12, 4), (3, 8), (1, 1)])
def test_every_example_once_per_epoch_with_padding(n, bs):
  b = Batcher(n, bs, seed=3)
  assert b.steps_per_epoch == -(-n // bs)
  for _ in range(3):
    batches = _epoch(b)
    assert len(batches) == b.steps_per_epoch
    real = np.concatenate([i[m] for i, m in batches])
    np.testing.assert_array_equal(np.sort(real), np.arange(n))  # each exactly once
    for k, (i, m) in enumerate(batches):
      assert i.shape == (bs,) and i.dtype == np.int64 and m.shape == (bs,) and m.dtype == bool
      assert ((0 <= i) & (i < n)).all()  # padding indices are valid rows
      n_real = bs if k < len(batches) - 1 else n - bs * (len(batches) - 1)
      np.testing.assert_array_equal(m, np.arange(bs) < n_real)  # real rows first, then padding
      np.testing.assert_array_equal(i[n_real:], i[0])  # padding repeats the batch's first index


def test_order_is_the_documented_permutation_and_changes_per_epoch():
  b = Batcher(10, 4, seed=7)
  e0, e1 = _epoch(b), _epoch(b)
  ref0 = np.random.default_rng([7, 0]).permutation(10)
  ref1 = np.random.default_rng([7, 1]).permutation(10)
  np.testing.assert_array_equal(np.concatenate([i[m] for i, m in e0]), ref0)
  np.testing.assert_array_equal(np.concatenate([i[m] for i, m in e1]), ref1)
  assert not np.array_equal(ref0, ref1)
  assert b.epoch == 2 and b.position == 0


def test_determinism_and_seed_dependence():
  b1, b2 = Batcher(23, 5, seed=1), Batcher(23, 5, seed=1)
  a = np.concatenate([_epoch_flat(b1), _epoch_flat(b1)])
  b = np.concatenate([_epoch_flat(b2), _epoch_flat(b2)])
  c = _epoch_flat(Batcher(23, 5, seed=2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a[:23], c)


def _epoch_flat(b):
  return np.concatenate([i[m] for i, m in b])


def test_no_shuffle_is_sequential():
  b = Batcher(7, 3, seed=0, shuffle=False)
  batches = _epoch(b)
  np.testing.assert_array_equal(batches[0][0], [0, 1, 2])
  np.testing.assert_array_equal(batches[2][0], [6, 6, 6])
  np.testing.assert_array_equal(batches[2][1], [True, False, False])


def test_drop_remainder_gives_full_batches_only():
  b = Batcher(10, 4, seed=0, drop_remainder=True)
  assert b.steps_per_epoch == 2
  batches = _epoch(b)
  assert len(batches) == 2 and all(m.all() for _, m in batches)
  seen = np.concatenate([i for i, _ in batches])
  assert len(set(seen.tolist())) == 8
  np.testing.assert_array_equal(seen, np.random.default_rng([0, 0]).permutation(10)[:8])


@pytest.mark.parametrize("k", [0, 1, 3, 4, 6])
def test_restore_resumes_the_identical_sequence(k):
  n, bs = 11, 3  # 4 steps per epoch; k crosses the epoch boundary
  ref = Batcher(n, bs, seed=5)
  full = [ref.next() for _ in range(12)]
  b = Batcher(n, bs, seed=5)
  for _ in range(k):
    b.next()
  state = json.loads(json.dumps(b.state()))  # survives a JSON/checkpoint round trip
  assert state["epoch"] == k // 4 and state["position"] == k % 4
  resumed = Batcher(n, bs, seed=5).restore(state)
  rest = [resumed.next() for _ in range(12 - k)]
  for (i1, m1), (i2, m2) in zip(full[k:], rest):
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(m1, m2)


def test_restore_mid_epoch_iteration_finishes_that_epoch():
  b = Batcher(10, 3, seed=0)
  it = iter(b)
  first = [next(it) for _ in range(2)]
  resumed = Batcher(10, 3, seed=0).restore(b.state())
  rest = _epoch(resumed)
  assert len(rest) == 2
  real = np.concatenate([i[m] for i, m in first + rest])
  np.testing.assert_array_equal(np.sort(real), np.arange(10))
  assert resumed.epoch == 1


def test_restore_rejects_mismatched_or_bad_state():
  state = Batcher(10, 3, seed=0).state()
  with pytest.raises(ValueError, match="batch_size=3.*batch_size=4"):
    Batcher(10, 4, seed=0).restore(state)
  with pytest.raises(ValueError, match="num_examples"):
    Batcher(11, 3, seed=0).restore(state)
  with pytest.raises(ValueError, match="seed"):
    Batcher(10, 3, seed=1).restore(state)
  with pytest.raises(ValueError, match="position in"):
    Batcher(10, 3, seed=0).restore({"epoch": 0, "position": 9})
  with pytest.raises(ValueError, match="'epoch' and 'position'"):
    Batcher(10, 3, seed=0).restore({"step": 3})
  with pytest.raises(IndexError, match=r"position must be in \[0, 4\)"):
    Batcher(10, 3, seed=0).batch_at(0, 4)
  with pytest.raises(TypeError, match="arrays must be a dict"):
    next(Batcher(10, 3).iterate([np.zeros(10)]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_examples=0, batch_size=2), "num_examples must be a positive int"),
    (dict(num_examples=5, batch_size=0), "batch_size must be a positive int"),
    (dict(num_examples=5, batch_size=2.0), "batch_size must be a positive int"),
    (dict(num_examples=5, batch_size=2, seed=-1), "seed must be a non-negative int"),
    (dict(num_examples=3, batch_size=4, drop_remainder=True), "no batch at all"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Batcher(**kwargs)


@pytest.mark.parametrize("n,bs", [(0, 4), (9, 4), (8, 4), (2, 5)])
def test_eval_batches_cover_everything_once_in_order(n, bs):
  batches = list(eval_batches(n, bs))
  assert len(batches) == -(-n // bs)
  real = np.concatenate([i[m] for i, m in batches]) if batches else np.zeros(0, int)
  np.testing.assert_array_equal(real, np.arange(n))
  for i, m in batches:
    assert i.shape == (bs,) and m.shape == (bs,)
  if n % bs:
    assert batches[-1][1].sum() == n % bs
  with pytest.raises(ValueError, match="batch_size"):
    list(eval_batches(3, 0))


def test_gather_values_nested_and_errors():
  arrays = {"x": np.arange(20).reshape(10, 2), "meta": {"y": np.arange(10) * 10}}
  out = gather(arrays, np.array([3, 0, 3]))
  np.testing.assert_array_equal(out["x"], [[6, 7], [0, 1], [6, 7]])
  np.testing.assert_array_equal(out["meta"]["y"], [30, 0, 30])
  with pytest.raises(IndexError, match=r"arrays\['x'\] has only 10 rows"):
    gather({"x": np.zeros((10, 2))}, np.array([10]))
  with pytest.raises(ValueError, match="1-D integer"):
    gather(arrays, np.array([0.5]))
  with pytest.raises(TypeError, match="dict"):
    gather([np.zeros(3)], np.array([0]))


def test_iterate_gathers_prefetches_in_order_and_keeps_state_exact():
  x = np.arange(13 * 2, dtype=np.float32).reshape(13, 2)
  ref = Batcher(13, 4, seed=9)
  expected = _epoch(ref)
  b = Batcher(13, 4, seed=9)
  got = []
  for item in b.iterate({"x": x}, prefetch_size=2):
    got.append(item)
    # Position advances only as items are handed over, even though the thread works ahead.
    assert b.position == len(got) % 4 and b.epoch == len(got) // 4
  assert len(got) == 4
  for item, (i, m) in zip(got, expected):
    np.testing.assert_array_equal(item["indices"], i)
    np.testing.assert_array_equal(item["mask"], m)
    np.testing.assert_array_equal(item["x"], x[i])
  # Interrupt after one prefetched batch; the state resumes with the second.
  b2 = Batcher(13, 4, seed=9)
  gen = b2.iterate({"x": x}, prefetch_size=3)
  next(gen)
  gen.close()
  resumed = Batcher(13, 4, seed=9).restore(b2.state())
  np.testing.assert_array_equal(next(iter(resumed))[0], expected[1][0])
  with pytest.raises(ValueError, match=r"arrays\['x'\] has shape \(3, 2\)"):
    next(Batcher(13, 4).iterate({"x": np.zeros((3, 2))}))


def test_prefetch_order_errors_and_thread_stops():
  assert list(prefetch(iter(range(50)), size=3)) == list(range(50))

  def failing():
    yield 1
    raise RuntimeError("boom in producer")

  gen = prefetch(failing(), size=2)
  assert next(gen) == 1
  with pytest.raises(RuntimeError, match="boom in producer"):
    next(gen)
  before = threading.active_count()
  gen = prefetch(iter(range(1000)), size=2)
  next(gen)
  gen.close()
  assert threading.active_count() <= before
  with pytest.raises(ValueError, match="size must be a positive int"):
    next(prefetch([1], size=0))


def test_module_exports_batcher():
  import mbaf_jax.data as data  # pylint: disable=g-import-not-at-top
  assert data.Batcher is pipeline.Batcher


@pytest.mark.slow
def test_bench_pipeline_quick_emits_complete_records(capsys):
  from benchmarks import bench_pipeline  # pylint: disable=g-import-not-at-top
  bench_pipeline.main(["--quick"])
  lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
  assert len(lines) == 8
  for rec in lines:
    for key in ("bench", "device", "shape", "dtype", "median_ms", "throughput", "peak_mem_mb"):
      assert key in rec
    assert rec["median_ms"] > 0 and rec["throughput"] > 0 and rec["shape"]["batch"] == 32


def test_process_slice_partitions_the_global_batch():
  idx, mask = Batcher(10, 8, seed=0).batch_at(1, 1)  # the padded last batch: 2 real rows
  parts = [pipeline.process_slice(idx, mask, p, 4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate([i for i, _ in parts]), idx)
  np.testing.assert_array_equal(np.concatenate([m for _, m in parts]), mask)
  np.testing.assert_array_equal(parts[0][1], [True, True])
  assert not parts[1][1].any()
  with pytest.raises(ValueError, match="divisible by process_count"):
    pipeline.process_slice(idx, mask, 0, 3)
  with pytest.raises(ValueError, match="process_index=4"):
    pipeline.process_slice(idx, mask, 4, 4)


def test_gather_takes_rows_of_tuples_of_arrays():
  """CEBS inputs are a tuple of mode arrays: each is gathered row by row, the tuple kept."""
  from mbaf_jax.data.pipeline import gather
  a, b = np.arange(12).reshape(4, 3), np.arange(4) * 10.0
  out = gather({"modes": (a, b), "y": np.arange(4)}, np.array([3, 0, 3]))
  assert isinstance(out["modes"], tuple)
  np.testing.assert_array_equal(out["modes"][0], a[[3, 0, 3]])
  np.testing.assert_array_equal(out["modes"][1], [30.0, 0.0, 30.0])
  np.testing.assert_array_equal(out["y"], [3, 0, 3])
