"""SincNet (Ravanelli & Bengio 2018) + DCNN audio encoder of MBAF §4.1 (its ref. [47]).

MBAF §4.1: "a 250ms audio utterance is passed through a SincNet layer [49] followed by a Deep
Convolution Neural Networks (DCNN) with "Convolution1D" and "Dense" layers. We obtain a 2048-D
feature vector as the output of AE", with 16 kHz audio, 250 ms windows and a 10 ms shift.

* ``SincConv``: each filter ``k`` is a band-pass with learnable low cut-off ``f1 = m_low + |l_k|``
  and band width ``b = m_band + |w_k|`` (``f2 = clip(f1 + b, m_low, sr/2)``), initialised on the mel
  scale, built as the difference of two windowed low-pass sinc filters (SincNet Eq. 3–5)::

      g[n] = (2 f2 sinc(2π f2 n) − 2 f1 sinc(2π f1 n)) · w_hamming[n] / (2 (f2 − f1))

  with ``n`` in seconds around the centre. The division makes the centre tap 1 (the normalisation
  of the SincNet reference code); the pass-band gain is then ``sr / (2 (f2 − f1))``.
* DCNN (our configuration, the SincNet TIMIT recipe, which [47] builds on): SincConv(80, 251) →
  |·| → max-pool 3 → LayerNorm → LeakyReLU; 2 × [Conv1D(60, 5) → max-pool 3 →
  LayerNorm → LeakyReLU]; flatten; 2 × [Dense(2048) → LayerNorm → LeakyReLU (→ dropout)]; a 4,000-sample
  window gives 137 frames × 60 channels = 8,220 features before the dense layers. LayerNorm is used
  everywhere instead of SincNet's batch norm on the dense layers so that a window's embedding never
  depends on the other windows in the batch (padded windows stay inert, no ``batch_stats``).
* Utterance embedding: windows of 4,000 samples every 160 samples (``frame_waveforms``), each mapped
  to 2,048-d, then the masked mean over the real windows → (B, 2048). (SincNet averages posteriors
  over windows at test time; [47] feeds one vector per utterance to the fusion, so we average the
  embeddings.)
"""
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def hz_to_mel(hz):
  """O'Shaughnessy mel scale used by SincNet: 2595 log10(1 + f/700)."""
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
  """Inverse of :func:`hz_to_mel`."""
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_band_init(num_filters: int, sample_rate: int, min_low_hz: float, min_band_hz: float):
  """Initial (low cut-off, band width) in Hz, mel-spaced from 30 Hz to the top allowed (SincNet).

  Returns:
    (low_hz (K,), band_hz (K,)) float32 NumPy arrays: the raw parameters ``l`` and ``w`` such that
    the effective band is ``[min_low_hz + l, min_low_hz + l + min_band_hz + w]``.
  """
  high = sample_rate / 2 - (min_low_hz + min_band_hz)
  mel = np.linspace(hz_to_mel(30.0), hz_to_mel(high), num_filters + 1)
  hz = mel_to_hz(mel)
  return hz[:-1].astype(np.float32), np.diff(hz).astype(np.float32)


def sinc_bandpass_filters(low_hz_raw, band_hz_raw, kernel_size: int, sample_rate: int,
                          min_low_hz: float = 50.0, min_band_hz: float = 50.0):
  """Builds the windowed sinc band-pass kernels of SincConv (SincNet Eq. 3–5).

  Args:
    low_hz_raw: (K,) raw low cut-off parameters ``l`` in Hz.
    band_hz_raw: (K,) raw band-width parameters ``w`` in Hz.
    kernel_size: odd filter length L.
    sample_rate: sampling rate in Hz.
    min_low_hz: smallest low cut-off ``m_low``.
    min_band_hz: smallest band width ``m_band``.

  Returns:
    (kernels (L, K) float32, low (K,) Hz, high (K,) Hz): the effective cut-offs
    ``f1 = m_low + |l|``, ``f2 = clip(f1 + m_band + |w|, m_low, sr/2)``.
  """
  low = min_low_hz + jnp.abs(low_hz_raw.astype(jnp.float32))
  high = jnp.clip(low + min_band_hz + jnp.abs(band_hz_raw.astype(jnp.float32)),
                  min_low_hz, sample_rate / 2)
  half = (kernel_size - 1) / 2
  t = (jnp.arange(kernel_size, dtype=jnp.float32) - half) / sample_rate  # seconds, symmetric
  safe_t = jnp.where(t == 0, 1.0, t)[:, None]
  # 2 f sinc(2π f t) = sin(2π f t) / (π t); the centre tap is 2 f.
  centre = t[:, None] == 0
  lp_high = jnp.where(centre, 2 * high, jnp.sin(2 * math.pi * high * safe_t) / (math.pi * safe_t))
  lp_low = jnp.where(centre, 2 * low, jnp.sin(2 * math.pi * low * safe_t) / (math.pi * safe_t))
  n = jnp.arange(kernel_size, dtype=jnp.float32)
  window = 0.54 - 0.46 * jnp.cos(2 * math.pi * n / (kernel_size - 1))  # Hamming
  band = (lp_high - lp_low) * window[:, None]
  return band / (2 * (high - low)), low, high


