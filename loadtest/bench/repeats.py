"""`python -m loadtest.bench.repeats RUN...`: the same comparison over repeated bench runs.

One bench run gives one p90 per point, and on shared prefixes p90 TTFT sits on the edge between
warm and cold requests, so a run's ratio "3 replicas against one EPP" moves with a few cold
requests. Run the bench several times (seeds, or one seed again), each run listing one EPP twice
(`--routers epp:P,epp:P,epp-replicas:P:3,...`: the second, `epp:P#2`, is the control), and this
reads each run's `<workload>.json` and gives, per router, its ratio to the run's one EPP (the
first `epp:P`) in every run, their median and range, beside the control's: what one EPP moves
against itself. Pure arithmetic (`compare`, `summarize_repeats`) and a markdown table; with
`--out` it writes `repeats-<workload>.md|.json` into a results run folder (with its record) and
refreshes the index of runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.bench.report import one_epp_of
from loadtest.record import Record, command_text, run_folder
from loadtest.results.index import refresh_if_inside


@dataclass(frozen=True, slots=True)
class Reading:
    """One point of one run, the numbers compared."""

    router: str
    fraction: float
    ttft_p90: float
    e2e_p90: float
    hit_rate: float
    ttft_warm_p90: float = math.nan
    cold: int = 0


@dataclass(frozen=True, slots=True)
class Comparison:
    """A point against its run's one EPP: ratios of p90s, prefix hit in points."""

    router: str
    fraction: float
    ttft: float
    e2e: float
    warm_ttft: float
    hit_points: float


@dataclass(frozen=True, slots=True)
class Spread:
    """A statistic over the runs: each run's value, in the order given, its median and range."""

    values: tuple[float, ...]

    @property
    def known(self) -> list[float]:
        return [v for v in self.values if not math.isnan(v)]

    @property
    def median(self) -> float:
        return statistics.median(self.known) if self.known else math.nan

    @property
    def low(self) -> float:
        return min(self.known, default=math.nan)

    @property
    def high(self) -> float:
        return max(self.known, default=math.nan)

    def within(self, limit: float) -> int:
        """How many runs' values are at most `limit`."""
        return sum(1 for v in self.known if v <= limit)


@dataclass(frozen=True, slots=True)
class Repeated:
    """One router at one fraction over every run that had it."""

    router: str
    fraction: float
    ttft: Spread
    e2e: Spread
    warm_ttft: Spread
    hit_points: Spread


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) and not math.isnan(b) else math.nan


def compare(run: Sequence[Reading]) -> list[Comparison]:
    """Every multi-replica point and every repeat of one EPP in `run`, against the run's
    first `epp:P` at the same fraction (points with none are left out)."""
    ones = {(r.router, r.fraction): r for r in run if one_epp_of(r.router) is None}
    out = []
    for r in run:
        one = ones.get((one_epp_of(r.router) or "", r.fraction))
        if one is None:
            continue
        out.append(
            Comparison(
                r.router,
                r.fraction,
                _ratio(r.ttft_p90, one.ttft_p90),
                _ratio(r.e2e_p90, one.e2e_p90),
                _ratio(r.ttft_warm_p90, one.ttft_warm_p90),
                (r.hit_rate - one.hit_rate) * 100,
            )
        )
    return out


def summarize_repeats(runs: Sequence[Sequence[Reading]]) -> list[Repeated]:
    """Per (router, fraction), in first-seen order, its comparisons over `runs`; a run without
    that point gives NaN in its place, so every Spread has one value per run."""
    by_run = [{(c.router, c.fraction): c for c in compare(run)} for run in runs]
    keys = list(dict.fromkeys(k for found in by_run for k in found))
    out = []
    for router, fraction in keys:
        found = [run.get((router, fraction)) for run in by_run]

        def spread(field: str, found: list[Comparison | None] = found) -> Spread:
            return Spread(tuple(math.nan if c is None else getattr(c, field) for c in found))

        out.append(
            Repeated(
                router,
                fraction,
                spread("ttft"),
                spread("e2e"),
                spread("warm_ttft"),
                spread("hit_points"),
            )
        )
    return out


def readings_of(report: Mapping[str, Any]) -> list[Reading]:
    """The points of a bench report's JSON (`<workload>.json`)."""
    out = []
    for p in report["points"]:
        s = p["stats"]
        out.append(
            Reading(
                p["router"],
                float(p["fraction"]),
                float(s["ttft"]["p90"]),
                float(s["e2e"]["p90"]),
                float(s["hit_rate"]),
                float(s.get("ttft_warm_p90", math.nan)),
                int(s.get("cold", 0)),
            )
        )
    return out


