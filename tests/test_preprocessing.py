"""AudioPreprocessor / TextPreprocessor against hand-computed expectations."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mbaf_jax.encoders import AudioPreprocessor, TextPreprocessor
from mbaf_jax.encoders import preprocessing


def test_audio_defaults_normalise_truncate_pad_and_mask():
  sr = 1000  # 0.2 s -> 200 samples keeps the test tiny; the default is 5 s at 16 kHz
  rng = np.random.default_rng(0)
  short = rng.normal(3.0, 2.0, 120).astype(np.float32)
  long = rng.normal(-1.0, 0.5, 350).astype(np.float32)
  pre = AudioPreprocessor(None, max_seconds=0.2, sampling_rate=sr)
  out = pre([short, long])
  assert out["input_values"].shape == (2, 200) and out["input_values"].dtype == np.float32
  assert out["attention_mask"].dtype == np.int32
  np.testing.assert_array_equal(out["attention_mask"].sum(1), [120, 200])
  assert out["attention_mask"][0, :120].all() and not out["attention_mask"][0, 120:].any()
  # Zero-mean unit-variance over the real samples only (x - mean) / sqrt(var + 1e-7), pad = 0.
  expect_short = (short - short.mean()) / np.sqrt(short.var() + 1e-7)
  np.testing.assert_allclose(out["input_values"][0, :120], expect_short, atol=1e-5)
  np.testing.assert_array_equal(out["input_values"][0, 120:], 0.0)
  first = long[:200]  # the FIRST max_seconds are kept (DMF §2.1), then normalised
  np.testing.assert_allclose(out["input_values"][1], (first - first.mean()) /
                             np.sqrt(first.var() + 1e-7), atol=1e-5)


def test_audio_default_size_is_five_seconds_at_16k():
  assert AudioPreprocessor(None).max_samples == 80000


def test_audio_from_directory_without_normalisation(tmp_path):
  (tmp_path / "preprocessor_config.json").write_text(json.dumps({
      "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
      "sampling_rate": 16000, "padding_value": 0.0, "do_normalize": False,
      "return_attention_mask": False}))
  pre = AudioPreprocessor(str(tmp_path), max_seconds=0.01)
  wave = np.linspace(-1, 1, 100, dtype=np.float32)
  out = pre([wave])
  np.testing.assert_array_equal(out["input_values"][0, :100], wave)
  np.testing.assert_array_equal(out["attention_mask"][0], np.arange(160) < 100)


def test_audio_errors(tmp_path):
  with pytest.raises(ValueError, match="sampling_rate=8000.*16000"):
    AudioPreprocessor(_dir_with_fe(tmp_path), sampling_rate=8000)
  with pytest.raises(FileNotFoundError, match="not a directory"):
    AudioPreprocessor(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
    AudioPreprocessor(str(tmp_path / "empty"))
  pre = AudioPreprocessor(None, max_seconds=0.01)
  with pytest.raises(ValueError, match=r"waveforms\[1\] is empty"):
    pre([np.ones(10), np.zeros(0)])
  with pytest.raises(ValueError, match=r"waveforms\[0\] has shape \(2, 10\)"):
    pre([np.ones((2, 10))])
  with pytest.raises(ValueError, match=r"waveforms\[0\] contains NaN"):
    pre([np.array([0.0, np.nan])])
  with pytest.raises(ValueError, match="wrap a single waveform"):
    pre(np.ones(10))
  with pytest.raises(ValueError, match="max_seconds"):
    AudioPreprocessor(None, max_seconds=0)


def _dir_with_fe(tmp_path):
  d = tmp_path / "fe"
  d.mkdir()
  (d / "preprocessor_config.json").write_text(json.dumps({
      "feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000}))
  return str(d)


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "!",
         "happy", "##ly"]


@pytest.fixture()
def tok_dir(tmp_path):
  (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "BertTokenizer", "do_lower_case": True}))
  return str(tmp_path)


def test_text_ids_masks_padding_and_truncation(tok_dir):
  pre = TextPreprocessor(tok_dir, max_length=8)
  out = pre(["The cat sat!", "happyly " * 10, ""])
  assert all(v.shape == (3, 8) and v.dtype == np.int32 for v in out.values())
  ids = {w: i for i, w in enumerate(VOCAB)}
  expect0 = [ids["[CLS]"], ids["the"], ids["cat"], ids["sat"], ids["!"], ids["[SEP]"], 0, 0]
  np.testing.assert_array_equal(out["input_ids"][0], expect0)
  np.testing.assert_array_equal(out["attention_mask"][0], [1, 1, 1, 1, 1, 1, 0, 0])
  # truncated: [CLS] happy ##ly happy ##ly happy ##ly [SEP]
  np.testing.assert_array_equal(out["input_ids"][1], [2, 11, 12, 11, 12, 11, 12, 3])
  assert out["attention_mask"][1].all()
  np.testing.assert_array_equal(out["input_ids"][2], [2, 3, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["token_type_ids"], 0)


def test_text_errors(tok_dir, tmp_path):
  pre = TextPreprocessor(tok_dir)
  assert pre(["the cat"])["input_ids"].shape == (1, 30)
  with pytest.raises(ValueError, match="list of strings"):
    pre("the cat")
  with pytest.raises(TypeError, match=r"texts\[1\] is int"):
    pre(["a", 3])
  with pytest.raises(ValueError, match="texts is empty"):
    pre([])
  with pytest.raises(FileNotFoundError, match="not a directory"):
    TextPreprocessor(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="max_length"):
    TextPreprocessor(tok_dir, max_length=1)
  (tmp_path / "no_tok").mkdir()
  with pytest.raises((FileNotFoundError, OSError, ValueError), match="no_tok"):
    TextPreprocessor(str(tmp_path / "no_tok"))


def test_transformers_pytorch_notice_is_silenced_and_real_warnings_kept():
  """Without PyTorch, importing transformers logs "PyTorch was not found" (nothing a user can act
  on: the project never needs PyTorch at run time); the project's imports drop that record only."""
  no_torch = "import sys; sys.modules['torch'] = None\n"  # transformers then finds no PyTorch
  real = ("import logging; logging.getLogger('transformers').warning('a real warning')\n"
          "from transformers.utils import logging as hf_logging\n"
          "hf_logging.get_logger('transformers.models.bert').warning('another real one')\n")

  def stderr(code):
    return subprocess.run([sys.executable, "-c", no_torch + code], capture_output=True,
                          text=True, timeout=120).stderr

  assert preprocessing.TORCH_NOTICE in stderr("import transformers\n")  # the notice exists
  for project_import in ("from mbaf_jax.encoders import preprocessing as p\n"
                         "p.AudioPreprocessor(None, max_seconds=0.1)\n",
                         "from mbaf_jax.models import dmf\nimport tempfile\n"
                         "dmf.build_word_vocab(['a b'], tempfile.mkdtemp())\n"):
    err = stderr(project_import + real)
    assert preprocessing.TORCH_NOTICE not in err, err
    assert "a real warning" in err and "another real one" in err, err
