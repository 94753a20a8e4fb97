"""Check the README's results table against the stored figures (benchmarks/expected_results.json).

Command:  python -m benchmarks.readme_figures
For every run in the stored file, the README's "## Results" table must have a row whose command cell is the
run's command, and that row's result cell must quote each of the run's figures as its `readme` format gives
it, filled with the stored expected value (bold markers ignored). Prints one line per mismatch; exits 1 if
there is any. A test runs it in CI, so the table and the stored values cannot drift apart.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Sequence

from benchmarks import expected

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Results"


def results_rows(readme: str) -> list[dict[str, str]]:
    """The rows of the first table after the "## Results" heading, as {column name: cell}."""
    lines = readme.splitlines()
    if SECTION not in lines:
        raise ValueError(f"README has no '{SECTION}' heading")
    table: list[list[str]] = []
    for line in lines[lines.index(SECTION) + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif table:
            break
    if len(table) < 3:
        raise ValueError(f"no table under README's '{SECTION}' heading")
    header = table[0]
    return [dict(zip(header, row)) for row in table[2:]]


def mismatches(readme: str, runs: Sequence[expected.Run]) -> list[str]:
    """One line for each stored figure the README's results table does not quote as stored."""
    rows = results_rows(readme)
    problems = []
    for run in runs:
        matching = [row for row in rows if row.get("command", "").strip("`") == run.command]
        if len(matching) != 1:
            problems.append(f"{run.name}: {len(matching)} README result rows have the command `{run.command}` (want 1)")
            continue
        result = matching[0].get("result", "").replace("**", "")
        for figure in run.figures:
            if figure.quoted() not in result:
                problems.append(
                    f"{run.name} {figure.name}: the README's result cell does not say '{figure.quoted()}' "
                    f"(stored expected {figure.expected!r} in {expected.PATH.name}); edit the README or the stored value"
                )
    return problems


def main(argv: Sequence[str]) -> int:
    problems = mismatches(README.read_text(), expected.load())
    for line in problems:
        print(line)
    if not problems:
        print(f"README results table: every figure of {expected.PATH.name} quoted as stored")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