def _x(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _points(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:+.1f}"


def _cell(s: Spread, fmt: Any) -> str:
    each = " / ".join(fmt(v) for v in s.values)
    return f"{each}; **{fmt(s.median)}** ({fmt(s.low)} to {fmt(s.high)})"


def render(
    workload: str,
    names: Sequence[str],
    runs: Sequence[Sequence[Reading]],
    limit: float = 1.1,
) -> list[str]:
    """The markdown table: per router, every run's ratio to that run's one EPP (runs in the
    order of `names`), the median in bold and the range; then one EPP's own p90s per run."""
    rows = summarize_repeats(runs)
    lines = [
        f"Runs, in the order of every column's values: {', '.join(names)}.",
        "",
        "| router | x cap | p90 TTFT x one: each run; **median** (range) | p90 e2e x one "
        f"| runs within {limit:g}x (TTFT / e2e) | warm p90 TTFT x one (extra statistic) "
        "| prefix hit, points vs one |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.router} | {r.fraction:.2f} | {_cell(r.ttft, _x)} | {_cell(r.e2e, _x)} "
        f"| {r.ttft.within(limit)} / {r.e2e.within(limit)} of {len(r.ttft.known)} "
        f"| {_cell(r.warm_ttft, _x)} | {_cell(r.hit_points, _points)} |"
        for r in rows
    ]
    singles = [r for r in runs[0] if one_epp_of(r.router) is None and r.router.startswith("epp:")]
    for one in singles:
        same = [
            next((x for x in run if (x.router, x.fraction) == (one.router, one.fraction)), None)
            for run in runs
        ]
        ttft = " / ".join("-" if x is None else f"{x.ttft_p90 * 1000:.0f}" for x in same)
        warm = " / ".join("-" if x is None else _ms(x.ttft_warm_p90) for x in same)
        e2e = " / ".join("-" if x is None else f"{x.e2e_p90:.2f}" for x in same)
        hit = " / ".join("-" if x is None else f"{x.hit_rate:.1%}" for x in same)
        cold = " / ".join("-" if x is None else str(x.cold) for x in same)
        lines += [
            "",
            f"{one.router} ({workload}, {one.fraction:.2f}x) itself, run by run: p90 TTFT {ttft} "
            f"ms; warm p90 TTFT {warm} ms; cold requests {cold}; p90 e2e {e2e} s; "
            f"prefix hit {hit}.",
        ]
    return lines


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.0f}"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.repeats", description=__doc__)
    p.add_argument("runs", type=Path, nargs="+", help="bench run folders, one per repeat")
    p.add_argument(
        "--workload",
        required=True,
        help="the report compared, <run>/<workload>.json; comma-separated for several (each "
        "from the runs that have it), written together under one record",
    )
    p.add_argument("--limit", type=float, default=1.1, help="the ratio goal counted per run")
    p.add_argument("--out", type=Path, help="write repeats-<workload>.md|.json into this folder")
    p.add_argument("--tag", default="", help="or into loadtest/results/<now>-bench-<tag>/")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    a = parser.parse_args(argv)
    started = datetime.now(UTC)
    command = command_text(".venv/bin/python -m loadtest.bench.repeats", sys.argv[1:])
    out: Path | None = a.out or (run_folder("bench", a.tag, started) if a.tag else None)
    written: list[tuple[str, list[str], Record, list[Any]]] = []
    for workload in a.workload.split(","):
        folders = [f for f in a.runs if (f / f"{workload}.json").exists()]
        if not folders:
            parser.error(f"no run folder given has {workload}.json")
        reports = []
        for folder in folders:
            path = folder / f"{workload}.json"
            try:
                reports.append(json.loads(path.read_text()))
            except ValueError as e:
                parser.error(f"{path}: not a bench report ({e})")
        runs = [readings_of(r) for r in reports]
        names = [folder.resolve().name for folder in folders]
        table = render(workload, names, runs, a.limit)
        print("\n".join(table))
        first = Record.from_json(reports[0]["record"])
        # taken before anything is written: every report names the commit the run started from
        record = Record.now("bench", command, first.profiles, f"repeats of {workload}", started)
        written.append((workload, table, record, [names, summarize_repeats(runs)]))
    if out is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for workload, table, record, (names, rows) in written:
        title = f"# Repeats: {workload}, {len(names)} runs, ratios to one EPP"
        text = [title, "", *record.markdown(), "", *table]
        (out / f"repeats-{workload}.md").write_text("\n".join(text) + "\n")
        data = {"record": record.to_json(), "runs": names, "rows": [asdict(r) for r in rows]}
        (out / f"repeats-{workload}.json").write_text(json.dumps(data, indent=1, default=str))
        print(f"wrote {out / f'repeats-{workload}.md'}")
    refresh_if_inside(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
