"""CEBS family (MBAF §4.2, Fig. 3): per-mode LSTM(512) → LSTM(512) → fusion → Dense 1024 + dropout
0.5 → 3 classes, with its input schema (one window array per mode of ``config.data.mode_pair``).
The family contract is in ``models.factory``."""
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from mbaf_jax import encoders
from mbaf_jax.data import cebs as cebs_data
from mbaf_jax.models import factory
from mbaf_jax.models.heads import ClassifierHead, ModelOutput

DATA_FIELDS = ("chunks", "chunk_samples", "mode_pair")  # config.data fields of the shapes
# What a run's header calls the model (optional: the family's name otherwise).
ENCODERS = "LSTM encoders"
NUM_MODES = 2  # every mode pair of MBAF §4.2 (F-IV, F-V, F-VI) has two modes


class CebsModel(nn.Module):
  """Two (or more) physiological modes, each ``(B, 6, 1000)`` (6 chunks of 200 ms at 5 kHz).

  Batch: ``modes`` = tuple of ``(B, T, F)`` arrays in the order of the mode pair (F-IV ECG+RS, ...).
  Parameter tree: ``encoder_<i>``, ``fusion``, ``head``.
  """
  encoder: Sequence[nn.Module]  # one encoders.LSTMEncoder per mode (unbound; named 'encoder_<i>')
  fusion: nn.Module  # MBAF | NaiveFusion (unbound; named 'fusion')
  head_features: Sequence[int] = (1024,)  # MBAF §4.2
  head_dropout: float = 0.5  # MBAF §4.2
  head_activation: str = "relu"  # not stated in MBAF
  num_classes: int = 3  # basal, music, post-music
  dtype: Any = None  # head compute dtype (None: from the inputs)

  @nn.compact
  def __call__(self, batch, mask=None, train: bool = False) -> ModelOutput:
    """Returns ``ModelOutput(log_probs (B, 3), aux)``."""
    if len(batch["modes"]) != len(self.encoder):
      raise ValueError(f"the batch has {len(batch['modes'])} modes but the model has "
                       f"{len(self.encoder)} encoders.")
    feats = [enc(x, train=train) for enc, x in zip(self.encoder, batch["modes"])]
    out = self.fusion(*feats, mask=mask, train=train)
    log_probs = ClassifierHead(self.head_features, self.num_classes, self.head_dropout,
                               self.head_activation, dtype=self.dtype,
                               name="head")(out.fused, train)
    return ModelOutput(log_probs=log_probs, aux=dict(out.aux))


def build(model_config, fusion_kind: str, *, vocab_size: int | None = None,
          max_tokens: int | None = None, text_embedding=None):
  """The CEBS model of ``config.model``: ``NUM_MODES`` LSTM encoders of ``model_config.hidden``
  units and ``num_layers`` layers (``factory.build_model``); no pretrained weights.

  Raises:
    ValueError: unknown fusion / dtype, bad options.
  """
  del vocab_size, max_tokens, text_embedding  # no text
  dtype = factory.compute_dtype(model_config)
  fusion = factory.make_fusion(fusion_kind, model_config.fusion, dtype)
  head = factory.head_kwargs(model_config, dtype)
  encoder = tuple(encoders.LSTMEncoder(model_config.hidden, model_config.num_layers, dtype=dtype)
                  for _ in range(NUM_MODES))
  return CebsModel(encoder=encoder, fusion=fusion, **head), {}


def mode_names(data) -> tuple:
  """The modes of ``data.mode_pair`` in batch order (F-IV: ``("ECG", "RESP")``)."""
  return tuple(cebs_data.MODE_PAIRS.get(data.mode_pair, ()))


def input_spec(data, model) -> dict:
  """The batch schema: one (chunks, chunk_samples) window per mode of ``data.mode_pair``."""
  del model
  n = len(mode_names(data)) or NUM_MODES
  window = factory.Field((int(data.chunks), int(data.chunk_samples)), np.float32)
  return {"modes": (window,) * n}


def preprocessor(data, model, workdir: str, raw=None) -> factory.Preprocessing:
  """Nothing to fit or load: the windows come cut and normalised (``mbaf_jax.data.cebs``)."""
  del data, model, workdir, raw
  return factory.Preprocessing()


def make_inputs(data, model, raw, pre: factory.Preprocessing = None) -> dict:
  """Raw windows → the CEBS batch (``input_spec``).

  Args:
    data: ``config.data`` (``mode_pair``, ``chunks``, ``chunk_samples``).
    model: ``config.model``.
    raw: ``{"modes": (mode_1, mode_2)}``, each N windows of (chunks, chunk_samples) (an array
      or a list of arrays), normalised as ``mbaf_jax.data.cebs.load_cebs`` does.
    pre: unused (``preprocessor``).

  Returns:
    The batch dict of N rows.
  """
  del pre
  return factory.conform(input_spec(data, model),
                         {"modes": tuple(np.asarray(m, np.float32) for m in raw["modes"])})


def text_embedding(data, model, workdir: str, *, seed: int, verbose: bool = True):
  """None: no text."""
  del data, model, workdir, seed, verbose
  return None


def raw_inputs(data, model) -> tuple:
  """One window array per mode of ``data.mode_pair``, named after the mode (F-IV: ECG, RESP)."""
  del model
  shape = (int(data.chunks), int(data.chunk_samples))
  note = "windows cut and normalised as mbaf_jax.data.cebs.load_cebs does"
  return tuple(factory.RawInput(name, "array", shape, int(cebs_data.FS), note)
               for name in mode_names(data))


def raw_examples(data, model, columns) -> dict:
  """One column of windows per mode → ``{"modes"}`` (``make_inputs``)."""
  del data, model
  return {"modes": tuple(np.asarray(c, np.float32) for c in columns)}
