"""What commands print (feelvos_jax/console.py): durations, and which log lines are kept."""
import logging
import os

import pytest

from feelvos_jax import console


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (45, "45s"), (130, "2m10s"),
                                           (3899, "1h04m"), (-3, "0s")])
def test_format_duration(seconds, text):
  assert console.format_duration(seconds) == text


def _record(path, level, message="hello"):
  return logging.LogRecord("absl", level, path, 1, message, None, None)


def test_library_info_and_deprecations_are_dropped_project_lines_kept():
  keep = console._ProjectInfoOnly()  # pylint: disable=protected-access
  project = os.path.join(os.path.dirname(console.__file__), "training", "train.py")
  library = os.path.join(os.sep, "site-packages", "orbax", "checkpoint_manager.py")
  assert keep.filter(_record(project, logging.INFO))
  assert not keep.filter(_record(library, logging.INFO))
  assert keep.filter(_record(library, logging.WARNING))
  assert not keep.filter(_record(library, logging.WARNING, "`dtype` is deprecated"))
  plain = console._PlainFormatter("%(message)s")  # pylint: disable=protected-access
  assert plain.format(_record(project, logging.INFO, "step 2/4")) == "step 2/4"
  assert plain.format(_record(library, logging.WARNING, "careful")) == "WARNING: careful"
