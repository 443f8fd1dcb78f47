r"""Training entry point (flax-examples style): parses flags, calls the trainer.

  python -m train.main --config=configs/iemocap.py:demo --workdir=runs/demo
  python -m train.main --config=configs/iemocap.py --workdir=runs/dmf \
      --config.data.data_dir=/data/IEMOCAP_full_release --config.model.fusion.dmf.slots=60

``--help_config`` (also part of ``--help``) lists the config files with their variants and every
config field with its default and meaning, generated from the configs (``train.config_help``).

The whole config is checked before anything is read or written (``train.validate``). Errors the
user can fix (a bad config value, missing or wrong data_dir, a workdir of another run, a damaged
data set with ``strict``, a full disk, a non-finite loss) are printed as one paragraph and the run
exits with status 2, without a traceback. Rerunning with the same --workdir resumes; a different
config there is refused (``--config.train.restart=True`` starts afresh). SIGINT / SIGTERM while a
fold trains: a checkpoint at the next step, then exit status 130.

Compiled XLA programs are kept in a persistent cache (``--compilation_cache_dir``, default
``$XDG_CACHE_HOME/mbaf_jax/xla`` or ``~/.cache/mbaf_jax/xla``; ``none`` turns it off), so a rerun of
the same config skips most compilation.
"""
from train import cli

if __name__ == "__main__":
  cli.catch_signals_early()  # before the slow imports below: a Ctrl-C during them is acted on

import sys  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from train import config_help as help_lib  # noqa: E402
from train import loop  # noqa: E402

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and events.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                lock_config=True)
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", "",
    "Persistent XLA compilation cache ('' : $XDG_CACHE_HOME/mbaf_jax/xla or "
    "~/.cache/mbaf_jax/xla; 'none': off). JAX_COMPILATION_CACHE_DIR, if set, wins over ''.")
flags.DEFINE_bool("help_config", False,
                  "Print the config files with their variants and every config field with its "
                  "default and meaning, then exit (also part of --help).")
flags.mark_flags_as_required(["config", "workdir"])
_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def run(config, workdir: str, restore_signals: bool = True) -> int:
  """Runs the experiment with signals handled (``train.cli``); returns the exit status (0 done,
  2 user error, 130 stopped). ``restore_signals=False`` (the command line) keeps the handlers
  until the process ends."""
  stop = cli.StopRequest()
  return cli.run_command(lambda: loop.train_and_evaluate(config, workdir, stop=stop), stop,
                         restore=restore_signals)


def config_help() -> str:
  """The configs' help (files, variants, fields), generated from the config files."""
  return help_lib.render()


def _parse_flags(argv):
  """absl flag parsing with a one-paragraph message for a bad ``--config...`` flag.

  ``--help_config`` prints :func:`config_help` and exits (0) before the required flags are
  checked; ``--help`` shows it after this module's docstring (absl prints the docstring of
  ``__main__``).
  """
  if any(a.lower() in ("--help_config", "--help_config=true", "--help_config=1") for a in argv[1:]):
    print(config_help())
    sys.exit(0)
  if set(argv[1:]) & set(_HELP_FLAGS):
    main_module = sys.modules["__main__"]
    main_module.__doc__ = ((main_module.__doc__ or "") + "\n" + config_help()).replace("%", "%%")
  given = {a.split("=", 1)[0].lstrip("-") for a in argv[1:] if a.startswith("-")}
  missing = [f"--{name}" for name in ("config", "workdir") if name not in given]
  if missing and not set(argv[1:]) & set(_HELP_FLAGS):
    print(f"error: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: "
          "--config=<configs/file.py[:variant]> names the experiment, --workdir=<dir> the "
          "directory for its checkpoints and metrics (e.g. python -m train.main "
          "--config=configs/iemocap.py:demo --workdir=runs/demo; --help_config lists the configs).",
          file=sys.stderr)
    sys.exit(2)
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError, flags.Error, ValueError, TypeError) as e:
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    lines = [l.strip() for l in str(e).strip("\"' ").splitlines() if l.strip() not in ("", ").")]
    detail = lines[-1].rstrip(").") if lines else type(e).__name__
    print(f"error: could not apply the command-line flags ({type(e).__name__}: {detail}). "
          f"Config overrides given: {overrides or 'none'}. The config is locked, so every "
          "--config.<path> must name an existing field (check the spelling against the config "
          "file, e.g. --config.fusion.slots is --config.model.fusion.dmf.slots) and its value "
          "must have the field's type; --config=<file.py[:variant]> must exist.",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config / --workdir / "
                         "--config.<field>=<value>.")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    config = FLAGS.config
    config.to_dict()  # a config file that failed to load raises here
  except OSError as e:
    print(f"error: --config could not be loaded: {str(e).splitlines()[-1].strip()} "
          "(expected a config file such as configs/iemocap.py, optionally with :variant).",
          file=sys.stderr)
    sys.exit(2)
  cli.plain_warnings()
  cli.enable_compilation_cache(_CACHE_DIR.value)
  cli.exit_now(run(config, _WORKDIR.value, restore_signals=False))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