def frame_waveforms(waves, lengths=None, window: int = 4000, shift: int = 160):
  """Cuts a padded waveform batch into fixed-shape windows plus a window mask (MBAF §4.1).

  Window ``w`` covers samples ``[w·shift, w·shift + window)``. It is real when it lies inside the
  utterance (``w·shift + window <= length``); the first window is always real for a non-empty
  utterance (shorter utterances are zero-padded to one window). Waveforms shorter than ``window``
  are zero-padded to ``window`` samples.

  Args:
    waves: (B, S) float waveforms (padded with anything beyond ``lengths``).
    lengths: optional (B,) int number of real samples per row, or (B, S) {0,1} sample mask
      (its sum is the length); None = every row has S samples.
    window: window length in samples (250 ms at 16 kHz = 4000).
    shift: hop in samples (10 ms at 16 kHz = 160).

  Returns:
    (windows (B, W, window), window_mask (B, W) bool) with
    ``W = (max(S, window) − window) // shift + 1``.
    Samples past each row's length are zeroed inside the windows.
  """
  waves = jnp.asarray(waves)
  if waves.ndim != 2:
    raise ValueError(f"waves must have shape (batch, samples), got {tuple(waves.shape)}.")
  if not isinstance(window, int) or not isinstance(shift, int) or window < 1 or shift < 1:
    raise ValueError(f"window and shift must be positive ints (samples), got {window!r}, "
                     f"{shift!r}.")
  batch, samples = waves.shape
  if lengths is None:
    lengths = jnp.full((batch,), samples, jnp.int32)
  else:
    lengths = jnp.asarray(lengths)
    if lengths.shape == waves.shape:
      lengths = lengths.astype(jnp.int32).sum(-1)
    elif lengths.shape != (batch,):
      raise ValueError(f"lengths must be (batch,) sample counts or a (batch, samples) mask like "
                       f"waves {tuple(waves.shape)}, got shape {tuple(lengths.shape)}.")
    lengths = lengths.astype(jnp.int32)
  if samples < window:
    waves = jnp.pad(waves, ((0, 0), (0, window - samples)))
    samples = window
  valid_sample = jnp.arange(samples)[None, :] < lengths[:, None]
  waves = jnp.where(valid_sample, waves, 0)
  num = (samples - window) // shift + 1
  starts = jnp.arange(num) * shift
  idx = starts[:, None] + jnp.arange(window)[None, :]  # (W, window), static gather pattern
  windows = waves[:, idx]
  inside = starts[None, :] + window <= lengths[:, None]
  wmask = inside | ((starts[None, :] == 0) & (lengths[:, None] > 0))
  return windows, wmask


class SincConv(nn.Module):
  """Learnable band-pass sinc convolution over raw audio (SincNet; equations in the module doc).

  Input ``(N, T)`` or ``(N, T, 1)``; output ``(N, T', num_filters)`` with VALID padding
  (``T' = (T − kernel_size) // stride + 1``).
  """
  num_filters: int = 80  # K band-pass filters (SincNet: 80)
  kernel_size: int = 251  # filter length L in samples, odd (SincNet: 251)
  sample_rate: int = 16000  # Hz
  stride: int = 1  # conv stride
  min_low_hz: float = 50.0  # smallest low cut-off m_low (Hz)
  min_band_hz: float = 50.0  # smallest band width m_band (Hz)
  dtype: Optional[Dtype] = None  # conv compute dtype (None: inputs); filters are built in float32
  param_dtype: Dtype = jnp.float32  # dtype of the cut-off parameters

  def setup(self):
    low0, band0 = mel_band_init(self.num_filters, self.sample_rate, self.min_low_hz,
                                self.min_band_hz)
    # raw cut-off parameters l, w (Hz), mel-initialised (SincNet §2)
    self.low_hz = self.param("low_hz", lambda k, s, d: jnp.asarray(low0, d), low0.shape,
                             self.param_dtype)
    self.band_hz = self.param("band_hz", lambda k, s, d: jnp.asarray(band0, d), band0.shape,
                              self.param_dtype)

  def filters(self):
    """(kernels (L, K), low (K,), high (K,)) from the current parameters (SincNet Eq. 3–5)."""
    return sinc_bandpass_filters(self.low_hz, self.band_hz, self.kernel_size, self.sample_rate,
                                 self.min_low_hz, self.min_band_hz)

  def __call__(self, x):
    """Filters raw audio ``x`` (N, T[, 1]) into (N, T', num_filters)."""
    if self.kernel_size % 2 == 0 or self.kernel_size < 3:
      raise ValueError(f"kernel_size must be an odd int >= 3 (a symmetric sinc filter), "
                       f"got {self.kernel_size}.")
    if self.min_low_hz + self.min_band_hz >= self.sample_rate / 2:
      raise ValueError(f"min_low_hz + min_band_hz ({self.min_low_hz} + {self.min_band_hz}) must be "
                       f"below the Nyquist frequency {self.sample_rate / 2}.")
    x = jnp.asarray(x)
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3 or x.shape[-1] != 1:
      raise ValueError(f"SincConv input must be (batch, samples) or (batch, samples, 1) raw audio, "
                       f"got {tuple(x.shape)}.")
    if x.shape[1] < self.kernel_size:
      raise ValueError(f"SincConv input has {x.shape[1]} samples, fewer than kernel_size="
                       f"{self.kernel_size}; pad the audio or use a shorter kernel.")
    kernels, _, _ = self.filters()
    dtype = self.dtype or x.dtype
    return jax.lax.conv_general_dilated(
        x.astype(dtype), kernels[:, None, :].astype(dtype), window_strides=(self.stride,),
        padding="VALID", dimension_numbers=("NWC", "WIO", "NWC"))


