"""Input pipeline: batches/s and utterances/s of Batcher + gather from in-memory (cached) arrays.

The training step must never wait for data: from decoded, cached audio the
pipeline has to deliver >= 500 utterances/s on 2 CPU cores (issue 4, item 4).
Measured per configuration (one JSON line each):

* ``pipeline_iemocap``: (N, 80000) float32 audio (5 s at 16 kHz) + (N, 30)
  int32 tokens + masks + labels, batch 32, shuffled, with and without a
  background prefetch thread, host arrays only and with ``jax.device_put`` of
  each batch (what a train step consumes).
* ``pipeline_cebs``: two (N, 6, 1000) float32 modes (CEBS windows), batch 32.

``median_ms`` is per batch (median over batches of several epochs);
``throughput`` is utterances/s over the whole timed run (``batches_per_s`` too);
``meets_500_utt_s`` says whether the target holds.

    python -m benchmarks.bench_pipeline            # N = 1024 utterances (≈ 330 MB of audio)
    python -m benchmarks.bench_pipeline --quick    # tiny sizes, a smoke check
"""
import statistics
import time

import jax
import numpy as np

from benchmarks import common
from mbaf_jax.data.pipeline import Batcher


def run(arrays: dict, batch_size: int, epochs: int, prefetch_size: int, to_device: bool) -> dict:
  """Times ``epochs`` epochs of Batcher.iterate over ``arrays``; returns timing numbers."""
  n = next(iter(arrays.values())).shape[0]
  b = Batcher(n, batch_size, seed=0)
  per_batch = []
  total_rows = 0
  t_start = time.perf_counter()
  for _ in range(epochs):
    t0 = time.perf_counter()
    for item in b.iterate(arrays, prefetch_size=prefetch_size):
      if to_device:
        item = jax.block_until_ready(jax.device_put(item))
      total_rows += int(np.asarray(item["mask"]).sum())
      t1 = time.perf_counter()
      per_batch.append((t1 - t0) * 1e3)
      t0 = t1
  total_s = time.perf_counter() - t_start
  return {"median_ms": statistics.median(per_batch), "min_ms": min(per_batch),
          "batches": len(per_batch), "total_s": total_s, "rows": total_rows}


def main(argv=None):
  p = common.parser("Batcher + gather throughput from in-memory arrays")
  p.add_argument("--num", type=int, default=None, help="examples in memory (default 1024, quick 64)")
  p.add_argument("--batch", type=int, default=32, help="batch size (default 32, MBAF §4.2 / DMF)")
  args = p.parse_args(argv)
  n = args.num or (64 if args.quick else 1024)
  samples = 8000 if args.quick else 80000
  epochs = 2 if args.quick else 3
  rng = np.random.default_rng(0)
  iemocap = {"audio": rng.standard_normal((n, samples), dtype=np.float32),
             "audio_mask": np.ones((n, samples), np.int32),
             "tokens": rng.integers(0, 30000, (n, 30), dtype=np.int32),
             "token_mask": np.ones((n, 30), np.int32),
             "label": rng.integers(0, 4, n, dtype=np.int32)}
  cebs = {"ecg": rng.standard_normal((n, 6, 1000), dtype=np.float32),
          "resp": rng.standard_normal((n, 6, 1000), dtype=np.float32),
          "label": rng.integers(0, 3, n, dtype=np.int32)}
  cases = [("pipeline_iemocap", iemocap, {"num": n, "audio_samples": samples, "tokens": 30}),
           ("pipeline_cebs", cebs, {"num": n, "modes": 2, "chunks": 6, "chunk_samples": 1000})]
  for name, arrays, shape in cases:
    for prefetch_size in (0, 2):
      for to_device in (False, True):
        r = run(arrays, args.batch, epochs, prefetch_size, to_device)
        utt_s = r["rows"] / r["total_s"]
        common.emit({
            "bench": name, "device": common.device_name(), "shape": {**shape, "batch": args.batch},
            "dtype": "float32", "median_ms": round(r["median_ms"], 4), "min_ms": round(r["min_ms"], 4),
            "throughput": round(utt_s, 1), "throughput_unit": "utterances/s",
            "batches_per_s": round(r["batches"] / r["total_s"], 2), "batches": r["batches"],
            "prefetch": prefetch_size, "device_put": to_device,
            "peak_mem_mb": round(common.peak_mem_mb(), 1), "meets_500_utt_s": bool(utt_s >= 500),
            "quick": bool(args.quick)})


if __name__ == "__main__":
  main()
