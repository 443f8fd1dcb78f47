"""Audio input pipeline: utterances/s decoding from cold files and from the decode cache.

Writes IEMOCAP-like clips (16 kHz mono PCM16; 2-7 s, mean 4.5 s like the real
sentences, or 0.5 s under ``--quick``) to a temporary directory, then times
:func:`mbaf_jax.data.audio.load_waveforms` (max 5 s per clip, as the DMF audio encoder takes) for:

* ``audio_decode_cold``: decode every file, no cache;
* ``audio_decode_fill_cache``: decode and write the cache (first epoch);
* ``audio_from_cache``: load every clip from the cache (later epochs; target
  >= 500 utt/s on 2 cores so a CPU train step is never starved);
* ``audio_decode_resample_44k``: 44.1 kHz files resampled to 16 kHz.

One JSON line per measurement. Run from the repository root::

    python -m benchmarks.bench_audio            # 1000 clips, workers=2
    python -m benchmarks.bench_audio --quick    # 32 short clips (smoke check)
"""
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import soundfile as sf

from benchmarks import common
from mbaf_jax.data import audio

TARGET_FROM_CACHE = 500.0  # utterances/s


def _write_clips(directory, n, seconds, sr, seed=0):
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    dur = rng.uniform(*seconds)
    t = np.arange(int(dur * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.02 * rng.standard_normal(t.size)
    path = os.path.join(directory, f"utt{i:05d}.wav")
    sf.write(path, wave, sr, subtype="PCM_16")
    paths.append(path)
  return paths


def _time(fn, iters, before=None):
  times = []
  for _ in range(iters):
    if before is not None:
      before()
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None):
  p = common.parser("Audio decode/cache throughput")
  p.add_argument("--n", type=int, default=None, help="number of clips (default 1000, quick 32)")
  p.add_argument("--workers", type=int, default=2, help="decoding threads")
  args = p.parse_args(argv)
  _, iters = common.iterations(args)
  n = args.n or (32 if args.quick else 1000)
  seconds = (0.5, 0.5) if args.quick else (2.0, 7.0)
  max_seconds = 5.0
  tmp = tempfile.mkdtemp(prefix="bench_audio_")
  try:
    for sub in ("16k", "44k"):
      os.makedirs(os.path.join(tmp, sub))
    paths16 = _write_clips(os.path.join(tmp, "16k"), n, seconds, 16000)
    n44 = max(8, n // 10)
    paths44 = _write_clips(os.path.join(tmp, "44k"), n44, seconds, 44100, seed=1)
    cache = os.path.join(tmp, "cache")
    load = lambda ps, c: audio.load_waveforms(ps, sr=16000, max_seconds=max_seconds, cache_dir=c,
                                              workers=args.workers)
    clear = lambda: shutil.rmtree(cache, ignore_errors=True)
    load(paths16[:4], None)  # import soundfile/librosa outside the timings
    audio.read_wav(paths44[0])
    cases = [
        ("audio_decode_cold", lambda: load(paths16, None), None, n),
        ("audio_decode_fill_cache", lambda: load(paths16, cache), clear, n),
        ("audio_from_cache", lambda: load(paths16, cache), None, n),
        ("audio_decode_resample_44k", lambda: load(paths44, None), None, n44),
    ]
    for name, fn, before, count in cases:
      if name == "audio_from_cache":
        load(paths16, cache)  # make sure the cache is full
      med = _time(fn, iters, before)
      rec = {"bench": name, "device": common.device_name(),
             "shape": {"n_utterances": count, "seconds": list(seconds), "max_seconds": max_seconds,
                       "workers": args.workers, "cpu_count": os.cpu_count()},
             "dtype": "float32", "median_ms": med * 1e3, "throughput": count / med,
             "throughput_unit": "utterances/s", "peak_mem_mb": common.peak_mem_mb(), "iters": iters}
      if name == "audio_from_cache":
        rec["target_utt_per_s"] = TARGET_FROM_CACHE
        rec["meets_target"] = bool(count / med >= TARGET_FROM_CACHE)
      common.emit(rec)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
