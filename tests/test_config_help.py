"""``train.main --help`` / ``--help_config`` list the config files, their variants and every field
with its default and meaning, generated from the configs (and kept in sync with them here)."""
import importlib
import os
import subprocess
import sys

import pytest

from configs import common
from train import config_help

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_field_has_a_meaning_and_every_meaning_a_field():
  meanings = config_help.field_meanings()
  leaves = config_help.config_leaves(common.base_config())
  missing = [p for p in leaves if not meanings.get(p)]
  assert not missing, f"fields of configs/common.py without a comment: {missing}"
  sections = {p.rsplit(".", 1)[0] for p in leaves if "." in p}
  stale = [p for p in meanings if p not in leaves and p not in sections
           and not any(s.startswith(p + ".") for s in sections)]
  assert not stale, f"comments for fields that base_config() does not set: {stale}"


def test_meanings_are_the_comments_of_configs_common():
  m = config_help.field_meanings()
  assert m["data.max_tokens"] == "DMF §2.1: 30 tokens"
  assert m["model.fusion.dmf.slots"] == "DMF §2.2: n_a = n_t = 120"  # a dict(...) keyword
  assert m["model.dtype"].startswith("Compute dtype:")  # comment lines above the field
  assert "word-level vocab" in m["data.tokenizer"]  # its continuation line
  assert m["model.fusion.mbaf.write_max"].startswith("Not in paper")


def test_comment_rules_on_a_small_source(tmp_path):
  src = tmp_path / "cfg.py"
  src.write_text(
      "def sub():\n"
      "  return dict(a=1,  # alpha\n"
      "              # Leading text of b.\n"
      "              b=2)\n"
      "\n"
      "def base():\n"
      "  c = {}\n"
      "  c.x = 1  # first part\n"
      "  #         second part\n"
      "  # About y.\n"
      "  c.y = 2\n"
      "  c.z = 3\n"
      "  c.s = sub()  # a section\n"
      "  return c\n")
  m = config_help.field_meanings(str(src), "base")
  assert m == {"x": "first part second part", "y": "About y.", "z": "", "s": "a section",
               "s.a": "alpha", "s.b": "Leading text of b."}


@pytest.mark.parametrize("path", config_help.config_files(), ids=os.path.basename)
def test_variants_are_the_ones_get_config_accepts_and_documents(path):
  name = os.path.basename(path)[:-3]
  mod = importlib.import_module(f"configs.{name}")
  variants = config_help.config_variants(path)
  assert variants and "smoke" in variants and "demo" in variants
  for v in variants:
    key = v.split("=")[0]  # "slots=<int>": a typed key=value variant
    assert key in mod.__doc__, f"configs/{name}.py: variant {key!r} is not in its docstring"
    mod.get_config(v.replace("=<int>", "=1"))  # accepted
  with pytest.raises(ValueError):
    mod.get_config("no_such_variant")


def test_render_lists_every_file_variant_and_field_with_its_default():
  text = config_help.render()
  for path in config_help.config_files():
    assert f"configs/{os.path.basename(path)}" in text
    assert "variants: " + ", ".join(config_help.config_variants(path)) in text
  for p, value in config_help.config_leaves(common.base_config()).items():
    assert f"  {p} = {value!r}" in text


def _main(*args):
  return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_help_and_help_config_print_it():
  r = _main("--help_config")
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == config_help.render().strip()
  r = _main("--help")
  assert "configs/iemocap.py" in r.stdout and "variants: naive, both, demo, smoke" in r.stdout
  assert "variants: cross, demo, smoke, slots=<int>, single=<int>, dmf_slots=<int>" in r.stdout
  assert "data.max_tokens = 30" in r.stdout and "--[no]help_config" in r.stdout
