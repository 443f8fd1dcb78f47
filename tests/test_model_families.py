"""The model-family contract (mbaf_jax/models/<family>.py, see models.factory): every family's
``dummy_batch`` has exactly the shapes and dtypes its ``make_inputs`` gives real examples, the
training path (padded arrays + lengths) and the predict path (per-example lists) build the same
batch, an unknown family is a UserError naming the known ones, and a new family with a third
modality is one module file plus a config, trained one step through the trainer's contract."""
import textwrap

import jax
import numpy as np
import pytest

from configs import cebs as cebs_config
from configs import iemocap, iemocap_mbaf
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory

import plans  # tests/plans.py
from train import optimizers
from train import steps

N = 3  # examples


def _shapes(tree):
  return jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), tree)


def _audio_text_raw(config, seed=0):
  """N examples as a loader gives them: (N, S) zero-padded waves, valid lengths, transcripts."""
  rng = np.random.default_rng(seed)
  s = int(round(config.data.max_seconds * config.data.sample_rate))
  lengths = np.array([s, s // 2, s // 3 + 1])
  waves = np.zeros((N, s), np.float32)
  for i, n in enumerate(lengths):
    waves[i, :n] = rng.normal(size=n)
  texts = ["I can't believe it", "fine, thanks!", "oh"]
  return {"waves": waves, "lengths": lengths, "texts": texts}


def _cebs_raw(config, seed=0):
  rng = np.random.default_rng(seed)
  d = config.data
  return {"modes": tuple(rng.normal(size=(N, d.chunks, d.chunk_samples)).astype(np.float32)
                         for _ in range(2))}


CASES = {"dmf": (lambda: iemocap.get_config("demo"), _audio_text_raw),
         "mbaf_iemocap": (lambda: iemocap_mbaf.get_config("smoke"), _audio_text_raw),
         "cebs": (lambda: cebs_config.get_config("demo"), _cebs_raw)}


def test_the_package_families_are_the_three_of_the_papers():
  assert factory.known_families() == ("cebs", "dmf", "mbaf_iemocap")
  for name in factory.known_families():
    fam = factory.family(name)
    assert all(isinstance(k, str) for k in fam.DATA_FIELDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dummy_batch_is_what_make_inputs_gives_real_examples(name, tmp_path):
  get_config, make_raw = CASES[name]
  config = get_config()
  assert config.model.name == name
  fam = factory.family(name)
  data, model = config.data, config.model
  raw = make_raw(config)
  pre = fam.preprocessor(data, model, str(tmp_path), raw)  # training: fitted and saved
  batch = fam.make_inputs(data, model, raw, pre)
  assert _shapes(batch) == _shapes(factory.dummy_batch(data, model, N))
  assert _shapes(factory.dummy_batch(data, model, 5)) == _shapes(
      factory.spec_batch(fam.input_spec(data, model), 5))
  for field in fam.DATA_FIELDS:  # the fields that fix the shapes exist in the config
    assert field in config.data
  # Training goes through the same two calls (train.datasets.model_inputs).
  inputs, vocab_size = plans.model_inputs(config, str(tmp_path / "run"), raw)
  assert vocab_size == pre.vocab_size
  jax.tree.map(np.testing.assert_array_equal, inputs, batch)
  # Inference: the preprocessing training saved, loaded (never rebuilt), and one list entry per
  # example (cut to its length) per raw input, as train.inference passes them: the same batch.
  loaded = fam.preprocessor(data, model, str(tmp_path))
  assert loaded.vocab_size == pre.vocab_size
  if "modes" in raw:
    columns = [list(m) for m in raw["modes"]]
  else:
    columns = [[w[:n] for w, n in zip(raw["waves"], raw["lengths"])], list(raw["texts"])]
  specs = fam.raw_inputs(data, model)
  assert len(specs) == len(columns)
  for spec, column in zip(specs, columns):
    assert spec.medium in factory.MEDIA
    if spec.medium == "array":
      assert np.shape(column[0]) == spec.shape
  per_example = fam.raw_examples(data, model, columns)
  jax.tree.map(np.testing.assert_array_equal, fam.make_inputs(data, model, per_example, loaded),
               batch)


def test_inference_never_builds_a_vocabulary(tmp_path):
  for get_config, match in ((lambda: iemocap.get_config("demo"), "tokenizer.*is missing"),
                            (lambda: iemocap_mbaf.get_config("smoke"), "vocab.json is missing")):
    config = get_config()
    with pytest.raises(UserError, match=match):
      factory.family(config.model.name).preprocessor(config.data, config.model, str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_make_inputs_rejects_a_batch_that_breaks_the_schema():
  config = iemocap_mbaf.get_config("smoke")
  spec = factory.family("mbaf_iemocap").input_spec(config.data, config.model)
  good = factory.spec_batch(spec, 2)
  with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
    factory.conform(spec, dict(good, token_ids=np.zeros((2, 7), np.int32)))
  with pytest.raises(ValueError, match="keys"):
    factory.conform(spec, {k: v for k, v in good.items() if k != "lengths"})


def test_unknown_family_names_the_known_ones():
  config = iemocap.get_config("demo")
  config.model.name = "dfm"
  with pytest.raises(UserError, match=r"config.model.name='dfm' is unknown; expected one of "
                     r"\('cebs', 'dmf', 'mbaf_iemocap'\)"):
    factory.build_model(config.model, "dmf")
  with pytest.raises(UserError, match="is unknown"):
    factory.dummy_batch(config.data, config.model, 2)
  with pytest.raises(UserError, match=r"'heads'.*not a model family; it lacks \['DATA_FIELDS'"):
    factory.family("heads")
  with pytest.raises(UserError, match="no_such_pkg.fam' is unknown"):
    factory.family("no_such_pkg.fam")


# --------------------------------------------------------------------------- a third modality
# A new family: audio + text + a physiological signal, as one module file. It reuses the MBAF
# IEMOCAP family's encoders, word vocabulary and GloVe loading, and adds an LSTM over the signal.
PHYSIO3 = '''
"""Audio + text + a physiological signal (tiny test family)."""
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from mbaf_jax import encoders
from mbaf_jax.models import factory
from mbaf_jax.models import mbaf_iemocap
from mbaf_jax.models.heads import ClassifierHead, ModelOutput

DATA_FIELDS = mbaf_iemocap.DATA_FIELDS + ("signal_steps", "signal_features")
preprocessor = mbaf_iemocap.preprocessor  # the word vocabulary (workdir/vocab.json)
text_embedding = mbaf_iemocap.text_embedding  # GloVe, when model.text.glove is set


class Physio3Model(nn.Module):
  """audio, text, signal encoders → fusion of three modes → head."""
  audio: nn.Module  # encoders.SincNetAudioEncoder
  text: nn.Module  # encoders.CnnRnnTextEncoder
  signal: nn.Module  # encoders.LSTMEncoder
  fusion: nn.Module  # any fusion layer taking *modes
  head_features: Sequence[int] = (8,)  # test size
  head_dropout: float = 0.0  # test
  head_activation: str = "relu"  # test
  num_classes: int = 4  # test
  dtype: Any = None  # head compute dtype

  @nn.compact
  def __call__(self, batch, mask=None, train: bool = False) -> ModelOutput:
    a = self.audio(batch["waves"], batch["lengths"], train=train)
    t = self.text(batch["token_ids"], batch["text_mask"], train=train)
    s = self.signal(batch["signal"], train=train)
    out = self.fusion(a, getattr(t, "pooled", t), s, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))


def build(model_config, fusion_kind, *, vocab_size=None, max_tokens=None, text_embedding=None):
  dtype = factory.compute_dtype(model_config)
  text_kwargs = dict(factory.as_dict(model_config.text.kwargs), vocab_size=int(vocab_size),
                     max_tokens=int(max_tokens), warn_random_embedding=False)
  model = Physio3Model(
      audio=encoders.SincNetAudioEncoder(**factory.as_dict(model_config.audio.kwargs)),
      text=encoders.CnnRnnTextEncoder(**text_kwargs),
      signal=encoders.LSTMEncoder(model_config.signal.hidden, 1, dtype=dtype),
      fusion=factory.make_fusion(fusion_kind, model_config.fusion, dtype),
      **factory.head_kwargs(model_config, dtype))
  pretrained = {} if text_embedding is None else {"text/embedding": text_embedding}
  return model, pretrained


def input_spec(data, model):
  return dict(mbaf_iemocap.input_spec(data, model),
              signal=factory.Field((data.signal_steps, data.signal_features), np.float32))


def make_inputs(data, model, raw, pre):
  batch = mbaf_iemocap.make_inputs(data, model, raw, pre)
  return factory.conform(input_spec(data, model), dict(batch, signal=raw["signal"]))


def raw_inputs(data, model):
  signal = factory.RawInput("signal", "array", (data.signal_steps, data.signal_features))
  return mbaf_iemocap.raw_inputs(data, model) + (signal,)


def raw_examples(data, model, columns):
  return dict(mbaf_iemocap.raw_examples(data, model, columns[:2]),
              signal=np.asarray(columns[2], np.float32))
'''


def _physio3_config():
  c = iemocap_mbaf.get_config("I,smoke")
  c.model.name = "toy_families.physio3"
  c.model.head_features, c.model.head_dropout = (8,), 0.0
  c.model.audio.kwargs = dict(window=400, shift=200, sinc_filters=4, sinc_kernel=31,
                              conv_features=(4,), conv_kernels=(3,), dense_features=(6,))
  c.model.text.kwargs = dict(embed_dim=4, rnn_hidden=3, conv_features=2, output_dim=10)
  c.model.signal = dict(hidden=5)
  c.data.max_seconds, c.data.max_tokens = 0.1, 6
  c.data.signal_steps, c.data.signal_features = 4, 3
  return c


@pytest.mark.parametrize("kind", ["mbaf"])  # MBAF: one memory over the three modes
def test_a_third_modality_is_one_module_file(kind, tmp_path, monkeypatch):
  pkg = tmp_path / "toy_families"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "physio3.py").write_text(textwrap.dedent(PHYSIO3))
  monkeypatch.syspath_prepend(str(tmp_path))
  config = _physio3_config()
  raw = _audio_text_raw(config)
  raw["signal"] = np.random.default_rng(1).normal(
      size=(N, config.data.signal_steps, config.data.signal_features)).astype(np.float32)
  workdir = str(tmp_path / "run")

  # What the trainer does: inputs through the family, the model through build_model.
  inputs, vocab_size = plans.model_inputs(config, workdir, raw)
  assert _shapes(inputs) == _shapes(factory.dummy_batch(config.data, config.model, N))
  model, pretrained = factory.build_model(config.model, kind, vocab_size=vocab_size,
                                          max_tokens=config.data.max_tokens)
  assert pretrained == {}
  batch = dict(inputs, label=np.array([0, 1, 3], np.int32), mask=np.ones((N,), bool))
  key = jax.random.key(0)
  variables = steps.init_variables(model, batch, key)
  assert set(variables["params"]) == ({"audio", "text", "signal", "head"}
                                      | ({"fusion"} if kind == "mbaf" else set()))
  tx = optimizers.make_optimizer(config.optim, variables["params"], variables.get("memory", {}))
  state = steps.create_state(variables, tx)
  new_state, metrics = jax.jit(steps.make_train_step(model.apply, tx))(state, batch, key)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert int(metrics["count"]) == N
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params["signal"],
                       new_state.params["signal"])
  assert any(jax.tree.leaves(moved))  # the third modality's encoder is trained
  if kind == "mbaf":  # the memory module read three modes and was written
    assert not np.array_equal(state.memory["fusion"]["memory"],
                              new_state.memory["fusion"]["memory"])
