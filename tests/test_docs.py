"""Docs stay true: the architecture figures come from the module tree, and every command,
config variant, file path and ``module:function`` reference in docs/*.md points at something
that exists."""
import glob
import importlib
import importlib.util
import os
import re
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from train import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import draw_architecture as arch  # noqa: E402  pylint: disable=wrong-import-position

DOC_FILES = sorted(glob.glob(os.path.join(DOCS, "*.md")))
# Every Markdown page a user reads commands from: docs/, the README and the benchmark pages.
COMMAND_PAGES = DOC_FILES + [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "benchmarks", "*.md")))
TOP_DIRS = ("mbaf_jax", "train", "configs", "benchmarks", "scripts", "tests", "docs")


# ----------------------------------------------------------------------------- parsing helpers


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _code_spans(text):
  """Inline code spans and the commands of fenced code blocks (continued lines joined)."""
  spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
  for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
    spans += re.sub(r"\\\n\s*", " ", block).splitlines()
  return spans


def config_overrides(text):
  """``(config spec, dotted field)`` for every ``--config.a.b=value`` on a command line that
  also names ``--config=configs/x.py[:variant]``."""
  out = set()
  for span in _code_spans(text):
    m = re.search(r"--config=(configs/\w+\.py)(?::([\w=,.-]+))?", span)
    if m:
      spec = m.group(1) + (f":{m.group(2)}" if m.group(2) else "")
      out.update((spec, key) for key in re.findall(r"--config\.([\w.]+)=", span))
  return out


def experiment_tables(text):
  """Table names of ``python -m train.experiments <table>`` commands."""
  return {t for span in _code_spans(text)
          for t in re.findall(r"python3? -m train\.experiments (\w+)", span)}


def python_commands(text):
  """``python -m pkg.mod`` modules and ``python path.py`` scripts named in code."""
  modules, scripts = set(), set()
  for span in _code_spans(text):
    modules.update(re.findall(r"python3? -m ([\w.]+)", span))
    scripts.update(re.findall(r"python3? ((?:[\w-]+/)*[\w-]+\.py)\b", span))
  return modules, scripts


def config_specs(text):
  """``--config=configs/x.py[:variant]`` and ``configs/x.py:variant`` (variants may be comma
  lists); a bare ``configs/x.py`` is a file path, not a config."""
  specs = set()
  for span in _code_spans(text):
    for flag, path, variant in re.findall(r"(--config=)?(configs/\w+\.py)(?::([\w=,.-]+))?", span):
      if flag or variant:
        specs.add((path, variant.strip(",")))
  return specs


def file_paths(text):
  """Repository paths in code spans (``train/steps.py``, ``benchmarks/results/``) and the
  targets of relative Markdown links; placeholders such as ``<workdir>/x.md`` are skipped."""
  paths = set()
  for span in _code_spans(text):
    for tok in re.findall(r"(?<![\w<>/.-])((?:%s)/[\w./-]*)" % "|".join(TOP_DIRS), span):
      tok = tok.rstrip(".,;:")
      paths.add(("root", tok.split(":")[0]))
  plain = re.sub(r"`[^`\n]+`", "", re.sub(r"```.*?```", "", text, flags=re.S))
  for tok in re.findall(r"(?<![\w<>/.-])((?:%s)/[\w/.-]*\.(?:py|md|sh|png|json|jsonl))\b"
                        % "|".join(TOP_DIRS), plain):
    paths.add(("root", tok))  # a file named in prose or in a table cell
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
    if not re.match(r"[a-z]+://", target) and not target.startswith("mailto:"):
      paths.add(("doc", target))
  return paths


_REF = re.compile(r"(?<![\w./-])((?:fusion|ops|encoders|data|models|train|configs|benchmarks)"
                  r"(?:\.\w+)+)"  # module, relative to mbaf_jax/ for the first five
                  r"(?::((?:[A-Za-z_][\w.]*)"  # :name
                  r"(?:,\s*[A-Za-z_][\w.]*(?=\s*(?:[,;|`]|$)))*))?")  # , more names of that module


def paper_note_refs(text):
  """``(module, [names])`` for every ``module:function[, function]`` reference (module paths are
  relative to mbaf_jax/ unless they start with train., configs. or benchmarks.)."""
  refs = []
  for line in text.splitlines():
    for mod, names in _REF.findall(line):
      names = [n.strip() for n in names.split(",") if n.strip()] if names else []
      refs.append((mod, names))
  return refs


