"""One table of the headline figures of BENCHMARKS.md against the issues' targets.

    cd /work/main && /work/venv/bin/python -m benchmarks.summary [--no_write]

Reads (does not rerun: the sources take minutes to hours on a CPU) the latest CPU section and
the latest GPU section (one naming a `gpu backend`) of each of `benchmarks.matching`,
`benchmarks.inference`, `benchmarks.train_step` and `benchmarks.interactive` in BENCHMARKS.md,
and appends one "Benchmark summary" section: per figure, its target and whether it is met, with
the date of the section it comes from. Rerun the source benchmarks first (their commands are
in their sections) for fresh figures.
- Matching: the rows of the target tables of the latest matching section (issue 6: global
  matching at 480p within 2x of the matmul rate; >= 3x faster than naive jnp and at least as
  fast as PyTorch in every benchmarked case).
- Inference: frames/s per row. Issue 6's target (>= 30 frames/s for Xception-65 at 480p with 3
  objects) is for one H100; CPU rows are recorded, and the target is unmeasured until a section
  from a GPU run exists.
- Train step: examples/s per row (issue 6 asks for the figure, no threshold).
- Interactive: re-propagation speed-up over the first pass per row (issue 8: >= 5x).
"""
import argparse
import dataclasses
import pathlib
import re
import sys

from benchmarks import machine

_COMMAND = "cd /work/main && /work/venv/bin/python -m benchmarks.summary"
_TITLE = "Benchmark summary"
_DATE = re.compile(r",\s*(\d{4}-\d{2}-\d{2})\s*$")
_GPU_NAME = re.compile(r"gpu backend \(([^)]*)\)")
_PAPER_GPU_FRAMES_PER_S = 30.0
_INTERACTIVE_RATIO = 5.0


