"""pyproject.toml: what `pip install .` installs, its console commands and its dependencies; and
the inference runtimes (bundles, ONNX models, the segment command) import no TensorFlow.

Installing is not done here (minutes in a fresh environment); the metadata is read with tomllib
and each command's target found in its module, which is what the installed scripts call.
"""
import ast
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
  return tomllib.loads((REPOSITORY / "pyproject.toml").read_text())


def test_console_commands_name_argument_free_functions_of_the_tools():
  # Read, not imported: the tools define absl flags of the same names (--predictions), which
  # one process cannot hold twice; each command is a process of its own.
  scripts = _pyproject()["project"]["scripts"]
  assert sorted(scripts) == ["feelvos-data-check", "feelvos-evaluate", "feelvos-segment",
                             "feelvos-visualize"]
  for command, target in scripts.items():
    module_name, function_name = target.split(":")
    source = REPOSITORY / (module_name.replace(".", "/") + ".py")
    functions = {node.name: node for node in ast.parse(source.read_text()).body
                 if isinstance(node, ast.FunctionDef)}
    assert function_name in functions, f"{command}: no {function_name}() in {source}"
    arguments = functions[function_name].args
    assert not arguments.args and not arguments.kwonlyargs, command


def test_dependencies_are_requirements_txt_and_every_imported_package_ships():
  project = _pyproject()
  assert project["project"]["dynamic"] == ["dependencies"]
  assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {
      "file": ["requirements.txt"]}
  shipped = {pattern.rstrip("*")
             for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
  imported = set()
  for path in (REPOSITORY / "feelvos_jax").rglob("*.py"):
    imported.update(re.findall(r"^\s*(?:from|import) (datasets|configs)\b", path.read_text(),
                               re.M))
  assert imported <= shipped and "feelvos_jax" in shipped


@pytest.mark.slow
def test_inference_runtimes_import_no_tensorflow():
  code = ("import sys\n"
          "from feelvos_jax.inference import export, onnx_export\n"
          "from feelvos_jax.tools import segment\n"
          "print('tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "False"
