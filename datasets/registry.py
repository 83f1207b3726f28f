"""The project's TFDS builders by name: import them all, validate a name, prepare the dataset.

Every sub-package of `datasets/` registers its builders with TFDS when imported; this module
imports all of them so that `config.dataset.name` (e.g. "synthetic_vos/small",
"davis2017/480p") resolves without the caller knowing which packages exist.
"""
import importlib
import inspect
import pkgutil
import sys

import ml_collections
import tensorflow_datasets as tfds

import datasets
from feelvos_jax import config_checks


def registered_builders() -> dict[str, type[tfds.core.DatasetBuilder]]:
  """Imports every builder package under `datasets/`; returns {builder name: builder class}."""
  for module_info in pkgutil.iter_modules(datasets.__path__):
    if module_info.ispkg:
      importlib.import_module(f"{datasets.__name__}.{module_info.name}")
  builders = {}
  for module_name, module in list(sys.modules.items()):
    if not module_name.startswith(f"{datasets.__name__}.") or module is None:
      continue
    for value in vars(module).values():
      if (inspect.isclass(value) and issubclass(value, tfds.core.DatasetBuilder)
          and value.__module__ == module_name and not inspect.isabstract(value)):
        builders[value.name] = value
  return builders


def dataset_names(builders: dict[str, type[tfds.core.DatasetBuilder]]) -> list[str]:
  """Every valid `config.dataset.name`: "name/config" for builders with configs, else "name"."""
  names = []
  for name, builder_class in sorted(builders.items()):
    configs = builder_class.BUILDER_CONFIGS
    if configs:
      names.extend(f"{name}/{config.name}" for config in configs)
    else:
      names.append(name)
  return names


def _validate_name(name: str, builders: dict[str, type[tfds.core.DatasetBuilder]]) -> None:
  """Raises ValueError unless `name` ("builder[/config][:version]") is one of `builders`."""
  builder_name, _, config_name = name.split(":")[0].partition("/")
  builder_class = builders.get(builder_name)
  config_names = [config.name for config in builder_class.BUILDER_CONFIGS] if builder_class else []
  if builder_class is None or (config_name and config_name not in config_names):
    raise ValueError(f"config.dataset.name={name!r} is not a dataset of this project; "
                     f"registered: {', '.join(dataset_names(builders)) or 'none'}.")


def _builder_options(dataset_config: ml_collections.ConfigDict,
                     builder_class: type[tfds.core.DatasetBuilder]) -> dict[str, bool]:
  """Constructor options from `config.dataset`: `remap_ids=True` when config.dataset.remap_ids
  is set (ValueError naming the key for a builder without that option)."""
  remap_ids = config_checks.check_choice(dataset_config.get("remap_ids", False),
                                         "config.dataset.remap_ids", (False, True))
  if not remap_ids:
    return {}
  if "remap_ids" not in inspect.signature(builder_class.__init__).parameters:
    raise ValueError(f"config.dataset.remap_ids=True: {dataset_config.name!r} has no such "
                     "option (its builder keeps object ids as they are)")
  return {"remap_ids": True}


def load_builder(dataset_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder named by `dataset_config.name`, generated on first use.

  Args:
    dataset_config: `config.dataset`; reads `name`, `data_dir` ("" for the TFDS default),
      `manual_dir` (the raw dataset for builders that need one; "" for none) and `remap_ids`
      (passed to builders that take it, as `davis2017`).
  Raises:
    ValueError: the name is not one of this project's datasets, or a dataset that needs
      manually provided files cannot find them in `manual_dir`, or (builders with a
      `check_prepared_from(manual_dir)`, as `vos_folder`) the prepared records came from
      another folder.
  """
  name = dataset_config.name
  builders = registered_builders()
  _validate_name(name, builders)
  builder_class = builders[name.split(":")[0].partition("/")[0]]
  builder = tfds.builder(name, data_dir=dataset_config.data_dir or None,
                         **_builder_options(dataset_config, builder_class))
  manual_dir = dataset_config.get("manual_dir", "") or None
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=download_config)
  except (AssertionError, FileNotFoundError) as error:
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if not instructions:
      raise
    details = str(error) if instructions in str(error) else f"{error}\n{instructions}"
    raise ValueError(
        f"config.dataset.manual_dir={dataset_config.get('manual_dir', '')!r}: preparing "
        f"{name!r} needs the raw dataset there. {details}") from error
  check_source = getattr(builder, "check_prepared_from", None)
  if check_source is not None and manual_dir:
    check_source(manual_dir)
  return builder
