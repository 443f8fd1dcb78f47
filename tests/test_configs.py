"""Every config file and variant loads, has paper defaults, builds its model; entry points
import."""
import glob
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    "iemocap": [None, "naive", "both", "demo", "smoke", "demo,naive"],
    "iemocap_naive": [None, "demo", "smoke"],
    "iemocap_mbaf": [None, "I", "II", "III", "nf", "II,nf", "both", "demo", "smoke", "I,smoke"],
    "cebs": [None, "F-IV", "F-V", "F-VI", "F-VI,nf", "both", "demo", "smoke"],
    "manifest": [None, "naive", "mbaf", "mbaf,naive", "both", "smoke", "mbaf,smoke"],
    "ablations": [None, "slots=10", "slots=100", "cross,slots=20", "single=0", "single=1",
                  "dmf_slots=60", "smoke", "cross,smoke"],
}


def _module(name):
  return importlib.import_module(f"configs.{name}")


def test_every_config_file_is_listed():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert files - {"__init__", "common"} == set(VARIANTS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_loads_and_builds(name, arg):
  from mbaf_jax.models import factory
  mod = _module(name)
  assert "python -m train.main" in mod.__doc__
  c = mod.get_config(arg)
  c.lock()
  assert c.name
  with pytest.raises(AttributeError):
    c.train.no_such_field = 1  # locked: typos fail
  kinds = c.fusions.split(",")
  assert set(kinds) <= set(factory.FUSION_KINDS)
  for kind in kinds:
    model, pretrained = factory.build_model(c.model, kind, vocab_size=50,
                                            max_tokens=c.data.max_tokens)
    assert pretrained == {}
    if c.model.name == "mbaf_iemocap":  # MBAF Fig. 2: the fusion block of MBAF-/NF-I/II/III
      assert model.fusion.__class__.__name__ == "FusionBlock"
      assert (model.fusion.fusion, model.fusion.placement) == (kind, c.model.placement)
    else:
      assert model.fusion.__class__.__name__ == {"dmf": "DualMemoryFusion",
                                                 "naive": "NaiveFusion", "mbaf": "MBAF"}[kind]


def test_paper_defaults():
  dmf = _module("iemocap").get_config()
  assert (dmf.fusions, dmf.data.protocol, dmf.optim.name) == ("dmf", "loso", "sgd")
  assert (dmf.optim.learning_rate, dmf.optim.memory_learning_rate) == (0.01, 0.001)
  assert dmf.model.fusion.dmf.slots == 120 and tuple(dmf.model.head_features) == (1024, 512)
  assert (dmf.data.max_seconds, dmf.data.max_tokens) == (5.0, 30)
  assert _module("iemocap").get_config("naive").fusions == "naive"
  mbaf = _module("iemocap_mbaf").get_config("II")
  assert (mbaf.optim.name, mbaf.optim.learning_rate, mbaf.train.batch_size) == ("adam", 1e-3, 64)
  assert (mbaf.data.protocol, mbaf.model.placement, mbaf.fusions) == ("8:1:1", "II", "mbaf")
  assert (mbaf.data.max_tokens, mbaf.model.fusion.mbaf.slots) == (100, 30)  # MBAF §4.1, Table 4
  audio = mbaf.model.audio.kwargs
  assert (audio.window, audio.shift, audio.dense_features[-1]) == (4000, 160, 2048)
  assert (audio.remat, audio.window_chunk) == (True, _module("iemocap_mbaf").WINDOW_CHUNK)
  assert mbaf.model.text.kwargs.output_dim == 4800 and mbaf.model.text.kwargs.embed_dim == 300
  assert "attention_tokens" not in mbaf.model and "attention_heads" not in mbaf.model
  cebs = _module("cebs").get_config("F-V,nf")
  assert (cebs.data.mode_pair, cebs.fusions, cebs.train.batch_size) == ("F-V", "naive", 32)
  assert (cebs.data.protocol, cebs.model.hidden, cebs.optim.learning_rate) == ("logo", 512, 1e-3)
  assert _module("cebs").get_config("F-V").model.fusion.mbaf.slots == 10  # Table 5: best for F-V
  assert (cebs.model.head_dropout, tuple(cebs.model.head_features)) == (0.5, (1024,))
  abl = _module("ablations").get_config("cross,slots=20")
  assert (abl.model.fusion.mbaf.slots, abl.model.fusion.mbaf.read) == (20, "cross")
  assert tuple(_module("ablations").get_config("single=1").model.fusion.mbaf.memory_modes) == (1,)


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown config variant"):
    _module("iemocap").get_config("demoo")
  with pytest.raises(ValueError, match="one mode pair"):
    _module("cebs").get_config("F-IV,F-V")
  with pytest.raises(ValueError, match="unknown ablation"):
    _module("ablations").get_config("size=3")
  with pytest.raises(ValueError,
                     match=r"slots needs an integer, e\.g\. configs/ablations.py:slots=30"):
    _module("ablations").get_config("slots=L")


def test_entry_points_import():
  for mod in ("train.main", "train.trainer", "train.steps", "train.checkpoints", "train.metrics",
              "train.datasets", "train.errors", "benchmarks.bench_train"):
    importlib.import_module(mod)


def test_fusion_kinds_splits_config_fusions():
  from configs import common
  c = common.base_config()
  c.fusions = " mbaf, naive ,"
  assert common.fusion_kinds(c) == ["mbaf", "naive"]
  c.fusions = ""
  assert common.fusion_kinds(c) == []
