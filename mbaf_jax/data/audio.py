"""Audio reading, resampling and an on-disk decode cache.

IEMOCAP sentence wavs are 16 kHz mono 16-bit PCM (DATA_FORMATS "IEMOCAP");
the DMF audio encoder gets the first 5 s at 16 kHz (SPEC "DMF"; the paper gives no
length). :func:`read_wav`
normalises anything readable to that (stereo → mono by the channel mean, other
rates → 16 kHz with ``librosa.resample``) and rejects what cannot be used
(unreadable, empty, NaN/inf samples) with a :class:`DataError` naming the file.
:func:`load_waveforms` decodes a list of files once, in parallel, caches each
decoded clip as a ``.npy`` file and returns one zero-padded array; files that
cannot be used are skipped (length 0) and counted in a :class:`LoadSummary`.
"""
import concurrent.futures
import hashlib
import os
from typing import Sequence

import numpy as np

from mbaf_jax.data.report import DataError, LoadSummary

# LoadSummary reasons, one per way a file can be unusable.
REASON_UNREADABLE = "unreadable wav"
REASON_EMPTY = "empty wav"
REASON_NONFINITE = "non-finite (NaN/inf) samples"
# Lowest sample rate accepted from a file's header: below it the "audio" is a damaged header
# (resampling 1 Hz to 16 kHz would multiply the samples by 16,000).
MIN_FILE_SAMPLE_RATE = 1000


class AudioFileError(DataError):
  """A single audio file that cannot be used; ``reason`` is one of the REASON_* strings."""

  def __init__(self, reason: str, path: str, detail: str = ""):
    self.reason = reason
    self.path = str(path)
    super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))