class WindowDCNN(nn.Module):
  """SincConv → DCNN for single windows: (N, window) raw audio → (N, dense_features[-1]).

  Layers in the module doc (MBAF §4.1 AE; SincNet TIMIT configuration).
  """
  sample_rate: int = 16000  # Hz
  sinc_filters: int = 80  # SincConv filters
  sinc_kernel: int = 251  # SincConv length (odd)
  conv_features: Sequence[int] = (60, 60)  # channels of the Conv1D layers after SincConv
  conv_kernels: Sequence[int] = (5, 5)  # kernel sizes of those Conv1D layers
  pool: int = 3  # max-pool size (and stride) after every conv, SincConv included
  dense_features: Sequence[int] = (2048, 2048)  # Dense layers; the last gives the embedding size
  negative_slope: float = 0.2  # LeakyReLU slope (SincNet: 0.2)
  input_norm: bool = True  # LayerNorm of each window's samples before SincConv (SincNet)
  dropout: float = 0.0  # dropout after every dense layer in training (rng 'dropout')
  dtype: Optional[Dtype] = None  # compute dtype (None: inputs)
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Embeds each window of ``x`` (N, window)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = lambda h: nn.leaky_relu(h, self.negative_slope)
    pool = lambda h: nn.max_pool(h, (self.pool,), strides=(self.pool,), padding="VALID")
    if self.input_norm:
      x = nn.LayerNorm(use_scale=False, use_bias=False, name="input_norm", **kw)(x)
    h = SincConv(self.sinc_filters, self.sinc_kernel, self.sample_rate, name="sinc", **kw)(x)
    h = act(nn.LayerNorm(name="sinc_norm", **kw)(pool(jnp.abs(h))))
    for i, (f, k) in enumerate(zip(self.conv_features, self.conv_kernels)):
      h = nn.Conv(f, (k,), padding="VALID", name=f"conv_{i}", **kw)(h)
      h = act(nn.LayerNorm(name=f"conv_norm_{i}", **kw)(pool(h)))
    if h.shape[1] < 1:
      raise ValueError("the window is too short for the SincConv/conv/pool stack; use a longer "
                       "window or fewer/smaller conv and pool layers.")
    h = h.reshape(h.shape[0], -1)
    for i, f in enumerate(self.dense_features):
      h = act(nn.LayerNorm(name=f"dense_norm_{i}", **kw)(nn.Dense(f, name=f"dense_{i}", **kw)(h)))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h


def _scan_body(mdl, carry, x, train):
  return carry, mdl(x, train)


