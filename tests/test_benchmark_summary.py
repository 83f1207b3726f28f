"""Tests of benchmarks.machine.append_section and benchmarks.summary on small BENCHMARKS texts."""
import datetime

import pytest

from benchmarks import machine
from benchmarks import summary

_TEXT = """
## Matching (global/local), 2026-11-20

| case | target | figure | met |
|---|---|---|---|
| global, 1 obj | >= 3x faster than the fastest naive jnp | 2.00x | missed |

## Video inference, 2026-11-21

- Machine: cpu backend (cpu)

| backbone | objects | frame | slots | frames/s |
|---|---|---|---|---|
| xception65 | 3 | 480x854 | 3 | 0.05 |

## Matching (global/local), 2026-11-22

| op | implementation | wall ms |
|---|---|---|
| global | ours f32 | 10.0 |

Targets (issue 6), from the rows above: 1 of 2 met.

| case | target | figure | met |
|---|---|---|---|
| global, 1 obj | >= 3x faster than the fastest naive jnp | 3.50x | met |
| local, 3 obj | >= 1x faster than the fastest PyTorch | 0.90x | missed |

Second run's targets:

| case | target | figure | met |
|---|---|---|---|
| local, 1 obj | >= 3x faster than the fastest naive jnp | 4.00x | met |

## Interactive segmentation, 2026-11-23

| backbone | frame | frames | ratio |
|---|---|---|---|
| tiny | 240x432 | 20 | 1.46 |
| xception65 | 240x432 | 6 | 6.10 |
"""


def _rows(lines):
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines
          if line.startswith("| ") and not line.startswith("| benchmark |")]


def test_summary_reads_the_latest_section_of_each_source():
  rows = _rows(summary.summary_lines(_TEXT))
  matching = [row for row in rows if row[0] == "matching"]
  assert [(row[2], row[4]) for row in matching] == [("3.50x", "met"), ("0.90x", "missed"),
                                                    ("4.00x", "met")]
  assert all("(2026-11-22)" in row[1] for row in matching)
  interactive = [row[4] for row in rows if row[0] == "interactive"]
  assert interactive == ["missed", "met"]
  inference = [row for row in rows if row[0] == "inference"]
  assert inference[0][2] == "0.05 frames/s" and inference[0][4] == "recorded"
  assert inference[-1][4].startswith("unmeasured")  # CPU section: the GPU target is open.
  missing = [row for row in rows if row[0] == "benchmarks.train_step"]
  assert missing and missing[0][4].startswith("missing")
  counts = [line for line in summary.summary_lines(_TEXT) if line.startswith("- Targets")]
  assert counts == [counts[0]] and "3 met, 2 missed" in counts[0]


def test_summary_judges_the_gpu_target_from_a_gpu_section():
  text = _TEXT.replace("cpu backend (cpu)", "gpu backend (NVIDIA H100)").replace("0.05", "31.0")
  inference = [row for row in _rows(summary.summary_lines(text)) if row[0] == "inference"]
  assert len(inference) == 1 and inference[0][4] == "met"
  on_h200 = summary.summary_lines(text.replace("NVIDIA H100", "NVIDIA H200"))
  inference = [row for row in _rows(on_h200) if row[0] == "inference"]
  assert inference[0][4] == "met on NVIDIA H200, not an H100"


def test_summary_keeps_the_latest_cpu_section_beside_a_gpu_one():
  inference_section = _TEXT[_TEXT.index("## Video inference"):]
  inference_section = inference_section[:inference_section.index("\n## ", 1)]
  gpu_section = inference_section.replace("cpu backend (cpu)", "gpu backend (NVIDIA H100)")
  text = _TEXT + "\n" + gpu_section.replace("2026-11-21", "2026-11-26").replace("0.05", "31.0")
  inference = [row for row in _rows(summary.summary_lines(text)) if row[0] == "inference"]
  assert [(row[1].endswith("(2026-11-21)"), row[2], row[4]) for row in inference] == [
      (True, "0.05 frames/s", "recorded"), (False, "31.0 frames/s", "met")]
  assert inference[1][1].endswith("(2026-11-26, GPU)")


def test_summary_names_a_section_in_an_older_format():
  text = _TEXT.split("## Matching (global/local), 2026-11-22")[0]
  rows = _rows(summary.summary_lines(text))
  assert [row[2] for row in rows if row[0] == "matching"] == ["2.00x"]  # The 11-20 section.
  text = text.replace("| case | target | figure | met |", "| case | figure |")
  rows = _rows(summary.summary_lines(text))
  unreadable = [row for row in rows if row[0] == "benchmarks.matching"]
  assert "'Matching (global/local), 2026-11-20' has no table" in unreadable[0][4]


def test_append_section_appends_a_dated_section(tmp_path):
  path = tmp_path / "BENCHMARKS.md"
  path.write_text("## Earlier, 2026-01-01\n\nkept\n")
  text = machine.append_section("Speed", ["| a |", "|---|", "| 1 |"], "python -m x --y", path)
  machine.append_section("Other", "body\n", "python -m z", path)
  content = path.read_text()
  assert content.startswith("## Earlier, 2026-01-01\n\nkept\n\n## Speed, ")
  assert text in content and content.endswith("body\n")
  assert f"## Speed, {datetime.date.today().isoformat()}\n" in text
  assert "- Command: `python -m x --y`" in text and "JAX" in text and "| 1 |\n" in text
  sections = summary.parse_sections(content)
  assert [s.title for s in sections] == ["Earlier", "Speed", "Other"]
  assert sections[1].table_with("a") == [{"a": "1"}]


@pytest.mark.parametrize("title,command", [("", "cmd"), ("two\nlines", "cmd"), ("ok", "")])
def test_append_section_rejects_bad_arguments(tmp_path, title, command):
  with pytest.raises(ValueError, match="title|command"):
    machine.append_section(title, "body", command, tmp_path / "B.md")
  assert not (tmp_path / "B.md").exists()
