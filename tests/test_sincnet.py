"""SincConv / SincNetAudioEncoder (MBAF §4.1 AE; SincNet Eq. 3–5) behaviour tests."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbaf_jax.encoders.sincnet import (SincConv, SincNetAudioEncoder, frame_waveforms,
                                       mel_band_init)

SR = 16000


def _conv_with_band(f1, f2, kernel=251, min_low=50.0, min_band=50.0):
  """A 1-filter SincConv whose effective band is [f1, f2] Hz."""
  conv = SincConv(num_filters=1, kernel_size=kernel, sample_rate=SR, min_low_hz=min_low,
                  min_band_hz=min_band)
  params = {"low_hz": jnp.array([f1 - min_low]), "band_hz": jnp.array([f2 - f1 - min_band])}
  return conv, params


def test_kernel_matches_numpy_windowed_sinc_formula():
  f1, f2, L = 700.0, 1900.0, 101
  conv, params = _conv_with_band(f1, f2, kernel=L)
  kernels, low, high = conv.apply({"params": params}, method=SincConv.filters)
  t = (np.arange(L) - (L - 1) / 2) / SR
  # SincNet Eq. 4-5 with np.sinc(x) = sin(pi x)/(pi x), Hamming from NumPy
  want = (2 * f2 * np.sinc(2 * f2 * t) - 2 * f1 * np.sinc(2 * f1 * t)) * np.hamming(L)
  want /= 2 * (f2 - f1)
  np.testing.assert_allclose(np.asarray(kernels[:, 0]), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose([float(low[0]), float(high[0])], [f1, f2], rtol=1e-6)


@pytest.mark.parametrize("f1, f2", [(1000.0, 2000.0), (300.0, 600.0), (4000.0, 6500.0)])
def test_frequency_response_peaks_inside_band_and_attenuates_outside(f1, f2):
  conv, params = _conv_with_band(f1, f2)
  kernels, _, _ = conv.apply({"params": params}, method=SincConv.filters)
  n_fft = 8192
  mag = np.abs(np.fft.rfft(np.asarray(kernels[:, 0], np.float64), n_fft))
  freqs = np.fft.rfftfreq(n_fft, 1 / SR)
  assert f1 <= freqs[np.argmax(mag)] <= f2
  centre = mag[np.argmin(np.abs(freqs - (f1 + f2) / 2))]
  # centre tap normalised to 1 (SincNet) -> pass-band gain sr / (2 (f2 - f1))
  assert float(kernels[125, 0]) == pytest.approx(1.0)
  assert centre == pytest.approx(SR / (2 * (f2 - f1)), rel=0.05)
  transition = 3.3 * SR / 251  # Hamming main-lobe width
  outside = (freqs < f1 - transition) | (freqs > f2 + transition)
  assert mag[outside].max() < 0.02 * mag.max()  # ≥ 34 dB stop-band attenuation


def test_mel_init_is_increasing_and_within_nyquist():
  low, band = mel_band_init(10, SR, 50.0, 50.0)
  assert np.all(np.diff(low) > 0) and np.all(band > 0) and np.all(np.diff(band) > 0)
  assert low[0] == pytest.approx(30.0)
  assert low[-1] + band[-1] == pytest.approx(SR / 2 - 100, rel=1e-5)


def test_conv_output_equals_numpy_correlation_and_cutoffs_get_gradients():
  conv = SincConv(num_filters=3, kernel_size=31, sample_rate=SR)
  x = jax.random.normal(jax.random.key(0), (2, 100))
  variables = conv.init(jax.random.key(1), x)
  y = conv.apply(variables, x)
  kernels, _, _ = conv.apply(variables, method=SincConv.filters)
  want = np.array([[np.correlate(np.asarray(x[b]), np.asarray(kernels[:, k]), "valid")
                    for k in range(3)] for b in range(2)]).transpose(0, 2, 1)
  assert y.shape == (2, 70, 3)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)
  g = jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x) ** 2))(variables["params"])
  assert np.all(np.abs(np.asarray(g["low_hz"])) > 0)
  assert np.all(np.abs(np.asarray(g["band_hz"])) > 0)


def test_frame_waveforms_matches_numpy_loop():
  waves = np.arange(2 * 23, dtype=np.float32).reshape(2, 23) + 1
  windows, wmask = frame_waveforms(waves, np.array([23, 9]), window=8, shift=3)
  assert windows.shape == (2, 6, 8)
  for b, length in enumerate([23, 9]):
    for w in range(6):
      seg = waves[b, 3 * w:3 * w + 8].copy()
      seg[max(0, length - 3 * w):] = 0
      np.testing.assert_array_equal(np.asarray(windows[b, w]), seg)
      assert bool(wmask[b, w]) == (3 * w + 8 <= length or w == 0)
  # shorter than one window: zero-padded, one real window; empty row: no real window
  w2, m2 = frame_waveforms(np.ones((2, 5), np.float32), np.array([5, 0]), window=8, shift=3)
  assert w2.shape == (2, 1, 8) and m2.tolist() == [[True], [False]]
  np.testing.assert_array_equal(np.asarray(w2[0, 0]), [1] * 5 + [0] * 3)


def _tiny_encoder(**kw):
  cfg = dict(window=400, shift=100, sinc_filters=4, sinc_kernel=31, conv_features=(3,),
             conv_kernels=(3,), dense_features=(8, 6))
  return SincNetAudioEncoder(**{**cfg, **kw})


def test_encoder_is_masked_mean_of_real_windows_and_padding_is_inert():
  enc = _tiny_encoder()
  waves = jax.random.normal(jax.random.key(0), (2, 1000))
  variables = enc.init(jax.random.key(1), waves)
  lengths = jnp.array([1000, 620])
  garbage = waves.at[1, 620:].set(1e4)  # padding content must not matter
  apply = jax.jit(enc.apply)
  windows_fn = jax.jit(lambda v, w: enc.apply(v, w, method=SincNetAudioEncoder.encode_windows))
  got = apply(variables, garbage, lengths)
  # reference: embed each real window on its own (a batch of 1-window utterances), then average
  for b, length in enumerate([1000, 620]):
    starts = [s for s in range(0, 1000 - 400 + 1, 100) if s + 400 <= length]
    segs = jnp.stack([waves[b, s:s + 400] for s in starts] + [jnp.zeros(400)] * (7 - len(starts)))
    per = np.asarray(windows_fn(variables, segs[:, None]))[:len(starts)]
    np.testing.assert_allclose(np.asarray(got[b]), per.mean(0), rtol=1e-5, atol=1e-5)
  # the same utterance in a shorter padded batch gives the same embedding
  alone = jax.jit(enc.apply)(variables, waves[1:, :620])
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)


def test_chunked_and_remat_equal_plain_and_dropout_only_in_training():
  enc = _tiny_encoder(dropout=0.5)
  waves = jax.random.normal(jax.random.key(2), (2, 900))
  variables = enc.init(jax.random.key(1), waves)
  plain = jax.jit(enc.apply)(variables, waves)
  for other in (enc.clone(window_chunk=4), enc.clone(remat=True)):
    np.testing.assert_allclose(np.asarray(jax.jit(other.apply)(variables, waves)),
                               np.asarray(plain), rtol=1e-5, atol=1e-5)
  trained = jax.jit(enc.apply, static_argnames="train")(
      variables, waves, train=True, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(np.asarray(trained), np.asarray(plain))



def test_chunked_remat_gradients_equal_plain():
  """The paper-size config trains with window_chunk + remat (configs/iemocap_mbaf.py): the
  parameter gradients must be those of the plain encoder, for chunk sizes that divide the
  number of windows and that do not. Float64, because in float32 the conv/LayerNorm stack of
  this tiny encoder amplifies rounding differences between the two compiled programs."""
  with jax.enable_x64(True):
    enc = _tiny_encoder(param_dtype=jnp.float64)
    waves = jax.random.normal(jax.random.key(4), (2, 900), jnp.float64)
    lengths = jnp.array([900, 520])
    variables = enc.init(jax.random.key(5), waves, lengths)

    def grads(model):
      loss = lambda p: jnp.sum(model.apply({"params": p}, waves, lengths) ** 2)
      return jax.jit(jax.grad(loss))(variables["params"])

    plain = grads(enc)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain)) > 0
    for chunk in (3, 5):  # 2 × 6 windows: 4 scan steps / 3 steps with 3 padded windows
      chunked = grads(enc.clone(window_chunk=chunk, remat=True))
      for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)

def test_paper_size_encoder_shapes():
  enc = SincNetAudioEncoder()  # 250 ms windows, 10 ms shift, 2,048-d (MBAF §4.1)
  waves = jax.random.normal(jax.random.key(0), (2, 80000))  # 5 s -> 476 windows
  variables = jax.eval_shape(enc.init, jax.random.key(1), waves)  # shapes only: no compile
  p = variables["params"]["dcnn"]
  assert p["sinc"]["low_hz"].shape == (80,) and p["conv_1"]["kernel"].shape == (5, 60, 60)
  assert p["dense_0"]["kernel"].shape == (137 * 60, 2048)  # 4000 -> 3750/3 -> 1246/3 -> 411/3
  assert jax.eval_shape(enc.apply, variables, waves).shape == (2, 2048)


@pytest.mark.slow
def test_paper_size_encoder_gives_2048_per_utterance():
  enc = SincNetAudioEncoder()  # 250 ms windows, 10 ms shift, 2,048-d (MBAF §4.1)
  waves = jax.random.normal(jax.random.key(0), (2, 4320))  # 3 windows
  variables = jax.jit(enc.init)(jax.random.key(1), waves)
  assert variables["params"]["dcnn"]["dense_0"]["kernel"].shape == (137 * 60, 2048)
  out = jax.jit(enc.apply)(variables, waves, jnp.array([4320, 4100]))
  assert out.shape == (2, 2048) and enc.output_dim() == 2048
  assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("kwargs, call, match", [
    (dict(sinc_kernel=30), None, "kernel_size must be an odd"),
    (dict(conv_kernels=(3, 3)), None, "same length"),
    (dict(window_chunk=0), None, "window_chunk"),
    ({}, "windows", "windows must have shape"),
    ({}, "lengths", "lengths must be"),
])
def test_bad_config_and_inputs_are_named(kwargs, call, match):
  enc = _tiny_encoder(**kwargs)
  waves = jnp.zeros((2, 500))
  with pytest.raises(ValueError, match=match):
    if call == "windows":
      enc.init(jax.random.key(0), jnp.zeros((2, 3, 100)), method=SincNetAudioEncoder.encode_windows)
    elif call == "lengths":
      enc.init(jax.random.key(0), waves, jnp.zeros((3,), jnp.int32))
    else:
      enc.init(jax.random.key(0), waves)


def test_bf16_compute_keeps_f32_params_and_is_close():
  enc = _tiny_encoder()
  waves = jax.random.normal(jax.random.key(4), (2, 600))
  variables = jax.jit(enc.init)(jax.random.key(1), waves)
  low = enc.clone(dtype=jnp.bfloat16)
  out = jax.jit(low.apply)(variables, waves)
  assert out.dtype == jnp.bfloat16
  assert jax.eval_shape(low.init, jax.random.key(1), waves)["params"]["dcnn"]["dense_0"][
      "kernel"].dtype == jnp.float32
  ref = jax.jit(enc.apply)(variables, waves)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.1, rtol=0.1)
