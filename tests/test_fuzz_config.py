"""Config fuzzing: any field of any shipped config file and variant, set to a bad or edge value,
is either accepted by the validator the command line runs (``train.validate.plan``) or refused
with one ``UserError`` naming the field — never another exception.

Values are set as ``--config.<field>=<value>`` sets them: a value of a type the field cannot take
is refused by the flag parser (``train.main`` prints that as one paragraph), which a locked
ConfigDict emulates by raising ``TypeError``; those draws are skipped. The number of examples
follows the hypothesis profile (``tests/conftest.py``).
"""
import importlib.util
import math
import os
import random
import subprocess
import sys
import time

import pytest
from hypothesis import assume, given, strategies as st

from configs import iemocap
from mbaf_jax.errors import UserError
from train import config_help
from train import validate

import xla_env  # tests/xla_env.py
from overrides import set_fields  # tests/overrides.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_INTS = [0, -1, -7, 1, 2, 3, 2**31, 2**62, -(2**62)]
_FLOATS = [0.0, -0.0, -1.0, 1e-300, 5e-324, 1e30, 1e308, math.nan, math.inf, -math.inf]
_STRINGS = ["", " ", ",", ",,", "zzz", "0", "-1", "nan", "none", "None", "dmf,dmf", "naive,",
            "dmf,zzz", "a,b,c,d", "a,b,c", "\x00", "é\u200b", "x" * 300, "../../etc", "{}",
            "True"]
_BOOLS = [True, False]
_TUPLES = [(), (0,), (-1,), (1,), (2**31,), (1, 1, 1, 1, 1), (64, 0), (1.5,), ("a",),
           (math.nan,)]
_KWARGS = [{}, {"momentum": -1.0}, {"momentum": math.nan}, {"bogus": 1}, {"nesterov": "zzz"},
           {"b1": 2.0}, {"learning_rate": 0.1}]


