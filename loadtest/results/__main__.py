"""`python -m loadtest.results index [--check]`: regenerate (or check) the index of runs;
`python -m loadtest.results plot REPORT.json ...`: draw a bench report's PNG again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.record import RESULTS
from loadtest.results.index import INDEX, problems, render, runs
from loadtest.results.plot import redraw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.results", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="write loadtest/results/README.md from the run folders")
    index.add_argument("--check", action="store_true", help="fail if it is not current")
    index.add_argument("--root", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    plot = sub.add_parser("plot", help="draw a bench report's PNG again from its JSON")
    plot.add_argument("json", type=Path, nargs="+", help="REPORT.json (the PNG goes beside it)")
    a = p.parse_args(argv)
    if a.command == "plot":
        for path in a.json:
            print(f"wrote {redraw(path)}")
        return 0
    root: Path = a.root
    found = problems(root)
    for line in found:
        print(f"{root.name}/{line}", file=sys.stderr)
    text = render(runs(root))
    path = root / INDEX.name
    if a.check:
        current = path.exists() and path.read_text() == text
        if not current:
            print(f"{path} is not current: run python -m loadtest.results index", file=sys.stderr)
        return 0 if current and not found else 1
    path.write_text(text)
    print(f"wrote {path} ({text.count(chr(10) + '| [')} runs)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
