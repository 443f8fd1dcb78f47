"""Synthetic PhysioNet CEBS (``cebsdb``) in the real WFDB format, for tests and the demo.

:func:`write_cebs` writes ``<out>/cebsdb/`` with records ``b0NN`` (basal),
``m0NN`` (music, twice as long as the others, as the real music records are
longer than 5 min) and ``p0NN`` (post-music) for each subject: a WFDB header
``.hea`` and a format-16 signal file ``.dat`` (``wfdb.wrsamp``, 5,000 Hz,
``sig_name == ['I', 'II', 'RESP', 'SCG']``, units mV) and an ``.atr``
annotation file with the R peaks of both ECG leads interleaved (``wfdb.wrann``,
``chan`` 0 and 1), plus a ``RECORDS`` list as on PhysioNet and a JSON manifest
``cebs_synthetic_manifest.json`` beside the ``cebsdb`` folder (it holds
``seconds_per_state``: pass it to :func:`mbaf_jax.data.cebs.load_cebs`, whose
default is the paper's 300 s).

Learnable structure (what a model can pick up; DATA_FORMATS "CEBS").
Each state ``s`` has a *cue level* per mode, :data:`CUE_LEVELS`:

================  =====  =====  =====
state             ECG    RESP   SCG
================  =====  =====  =====
0 basal            0.0    0.0    0.5
1 music           -1.0    0.5    1.0
2 post-music      -0.5    1.0    0.0
================  =====  =====  =====

* ECG (lead I; lead II = 1.3 × lead I + its own noise): heart rate
  ``HR = HR_subject + 12 · level`` bpm (≈ 70 / 58 / 64) drifting as an AR(1)
  process (sd 3 bpm) with beat-to-beat variability (RR sd 3 %), and the T-wave
  amplitude ``0.25 − 0.15 · level`` (relative to R = 1) jittered per beat (sd 30 %).
* RESP: breathing rate ``14 ± 1 (subject) + 8 · level`` breaths/min, each
  breath's duration jittered by 10 %, a two-harmonic waveform plus noise. After
  per-record z-scoring a 1.2 s window sees part of a breath: the slope
  magnitude carries the rate.
* SCG: per heart beat, a damped oscillation 70 ms after the R peak (aortic
  opening) and a weaker one 350 ms after it, with frequency
  ``f_subject (≈ 28 Hz) + 8 · level`` Hz (≈ 32 / 36 / 28), jittered per beat
  (sd 4 Hz); SCG also carries the beat timing, hence the heart rate.

Every mode alone therefore separates the three states above chance (each
mode's levels are distinct), and a pair does better: the cues' noises are
independent and in every pair the three states sit at the corners of a
triangle (not on a line) in the two cue levels. Subject offsets (HR sd 4 bpm,
breathing sd 1/min, SCG sd 2 Hz, amplitudes) and white noise make the task
imperfect across subjects (the leave-subject-group-out setting). Per-record
amplitude differences are deliberately *not* cues, because the loader z-scores
every channel per record. Everything is deterministic given ``seed``.
"""
import json
import os

import numpy as np

FS = 5000  # Hz, as cebsdb (Biopac MP36)
SIG_NAMES = ("I", "II", "RESP", "SCG")  # cebsdb channel names (DATA_FORMATS "CEBS")
STATE_PREFIXES = ("b", "m", "p")  # basal, music, post-music
CUE_LEVELS = {0: (0.0, 0.0, 0.5), 1: (-1.0, 0.5, 1.0), 2: (-0.5, 1.0, 0.0)}  # (ECG, RESP, SCG) per state
# size name -> seconds per basal / post-music record (music records are MUSIC_FACTOR times longer).
SIZES = {"tiny": 6.0, "demo": 24.0, "small": 60.0, "full": 300.0}
MUSIC_FACTOR = 2.0
MANIFEST = "cebs_synthetic_manifest.json"


def _seconds_for(size, seconds) -> float:
  if seconds is not None:
    seconds = float(seconds)
    if not 1.2 <= seconds <= 3600:
      raise ValueError(f"write_cebs: seconds (per basal/post record) must be in [1.2, 3600] so a record "
                       f"holds at least one 1.2 s window, got {seconds}")
    return seconds
  if isinstance(size, str) and size.isdigit():
    size = int(size)
  if isinstance(size, str):
    if size not in SIZES:
      raise ValueError(f"write_cebs: size must be one of {sorted(SIZES)} or an int number of seconds per "
                       f"basal/post record, got {size!r}")
    return SIZES[size]
  if isinstance(size, bool) or not isinstance(size, (int, float, np.integer)) or not 2 <= size <= 3600:
    raise ValueError(f"write_cebs: an int size is the number of seconds per basal/post record and must be "
                     f"in [2, 3600], got {size!r}")
  return float(size)