def _config_module(path):
  spec = importlib.util.spec_from_file_location(
      "fuzzed_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_FILES = config_help.config_files()
_MODULES = {p: _config_module(p) for p in _FILES}
# Variant names (not the key=<type> parts) of every config file; None: no variant.
_VARIANTS = {p: [None] + [v for v in config_help.config_variants(p) if "=" not in v]
             for p in _FILES}


def _pool(value) -> list:
  """Bad and edge values of the type of a field whose default is ``value``."""
  if isinstance(value, bool):
    return _BOOLS
  if isinstance(value, int):
    return _INTS
  if isinstance(value, float):
    return _FLOATS + _INTS[:3]
  if isinstance(value, str):
    return _STRINGS
  if isinstance(value, (tuple, list)):
    return _TUPLES
  if isinstance(value, dict):
    return _KWARGS
  return _INTS + _FLOATS + _STRINGS  # None: the command line gives it any literal


@st.composite
def config_and_override(draw):
  """``(config, field, value, label, file, variant)``: a shipped config with one field set as the command
  line would set it (the draw is skipped when the field's type refuses the value)."""
  path = draw(st.sampled_from(_FILES))
  variant = draw(st.sampled_from(_VARIANTS[path]))
  config = _MODULES[path].get_config(variant)
  leaves = config_help.config_leaves(config)
  field = draw(st.sampled_from(sorted(leaves)))
  own = _pool(leaves[field])
  others = _INTS + _FLOATS + _STRINGS + _BOOLS + _TUPLES
  value = draw(st.one_of(st.sampled_from(own), st.sampled_from(others)) if own is not _KWARGS
               else st.sampled_from(own))
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  try:
    setattr(node, leaf, value)  # locked: type-checked as the flag parser would
  except (TypeError, ValueError):
    assume(False)  # refused before the validator: train.main's one-paragraph flag error
  label = f"{os.path.basename(path)}:{variant or ''} --config.{field}={value!r}"
  return config, field, value, label, path, variant


def _names_field(message: str, field: str) -> bool:
  """The message points at the field: its dotted path, or its own name beside its section."""
  leaf, section = field.split(".")[-1], "config." + field.split(".")[0]
  return f"config.{field}" in message or (leaf in message and section in message)


_BASELINE = {}  # (file, variant) -> the problems of the unmodified config


def _baseline(path, variant) -> list:
  if (path, variant) not in _BASELINE:
    _BASELINE[path, variant] = validate.problems(_MODULES[path].get_config(variant))
  return _BASELINE[path, variant]


@given(config_and_override())
def test_fuzz_config_is_accepted_or_one_user_error_naming_the_field(drawn):
  config, field, value, label, path, variant = drawn
  try:
    result = validate.plan(config)
  except UserError as e:
    message = str(e)
    assert message.count("the config cannot run") == 1, label
    # Every problem the override brought names its field (a manifest config without a
    # data_dir has a problem of its own whatever is overridden).
    new = [p for p in validate.problems(config) if p not in _baseline(path, variant)]
    assert new or _baseline(path, variant), f"{label}: {message}"
    for problem in new:
      assert _names_field(problem, field), f"{label}: {problem}"
    return
  assert isinstance(result, validate.RunPlan), label


# Regressions found by the fuzzing above (configs/iemocap.py:smoke unless stated).
REGRESSIONS = {
    # The head's initialiser divided by a zero fan-out: a ZeroDivisionError traceback.
    "num_classes=0": ({"model.num_classes": 0}, "config.model.num_classes=0 must be >= 2"),
    "head_features=(0,)": ({"model.head_features": (0,)},
                           "config.model.head_features=(0,) must be positive integers"),
    "head_features=(-3, 8)": ({"model.head_features": (-3, 8)},
                              "config.model.head_features=(-3, 8) must be positive integers"),
    # A string where IEMOCAP's class names are expected was accepted silently.
    "class_names=zzz": ({"data.class_names": "zzz"},
                        "config.data.class_names='zzz' is not iemocap's classes"),
    "class_names wrong order": ({"data.class_names": "sad,neu,hap,ang"},
                                "give them in label order: 'ang,hap,neu,sad'"),
    "model name not a module": ({"model.name": "../../etc"},
                                "config.model.name='../../etc' is unknown"),
    "head_activation empty": ({"model.head_activation": ""},
                              "config.model.head_activation='' is unknown"),
    # An option of a fusion the run does not train is still checked.
    "unused dmf dropout=inf": ({"fusions": "naive", "model.fusion.dmf.dropout_rate": math.inf},
                               "config.model.fusion.dmf is invalid (dropout_rate must be in [0, 1), got inf); "
                               "this run does not train dmf"),
    "unused mbaf slots=0": ({"fusions": "naive", "model.fusion.mbaf.slots": 0},
                            "config.model.fusion.mbaf is invalid (slots must be a positive int, got 0; given by "
                            "config.model.fusion.mbaf.slots=0)"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzz_regression(name):
  overrides, expected = REGRESSIONS[name]
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(iemocap.get_config("smoke"), overrides))
  assert expected in str(e.value)


def test_class_names_iemocap_accepts_its_own_names():
  plan = validate.plan(set_fields(iemocap.get_config("smoke"),
                                  {"data.class_names": "ang,hap,neu,sad"}))
  assert plan.data.class_names == "ang,hap,neu,sad"


def _command_line_overrides(rng: random.Random, n: int) -> list:
  """``n`` drawn ``--config.<field>=<value>`` flags of configs/iemocap.py:smoke, written as a
  user would type them (the flag parser decides what it accepts)."""
  config = iemocap.get_config("smoke")
  leaves = config_help.config_leaves(config)
  fixed = ("train.max_steps", "data.max_folds", "fusions", "data.data_dir", "data.cache_dir",
           "data.synthetic", "train.restart")  # the run's own flags and paths
  fields = sorted(f for f, v in leaves.items() if f not in fixed and not isinstance(v, dict))
  out = []
  for _ in range(n):
    field = rng.choice(fields)
    pool = _pool(leaves[field]) + _STRINGS[:6] + [math.nan, -1]
    value = rng.choice([v for v in pool if v != "\x00"])  # argv cannot hold a NUL
    text = str(value) if not isinstance(value, tuple) else repr(value)
    out.append(f"--config.{field}={text}")
  return out


@pytest.mark.slow
def test_fuzz_command_line_ends_cleanly(tmp_path):
  """A dozen drawn overrides through ``python -m train.main``: exit 0 or 2, never a traceback."""
  cache = tmp_path / "xla"
  data = tmp_path / "data"
  base = [sys.executable, "-m", "train.main", "--config=configs/iemocap.py:smoke",
          "--config.train.max_steps=1", "--config.data.max_folds=1", "--config.fusions=naive",
          f"--config.data.data_dir={data}", f"--compilation_cache_dir={cache}"]
  # One CPU device, compiled with LLVM's cheap pipeline as the rest of the suite is.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_env.COMPILE_FAST_FLAGS)
  started = time.monotonic()
  for i, flag in enumerate(_command_line_overrides(random.Random(20240), 12)):
    proc = subprocess.run(base + [f"--workdir={tmp_path / f'run{i}'}", flag], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 2), f"{flag}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{flag}:\n{proc.stderr[-3000:]}"
    if proc.returncode == 2:
      assert proc.stderr.count("error:") == 1, f"{flag}:\n{proc.stderr[-3000:]}"
  print(f"12 command lines in {time.monotonic() - started:.0f} s")


def test_help_config_says_unused_fusion_options_are_checked():
  assert "also those of kinds it does not train" in " ".join(config_help.render().split())


def test_fuzz_regression_input_sizes_are_named():
  # A negative or huge audio length was reported as "config.data does not give the model's input
  # shapes" without the field; out of range it is now named once, and a huge one is named too.
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(iemocap.get_config("smoke"), {"data.max_seconds": -1.0}))
  assert "(1) config.data.max_seconds=-1.0 must be > 0" in str(e.value)
  assert "(2)" not in str(e.value)
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(iemocap.get_config("smoke"), {"data.max_seconds": 1e30}))
  assert "config.data does not give the model's input shapes (max_seconds=1e+30," in str(e.value)


