"""README.md and the tree stay true to the code: the configuration table lists every knob with its
default, the layout names files that exist, commands name modules that exist, and no file holds
a path of one machine or a tracker number."""
import pathlib
import re
import subprocess
import sys

from configs import common

_README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _flatten(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_configuration_table_lists_every_key_with_its_default():
  rows = dict(re.findall(r"^\| `([\w.]+)` \| `(.*?)` \|", _README.read_text(), re.M))
  expected = {key: repr(value) for key, value in _flatten(common.get_base_config())}
  assert sorted(rows) == sorted(expected), (
      f"README.md's configuration table lacks {sorted(set(expected) - set(rows))} and has "
      f"stale rows {sorted(set(rows) - set(expected))}")
  wrong = {key: (rows[key], default) for key, default in expected.items()
           if rows[key] != default}
  assert not wrong, f"README.md defaults (table, configs/common.py) differ: {wrong}"


def _section(title: str) -> str:
  text = _README.read_text()
  start = text.index(f"\n## {title}\n")
  end = text.find("\n## ", start + 1)
  return text[start:] if end == -1 else text[start:end]


def test_layout_names_only_files_that_exist_and_every_package():
  layout = _section("Layout")
  root = _README.parent
  missing = []
  for cell in re.findall(r"^\| .*? \| (.*) \|$", layout, re.M):
    folder = None
    for path in re.findall(r"`([\w./]+(?:/|\.py|\.md))`", cell):
      if "/" in path:
        folder = (root / path).parent if path.endswith((".py", ".md")) else root / path
        target = root / path
      else:  # A bare name: in the previous path's folder, else at the repository root.
        target = folder / path if folder is not None and (folder / path).exists() else root / path
      if not target.exists():
        missing.append(path)
  assert not missing, f"README.md's Layout names files that do not exist: {missing}"
  packages = sorted(p.parent.name for p in (root / "feelvos_jax").glob("*/__init__.py"))
  tree = layout[layout.index("```"):layout.index("```", layout.index("```") + 3)]
  absent = [name for name in packages if f"  {name}/" not in tree]
  assert not absent, f"README.md's Layout tree lacks the packages {absent}"


def test_python_m_commands_name_modules_that_exist():
  named = re.findall(r"python -m ([\w.]*\w)\b(?!\.)", _README.read_text())
  modules = set(named) - {"venv", "pytest"}
  assert modules, "README.md names no `python -m` command"
  root = _README.parent
  missing = [m for m in sorted(modules) if not (
      (root / (m.replace(".", "/") + ".py")).is_file()
      or (root / m.replace(".", "/") / "__main__.py").is_file())]
  assert not missing, f"README.md runs modules that do not exist: {missing}"


_TRACKED_TEXT = ("*.py", "*.md", "*.ipynb", "*.txt", "*.ini", "*.jsonl", "*.cfg", "*.toml")


def _tracked_text_files():
  listed = subprocess.run(["git", "ls-files", "--", *_TRACKED_TEXT], cwd=_README.parent,
                          capture_output=True, text=True, check=True).stdout.split()
  return [_README.parent / name for name in listed if (_README.parent / name).is_file()]


def test_no_machine_paths_or_tracker_numbers_in_the_tree():
  machine = re.compile(r"(?<![\w$])/(?:work|root|home/\w+)/")
  tracker = re.compile(r"\b(?:issue|stop)s? #?\d+\b|(?<![\w&])#\d+\b", re.I)
  found = []
  for path in _tracked_text_files():
    if path.name == "test_readme.py":
      continue
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      if machine.search(line) or tracker.search(line):
        found.append(f"{path.relative_to(_README.parent)}:{number}: {line.strip()[:100]}")
  assert not found, "machine paths or tracker numbers:\n" + "\n".join(found[:20])


def test_importing_the_package_imports_no_tensorflow():
  code = ("import sys, feelvos_jax, feelvos_jax.models, feelvos_jax.matching, "
          "feelvos_jax.evaluation, feelvos_jax.inference.export, "
          "feelvos_jax.inference.video_propagation; print('tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], cwd=_README.parent, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "False"