def read_wav(path, sr: int = 16000, max_seconds: float | None = None) -> np.ndarray:
  """Reads one audio file as mono float32 in [-1, 1] at ``sr`` Hz.

  Args:
    path: an audio file soundfile can read (wav/flac/ogg).
    sr: target sampling rate; other rates are resampled with
      ``librosa.resample`` (soxr_hq).
    max_seconds: read only the first ``max_seconds`` of the file (before
      resampling, so a long file costs no more than its kept part); None: all.

  Returns:
    (S,) float32 waveform, S > 0.

  Raises:
    AudioFileError: (a DataError) the file is missing or not decodable,
      its header gives a sample rate below MIN_FILE_SAMPLE_RATE, it holds no
      samples, or holds NaN/inf samples; the message names the file.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  if sr <= 0:
    raise ValueError(f"read_wav: sr must be a positive sampling rate in Hz, got {sr}")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioFileError(REASON_UNREADABLE, path, "no such file")
  try:
    with sf.SoundFile(path) as f:
      file_sr = f.samplerate
      if file_sr < MIN_FILE_SAMPLE_RATE:
        raise AudioFileError(REASON_UNREADABLE, path, f"its header gives a sample rate of {file_sr} Hz "
                             f"(below {MIN_FILE_SAMPLE_RATE} Hz: a damaged header, not audio)")
      # A 0.1 s margin past the cut, so resampling sees the same samples around it as in the whole file.
      frames = -1 if max_seconds is None else int(np.ceil((max_seconds + 0.1) * file_sr))
      data = f.read(frames=frames, dtype="float32", always_2d=True)
  except AudioFileError:
    raise
  except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError on junk.
    raise AudioFileError(REASON_UNREADABLE, path, f"soundfile could not decode it: {e}") from None
  if data.size == 0:
    raise AudioFileError(REASON_EMPTY, path, "0 samples")
  wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
  if not np.all(np.isfinite(wave)):
    bad = int(np.size(wave) - np.count_nonzero(np.isfinite(wave)))
    raise AudioFileError(REASON_NONFINITE, path, f"{bad} of {wave.size} samples are NaN/inf")
  if file_sr != sr:
    import librosa  # pylint: disable=g-import-not-at-top
    wave = librosa.resample(wave, orig_sr=file_sr, target_sr=sr)
    if wave.size == 0:
      raise AudioFileError(REASON_EMPTY, path, f"0 samples after resampling {file_sr} Hz -> {sr} Hz")
  if max_seconds is not None:
    wave = wave[:int(round(max_seconds * sr))]
  return np.ascontiguousarray(wave, dtype=np.float32)


def cache_key(path, sr: int, max_samples: int | None) -> str:
  """Hex digest of (absolute path, mtime_ns, size, sr, max_samples): changes when the file does."""
  st = os.stat(path)
  text = f"{os.path.abspath(path)}|{st.st_mtime_ns}|{st.st_size}|{sr}|{max_samples}"
  return hashlib.sha1(text.encode()).hexdigest()


def _decode_one(path, sr, max_samples, cache_dir):
  """Returns (wave or None, error or None) for one file, using/filling the cache."""
  try:
    cached = None
    if cache_dir is not None and os.path.isfile(path):
      cached = os.path.join(cache_dir, cache_key(path, sr, max_samples) + ".npy")
      if os.path.isfile(cached):
        try:
          return np.load(cached), None
        except (OSError, ValueError):
          pass  # A damaged cache entry is decoded again and rewritten.
    wave = read_wav(path, sr, None if max_samples is None else max_samples / sr)
    wave = wave[:max_samples]
    if cached is not None:
      tmp = f"{cached}.{os.getpid()}.{id(wave)}.tmp.npy"
      np.save(tmp, wave)
      os.replace(tmp, cached)  # Atomic: a concurrent reader never sees a half-written file.
    return wave, None
  except AudioFileError as e:
    return None, e


def load_waveforms(paths: Sequence, sr: int = 16000, max_seconds: float | None = 5.0,
                   cache_dir=None, workers: int = 2, summary: LoadSummary | None = None):
  """Decodes many audio files into one zero-padded batch (SPEC: the first 5 s at 16 kHz).

  Each file is read with :func:`read_wav`, cut to ``max_seconds`` and, with
  ``cache_dir``, stored as ``<cache_dir>/<cache_key>.npy`` so later calls only
  load it (the key covers path, mtime, size, ``sr`` and the cut, so an edited
  file is decoded again). Files are decoded by ``workers`` threads.

  Args:
    paths: audio file paths.
    sr: sampling rate of the output.
    max_seconds: longest clip kept (longer ones are cut); None keeps all and
      pads to the longest.
    cache_dir: directory of the decode cache (created if missing); None: no cache.
    workers: decoding threads (1 = in the calling thread).
    summary: a LoadSummary in which unusable files are counted by reason with
      the file named; with ``summary.strict`` the first one raises DataError.
      None: a fresh non-strict summary (see the returned arrays' zero lengths).

  Returns:
    ``(waves, lengths)``: (N, S) float32, rows zero-padded after ``lengths[i]``
    samples, with S = round(max_seconds * sr) (or the longest clip), and (N,)
    int64 lengths; a skipped file has length 0 and an all-zero row.
  """
  paths = [os.fspath(p) for p in paths]
  if max_seconds is not None and max_seconds <= 0:
    raise ValueError(f"load_waveforms: max_seconds must be > 0 or None, got {max_seconds}")
  if int(workers) < 1:
    raise ValueError(f"load_waveforms: workers must be >= 1, got {workers}")
  if summary is None:
    summary = LoadSummary(name="audio")
  max_samples = None if max_seconds is None else int(round(max_seconds * sr))
  if cache_dir is not None:
    cache_dir = os.fspath(cache_dir)
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      raise DataError(f"load_waveforms: cannot create cache_dir {cache_dir!r} ({e}); pass a writable "
                      "directory or cache_dir=None") from None
  job = lambda p: _decode_one(p, sr, max_samples, cache_dir)
  if int(workers) == 1 or len(paths) <= 1:
    results = [job(p) for p in paths]
  else:
    with concurrent.futures.ThreadPoolExecutor(int(workers)) as pool:
      results = list(pool.map(job, paths))
  for _, err in results:  # In input order, so strict mode names the first bad file.
    if err is not None:
      summary.skip(err.reason, str(err)[len(err.reason) + 2:])
  lengths = np.array([0 if w is None else w.size for w, _ in results], dtype=np.int64)
  width = max_samples if max_samples is not None else int(lengths.max(initial=0))
  waves = np.zeros((len(paths), width), dtype=np.float32)
  for i, (w, _) in enumerate(results):
    if w is not None:
      waves[i, :w.size] = w
  return waves, lengths