def test_fuzz_regression_encoder_overrides_are_named_once():
  # An unknown encoder option was reported without its field, and once per fusion kind.
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(iemocap.get_config("smoke"),
                             {"model.text.overrides": {"momentum": -1.0}}))
  assert "given by config.model.text.overrides={'momentum': -1.0}" in str(e.value)
  assert "(2)" not in str(e.value)


def test_fuzz_regression_zero_encoder_width_and_huge_chunks():
  from configs import ablations, cebs  # pylint: disable=g-import-not-at-top
  # A zero encoder width was "float division by zero" without its field.
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(ablations.get_config("smoke"),
                             {"model.audio.kwargs.dense_features": (0,)}))
  assert "a size is zero or negative: config.model.audio.kwargs.dense_features=(0,)" in str(e.value)
  assert "'dmf' does not apply" not in str(e.value)
  # A huge CEBS chunk was a MemoryError traceback.
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(cebs.get_config("smoke"), {"data.chunk_samples": 2**31}))
  assert "chunk_samples=2147483648: Unable to allocate" in str(e.value)


def test_fuzz_regression_huge_encoder_option_is_named():
  from configs import ablations  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(ablations.get_config("smoke"), {"model.audio.kwargs.shift": 2**31}))
  assert "a size is too large: config.model.audio.kwargs.shift=2147483648" in str(e.value)


def test_fuzz_regression_negative_encoder_width_is_named():
  from configs import ablations  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError) as e:
    validate.plan(set_fields(ablations.get_config("demo"), {"model.audio.kwargs.sinc_filters": -1}))
  assert "a size is zero or negative: config.model.audio.kwargs.sinc_filters=-1" in str(e.value)


def test_fuzz_regression_an_encoder_argument_error_names_the_config_field():
  """An encoder refuses its own argument (SincNet's kernel_size); the message points at the
  config field whose value it quotes."""
  c = _MODULES[os.path.join(config_help.CONFIG_DIR, "ablations.py")].get_config("demo")
  c.model.audio.kwargs.sinc_kernel = 0
  with pytest.raises(UserError, match=r"kernel_size must be an odd int >= 3 .* got 0; given by "
                                      r"config\.model\.audio\.kwargs\.sinc_kernel=0"):
    validate.plan(c)