@dataclasses.dataclass
class Section:
  title: str
  date: str
  lines: list[str]

  def tables(self) -> list[list[dict[str, str]]]:
    """Every markdown table of the section, as rows keyed by the header's cells."""
    tables, current, header = [], None, None
    for line in self.lines + [""]:
      if line.startswith("|"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
          header, current = cells, []
        elif not all(set(cell) <= set("-: ") for cell in cells):
          current.append(dict(zip(header, cells)))
      elif header is not None:
        tables.append(current)
        header, current = None, None
    return tables

  def table_with(self, *columns: str) -> list[dict[str, str]]:
    """The first table that has all `columns`; ValueError naming the section otherwise."""
    for table in self.tables():
      if table and all(column in table[0] for column in columns):
        return table
    raise ValueError(f"BENCHMARKS.md section '{self.title}, {self.date}' has no table with "
                     f"columns {list(columns)}: rerun its benchmark to write the current format.")

  def mentions(self, text: str) -> bool:
    return any(text in line for line in self.lines)


def parse_sections(text: str) -> list[Section]:
  """`## title, YYYY-MM-DD` sections of a BENCHMARKS.md text, in file order."""
  sections = []
  for line in text.splitlines():
    if line.startswith("## "):
      heading = line[3:].strip()
      match = _DATE.search(heading)
      title = heading[:match.start()] if match else heading
      sections.append(Section(title.strip(), match.group(1) if match else "undated", []))
    elif sections:
      sections[-1].lines.append(line)
  return sections


def latest(sections: list[Section], title: str) -> Section | None:
  found = [section for section in sections if section.title == title]
  return found[-1] if found else None


def _float(value: str) -> float | None:
  try:
    return float(value.replace("*", ""))
  except ValueError:
    return None


def matching_rows(section: Section) -> list[list[str]]:
  """The rows of every target table of the section (one per run the section combines)."""
  columns = ("case", "target", "figure", "met")
  section.table_with(*columns)  # Raises if there is none.
  return [["matching", row["case"], row["figure"], row["target"], row["met"]]
          for table in section.tables() if table and all(c in table[0] for c in columns)
          for row in table]


def inference_rows(section: Section) -> list[list[str]]:
  on_gpu = section.mentions("gpu backend")
  rows = []
  for row in section.table_with("backbone", "objects", "frame", "frames/s"):
    dtype = f", {row['dtype']}" if row.get("dtype") else ""
    case = f"{row['backbone']}{dtype}, {row['frame']}, objects: {row['objects']}"
    paper_case = (row["backbone"] == "xception65" and row["frame"] == "480x854"
                  and row["objects"] == "3")
    frames_per_s = _float(row["frames/s"])
    if on_gpu and paper_case and frames_per_s is not None:
      status = "met" if frames_per_s >= _PAPER_GPU_FRAMES_PER_S else "missed"
      device = _GPU_NAME.search("\n".join(section.lines))
      device = device.group(1) if device else "an unnamed GPU"
      if "H100" not in device:
        status += f" on {device}, not an H100"
      target = f">= {_PAPER_GPU_FRAMES_PER_S:g} frames/s on one H100"
    else:
      status, target = "recorded", "none for this row (issue 6's target is a GPU figure)"
    rows.append(["inference", case, f"{row['frames/s']} frames/s", target, status])
  if not on_gpu:
    rows.append(["inference", "xception65, 480x854, 3 objects, one H100", "not measured",
                 f">= {_PAPER_GPU_FRAMES_PER_S:g} frames/s", "unmeasured (no GPU section)"])
  return rows


def train_step_rows(section: Section) -> list[list[str]]:
  def optional(row, column):
    return f", {column} {row[column]}" if row.get(column) else ""

  return [["train step",
           f"{row['model']}{optional(row, 'dtype')}, crop {row['crop']}, batch {row['batch']}"
           f"{optional(row, 'depthwise')}",
           f"{row['examples/s']} examples/s ({row['step s']} s/step)", "record the figure",
           "recorded"]
          for row in section.table_with("model", "crop", "batch", "examples/s", "step s")]


def interactive_rows(section: Section) -> list[list[str]]:
  rows = []
  for row in section.table_with("backbone", "frame", "ratio"):
    ratio = _float(row["ratio"])
    status = "unparsed" if ratio is None else ("met" if ratio >= _INTERACTIVE_RATIO else "missed")
    rows.append(["interactive", f"{row['backbone']}, {row['frame']}, re-propagation / first pass",
                 f"{row['ratio']}x", f">= {_INTERACTIVE_RATIO:g}x faster", status])
  return rows


SOURCES = (("Matching (global/local)", "benchmarks.matching", matching_rows),
           ("Video inference", "benchmarks.inference", inference_rows),
           ("Train step", "benchmarks.train_step", train_step_rows),
           ("Interactive segmentation", "benchmarks.interactive", interactive_rows))


def summary_lines(text: str) -> list[str]:
  """The body of the summary section for a BENCHMARKS.md text."""
  sections = parse_sections(text)
  rows, sources = [], []
  for title, module, to_rows in SOURCES:
    on_gpu = [section.mentions("gpu backend") for section in sections]
    found = [latest([s for s, gpu in zip(sections, on_gpu) if gpu == want], title)
             for want in (False, True)]
    if found == [None, None]:
      rows.append([module, "-", "no section", "-", f"missing: run python -m {module}"])
      continue
    for section, where in zip(found, ("", ", GPU")):
      if section is None:
        continue
      sources.append(f"'{title}, {section.date}'{where} (`python -m {module}`)")
      try:
        rows += [row[:1] + [f"{row[1]} ({section.date}{where})"] + row[2:]
                 for row in to_rows(section)]
      except ValueError as error:  # An older format: say so, summarise the others.
        rows.append([module, f"- ({section.date}{where})", "unreadable", "-", str(error)])
    if found[1] is not None:  # A GPU section answers the CPU section's open GPU target.
      rows = [row for row in rows if not row[4].startswith("unmeasured")]
  counts = {status: sum(row[4] == status for row in rows) for status in ("met", "missed")}
  lines = [
      "- Read from the latest CPU and the latest GPU section of each source in this file (not "
      "rerun): "
      + "; ".join(sources) + ".",
      f"- Targets: {counts['met']} met, {counts['missed']} missed; 'recorded' rows have no "
      f"threshold, 'unmeasured' ones need hardware this machine does not have.",
      "",
      "| benchmark | case (section date) | figure | target | status |",
      "|---|---|---|---|---|",
  ]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--benchmarks_file", type=pathlib.Path, default=machine.BENCHMARKS_FILE,
                      help="The BENCHMARKS.md to read and append to.")
  parser.add_argument("--no_write", action="store_true", help="Print only.")
  args = parser.parse_args(argv)
  if not args.benchmarks_file.is_file():
    parser.error(f"--benchmarks_file {args.benchmarks_file} does not exist.")
  lines = summary_lines(args.benchmarks_file.read_text())
  command = " ".join([_COMMAND] + (argv if argv is not None else sys.argv[1:]))
  machine.report(_TITLE, lines, command, write=not args.no_write, path=args.benchmarks_file)


if __name__ == "__main__":
  main()