def _gauss(t, centre, width):
  return np.exp(-0.5 * ((t - centre) / width) ** 2)


def beat_times(rng, seconds: float, hr_mean: float, drift_sd: float = 3.0, rr_sd: float = 0.03):
  """R-peak times (s) for a heart rate ``hr_mean`` bpm with AR(1) drift and RR jitter.

  Args:
    rng: numpy Generator.
    seconds: record length.
    hr_mean: mean heart rate (bpm).
    drift_sd: stationary sd (bpm) of the slow AR(1) heart-rate drift.
    rr_sd: relative sd of each RR interval.

  Returns:
    (K,) increasing float64 times in [0, seconds).
  """
  times, drift = [], drift_sd * rng.standard_normal()
  t = rng.uniform(0.05, 0.6)
  while t < seconds:
    times.append(t)
    drift = 0.9 * drift + np.sqrt(1 - 0.81) * drift_sd * rng.standard_normal()
    hr = max(35.0, hr_mean + drift)
    t += 60.0 / hr * (1 + rr_sd * rng.standard_normal())
  return np.asarray(times)


def _add_at(sig, t0, template_fn, half_width):
  """Adds ``template_fn(t - t0)`` to ``sig`` over ``t0 ± half_width`` seconds."""
  n = sig.shape[0]
  lo = max(0, int((t0 - half_width) * FS))
  hi = min(n, int((t0 + half_width) * FS) + 1)
  if hi > lo:
    sig[lo:hi] += template_fn(np.arange(lo, hi) / FS - t0)


def synth_record(rng, seconds: float, state: int, subject: dict):
  """Four channels (I, II, RESP, SCG) in mV for one state of one subject.

  Args:
    rng: numpy Generator.
    seconds: record length.
    state: 0 basal, 1 music, 2 post-music.
    subject: per-subject parameters from :func:`subject_params`.

  Returns:
    ``(signals (n, 4) float64, r_peaks (K,) int sample indices)``.
  """
  n = int(round(seconds * FS))
  lv_ecg, lv_resp, lv_scg = CUE_LEVELS[state]
  beats = beat_times(rng, seconds, subject["hr"] + 12.0 * lv_ecg)
  ecg = np.zeros(n)
  scg = np.zeros(n)
  t_amp = 0.25 - 0.15 * lv_ecg
  for tb in beats:
    amp_t = t_amp * (1 + 0.3 * rng.standard_normal())
    r_amp = subject["r_amp"] * (1 + 0.05 * rng.standard_normal())

    def ecg_beat(t, amp_t=amp_t, r_amp=r_amp):
      return r_amp * (0.1 * _gauss(t, -0.16, 0.025) - 0.12 * _gauss(t, -0.02, 0.008)
                      + 1.0 * _gauss(t, 0.0, 0.010) - 0.2 * _gauss(t, 0.022, 0.008)
                      + amp_t * _gauss(t, 0.28, 0.045))

    _add_at(ecg, tb, ecg_beat, 0.45)
    f = max(10.0, subject["scg_f"] + 8.0 * lv_scg + 4.0 * rng.standard_normal())
    a = subject["scg_amp"] * (1 + 0.1 * rng.standard_normal())

    def scg_beat(t, f=f, a=a):
      out = np.zeros_like(t)
      for delay, amp in ((0.07, 1.0), (0.35, 0.5)):
        u = t - delay
        on = u >= 0
        out[on] += amp * a * np.exp(-u[on] / 0.04) * np.sin(2 * np.pi * f * u[on])
      return out

    _add_at(scg, tb, scg_beat, 0.55)
  # Respiration: each breath's duration jittered; two harmonics.
  rate = subject["resp"] + 8.0 * lv_resp
  phase = np.empty(n)
  pos, ph = 0, rng.uniform(0, 1)
  while pos < n:
    dur = max(1.0, 60.0 / rate * (1 + 0.1 * rng.standard_normal()))
    m = min(n - pos, int(dur * FS))
    phase[pos:pos + m] = ph + np.arange(m) / (dur * FS)
    ph += m / (dur * FS)
    pos += m
  resp = np.sin(2 * np.pi * phase) + 0.25 * np.sin(4 * np.pi * phase + subject["resp_phase"])
  t = np.arange(n) / FS
  wander = 0.05 * np.sin(2 * np.pi * phase)  # breathing moves the ECG baseline
  ecg1 = ecg + wander + 0.02 * rng.standard_normal(n)
  ecg2 = 1.3 * ecg + 0.8 * wander + 0.02 * rng.standard_normal(n)
  resp = subject["resp_amp"] * resp + 0.05 * rng.standard_normal(n) + 0.02 * np.sin(2 * np.pi * 0.05 * t)
  scg = scg + 0.08 * subject["scg_amp"] * rng.standard_normal(n)
  r_peaks = np.round(beats * FS).astype(np.int64)
  return np.stack([ecg1, ecg2, resp, scg], axis=1), r_peaks[r_peaks < n]


