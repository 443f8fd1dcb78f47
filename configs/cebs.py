r"""PhysioNet CEBS, F-IV / F-V / F-VI with naive fusion and MBAF (MBAF §4.2, Table 2), LOGO-4.

Per-mode LSTM(512) → LSTM(512) → fusion → Dense 1024 + dropout 0.5 → 3 classes; Adam 1e-3, batch 32.
Run:

  python -m train.main --config=configs/cebs.py:F-VI --workdir=runs/cebs_f6 \
    --config.data.data_dir=/data/cebsdb
  python -m train.main --config=configs/cebs.py:F-VI,nf --workdir=runs/cebs_f6_nf

Variants: F-IV (ECG+RS, default), F-V (ECG+SCG), F-VI (RS+SCG), nf, both, demo, smoke.
"""
from configs import common
from mbaf_jax.errors import UserError


def get_config(arg=None):
  """Returns the CEBS config; ``arg``: comma-separated variants."""
  variants = common.parse_arg(arg, ("F-IV", "F-V", "F-VI", "nf", "both", "demo", "smoke"))
  pairs = variants.keys() & {"F-IV", "F-V", "F-VI"}
  if len(pairs) > 1:
    raise UserError(f"pick one mode pair (F-IV, F-V or F-VI), got {sorted(pairs)}.")
  pair = pairs.pop() if pairs else "F-IV"
  c = common.base_config()
  c.name = f"cebs_{pair}_{'nf' if 'nf' in variants else 'mbaf'}"
  c.fusions = "naive" if "nf" in variants else "mbaf"
  if "both" in variants:
    c.fusions = "mbaf,naive"
  c.data.dataset = "cebs"
  c.data.protocol = "logo"  # MBAF §4.2: 4 groups of 5 subjects
  c.data.mode_pair = pair
  c.model.name = "cebs"
  c.model.hidden = 512  # MBAF §4.2
  c.model.num_layers = 2  # MBAF §4.2
  c.model.head_features = (1024,)  # MBAF §4.2
  c.model.head_dropout = 0.5  # MBAF §4.2
  c.model.num_classes = 3
  # MBAF Table 5: the best memory size per pair (F-IV 20, F-V 10, F-VI 20); Table 2 does not say
  # which size its MBAF rows used.
  c.model.fusion.mbaf.slots = 10 if pair == "F-V" else 20
  c.optim.name = "adam"  # MBAF §4.2
  c.optim.learning_rate = 1e-3  # MBAF §4.2
  c.optim.memory_learning_rate = 1e-3  # MBAF §4.2: one rate for the whole network
  c.optim.freeze_encoders = False
  c.train.batch_size = 32  # MBAF §4.2
  c.train.epochs = 30  # not in paper
  if "demo" in variants or "smoke" in variants:
    common.shrink_for_demo(c, smoke="smoke" in variants)
    c.data.protocol = "logo"
    c.model.hidden = 16
    c.model.head_features = (32,)
  return c
