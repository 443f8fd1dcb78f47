"""The README's set-up commands and its quick-tour code block stay true."""
import pathlib
import re

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
  import jax
  fusion, variables = namespace["fusion"], namespace["variables"]
  x1, x2 = namespace["x1"][:6], namespace["x2"][:6]
  _, real_only = fusion.apply(variables, x1, x2, train=True, mutable=["memory"])
  leaves_a = jax.tree_util.tree_leaves(namespace["memory"])
  leaves_b = jax.tree_util.tree_leaves(real_only["memory"])
  for a, b in zip(leaves_a, leaves_b):
    assert abs(a - b).max() < 1e-5
  assert namespace["z"].shape == (8, 64)
