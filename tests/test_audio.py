"""Audio reading: mono/stereo, resampling, bad files, the decode cache."""
import os

import numpy as np
import pytest
import soundfile as sf

from mbaf_jax.data import audio
from mbaf_jax.data.report import DataError, LoadSummary


def _pcm16(rng, n, channels=1):
  return rng.integers(-20000, 20000, size=(n, channels) if channels > 1 else n).astype(np.int16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A handful of small audio files, good and bad, written once."""
  d = tmp_path_factory.mktemp("audio")
  rng = np.random.default_rng(0)
  out = {}
  out["mono_data"] = _pcm16(rng, 4000)
  out["mono"] = str(d / "mono.wav")
  sf.write(out["mono"], out["mono_data"], 16000, subtype="PCM_16")
  out["long_data"] = _pcm16(rng, 9000)
  out["long"] = str(d / "long.wav")
  sf.write(out["long"], out["long_data"], 16000, subtype="PCM_16")
  out["stereo_data"] = _pcm16(rng, 3000, channels=2)
  out["stereo"] = str(d / "stereo.wav")
  sf.write(out["stereo"], out["stereo_data"], 16000, subtype="PCM_16")
  for rate in (8000, 44100):
    t = np.arange(int(0.5 * rate)) / rate
    path = str(d / f"sine_{rate}.wav")
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440.0 * t), rate, subtype="PCM_16")
    out[f"sine_{rate}"] = path
  out["empty"] = str(d / "empty.wav")
  sf.write(out["empty"], np.zeros(0, np.int16), 16000, subtype="PCM_16")
  nan = np.full(800, 0.1, np.float32)
  nan[100] = np.nan
  out["nan"] = str(d / "nan.wav")
  sf.write(out["nan"], nan, 16000, subtype="FLOAT")
  out["garbage"] = str(d / "garbage.wav")
  with open(out["garbage"], "wb") as f:
    f.write(b"RIFF\x00\x00not really a wave file" * 10)
  out["missing"] = str(d / "does_not_exist.wav")
  return out


def test_mono_pcm16_exact(files):
  w = audio.read_wav(files["mono"])
  assert w.dtype == np.float32
  np.testing.assert_array_equal(w, files["mono_data"].astype(np.float32) / 32768.0)


def test_stereo_is_channel_mean(files):
  w = audio.read_wav(files["stereo"])
  expected = files["stereo_data"].astype(np.float64).mean(axis=1) / 32768.0
  np.testing.assert_allclose(w, expected, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_resampled_keep_pitch(files, rate):
  w = audio.read_wav(files[f"sine_{rate}"], sr=16000)
  assert abs(w.size - 8000) <= 1  # 0.5 s at 16 kHz
  spec = np.abs(np.fft.rfft(w * np.hanning(w.size)))
  freqs = np.fft.rfftfreq(w.size, 1 / 16000)
  assert abs(freqs[np.argmax(spec)] - 440.0) <= 2.0
  assert 0.3 < np.max(np.abs(w[500:-500])) < 0.6  # amplitude kept (0.5)


@pytest.mark.parametrize("key,reason", [("empty", "empty wav"), ("nan", "non-finite"),
                                        ("garbage", "unreadable wav"), ("missing", "unreadable wav")])
def test_bad_files_raise_naming_file(files, key, reason):
  with pytest.raises(DataError, match=reason) as e:
    audio.read_wav(files[key])
  assert files[key] in str(e.value)


def test_load_waveforms_pads_cuts_and_counts_skips(files):
  paths = [files["mono"], files["empty"], files["long"], files["nan"], files["garbage"]]
  summary = LoadSummary(name="audio")
  waves, lengths = audio.load_waveforms(paths, max_seconds=0.5, workers=2, summary=summary)
  assert waves.shape == (5, 8000) and waves.dtype == np.float32
  np.testing.assert_array_equal(lengths, [4000, 0, 8000, 0, 0])
  np.testing.assert_array_equal(waves[0, :4000], files["mono_data"] / np.float32(32768))
  assert not waves[0, 4000:].any() and not waves[1].any()
  np.testing.assert_array_equal(waves[2], files["long_data"][:8000] / np.float32(32768))
  assert summary.counts == {"empty wav": 1, "non-finite (NaN/inf) samples": 1, "unreadable wav": 1}
  assert any(files["nan"] in ex for ex in summary.examples["non-finite (NaN/inf) samples"])
  assert "skipped 3 item(s)" in summary.format()


def test_load_waveforms_strict_raises_on_first_bad_file(files):
  with pytest.raises(DataError, match="strict") as e:
    audio.load_waveforms([files["mono"], files["empty"]], summary=LoadSummary(strict=True))
  assert files["empty"] in str(e.value)


def test_load_waveforms_no_cut_pads_to_longest(files):
  waves, lengths = audio.load_waveforms([files["mono"], files["long"]], max_seconds=None, workers=1)
  assert waves.shape == (2, 9000)
  np.testing.assert_array_equal(lengths, [4000, 9000])


def test_cache_is_used_and_invalidated(files, tmp_path, monkeypatch):
  src = tmp_path / "clip.wav"
  data = _pcm16(np.random.default_rng(1), 1600)
  sf.write(src, data, 16000, subtype="PCM_16")
  cache = tmp_path / "cache"
  first, _ = audio.load_waveforms([src], cache_dir=cache, max_seconds=1.0)
  assert len(os.listdir(cache)) == 1
  calls = []
  real_read = audio.read_wav
  monkeypatch.setattr(audio, "read_wav", lambda *a, **k: calls.append(a) or real_read(*a, **k))
  second, lengths = audio.load_waveforms([src], cache_dir=cache, max_seconds=1.0)
  assert calls == [] and lengths.tolist() == [1600]
  np.testing.assert_array_equal(first, second)
  # A different cut is a different key; an edited file (new mtime/size) is decoded again.
  audio.load_waveforms([src], cache_dir=cache, max_seconds=0.05)
  assert len(calls) == 1
  sf.write(src, data[:800], 16000, subtype="PCM_16")
  os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
  third, lengths = audio.load_waveforms([src], cache_dir=cache, max_seconds=1.0)
  assert len(calls) == 2 and lengths.tolist() == [800]
  np.testing.assert_array_equal(third[0, :800], data[:800] / np.float32(32768))


def test_damaged_cache_entry_is_rebuilt(files, tmp_path):
  cache = tmp_path / "cache"
  audio.load_waveforms([files["mono"]], cache_dir=cache)
  (entry,) = list(cache.iterdir())
  entry.write_bytes(b"junk")
  waves, lengths = audio.load_waveforms([files["mono"]], cache_dir=cache)
  assert lengths.tolist() == [4000]
  np.testing.assert_array_equal(waves[0, :4000], files["mono_data"] / np.float32(32768))


def test_bad_arguments(files, tmp_path):
  with pytest.raises(ValueError, match="max_seconds"):
    audio.load_waveforms([files["mono"]], max_seconds=0)
  with pytest.raises(ValueError, match="workers"):
    audio.load_waveforms([files["mono"]], workers=0)
  with pytest.raises(ValueError, match="sr"):
    audio.read_wav(files["mono"], sr=0)
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(DataError, match="cache_dir"):
    audio.load_waveforms([files["mono"]], cache_dir=blocker / "sub")


@pytest.mark.slow
def test_bench_audio_quick_emits_records(capsys):
  import json  # pylint: disable=g-import-not-at-top
  from benchmarks import bench_audio  # pylint: disable=g-import-not-at-top
  bench_audio.main(["--quick", "--n", "8", "--iters", "1"])
  recs = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  assert [r["bench"] for r in recs] == ["audio_decode_cold", "audio_decode_fill_cache", "audio_from_cache",
                                        "audio_decode_resample_44k"]
  for r in recs:
    assert {"bench", "device", "shape", "dtype", "median_ms", "throughput", "peak_mem_mb"} <= set(r)
    assert r["median_ms"] > 0 and r["throughput"] > 0
  assert recs[2]["shape"]["n_utterances"] == 8 and "meets_target" in recs[2]
