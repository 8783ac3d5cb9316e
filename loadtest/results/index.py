"""The index of runs (`README.md` here): one row per run folder, built from the records the
reports carry, and the checks that keep the results trustworthy.

A run folder is `<YYYY-MM-DD>-<HHMM>-<tool>[-<tag>]` with the run's reports inside: markdown,
JSON (whose "record" is loadtest.record's), PNG plots (whose text chunks name the commit) and
per-request samples (JSON lines, the record first). `problems` lists every file that breaks
the pattern, does not name its run's commit, or embeds an absolute path of a machine; `render`
writes the index; `refresh_if_inside` rewrites it after a run wrote into a run folder here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.record import RESULTS, Record

INDEX = RESULTS / "README.md"
ARCHIVE = "archive"
TOOLS = ("bench", "matrix", "inference-perf")
RUN = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<time>\d{4})-(?P<tool>" + "|".join(TOOLS) + r")"
    r"(?:-(?P<tag>[A-Za-z0-9][A-Za-z0-9._-]*))?$"
)
NOT_RUNS = frozenset({ARCHIVE, "__pycache__", "tmp"})  # tmp/: ignored scratch output
CODE = frozenset({"README.md", "__init__.py", "__main__.py", "index.py", "plot.py"})
# an absolute path of a development machine: /work/..., /home/..., /tmp/...
MACHINE_PATH = re.compile(r"(?<![\w.<>/:])/(?:work|home|root|tmp|Users|mnt|opt|srv|var)/")
SUFFIXES = (".md", ".json", ".png", ".samples.jsonl")
MAIN_REPORT = "summary"  # a matrix run's own report; a bench run's is its first workload


@dataclass(frozen=True, slots=True)
class Run:
    name: str  # the folder's
    record: Record  # the run's (its summary's, else its first report's)
    reports: tuple[str, ...]  # markdown file names, the main one first
    subjects: tuple[str, ...]  # what each report covers


def run_folders(root: Path = RESULTS) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_RUNS)


def _records(folder: Path) -> dict[str, Record]:
    """Report stem -> record, for every JSON report in `folder` that has one."""
    out: dict[str, Record] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("record"), dict):
            out[path.stem] = Record.from_json(data["record"])
    return out


def read_run(folder: Path) -> Run | None:
    records = _records(folder)
    if not records:
        return None
    main = MAIN_REPORT if MAIN_REPORT in records else next(iter(records))
    stems = [main, *(s for s in records if s != main)]
    reports = tuple(f"{s}.md" for s in stems if (folder / f"{s}.md").exists())
    covered = [main] if main == MAIN_REPORT else stems  # a summary says what its run covered
    subjects = tuple(dict.fromkeys(records[s].subject for s in covered if records[s].subject))
    return Run(folder.name, records[main], reports, subjects)


def runs(root: Path = RESULTS) -> list[Run]:
    """Every readable run, newest first."""
    found = [read_run(f) for f in run_folders(root) if RUN.match(f.name)]
    return sorted((r for r in found if r is not None), key=lambda r: r.name, reverse=True)


def _names_commit(path: Path, commit: str) -> bool:
    if path.suffix == ".png":
        return f"commit {commit}".encode() in path.read_bytes()
    text = path.read_text(errors="replace")
    if path.name.endswith(".samples.jsonl"):
        first = json.loads(text.partition("\n")[0] or "{}")
        return bool(first.get("record", {}).get("commit") == commit)
    if path.suffix == ".json":
        data: Any = json.loads(text)
        return isinstance(data, dict) and data.get("record", {}).get("commit") == commit
    return f"- commit: `{commit}`" in text


def file_problems(path: Path, commit: str) -> list[str]:
    rel = f"{path.parent.name}/{path.name}"
    if not path.name.endswith(SUFFIXES):
        return [f"{rel}: not a report (want {', '.join(SUFFIXES)})"]
    out = []
    try:
        if not _names_commit(path, commit):
            out.append(f"{rel}: does not name the run's commit {commit}")
    except ValueError as e:
        out.append(f"{rel}: unreadable: {e}")
    if path.suffix != ".png":
        for m in MACHINE_PATH.finditer(path.read_text(errors="replace")):
            line = path.read_text(errors="replace")[: m.start()].count("\n") + 1
            out.append(f"{rel}:{line}: absolute path of a machine ({m.group(0)}...)")
            break
    return out


def problems(root: Path = RESULTS) -> list[str]:
    """What keeps `root` from being a trustworthy record (empty when all is well)."""
    out = [
        f"{p.name}: a loose file; reports live in run folders"
        for p in sorted(root.iterdir())
        if p.is_file() and p.name not in CODE
    ]
    for folder in run_folders(root):
        if not RUN.match(folder.name):
            out.append(f"{folder.name}/: not a run folder (<YYYY-MM-DD>-<HHMM>-<tool>[-<tag>])")
            continue
        run = read_run(folder)
        if run is None:
            out.append(f"{folder.name}/: no JSON report with a record")
            continue
        for path in sorted(folder.iterdir()):
            out += file_problems(path, run.record.commit)
    return out


def _routers(record: Record) -> str:
    return ", ".join(router for router, _ in record.profiles) or "-"


def render(found: list[Run]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m loadtest.results index` from the run folders beside this file; "
        "do not edit by hand (`tests/unit/test_loadtest_results.py` fails when it does not match "
        "them). One folder per run, `<YYYY-MM-DD>-<HHMM>-<tool>[-<tag>]/`, written by "
        "`python -m loadtest.bench`, `python -m loadtest.matrix` or `python -m loadtest.perf`; "
        "each report starts with its record: the commit (`git describe --dirty --always`), the "
        "command, the machine, the date and the scheduling each router ran with. Plots can be "
        "drawn again from the JSON beside them.",
        "",
        f"`{ARCHIVE}/` keeps the experiments from before reports named their commit (their "
        "folders' READMEs say what they tested); they are not current and nothing links to them "
        "as such.",
        "",
        "| run | date | tool | commit | what | routers | reports |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in found:
        first = f"{r.name}/{r.reports[0]}" if r.reports else f"{r.name}/"
        reports = ", ".join(f"[{Path(n).stem}]({r.name}/{n})" for n in r.reports) or "-"
        lines.append(
            f"| [{r.name}]({first}) | {r.record.date} | {r.record.tool} | `{r.record.commit}` "
            f"| {', '.join(r.subjects) or '-'} | {_routers(r.record)} | {reports} |"
        )
    return "\n".join(lines) + "\n"


def write_index(root: Path = RESULTS) -> Path:
    path = root / INDEX.name
    path.write_text(render(runs(root)))
    return path


def refresh_if_inside(out: Path, root: Path = RESULTS) -> None:
    """Rewrite the index when `out` is a run folder of `root`."""
    if out.resolve().parent == root.resolve() and RUN.match(out.name):
        write_index(root)
