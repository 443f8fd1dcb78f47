"""Test helpers: the train/ functions that take parts of a run plan, called from a whole config
the way ``train.validate.plan`` splits it (without building the plan's abstract model)."""
import json

from mbaf_jax.models import factory
from train import datasets
from train import run_identity
from train import validate


def record(config) -> dict:
  """The config as JSON, as ``RunPlan.record``."""
  return json.loads(config.to_json_best_effort())


def fingerprint(config) -> str:
  """``RunPlan.fingerprint`` of ``config``."""
  return run_identity.model_fingerprint(record(config),
                                        factory.family(config.model.name).DATA_FIELDS)


def prepare_workdir(workdir: str, config, **kwargs) -> None:
  """``run_identity.prepare_workdir`` for ``config``."""
  run_identity.prepare_workdir(workdir, record(config), fingerprint(config), **kwargs)


def load_dataset(config, workdir: str) -> datasets.Dataset:
  """``datasets.load_dataset`` for ``config``."""
  return datasets.load_dataset(config.data, config.model, factory.family(config.model.name),
                               config.seed, workdir)


def manifest_dataset(config, workdir: str) -> datasets.Dataset:
  """``datasets.manifest_dataset`` for ``config``."""
  return datasets.manifest_dataset(config.data, config.model, factory.family(config.model.name),
                                   config.seed, workdir)


def model_inputs(config, workdir: str, raw) -> tuple:
  """``datasets.model_inputs`` for ``config``."""
  return datasets.model_inputs(config.data, config.model, factory.family(config.model.name),
                               workdir, raw)


def plan(config, num_devices: int | None = None):
  """``validate.plan`` of ``config`` (of a copy on ``num_devices`` devices, when given)."""
  if num_devices is not None:
    config = config.copy_and_resolve_references()
    config.train.num_devices = num_devices
  return validate.plan(config)
