"""The README's set-up commands, its quick-tour code block and its demo table stay true."""
import pathlib
import re

import jax
import pytest

import first_command
from train import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_setup_section_has_exactly_the_two_commands():
  setup = README.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
  lines = [l for l in setup.splitlines() if l.strip()]
  assert len(lines) == 2
  assert "train.main --config=configs/iemocap.py:demo" in lines[0]
  assert "pytest" in lines[1]
  ci = (ROOT / ".ci" / "run").read_text()
  assert lines[1] in ci, "the .ci/run command must be the README's"


def test_quick_tour_block_runs():
  block = next(b for b in _python_blocks() if "make_count_sketch" in b and "MBAF(" in b)
  namespace = {}
  exec(compile(block, "README.md:quick-tour", "exec"), namespace)
  # Padding rows never write: the memory after the write equals a write of the 6 real rows only.
  fusion, variables = namespace["fusion"], namespace["variables"]
  x1, x2 = namespace["x1"][:6], namespace["x2"][:6]
  _, real_only = fusion.apply(variables, x1, x2, train=True, mutable=["memory"])
  leaves_a = jax.tree_util.tree_leaves(namespace["memory"])
  leaves_b = jax.tree_util.tree_leaves(real_only["memory"])
  for a, b in zip(leaves_a, leaves_b):
    assert abs(a - b).max() < 1e-5
  assert namespace["z"].shape == (8, 64)


def _demo_table(text):
  """The demo's WA/UA/F1 table as the README shows it (the ```text block after "It printed")."""
  block = text.split("It printed", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
  return [l for l in block.splitlines() if l.strip()]


# A row of metrics.format_table: name, WA and UA as "mean ± std" in %, F1 as a fraction.
_ROW = re.compile(r"\w+ +( *\d+\.\d\d ± +\d+\.\d\d){2} +\d\.\d{3} ± \d\.\d{3}")


def test_demo_table_has_the_printed_format():
  """The README's demo table is what ``metrics.format_table`` prints for dmf and naive (same
  header, same columns); its values are checked by the slow test below."""
  summary = {k: {"mean": 0.5, "std": 0.05} for k in ("wa", "ua", "f1")}
  printed = metrics.format_table({"dmf": summary, "naive": summary}).splitlines()
  shown = _demo_table(README)
  assert [l.split()[0] for l in shown] == ["model", "dmf", "naive"]
  assert shown[0] == printed[0]
  for row in shown[1:]:
    assert _ROW.fullmatch(row), row
    assert len(row) == len(printed[1]), row


def test_readme_says_which_numbers_depend_on_the_machine():
  text = " ".join(README.split())
  assert "reduction order" in text and "naive" in text and "machine" in text


@pytest.mark.slow
def test_first_command_prints_the_readme_table():
  """The README's first command, as a user runs it (XLA defaults, a fresh compilation cache):
  the table has the README's format, and the naive row is the README's to the digit. DMF's
  digits are not compared: XLA's CPU kernels sum in an order that depends on the CPU, and the
  DMF memory's read-write loop amplifies the last-bit differences over its steps (README).
  The run is shared with tests/test_demo.py (tests/first_command.py)."""
  r = first_command.result()
  assert r["returncode"] == 0, r["stderr"][-3000:]
  stdout = r["stdout"]
  printed = [l for l in stdout[stdout.rindex("model"):].splitlines() if l.strip()][:3]
  shown = _demo_table(README)
  assert printed[0] == shown[0] and [l.split()[0] for l in printed] == ["model", "dmf", "naive"]
  assert all(_ROW.fullmatch(l) and len(l) == len(shown[2]) for l in printed[1:]), printed
  assert printed[2] == shown[2], "the naive row differs from the README's"
