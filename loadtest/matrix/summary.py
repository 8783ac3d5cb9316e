"""The matrix summary: per cell, ours against the best peer on three tail latencies.

Input is one `Run` per (cell, router, repeat): p90 TTFT, p99 TTFT, p90 e2e and the request
counts. Per cell and metric, each router's value is its mean over repeats; the best peer is the
peer with the lowest mean among those that served at least 99 % of their requests (a router
that fails requests can look fast on the ones it served); ours / best is the ratio, and the mark
is a tie while the ratio is within the metric's noise band (`TIES`: the run-to-run noise of
the ratio, measured by repeating cells with the same seed), widened to the half-range of the
per-repeat ratios when a run has several. Pure functions; `__main__.py` feeds them and writes
what `render` returns.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from loadtest.bench.report import is_ours
from loadtest.bench.stats import RunStats

METRICS = (("ttft_p90", "p90 TTFT"), ("ttft_p99", "p99 TTFT"), ("e2e_p90", "p90 e2e"))
MARKS = ("win", "loss", "tie")
# Half the range of ours / peer between two runs of the same seed (sharegpt and prefix8, four
# peers each, 2026-12-04): p90 TTFT 0.05-0.78 (median 0.16, 80th percentile 0.26), p99 TTFT
# 0.00-0.10, p90 e2e 0.01-0.05. p90 TTFT sits where queueing starts, so a few requests that
# wait or not move it; p99 and e2e move less.
TIES: Mapping[str, float] = {"ttft_p90": 0.25, "ttft_p99": 0.15, "e2e_p90": 0.05}
MIN_SERVED = 0.99  # share of its requests a router must serve to be compared
# the peers' names in the headline table
SHORT_NAMES: Mapping[str, str] = {
    "envoy:LEAST_REQUEST": "Envoy LR",
    "vllm-router:cache_aware": "vllm CA",
    "vllm-router:power_of_two": "vllm P2",
    "sglang-router:cache_aware": "sglang CA",
}
_LENGTHS = re.compile(r",? ?lengths (\w+)$")
_BLOCKS = re.compile(r" working set \(\d+ blocks\)")


@dataclass(frozen=True, slots=True)
class Run:
    cell: str
    router: str
    repeat: int  # index in --seeds: runs with the same index share arrivals and requests
    seed: int
    ttft_p90: float
    ttft_p99: float
    e2e_p90: float
    sent: int
    ok: int

    @classmethod
    def of(cls, cell: str, router: str, repeat: int, seed: int, s: RunStats) -> Run:
        return cls(cell, router, repeat, seed, s.ttft.p90, s.ttft.p99, s.e2e.p90, s.sent, s.ok)

    def value(self, metric: str) -> float:
        v: float = getattr(self, metric)
        return v

    @property
    def served(self) -> float:
        return self.ok / self.sent if self.sent else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    cell: str
    metric: str
    ours: str
    best: str  # the best peer, "" when none could be compared
    ratio: float  # ours / best peer (means over repeats); NaN when not comparable
    ratios: tuple[float, ...]  # per repeat
    band: float  # the tie band applied
    mark: str  # win | loss | tie | n/a
    why: str = ""  # for n/a, or a loss by failed requests
    values: tuple[float, float] = (math.nan, math.nan)  # ours, the best peer's (means)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def spread(values: Sequence[float]) -> float:
    """Half the range, relative to the mean: 0.05 = ±5 %; 0 for fewer than two values."""
    m = mean(values)
    if len(values) < 2 or not m:
        return 0.0
    return (max(values) - min(values)) / 2 / m


def _values(runs: Iterable[Run], metric: str) -> list[float]:
    return [r.value(metric) for r in runs if not math.isnan(r.value(metric))]


def parse_ties(text: str) -> dict[str, float]:
    """`TIES`, with the bands `METRIC=BAND,...` names replaced."""
    out = dict(TIES)
    for item in (x for x in text.split(",") if x.strip()):
        metric, eq, band = item.partition("=")
        if metric.strip() not in out or not eq:
            raise ValueError(f"bad tie band {item!r}: want METRIC=BAND, METRIC in {list(TIES)}")
        out[metric.strip()] = float(band)
    return out


def judge(
    cell: str, metric: str, ours: str, runs: Sequence[Run], ties: Mapping[str, float] = TIES
) -> Verdict:
    """Ours (`ours`) against the best peer among `runs` (this cell's) on `metric`."""
    by_router: dict[str, list[Run]] = {}
    for r in runs:
        by_router.setdefault(r.router, []).append(r)
    mine = by_router.get(ours, [])
    floor = ties[metric]
    if not _values(mine, metric):
        return Verdict(cell, metric, ours, "", math.nan, (), floor, "n/a", "ours did not run")
    peers = {
        name: rs
        for name, rs in by_router.items()
        if not is_ours(name) and _values(rs, metric) and min(r.served for r in rs) >= MIN_SERVED
    }
    if not peers:
        return Verdict(cell, metric, ours, "", math.nan, (), floor, "n/a", "no peer to compare")
    best = min(peers, key=lambda name: mean(_values(peers[name], metric)))
    values = (mean(_values(mine, metric)), mean(_values(peers[best], metric)))
    ratio = values[0] / values[1]
    theirs = {r.repeat: r.value(metric) for r in peers[best]}
    ratios = tuple(
        r.value(metric) / theirs[r.repeat]
        for r in sorted(mine, key=lambda r: r.repeat)
        if r.repeat in theirs and theirs[r.repeat] > 0 and not math.isnan(r.value(metric))
    )
    band = max(floor, (max(ratios) - min(ratios)) / 2 if ratios else 0.0)
    if min(r.served for r in mine) < MIN_SERVED:
        failed = sum(r.sent - r.ok for r in mine)
        why = f"{failed} failed"
        return Verdict(cell, metric, ours, best, ratio, ratios, band, "loss", why, values)
    mark = "win" if ratio <= 1 - band else "loss" if ratio >= 1 + band else "tie"
    return Verdict(cell, metric, ours, best, ratio, ratios, band, mark, "", values)


def verdicts(
    runs: Sequence[Run], cells: Sequence[str], ties: Mapping[str, float] = TIES
) -> list[Verdict]:
    """One verdict per cell (in `cells`' order), ours router and metric."""
    out = []
    for cell in cells:
        mine = [r for r in runs if r.cell == cell]
        for ours in sorted({r.router for r in mine if is_ours(r.router)}):
            out += [judge(cell, m, ours, mine, ties) for m, _ in METRICS]
    return out


def counts(vs: Iterable[Verdict]) -> dict[str, Counter[str]]:
    """Marks per metric, and over all metrics under "all"."""
    out: dict[str, Counter[str]] = {m: Counter() for m, _ in METRICS}
    out["all"] = Counter()
    for v in vs:
        out[v.metric][v.mark] += 1
        out["all"][v.mark] += 1
    return out


def _cell_text(runs: Sequence[Run], router: str, metric: str) -> str:
    rs = [r for r in runs if r.router == router]
    values = _values(rs, metric)
    if not values:
        return "-"
    text = f"{mean(values):.3f}"
    if len(values) > 1:
        text += f" ±{spread(values):.0%}"
    failed = sum(r.sent - r.ok for r in rs)
    if failed:
        text += f" ({failed} failed)"
    return f"**{text}**" if is_ours(router) else text


def _ratio_text(v: Verdict) -> str:
    if math.isnan(v.ratio):
        return "-"
    text = f"{v.ratio:.2f}"
    if len(v.ratios) > 1:
        text += f" ({min(v.ratios):.2f}-{max(v.ratios):.2f})"
    return text


def _headline_metric(v: Verdict) -> str:
    if math.isnan(v.ratio):
        return f"- ({v.mark}{'; ' + v.why if v.why else ''})"
    mine, theirs = v.values
    spread = f"{min(v.ratios):.2f}-{max(v.ratios):.2f}x" if v.ratios else f"{v.ratio:.2f}x"
    mark = v.mark + (f", {v.why}" if v.why else "")
    text = f"{mine:.3f} / {theirs:.3f} {SHORT_NAMES.get(v.best, v.best)} ({mark}; {spread})"
    return f"**{text}**" if v.mark == "win" else text


def _counted(n: int, mark: str) -> str:
    return f"{n} {mark}" if n == 1 else f"{n} {mark}{'es' if mark == 'loss' else 's'}"


def headline(
    runs: Sequence[Run],
    cells: Sequence[tuple[str, str]],
    ties: Mapping[str, float] = TIES,
    judged: Sequence[Verdict] | None = None,
) -> list[str]:
    """The matrix in one table (the README's): a row per cell, production answer lengths (a
    cap, or no max_tokens) first; per metric ours / the best peer (means over repeats), the
    mark and the per-repeat ratios; then the marks counted over all repeats and per repeat.
    `judged`: `verdicts` of these runs and cells, where the caller has them already."""
    vs = judged if judged is not None else verdicts(runs, [c for c, _ in cells], ties)
    described = []
    for name, what in cells:
        brief = what.split("; ")[-1]
        found = _LENGTHS.search(brief)
        lengths = found.group(1) if found else "-"
        brief = _BLOCKS.sub("", _LENGTHS.sub("", brief))
        described.append((lengths == "announced", name, brief, lengths))
    described.sort(key=lambda d: d[0])  # stable: production lengths first, else as listed
    labels = " | ".join(f"{label} ours / best peer" for _, label in METRICS)
    lines = [f"| cell | cluster and prompts | lengths | {labels} |", "|---|---|---|" + "---|" * 3]
    ours = sorted({v.ours for v in vs})
    for _, name, brief, lengths in described:
        for mine in ours:
            row = [_headline_metric(v) for v in vs if v.cell == name and v.ours == mine]
            label = name if len(ours) == 1 else f"{name} ({mine})"
            if row:
                lines.append(f"| {label} | {brief} | {lengths} | {' | '.join(row)} |")
    c = counts(vs)["all"]
    total = sum(c.values())
    marks = ", ".join(_counted(c[mark], mark) for mark in ("win", "loss", "tie"))
    lines += ["", f"**{marks} of {total}**"]
    repeats = sorted({(r.repeat, r.seed) for r in runs})
    if len(repeats) > 1:
        alone = []
        for repeat, seed in repeats:
            one = counts(
                verdicts([r for r in runs if r.repeat == repeat], [n for n, _ in cells], ties)
            )
            alone.append(
                f"{one['all']['win']} / {one['all']['loss']} / {one['all']['tie']} on seed {seed}"
            )
        lines[-1] += "; each seed alone (wins / losses / ties): " + ", ".join(alone)
    peers = sorted({v.best for v in vs if v.best})
    named = [f"{SHORT_NAMES[p]}: {p}" for p in peers if p in SHORT_NAMES]
    if named:
        lines[-1] += " (" + "; ".join(named) + ")."
    return lines


def render(
    runs: Sequence[Run],
    cells: Sequence[tuple[str, str]],
    routers: Sequence[str],
    ties: Mapping[str, float] = TIES,
    header: Sequence[str] = (),
) -> str:
    """The summary in markdown: `cells` are (name, description) in order, `header` lines go
    first; one table per metric, then the counts."""
    names = [c for c, _ in cells]
    vs = verdicts(runs, names, ties)
    repeats = len({r.repeat for r in runs})
    lines = [*header, "", "## Headline", "", *headline(runs, cells, ties, vs), ""]
    lines += ["| cell | what it varies |", "|---|---|"]
    lines += [f"| {name} | {what} |" for name, what in cells]
    lines.append("")
    for metric, label in METRICS:
        lines += [
            f"## {label} (s)",
            "",
            "| cell | " + " | ".join(routers) + " | best peer | ours / best | mark |",
            "|---|" + "---|" * (len(routers) + 3),
        ]
        for v in (v for v in vs if v.metric == metric):
            mine = [r for r in runs if r.cell == v.cell]
            row = [_cell_text(mine, router, metric) for router in routers]
            mark = v.mark + (f" ({v.why})" if v.why else "")
            cell = v.cell if len({x.ours for x in vs}) == 1 else f"{v.cell} ({v.ours})"
            lines.append(
                f"| {cell} | {' | '.join(row)} | {v.best or '-'} | {_ratio_text(v)} | {mark} |"
            )
        lines.append("")
    total = counts(vs)
    lines += ["## Counts", "", "| metric | wins | losses | ties | n/a |", "|---|---|---|---|---|"]
    for metric, label in (*METRICS, ("all", "all")):
        c = total[metric]
        lines.append(f"| {label} | {c['win']} | {c['loss']} | {c['tie']} | {c['n/a']} |")
    lines += [
        "",
        "Ties: ours / best peer within "
        + ", ".join(f"±{ties[m]:.0%} ({label})" for m, label in METRICS)
        + ", the run-to-run noise of that ratio measured by repeating cells with one seed"
        + (
            f", widened to half the range of the {repeats} per-repeat ratios where that is "
            "larger; ± after a value is half the range of its repeats."
            if repeats > 1
            else " (one run per cell here)."
        ),
        f"A router that failed more than {1 - MIN_SERVED:.0%} of its requests is never the "
        "best peer, and ours failing them is a loss.",
    ]
    return "\n".join(lines) + "\n"
