"""Runs the README's "Use a fusion layer in your own train step" example as written."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Use a fusion layer in your own train step"


def readme_example() -> str:
  text = README.read_text()
  assert HEADING in text, f"{README} lost the section {HEADING!r}"
  section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  assert len(blocks) == 1, f"expected one python code block under {HEADING!r}, got {len(blocks)}"
  return blocks[0]


def test_readme_train_step_example_runs_and_carries_memory():
  code = readme_example()
  assert len(code.strip().splitlines()) <= 25
  ns = {}
  exec(compile(code, str(README), "exec"), ns)  # pylint: disable=exec-used
  assert np.isfinite(ns["loss"])
  # memory was written and carried: it differs from the initial one, and eval reads it unchanged
  init_mem = ns["variables"]["memory"]  # init's memory (the example copies it into `state`)
  carried = ns["state"]["memory"]
  assert np.abs(np.asarray(carried["M_a"]) - np.asarray(init_mem["M_a"])).max() > 1e-4
  assert np.all(np.isfinite(np.asarray(carried["M_t"])))
  params, state = ns["params"], ns["state"]
  out, new = ns["fusion"].apply({"params": params["fusion"], **state}, ns["x_a"], ns["x_t"],
                                mutable=["memory"])
  np.testing.assert_array_equal(new["memory"]["M_a"], carried["M_a"])
  assert out.fused.shape == (4, 64)


NNX_HEADING = "## Use a fusion layer with Flax NNX"


def test_readme_nnx_example_runs_writes_memory_and_eval_only_reads_it():
  text = README.read_text()
  assert NNX_HEADING in text, f"{README} lost the section {NNX_HEADING!r}"
  section = text.split(NNX_HEADING, 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  assert len(blocks) == 1, f"expected one python code block under {NNX_HEADING!r}"
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import mbaf_jax.nnx as mnnx  # pylint: disable=g-import-not-at-top
  ns = {}
  exec(compile(blocks[0], str(README), "exec"), ns)  # pylint: disable=exec-used
  assert np.isfinite(ns["loss"]) and ns["logits"].shape == (4, 4)
  model = ns["model"]
  assert model.fusion.deterministic  # the example ends in evaluation mode
  fresh = ns["Classifier"](nnx.Rngs(0))  # the memory the example started from
  memory = lambda m: np.asarray(nnx.to_pure_dict(nnx.state(m, mnnx.Memory))["fusion"]["memory"]["M_a"])
  assert np.abs(memory(model) - memory(fresh)).max() > 1e-4  # the three steps wrote it
  before = memory(model)
  np.testing.assert_array_equal(ns["predict"](model), ns["logits"])  # evaluation again
  np.testing.assert_array_equal(memory(model), before)  # read only
  assert int(model.fusion.rngs.gumbel.count[...]) == 3  # one Gumbel key per training step
  assert not nnx.state(ns["optimizer"].opt_state, mnnx.Memory)  # the optimiser never holds memory
