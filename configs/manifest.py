r"""Your own data: a CSV/JSONL manifest (audio, text, label, group), grouped k-fold (docs/EXPERIMENTS.md).

  python -m train.main --config=configs/manifest.py --workdir=runs/mine \
    --config.data.data_dir=/data/mine/manifest.csv --config.model.num_classes=4 \
    --config.model.audio.pretrained=/models/wav2vec2-base --config.model.text.pretrained=/models/bert

Default: DMF (Wav2Vec2 + BERT, dual memory; configs/iemocap.py's model and optimiser), 5-fold
grouped cross-validation over the manifest's group column, 10 % of each fold's training rows for
validation (best checkpoint by UA). Classes: ``--config.data.class_names=a,b,c`` fixes their
order (rows with other labels are skipped and counted), "" = the sorted distinct labels.

Variants (``configs/manifest.py:<variant>[,<variant>]``):
  mbaf   the MBAF IEMOCAP model instead (SincNet/DCNN + CNN-RNN text, MBAF-III; configs/iemocap_mbaf.py).
  naive  the naive-fusion baseline of the chosen model.
  both   memory and naive fusion in one run.
  demo   tiny random-init encoders, few epochs (configs.common.shrink_for_demo sizes).
  smoke  a seconds-long version of demo (2 folds, 3 steps), used by tests/test_manifest.py.
"""
from configs import common
from configs import iemocap
from configs import iemocap_mbaf


def get_config(arg=None):
  """Returns the manifest config; ``arg``: comma-separated variants (see module doc)."""
  variants = common.parse_arg(arg, ("mbaf", "naive", "both", "demo", "smoke"))
  size = [v for v in ("demo", "smoke") if v in variants]
  if "mbaf" in variants:
    c = iemocap_mbaf.get_config(",".join(["III"] + size))
    memory = "mbaf"
  else:
    c = iemocap.get_config(",".join(size) or None)
    memory = "dmf"
  c.name = f"manifest_{memory}"
  c.fusions = memory
  if "naive" in variants:
    c.name, c.fusions = "manifest_naive", "naive"
  if "both" in variants:
    c.fusions = f"{memory},naive"
  c.data.dataset = "manifest"
  c.data.synthetic = False  # a manifest is always the user's own data
  c.data.data_dir = ""  # the manifest file (.csv / .tsv / .jsonl)
  c.data.protocol = "group"  # grouped k-fold over the group column
  c.data.num_groups = 5  # not in paper
  c.data.validation = "random10"  # not in paper: 10 % of each fold's training rows
  c.data.class_names = ""
  if "smoke" in variants:
    c.data.num_groups = 2
    c.data.max_folds = 1
  return c
