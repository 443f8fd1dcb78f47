r"""The DMF paper's naive-fusion baseline on IEMOCAP LOSO (DMF Table 1, "naive"): concatenation of
the Wav2Vec2 and BERT embeddings, same head and optimiser as DMF.

Run:  python -m train.main --config=configs/iemocap_naive.py --workdir=runs/naive \
        --config.data.data_dir=/data/IEMOCAP_full_release
Variants: demo, smoke (as configs/iemocap.py).
"""
from configs import common
from configs import iemocap


def get_config(arg=None):
  """Returns ``configs/iemocap.py:naive[,<arg>]``."""
  variants = common.parse_arg(arg, ("demo", "smoke"))
  c = iemocap.get_config(",".join(sorted(variants.keys() | {"naive"})))
  c.fusions = "naive"
  return c