class SincNetAudioEncoder(nn.Module):
  """MBAF §4.1 audio encoder (AE): SincConv → DCNN → 2,048-d per 250 ms window → masked mean.

  Call with a padded waveform batch ``(B, S)`` (+ lengths or sample mask); windows are cut by
  :func:`frame_waveforms`. Or pass pre-cut ``windows`` ``(B, W, window)`` with ``window_mask``
  through :meth:`encode_windows`. Configuration in the module doc.
  """
  sample_rate: int = 16000  # Hz
  window: int = 4000  # window length in samples (250 ms)
  shift: int = 160  # window shift in samples (10 ms)
  sinc_filters: int = 80  # SincConv filters
  sinc_kernel: int = 251  # SincConv length (odd)
  conv_features: Sequence[int] = (60, 60)  # channels of the Conv1D layers after SincConv
  conv_kernels: Sequence[int] = (5, 5)  # kernel sizes of those Conv1D layers
  pool: int = 3  # max-pool size (and stride) after every conv, SincConv included
  dense_features: Sequence[int] = (2048, 2048)  # Dense layers; the last gives the embedding size
  negative_slope: float = 0.2  # LeakyReLU slope (SincNet: 0.2)
  input_norm: bool = True  # LayerNorm of each window's samples before SincConv (SincNet)
  dropout: float = 0.0  # dropout after every dense layer in training (rng 'dropout')
  window_chunk: Optional[int] = None  # windows per nn.scan step (bounds memory on long audio)
  remat: bool = False  # gradient checkpointing of the per-window network (nn.remat)
  dtype: Optional[Dtype] = None  # compute dtype (None: inputs), e.g. jnp.bfloat16
  param_dtype: Dtype = jnp.float32  # parameter dtype

  def output_dim(self) -> int:
    """Embedding size (2,048 with the defaults)."""
    return int(self.dense_features[-1])

  def _check(self):
    if len(self.conv_features) != len(self.conv_kernels):
      raise ValueError(f"conv_features {tuple(self.conv_features)} and conv_kernels "
                       f"{tuple(self.conv_kernels)} must have the same length (one per conv "
                       "layer).")
    if not self.dense_features:
      raise ValueError("dense_features must name at least one Dense layer (the embedding size).")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
    if self.window_chunk is not None and (not isinstance(self.window_chunk, int)
                                          or self.window_chunk < 1):
      raise ValueError(f"window_chunk must be None or a positive int, got {self.window_chunk!r}.")

  @nn.compact
  def encode_windows(self, windows, window_mask=None, train: bool = False):
    """Masked mean of the window embeddings (MBAF §4.1 AE, utterance level).

    Args:
      windows: (B, W, window) floats.
      window_mask: optional (B, W) bool/{0,1}; 0 = padded window (does not change the result).
      train: enables dropout (rng 'dropout').

    Returns:
      (B, dense_features[-1]); a row with no real window gives zeros.
    """
    self._check()
    windows = jnp.asarray(windows)
    if windows.ndim != 3 or windows.shape[-1] != self.window:
      raise ValueError(f"windows must have shape (batch, num_windows, {self.window}), got "
                       f"{tuple(windows.shape)}; cut them with frame_waveforms(waves, lengths, "
                       f"window={self.window}, shift={self.shift}).")
    batch, num = windows.shape[:2]
    if window_mask is None:
      window_mask = jnp.ones((batch, num), bool)
    window_mask = jnp.asarray(window_mask)
    if window_mask.shape != (batch, num):
      raise ValueError(f"window_mask must have shape {(batch, num)} like windows, got "
                       f"{tuple(window_mask.shape)}.")
    cls = nn.remat(WindowDCNN, static_argnums=(2,)) if self.remat else WindowDCNN
    net = cls(self.sample_rate, self.sinc_filters, self.sinc_kernel, tuple(self.conv_features),
              tuple(self.conv_kernels), self.pool, tuple(self.dense_features), self.negative_slope,
              self.input_norm, self.dropout, self.dtype, self.param_dtype, name="dcnn")
    flat = windows.reshape(batch * num, self.window)
    chunk = self.window_chunk
    if chunk and chunk < flat.shape[0] and not self.is_initializing():
      pad = (-flat.shape[0]) % chunk
      flat_p = jnp.pad(flat, ((0, pad), (0, 0))).reshape(-1, chunk, self.window)
      scan = nn.scan(_scan_body, variable_broadcast="params", split_rngs={"params": False,
                                                                          "dropout": True},
                     in_axes=(0, nn.broadcast), out_axes=0)
      _, emb = scan(net, None, flat_p, train)
      emb = emb.reshape(-1, emb.shape[-1])[:batch * num]
    else:
      emb = net(flat, train)
    emb = emb.reshape(batch, num, -1)
    m = window_mask.astype(bool)[..., None]
    emb = jnp.where(m, emb, 0)  # select, never multiply: padded windows cannot leak NaN/inf
    return emb.sum(1) / jnp.maximum(m.sum(1), 1).astype(emb.dtype)

  def __call__(self, waves, lengths=None, train: bool = False):
    """Encodes utterances: (B, S) padded 16 kHz audio (+ (B,) lengths or (B, S) mask) → (B, 2048).

    Windows of ``window`` samples every ``shift`` samples (:func:`frame_waveforms`), each embedded
    by the SincConv + DCNN, then averaged over the real windows.
    """
    windows, wmask = frame_waveforms(waves, lengths, self.window, self.shift)
    return self.encode_windows(windows, wmask, train)
