"""Every config file and variant loads, has paper defaults, builds its model; entry points
import."""
import glob
import importlib
import os

import pytest

from configs import common
from mbaf_jax.errors import UserError
from mbaf_jax.models import factory

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
  with pytest.raises(UserError, match=r"unknown config variant\(s\) \['size=3'\]"):
    _module("ablations").get_config("size=3")
  with pytest.raises(UserError, match=r"slots needs an integer, e\.g\. .*:slots=30"):
    _module("ablations").get_config("slots=L")
  with pytest.raises(UserError, match="expected 0 \\(audio\\) or 1 \\(text\\)"):
    _module("ablations").get_config("single=2")
  with pytest.raises(UserError, match="one of the levels"):
    _module("iemocap_mbaf").get_config("I,II")


def test_entry_points_import():
  for mod in ("train.main", "train.loop", "train.steps", "train.checkpoints", "train.metrics",
              "train.datasets", "train.errors", "train.cli", "train.workdir", "train.run_identity",
              "train.reporting", "train.parallel", "train.predict", "train.experiments",
              "benchmarks.bench_train"):
    importlib.import_module(mod)


def test_fusion_kinds_splits_config_fusions():
  c = common.base_config()
  c.fusions = " mbaf, naive ,"
  assert common.fusion_kinds(c) == ["mbaf", "naive"]
  c.fusions = ""
  assert common.fusion_kinds(c) == []


def test_parse_arg_types_and_errors():
  """configs.common.parse_arg: the one variant parser of every config file."""
  spec = {"n": int, "lr": float, "on": bool, "tag": str}
  assert common.parse_arg(None, ("demo",)) == {}
  assert common.parse_arg(" demo , n=3, lr=0.5 ,on=false,tag=x", ("demo",), spec) == {
      "demo": True, "n": 3, "lr": 0.5, "on": False, "tag": "x"}
  assert common.parse_arg("on=Yes,on=1,n=2,n=4", (), spec) == {"on": True, "n": 4}  # last wins
  assert type(common.parse_arg("lr=1", (), spec)["lr"]) is float
  for bad, match in (("n=1.5", "n needs an integer"), ("lr=fast", "lr needs a number"),
                     ("on=maybe", "on needs true or false"), ("demo=1", "unknown config variant"),
                     ("n", "unknown config variant"), ("nope", r"accepts \['demo', 'n=<int>'")):
    with pytest.raises(UserError, match=match):
      common.parse_arg(bad, ("demo",), spec)
  with pytest.raises(ValueError):  # a UserError is a ValueError (ml_collections callers)
    common.parse_arg("x", ())


def test_ablation_variants_give_the_same_configs_as_their_settings():
  """Typed ablation variants set the fields the papers' tables vary, nothing else."""
  abl, mbaf = _module("ablations"), _module("iemocap_mbaf")
  for arg, slots, read, modes, name in (
      (None, 30, "naive", None, "ablation_mbaf_slots30"),
      ("slots=100", 100, "naive", None, "ablation_mbaf_slots100"),
      ("cross, slots=20", 20, "cross", None, "ablation_mbaf_slots20_cross"),
      ("single=1,smoke", 30, "naive", (1,), "ablation_mbaf_slots30_single1")):
    c = abl.get_config(arg)
    ref = mbaf.get_config("III,smoke" if arg and "smoke" in arg else "III")
    ref.model.fusion.mbaf.slots = slots
    if read == "cross":
      ref.model.fusion.mbaf.read = read
    if modes is not None:
      ref.model.fusion.mbaf.memory_modes = modes
    ref.name = name
    assert c.to_dict() == ref.to_dict(), arg
  c = abl.get_config("dmf_slots=60")
  ref = _module("iemocap").get_config()
  ref.model.fusion.dmf.slots, ref.name = 60, "ablation_dmf_slots60"
  assert c.to_dict() == ref.to_dict()
