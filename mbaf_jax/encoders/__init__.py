"""Encoders: native Flax Wav2Vec2 and BERT (Hugging Face weight-compatible, offline),
and the MBAF paper's SincNet/DCNN audio, GloVe text and CEBS LSTM encoders."""
from mbaf_jax._lazy import lazy_exports

_EXPORTS = {
    "EncoderOutput": "outputs",
    "Wav2Vec2": "wav2vec2",
    "Wav2Vec2Config": "wav2vec2",
    "Bert": "bert",
    "BertConfig": "bert",
    "from_pretrained": "hf_loading",
    "LoadReport": "hf_loading",
    "AudioPreprocessor": "preprocessing",
    "TextPreprocessor": "preprocessing",
    "frozen_mask": "freezing",
    "SincConv": "sincnet",
    "SincNetAudioEncoder": "sincnet",
    "load_glove": "glove",
    "CnnRnnTextEncoder": "text_cnn_rnn",
    "LSTMEncoder": "lstm",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