def subject_params(rng) -> dict:
  """Per-subject physiology: base heart rate, breathing rate, SCG frequency, amplitudes."""
  return {"hr": 70.0 + 4.0 * rng.standard_normal(), "resp": 14.0 + 1.0 * rng.standard_normal(),
          "scg_f": 28.0 + 2.0 * rng.standard_normal(), "r_amp": float(np.exp(0.2 * rng.standard_normal())),
          "scg_amp": 0.05 * float(np.exp(0.3 * rng.standard_normal())),
          "resp_amp": float(np.exp(0.3 * rng.standard_normal())), "resp_phase": rng.uniform(0, 2 * np.pi)}


def write_record(record_dir: str, name: str, signals: np.ndarray, r_peaks: np.ndarray):
  """Writes ``name.hea`` / ``name.dat`` (fmt 16) and ``name.atr`` in ``record_dir`` with wfdb."""
  import wfdb  # pylint: disable=g-import-not-at-top
  wfdb.wrsamp(name, fs=FS, units=["mV"] * 4, sig_name=list(SIG_NAMES), p_signal=signals,
              fmt=["16"] * 4, write_dir=record_dir)
  # R peaks of both leads interleaved, as in the cebsdb .atr files.
  samples = np.repeat(r_peaks, 2)
  chans = np.tile(np.array([0, 1]), r_peaks.size)
  if samples.size:
    wfdb.wrann(name, "atr", samples, symbol=["N"] * samples.size, chan=chans, fs=FS,
               write_dir=record_dir)


def write_cebs(out_dir: str, subjects: int = 20, seconds=None, seed: int = 0, size="small") -> str:
  """Writes a synthetic ``cebsdb`` (see the module docstring) and returns its root path.

  Args:
    out_dir: output directory (created); the records go to ``<out_dir>/cebsdb``.
    subjects: number of subjects, 1..20 (records ``b001..b0NN`` etc.).
    seconds: seconds per basal and post-music record (music records are
      twice as long); overrides ``size``.
    seed: random seed; the same seed writes the same files.
    size: ``"tiny"`` (6 s), ``"demo"`` (24 s), ``"small"`` (60 s), ``"full"``
      (300 s, the real length) or an int number of seconds.

  Returns:
    The root directory to pass to :func:`mbaf_jax.data.cebs.load_cebs`
    together with ``seconds_per_state`` (also in the manifest).
  """
  if isinstance(subjects, bool) or not isinstance(subjects, (int, np.integer)) or not 1 <= subjects <= 20:
    raise ValueError(f"write_cebs: subjects must be an int in [1, 20] (cebsdb has 20), got {subjects!r}")
  secs = _seconds_for(size, seconds)
  root = os.path.join(out_dir, "cebsdb")
  os.makedirs(root, exist_ok=True)
  names = []
  for subj in range(1, subjects + 1):
    params = subject_params(np.random.default_rng([seed, subj]))
    for state, prefix in enumerate(STATE_PREFIXES):
      rng = np.random.default_rng([seed, subj, state + 1])
      length = secs * (MUSIC_FACTOR if state == 1 else 1.0)
      signals, peaks = synth_record(rng, length, state, params)
      name = f"{prefix}{subj:03d}"
      write_record(root, name, signals, peaks)
      names.append(name)
  with open(os.path.join(root, "RECORDS"), "w") as f:
    f.write("\n".join(sorted(names)) + "\n")
  manifest = {"subjects": subjects, "seconds_per_state": secs, "music_seconds": secs * MUSIC_FACTOR,
              "seed": seed, "fs": FS, "sig_name": list(SIG_NAMES),
              "cue_levels": {str(k): v for k, v in CUE_LEVELS.items()},
              "windows_per_record": int(secs * FS) // 6000}
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return root


def read_synthetic_manifest(path: str):
  """The manifest :func:`write_cebs` wrote, given its ``out_dir`` or the ``cebsdb`` root; None if absent.

  Use it to load a synthetic corpus with the right state length::

      m = read_synthetic_manifest(root)
      corpus = load_cebs(root, seconds_per_state=m["seconds_per_state"] if m else 300.0)
  """
  for cand in (os.path.join(path, MANIFEST), os.path.join(os.path.dirname(os.path.normpath(path)), MANIFEST)):
    if os.path.isfile(cand):
      with open(cand) as f:
        return json.load(f)
  return None
