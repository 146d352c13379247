"""The reliability table of benchmarks/RESULTS.md: faults injected per category, how many
were rejected cleanly, and how many lost data.

Runs ``pytest tests/reliability`` (every fault-injection module there) with a JUnit XML
report and summarises it as markdown:

* category: the test module (``test_cli_inputs`` -> ``cli inputs``);
* faults injected: its test cases (each parametrized case is one fault);
* rejected cleanly: those that passed (the fault was refused or survived as specified);
* lost data: failed cases among the data-preservation checks, i.e. tests whose name says
  that something is kept, untouched, unchanged, intact or exact (``DATA_CHECK``); target 0.

Usage: ``python benchmarks/reliability_table.py [pytest args...]``
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_CHECK = re.compile(r"keep|kept|untouched|unchanged|intact|exact|preserv|lost|nothing_else")


def run_suite(extra: list[str]) -> tuple[Path, float, int]:
    """Runs the suite; returns the JUnit XML path, the wall time and pytest's exit status."""
    report = Path(tempfile.mkdtemp()) / "reliability.xml"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "-q",
            "-p",
            "no:randomly",
            f"--junitxml={report}",
            *extra,
        ],  # fmt: skip
        cwd=REPO,
    )
    return report, time.perf_counter() - start, proc.returncode


def table(report: Path) -> str:
    """The markdown table of a JUnit XML report."""
    # cases, passed, lost, skipped, data checks
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        row = rows[module.removeprefix("test_").replace("_", " ")]
        outcome = {child.tag for child in case}
        if "skipped" in outcome:
            row[3] += 1
            continue
        row[0] += 1
        data_check = bool(DATA_CHECK.search(case.get("name", "")))
        row[4] += data_check
        if not outcome & {"failure", "error"}:
            row[1] += 1
        elif data_check:
            row[2] += 1
    lines = [
        "| category | faults injected | rejected cleanly | lost data (of data checks) |",
        "| --- | ---: | ---: | ---: |",
    ]
    totals = [0, 0, 0, 0, 0]
    for name, row in sorted(rows.items()):
        skipped = f" ({row[3]} skipped)" if row[3] else ""
        lines.append(f"| {name} | {row[0]}{skipped} | {row[1]} | {row[2]} of {row[4]} |")
        totals = [t + r for t, r in zip(totals, row)]
    lines.append(
        f"| **all** | **{totals[0]}** | **{totals[1]}** | **{totals[2]} of {totals[4]}** |"
    )
    return "\n".join(lines)


def main() -> int:
    report, seconds, status = run_suite(sys.argv[1:])
    print()
    print(table(report))
    print(f"\n(pytest exit status {status}; {seconds:.0f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
