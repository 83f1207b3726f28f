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


def load_builder(dataset_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder named by `dataset_config.name`, generated on first use.

  Args:
    dataset_config: `config.dataset`; reads `name`, `data_dir` ("" for the TFDS default) and
      `manual_dir` (the raw dataset for builders that need one; "" for none).
  Raises:
    ValueError: the name is not one of this project's datasets, or a dataset that needs
      manually provided files cannot find them in `manual_dir`.
  """
  name = dataset_config.name
  _validate_name(name, registered_builders())
  builder = tfds.builder(name, data_dir=dataset_config.data_dir or None)
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
  return builder