def _resolve(dotted):
  """Imports the longest importable prefix of ``dotted`` and getattrs the rest."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    name = ".".join(parts[:i])
    try:
      obj = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name and not name.startswith(e.name):
        raise  # a dependency is missing, not the module
      continue
    for attr in parts[i:]:
      obj = getattr(obj, attr)
    return obj
  raise ImportError(dotted)


def _full_module(mod):
  return mod if mod.split(".")[0] in ("train", "configs", "benchmarks") else "mbaf_jax." + mod


# ----------------------------------------------------------------------------- parser self-tests


def test_parsers_on_a_sample():
  text = ("Run `python -m train.main --config=configs/iemocap.py:demo,smoke --workdir=<w>` or\n"
          "```bash\npython scripts/draw_architecture.py --out x\n```\n"
          "see [figure](figures/dmf.png) and `train/steps.py`, `<workdir>/table.md`,\n"
          "`configs/common.py`, `configs/cebs.py:F-VI,nf`, a train/val/test split.\n"
          "```\npython -m train.main --config=configs/cebs.py:F-V \\\n"
          "  --config.data.data_dir=/d --workdir=w\npython -m train.experiments mbaf_table2\n```\n"
          "| a | fusion.mbaf:TABLE3_LAYOUT, mbaf_parameter_count; benchmarks/x.py |\n"
          "| b | `fusion.mbaf:MBAF.__call__` with `read=\"cross\"` | train.steps (CE + aux) |\n")
  assert python_commands(text) == ({"train.main", "train.experiments"},
                                   {"scripts/draw_architecture.py"})
  assert config_overrides(text) == {("configs/cebs.py:F-V", "data.data_dir")}
  assert experiment_tables(text) == {"mbaf_table2"}
  assert config_specs(text) == {("configs/iemocap.py", "demo,smoke"),
                                ("configs/cebs.py", "F-VI,nf"), ("configs/cebs.py", "F-V")}
  assert file_paths(text) == {("root", "train/steps.py"), ("doc", "figures/dmf.png"),
                              ("root", "configs/iemocap.py"), ("root", "configs/common.py"),
                              ("root", "configs/cebs.py"), ("root", "benchmarks/x.py"),
                              ("root", "scripts/draw_architecture.py")}
  assert paper_note_refs(text) == [("train.main", []), ("train.main", []),
                                   ("train.experiments", []),
                                   ("fusion.mbaf", ["TABLE3_LAYOUT", "mbaf_parameter_count"]),
                                   ("fusion.mbaf", ["MBAF.__call__"]), ("train.steps", [])]


def test_resolve_fails_on_a_missing_reference():
  assert _resolve("mbaf_jax.ops.cbp.compact_bilinear_pooling") is not None
  with pytest.raises(AttributeError):
    _resolve("mbaf_jax.ops.cbp.no_such_function")
  with pytest.raises(ImportError):
    _resolve("no_such_package.module")


# ----------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("doc", DOC_FILES, ids=os.path.basename)
def test_python_commands_point_at_existing_code(doc):
  modules, scripts = python_commands(_read(doc))
  for mod in modules:
    assert importlib.util.find_spec(mod) is not None, f"{doc}: `python -m {mod}`: no such module"
  for script in scripts:
    assert os.path.isfile(os.path.join(ROOT, script)), f"{doc}: `python {script}`: no such file"


@pytest.mark.parametrize("doc", DOC_FILES, ids=os.path.basename)
def test_config_variants_exist(doc):
  for path, variant in config_specs(_read(doc)):
    assert os.path.isfile(os.path.join(ROOT, path)), f"{doc}: {path} does not exist"
    try:
      arch.load_config(f"{path}:{variant}" if variant else path)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{doc}: {path}:{variant}: get_config({variant!r}) fails: {e}")


@pytest.mark.parametrize("doc", DOC_FILES, ids=os.path.basename)
def test_config_overrides_name_existing_fields(doc):
  for spec, key in config_overrides(_read(doc)):
    node = arch.load_config(spec)
    for part in key.split("."):
      if part not in node:
        pytest.fail(f"{os.path.basename(doc)}: --config.{key}: {spec} has no field {part!r}")
      node = node[part]


@pytest.mark.parametrize("doc", COMMAND_PAGES, ids=os.path.relpath)
def test_bare_config_overrides_name_base_config_fields(doc):
  """A ``--config.a.b=value`` shown without its ``--config=`` file (e.g. the README's
  ``--config.model.fusion.dmf.slots=30``) names a field every config has."""
  base = common.base_config()
  for span in _code_spans(_read(doc)):
    if "--config=" in span:
      continue  # checked against its own config file above
    for key in re.findall(r"--config\.([\w.]+)=", span):
      node = base
      for part in key.split("."):
        assert part in node, f"{os.path.relpath(doc, ROOT)}: --config.{key}: no field {part!r}"
        node = node[part]


@pytest.mark.parametrize("doc", COMMAND_PAGES, ids=os.path.relpath)
def test_benchmarks_are_run_as_modules(doc):
  """Benchmarks run as ``python -m benchmarks.<x>`` from the repository root, never as files."""
  _, scripts = python_commands(_read(doc))
  as_files = sorted(s for s in scripts if s.startswith("benchmarks/"))
  assert not as_files, f"{os.path.relpath(doc, ROOT)}: run {as_files} as python -m benchmarks.<x>"


@pytest.mark.parametrize("doc", DOC_FILES, ids=os.path.basename)
def test_experiment_tables_exist(doc):
  tables = experiment_tables(_read(doc))
  if not tables:
    return
  known = set(experiments.ALL_NAMES) | set(experiments.ALIASES)
  assert tables <= known, f"{doc}: unknown tables {sorted(tables - known)}; known: {sorted(known)}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=os.path.basename)
def test_file_paths_exist(doc):
  missing = []
  for kind, path in file_paths(_read(doc)):
    base = DOCS if kind == "doc" else ROOT
    if not os.path.exists(os.path.join(base, path)):
      missing.append(path)
  assert not missing, f"{os.path.basename(doc)} names files that do not exist: {sorted(missing)}"


def test_paper_notes_references_resolve():
  refs = paper_note_refs(_read(os.path.join(DOCS, "PAPER_NOTES.md")))
  assert len(refs) > 100  # the parser still finds the notes' references
  broken = []
  for mod, names in refs:
    full = _full_module(mod)
    try:
      _resolve(full)
      for name in names:
        _resolve(f"{full}.{name}")
    except (ImportError, AttributeError) as e:
      broken.append(f"{mod}:{','.join(names)} ({e})")
  assert not broken, "PAPER_NOTES.md references that point at nothing:\n" + "\n".join(broken)


def test_method_pages_show_their_figures():
  for page, figs in (("DMF.md", ["figures/dmf.png"]),
                     ("MBAF.md", ["figures/mbaf_iemocap.png", "figures/mbaf_cebs.png"])):
    text = _read(os.path.join(DOCS, page))
    for fig in figs:
      assert f"]({fig})" in text, f"{page} does not show {fig}"
      assert os.path.getsize(os.path.join(DOCS, fig)) > 5000


# ----------------------------------------------------------------------------- the figures


def _param_tree(trace):
  """Top-level and fusion-level parameter names, from the params tree (independent of the
  call recording the figure uses)."""
  top = {p[0] for p in trace.param_counts if len(p) == 1}
  fusion = {"fusion/" + p[1] for p in trace.param_counts if len(p) == 2 and p[0] == "fusion"}
  return top, fusion


def _edges(trace, parent):
  nodes, edges = arch.panel_graph(trace, parent)
  return {(s, d, style) for s, d, style, _ in edges}, {n["id"] for n in nodes}


def test_data_flow_on_a_known_graph():
  """A hand-made model whose graph is known: a → b unchanged (solid), c gets 2·x (dashed), the
  output b + c (dashed from both), and a module that writes a memory state."""
  class Writer(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      mem = self.variable("memory", "m", jnp.zeros, (3, x.shape[-1]))
      read = x @ mem.value.T  # reads the memory of the previous step
      if train and not self.is_initializing():
        mem.value = mem.value + jnp.mean(x)  # writes the new memory
      return read

  class Toy(nn.Module):
    @nn.compact
    def __call__(self, batch, mask=None, train=False):
      x = batch["x"]
      g = nn.Dense(4, name="b")(nn.Dense(4, name="a")(x))
      k = nn.Dense(4, name="c")(x * 2.0)
      r = Writer(name="w")(g, train)
      return g + k, r

  batch = {"x": np.zeros((arch.BATCH, 5), np.float32)}
  trace = arch.trace_module(Toy(), batch, "toy", "toy")
  assert arch.module_paths(trace) == ["", "a", "b", "c", "w"]
  edges, nodes = _edges(trace, ())
  assert nodes == {"in", "a", "b", "c", "w", "out", "memory"}
  assert edges == {("in", "a", "solid"), ("a", "b", "solid"), ("in", "c", "dashed"),
                   ("b", "w", "solid"), ("b", "out", "dashed"), ("c", "out", "dashed"),
                   ("w", "out", "solid"), ("memory", "w", "memory"), ("w", "memory", "memory")}


def test_draw_dmf_figure_matches_module_tree(tmp_path):
  trace = arch.trace_model("configs/iemocap.py:demo", "dmf", "DMF")
  png = str(tmp_path / "dmf.png")
  drawn = arch.draw(trace, png)
  top, fusion = _param_tree(trace)
  assert {"audio", "text", "fusion", "head"} == top
  assert {"fusion/reader_a", "fusion/reader_t", "fusion/attention_1", "fusion/attention_2",
          "fusion/norm_1", "fusion/norm_2", "fusion/writer_a", "fusion/writer_t"} <= fusion
  # every parameterised module is a box, and the only parameter-free box is the shared CBP
  assert set(drawn) - top - fusion == {"fusion/cbp"}
  assert top | fusion <= set(drawn)
  # data flow of DMF §2 (from the paper, not from the code): encoders → fusion → head,
  # reader → CBP → self-attention → batch norm; memories read by the readers, written by the
  # writers
  edges, _ = _edges(trace, ())
  assert {("audio", "fusion", "solid"), ("text", "fusion", "solid"),
          ("fusion", "head", "solid"), ("head", "out", "solid")} <= edges
  assert ("memory", "fusion", "memory") in edges and ("fusion", "memory", "memory") in edges
  edges, _ = _edges(trace, ("fusion",))
  assert {("fusion/reader_a", "fusion/cbp", "solid"), ("fusion/reader_t", "fusion/cbp", "solid"),
          ("fusion/cbp", "fusion/attention_1", "solid"),
          ("fusion/attention_1", "fusion/norm_1", "solid"),
          ("memory", "fusion/reader_a", "memory"), ("memory", "fusion/writer_t", "memory"),
          ("fusion/writer_a", "memory", "memory"), ("fusion/writer_t", "memory", "memory")} <= edges
  assert ("fusion/reader_a", "memory", "memory") not in edges  # readers never write
  assert not any(d == "fusion/reader_a" and s.startswith("fusion/writer") for s, d, _ in edges)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(png) as im:
    assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400


@pytest.mark.parametrize("name,spec", [("mbaf_iemocap", "configs/iemocap_mbaf.py:demo"),
                                       ("mbaf_cebs", "configs/cebs.py:demo")])
def test_draw_mbaf_figures_match_module_tree(tmp_path, name, spec):
  trace = arch.trace_model(spec, name, name)
  drawn = arch.draw(trace, str(tmp_path / f"{name}.png"))
  top, fusion = _param_tree(trace)
  assert "fusion" in top and "head" in top
  assert top <= set(drawn)
  if name == "mbaf_iemocap":
    assert {"audio", "text"} <= top
  else:
    assert {"encoder_0", "encoder_1"} <= top
  if any(len(c.path) == 2 and c.path[0] == "fusion" for c in trace.calls):
    assert fusion and fusion <= set(drawn)
  edges, _ = _edges(trace, ())
  assert ("fusion", "head", "solid") in edges
  # MBAF (Eq. 8) writes its memory in training: a read and a write arrow at the fusion
  assert ("memory", "fusion", "memory") in edges and ("fusion", "memory", "memory") in edges
  assert os.path.getsize(tmp_path / f"{name}.png") > 5000


def test_draw_script_command_line(tmp_path):
  result = arch.main(["--out", str(tmp_path), "--only", "mbaf_cebs", "--variant", "smoke"])
  assert list(result) == ["mbaf_cebs"]
  assert os.path.getsize(result["mbaf_cebs"]["png"]) > 5000
  assert {"encoder_0", "encoder_1", "fusion", "head"} <= set(result["mbaf_cebs"]["modules"])
  with pytest.raises(SystemExit):
    arch.main(["--out", str(tmp_path), "--only", "nope"])
