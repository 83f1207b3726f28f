"""Command-line config overrides that behave like every other flag: a repeated one replaces.

ml_collections gives each tuple field of a config a multi-valued flag, so that
`--config.dataset.crop_size=(1,2) --config.dataset.crop_size=(4,7)` sets (1, 2, 4, 7): the
values of all occurrences, concatenated. `replace_repeated_tuple_overrides()` registers a tuple
parser that ml_collections does not recognise as its own, so it defines a single-valued flag for
tuple fields, as for ints and strings: the last occurrence wins and the example sets (4, 7).
Values parse as before (`ast.literal_eval`; a single value `--config.model.local_windows=3`
gives (3,)). Commands that read `--config` call it before absl parses the flags (main.py,
`feelvos_jax.tools.data_check`); code that sets config values directly is unaffected.
"""
from typing import Any

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser


class ReplacingTupleParser(flags.ArgumentParser):
  """Parses a tuple override as ml_collections' `TupleParser` does; not a subclass of it, so
  the override's flag is single-valued."""

  def __init__(self):
    self._tuples = tuple_parser.TupleParser()

  def parse(self, argument: Any) -> tuple[Any, ...]:
    """A tuple from a string (`"(4, 7)"`, `"3"`), a tuple or a single value."""
    return self._tuples.parse(argument)

  def flag_type(self) -> str:
    return "tuple"


def replace_repeated_tuple_overrides() -> None:
  """Makes every tuple override of config flags parsed from now on single-valued (see the
  module docstring); calling it again changes nothing."""
  config_flags.register_flag_parser_for_type(tuple, ReplacingTupleParser())
