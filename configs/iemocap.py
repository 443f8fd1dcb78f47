r"""DMF on IEMOCAP, leave-one-session-out (DMF §3): Wav2Vec2-base + BERT-base → DualMemoryFusion.

Run (real data, pretrained encoders in local Hugging Face directories):

  python -m train.main --config=configs/iemocap.py --workdir=runs/dmf \
    --config.data.data_dir=/data/IEMOCAP_full_release \
    --config.model.audio.pretrained=/models/wav2vec2-base-superb-sid \
    --config.model.text.pretrained=/models/bert-base-uncased

Variants (``configs/iemocap.py:<variant>[,<variant>]``):
  naive  the paper's naive (concatenation) baseline instead of the dual memory.
  both   train DMF and the naive baseline in one run (a table of both).
  demo   synthetic corpus (generated into <workdir>/data if absent), tiny random-init encoders,
         DMF and naive on the 5 LOSO folds:  python -m train.main --config=configs/iemocap.py:demo
         --workdir=runs/demo
  smoke  a seconds-long version of demo (2 folds, 3 steps each), used by tests/test_demo.py.
"""
from configs import common


def get_config(arg=None):
  """Returns the DMF IEMOCAP config; ``arg``: comma-separated variants (see module doc)."""
  variants = common.parse_arg(arg, ("naive", "both", "demo", "smoke"))
  c = common.base_config()
  c.name = "iemocap_dmf"
  c.fusions = "dmf"
  c.data.dataset = "iemocap"
  c.data.protocol = "loso"  # DMF §3 (following its ref. [6])
  c.model.name = "dmf"
  c.model.audio = common.mlc.ConfigDict(dict(
      size="base",  # DMF §2.1: wav2vec2-base fine-tuned for SUPERB speaker id
      pretrained="",  # local HF dir; "": random init at `size`
      overrides=common.mlc.ConfigDict()))
  c.model.text = common.mlc.ConfigDict(dict(
      size="base",  # DMF §2.1: bert-base-uncased
      pretrained="",
      overrides=common.mlc.ConfigDict()))
  c.model.head_features = (1024, 512)  # DMF §2.3
  c.model.num_classes = 4
  c.optim.name = "sgd"  # DMF §3
  c.optim.learning_rate = 0.01  # DMF §3: complete network
  c.optim.memory_learning_rate = 0.001  # DMF §3: memory module
  c.optim.freeze_encoders = True  # DMF §2.1
  c.train.batch_size = 16  # not in paper
  c.train.epochs = 20  # not in paper
  if "naive" in variants:
    c.name, c.fusions = "iemocap_naive", "naive"
  if "both" in variants or "demo" in variants or "smoke" in variants:
    c.fusions = "dmf,naive"
  if "demo" in variants or "smoke" in variants:
    common.shrink_for_demo(c, smoke="smoke" in variants)
    _demo_overrides(c, smoke="smoke" in variants)
  return c


def _demo_overrides(c, smoke=False):
  """DMF demo sizes (the README's "The demo"); all "not in paper".

  Tiny random-init encoders trained from scratch on 320 synthetic utterances: Adam, because SGD
  at the paper's rates needs far more steps than a short demo; every encoder layer trainable,
  because DMF §2.1 freezes the *pretrained* feature extractor and embeddings, and frozen random
  ones only hold the tiny encoders back; gradients clipped and the reader temperature floored at
  1, which keep the README's demo table reproducible (docs/DMF.md, "The demo, before and after").
  """
  c.model.audio.size = "tiny"
  c.model.text.size = "tiny"
  c.data.max_seconds = 0.5  # short clips: the tiny Wav2Vec2 dominates a demo train step
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.memory_learning_rate = 1e-4  # DMF §3's 10:1 network:memory ratio, applied to Adam
  c.optim.freeze_encoders = False
  c.optim.grad_clip_norm = 1.0
  c.model.fusion.dmf.tau_min = 1.0  # DualMemoryFusion default 1e-4 (DMF Eq. 1's lower clamp)
  c.data.validation = "random20"  # the whole held-out session is the test set (64 utterances)
  c.train.epochs = 10
  c.train.eval_every_epochs = 1  # best-by-validation-UA checkpoint
  if smoke:
    c.data.synthetic_size = "tiny"  # 80 4-class utterances: generated in a second
    c.train.epochs = 1
