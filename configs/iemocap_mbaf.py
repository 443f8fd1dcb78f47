r"""MBAF-I/II/III and NF-I/II/III on IEMOCAP with an 8:1:1 split (MBAF §4.1, Table 1).

SincNet/DCNN audio encoder (2048-d) + CNN-RNN text encoder with GloVe-300d (4800-d), Adam 1e-3,
batch 64. Run:

  python -m train.main --config=configs/iemocap_mbaf.py:III --workdir=runs/mbaf3 \
    --config.data.data_dir=/data/IEMOCAP_full_release \
    --config.model.text.glove=/data/glove/glove.6B.300d.txt
  python -m train.main --config=configs/iemocap_mbaf.py:III,nf --workdir=runs/nf3

Variants: I / II / III (none / after / before self-attention, Fig. 2; default III), nf (naive
fusion baseline NF-*), both (MBAF and NF in one run), demo, smoke.

Memory: the paper-size config (batch 64, 5 s) fits a 24 GiB accelerator because the SincNet
encoder runs chunked and rematerialised (``model.audio.kwargs.window_chunk`` / ``remat``; the
compiled train step's size per chunk setting is in docs/RESULTS.md, "Device memory of the
paper-size MBAF train step").
"""
from configs import common
from mbaf_jax.errors import UserError

# Windows per scan step of the SincNet encoder at paper size (see get_config). Not in paper.
# The largest chunk whose compiled MBAF-III train step leaves room on a 24 GiB accelerator
# (docs/RESULTS.md, "Device memory of the paper-size MBAF train step"); outputs and gradients
# do not depend on the chunk size (tests/test_sincnet.py).
WINDOW_CHUNK = 512


def get_config(arg=None):
  """Returns the MBAF IEMOCAP config; ``arg``: comma-separated variants."""
  variants = common.parse_arg(arg, ("I", "II", "III", "nf", "both", "demo", "smoke"))
  levels = variants.keys() & {"I", "II", "III"}
  if len(levels) > 1:
    raise UserError(f"pick one of the levels I, II, III, got {sorted(levels)}.")
  level = levels.pop() if levels else "III"
  c = common.base_config()
  c.name = f"iemocap_{'nf' if 'nf' in variants else 'mbaf'}_{level}"
  c.fusions = "naive" if "nf" in variants else "mbaf"
  if "both" in variants:
    c.fusions = "mbaf,naive"
  c.data.dataset = "iemocap"
  c.data.protocol = "8:1:1"  # MBAF §4.1
  c.data.max_seconds = 5.0  # not in paper (utterance length fed to the window encoder)
  c.data.max_tokens = 100  # MBAF §4.1: max sequence length 100
  c.model.name = "mbaf_iemocap"
  c.model.placement = level  # MBAF Fig. 2: self-attention none (I) / after (II) / before (III)
  c.model.attention_gate = "softmax"  # not in paper: SA(x) = x ⊙ softmax(xW + b), ref. [47]
  c.model.audio = common.mlc.ConfigDict(dict(kwargs=common.mlc.ConfigDict(dict(
      window=4000,  # MBAF §4.1: 250 ms windows
      shift=160,  # MBAF §4.1: 10 ms shift
      dense_features=(2048, 2048),  # MBAF §4.1: 2048-d output
      # Memory, not in paper: a 5 s utterance is 476 windows, i.e. 30,464 windows of 4,000
      # samples per batch of 64. The per-window network runs WINDOW_CHUNK windows per nn.scan
      # step, rematerialised in the backward pass, so one chunk's activations are alive at a
      # time (same result; sizes in docs/RESULTS.md).
      window_chunk=WINDOW_CHUNK,
      remat=True,
  ))))
  c.model.text = common.mlc.ConfigDict(dict(
      # MBAF §4.1 / ref. [47]: GloVe 300d. Path of a glove.*.txt file (e.g. glove.6B.300d.txt,
      # dimension = kwargs.embed_dim); its vectors initialise the embedding rows of the run's
      # vocabulary (<pad> row zero, words not in the file random, count printed;
      # mbaf_jax.models.mbaf_iemocap.glove_embedding). "" = random init (the encoder warns).
      # Inference reads the trained embedding from the checkpoint, not this file.
      glove="",
      kwargs=common.mlc.ConfigDict(dict(
          embed_dim=300,  # MBAF §4.1: GloVe-300d
          output_dim=4800,  # MBAF §4.1: 4800-d text vector
          # Not in paper (MBAF §4.1 and ref. [47] do not say whether GloVe is fine-tuned):
          # True = the embedding trains with the rest; False = frozen (stop_gradient).
          train_embedding=True,
      ))))
  c.model.head_features = (1024,)  # not in paper for IEMOCAP
  c.model.head_dropout = 0.5  # not in paper for IEMOCAP
  c.optim.name = "adam"  # MBAF §4.1
  c.optim.learning_rate = 1e-3  # MBAF §4.1
  c.optim.memory_learning_rate = 1e-3  # MBAF §4.1: one rate for the whole network
  c.optim.freeze_encoders = False
  c.train.batch_size = 64  # MBAF §4.1
  c.model.fusion.mbaf.attention_keys = 64  # MBAF Table 3: q = the batch size
  c.train.epochs = 30  # not in paper
  if "demo" in variants or "smoke" in variants:
    common.shrink_for_demo(c, smoke="smoke" in variants)
    c.data.protocol = "8:1:1"
    c.data.max_tokens = 16
    c.model.audio.kwargs = common.mlc.ConfigDict(dict(
        window=800, shift=400, sinc_filters=8, sinc_kernel=51, conv_features=(8,),
        conv_kernels=(5,), dense_features=(32,), window_chunk=None, remat=False))
    c.model.text.kwargs = common.mlc.ConfigDict(dict(  # a glove file must be 16-d here
        embed_dim=16, rnn_hidden=8, conv_features=8, output_dim=32, train_embedding=True))
    c.model.head_features = (32,)
  return c
