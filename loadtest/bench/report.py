"""The benchmark's outputs: a markdown file per workload, PNG plots, and the raw numbers as JSON.

`Point` is one (router, rate) measurement; `render_markdown` writes the table, the routers that
could not run (with the reason) and the verdict lines comparing ours (`epp:*`) with every peer
at the rate nearest 90% of capacity; `plot` draws latency against request rate, one line per
router (matplotlib, Agg backend, imported lazily so the runner starts without it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench.stats import RunStats
from loadtest.record import Record
from loadtest.results.plot import draw


@dataclass(frozen=True, slots=True)
class Point:
    router: str
    rate: float  # offered requests/s
    fraction: float  # of the measured capacity
    stats: RunStats
    by_priority: tuple[tuple[str, RunStats], ...] = ()  # ("critical", ...), ("sheddable", ...)
    cpu: tuple[tuple[str, float], ...] = ()  # ("sim", 0.42): share of one core per process
    streams: tuple[tuple[str, int], ...] = ()  # ("epp-1", 120): requests each EPP picked for
    # ("epp-1", 2.1, 4.8, 160): its peers' picks reached it in p50 / p99 ms; picks it learned
    pick_delays: tuple[tuple[str, float, float, int], ...] = ()

    def cpu_text(self) -> str:
        return " ".join(f"{name} {share:.0%}" for name, share in self.cpu) or "-"

    def streams_text(self, prefix: str = "") -> str:
        """Requests per EPP replica ("epp-1 120 / epp-2 118 / ..."), if more than one ran."""
        if len(self.streams) < 2:
            return ""
        return prefix + " / ".join(f"{name} {n}" for name, n in self.streams)

    def pick_delays_text(self) -> str:
        """The peers' pick delay per replica ("2.1 / 4.8 ms (160)"), p50 / p99 and picks."""
        return " · ".join(f"{p50:.1f} / {p99:.1f} ({n})" for _, p50, p99, n in self.pick_delays)


@dataclass(frozen=True, slots=True)
class Header:
    workload: str
    record: Record  # commit, command, machine, date, scheduling as run
    cluster: str
    capacity: float
    capacity_note: str
    duration: float
    load_before: str


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.0f}"


def _s(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def is_ours(router: str) -> bool:
    return router.startswith("epp:")


def table(points: Sequence[Point]) -> list[str]:
    lines = [
        "| router | rate req/s (x cap) | sent | ok | errors | TTFT p50 / p90 / p99 ms "
        "| ITL p50 / p90 ms | e2e p50 / p90 / p99 s | req/s | out tok/s | prefix hit "
        "| pods per group | per pod |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        s = p.stats
        lines.append(
            f"| {'**' + p.router + '**' if is_ours(p.router) else p.router} "
            f"| {p.rate:.2f} ({p.fraction:.2f}) | {s.sent} | {s.ok} | {s.errors_text()} "
            f"| {_ms(s.ttft.p50)} / {_ms(s.ttft.p90)} / {_ms(s.ttft.p99)} "
            f"| {_ms(s.itl.p50)} / {_ms(s.itl.p90)} "
            f"| {_s(s.e2e.p50)} / {_s(s.e2e.p90)} / {_s(s.e2e.p99)} "
            f"| {s.throughput:.2f} | {s.output_tps:.0f} | {s.hit_rate:.0%} "
            f"| {'-' if math.isnan(s.group_pods) else f'{s.group_pods:.1f}'} | {s.pods_text()} |"
        )
    return lines


def priority_table(points: Sequence[Point]) -> list[str]:
    """Critical against sheddable requests, for runs with --sheddable-share."""
    lines = [
        "| router | rate req/s (x cap) | critical ok / sent | critical TTFT p50 / p90 ms "
        "| critical e2e p90 s | sheddable ok / sent | sheddable 429 | sheddable TTFT p90 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        by = dict(p.by_priority)
        c, d = by.get("critical"), by.get("sheddable")
        if c is None and d is None:
            continue
        critical = (
            f"{c.ok} / {c.sent} | {_ms(c.ttft.p50)} / {_ms(c.ttft.p90)} | {_s(c.e2e.p90)}"
            if c is not None
            else "- | - | -"  # --send-only sheddable
        )
        sheddable = (
            f"{d.ok} / {d.sent} | {dict(d.errors).get('429', 0)} | {_ms(d.ttft.p90)}"
            if d is not None
            else "- | - | -"  # --send-only critical
        )
        lines.append(f"| {p.router} | {p.rate:.2f} ({p.fraction:.2f}) | {critical} | {sheddable} |")
    return lines


def one_epp_of(router: str) -> str | None:
    """The single-EPP router a point is compared with: `epp:P` for `epp-replicas[-alone]:P:N`
    and for a repeat `epp:P#k` of one EPP (the control); None for any other point."""
    name, _, repeat = router.partition("#")
    kind, _, option = name.partition(":")
    if kind.startswith("epp-replicas"):
        return f"epp:{option.rpartition(':')[0]}"
    if kind == "epp" and repeat:
        return name
    return None


def replicas_table(points: Sequence[Point]) -> list[str]:
    """Every multi-replica point, and every repeat of one EPP (`epp:P#2`, the control: what
    running the same code again moves), against one EPP of the same profile at the same
    fraction (its first run): p90 TTFT and e2e as ratios of its, p90 TTFT of the warm requests
    (an extra statistic, with the cold requests counted), prefix hit in points of difference,
    and the requests each replica picked for (how evenly Envoy spread the ext_proc streams),
    and, where they share, how long each replica's peers' picks took to reach it."""
    singles = {(p.router, p.fraction): p for p in points if is_ours(p.router)}
    lines = [
        "| router | x cap | p90 TTFT ms (x one) | p90 e2e s (x one) | prefix hit (points vs one) "
        "| warm p90 TTFT ms (x one); cold requests "
        "| requests per EPP replica | peers' picks reached each in p50 / p99 ms (picks) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        reference = one_epp_of(p.router)
        if reference is None:
            continue
        one = singles.get((reference, p.fraction))
        s = p.stats
        if one is None or not one.stats.ok:
            ttft = f"{_ms(s.ttft.p90)} (-)"
            e2e = f"{_s(s.e2e.p90)} (-)"
            hit = f"{s.hit_rate:.0%} (-)"
            warm = f"{_ms(s.ttft_warm_p90)}; {s.cold} cold"
        else:
            o = one.stats
            ttft = f"{_ms(s.ttft.p90)} ({s.ttft.p90 / o.ttft.p90:.2f}x)"
            e2e = f"{_s(s.e2e.p90)} ({s.e2e.p90 / o.e2e.p90:.2f}x)"
            hit = f"{s.hit_rate:.1%} ({(s.hit_rate - o.hit_rate) * 100:+.1f})"
            ratio = _ratio(s.ttft_warm_p90, o.ttft_warm_p90)
            warm = _ms(s.ttft_warm_p90) + (f" ({ratio})" if ratio else "")
            warm += f"; {s.cold} cold against {o.cold}"
        lines.append(
            f"| {p.router} | {p.fraction:.2f} | {ttft} | {e2e} | {hit} | {warm} "
            f"| {p.streams_text() or '-'} | {p.pick_delays_text() or '-'} |"
        )
    return lines if len(lines) > 2 else []


def _ratio(a: float, b: float) -> str:
    return "" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}x"


BATCHED_FLOOR = (
    "batched floor (every request on a full-speed pod at the pace measured there in this run, "
    "no waiting)"
)
IN_ORDER_REFERENCE = (
    "in-order reference (an ideal first-come-first-served dispatcher replaying its run: each "
    "request, in arrival order, on the slot where it finishes first at the paces measured there)"
)


def verdict(points: Sequence[Point], metric: str, target: float = 0.9) -> list[str]:
    """Ours against every peer on `metric` ("ttft" or "e2e", p90) at the rate nearest `target`."""
    if not points:
        return []
    fraction = min({p.fraction for p in points}, key=lambda f: abs(f - target))
    at = [p for p in points if p.fraction == fraction and p.stats.ok]
    ours = [p for p in at if is_ours(p.router)]
    peers = [p for p in at if not is_ours(p.router)]
    if not ours or not peers:
        return [f"- at {fraction:.2f}x capacity: not enough routers ran to compare."]

    def value(p: Point) -> float:
        return p.stats.ttft.p90 if metric == "ttft" else p.stats.e2e.p90

    best = min(peers, key=value)
    label = "p90 TTFT" if metric == "ttft" else "p90 e2e"
    out = [
        f"- at {fraction:.2f}x capacity, {label}; best peer **{best.router}** {value(best):.3f} s:"
    ]
    for p in ours:
        beaten = [q.router for q in peers if value(q) <= value(p)]
        ratio = value(p) / value(best) if value(best) > 0 else math.inf
        status = "below every peer" if not beaten else f"not below {', '.join(beaten)}"
        out.append(f"  - {p.router}: {value(p):.3f} s = {ratio:.2f}x the best peer ({status})")
    floor = best.stats.e2e_floor
    if metric == "e2e" and not math.isnan(floor):
        out.append(
            f"  - floor (every request alone on an idle full-speed pod): {floor:.3f} s = "
            f"{floor / value(best):.2f}x the best peer"
        )
    if metric == "e2e":
        for p in (*ours, best):
            references = (
                (BATCHED_FLOOR, p.stats.e2e_batched_floor),
                (IN_ORDER_REFERENCE, p.stats.e2e_in_order),
            )
            for what, seconds in references:
                if not math.isnan(seconds):
                    out.append(
                        f"  - {p.router}'s {what}: {seconds:.3f} s = "
                        f"{seconds / value(best):.2f}x the best peer"
                    )
    return out


def render_markdown(
    header: Header,
    points: Sequence[Point],
    unavailable: Sequence[tuple[str, str]],
    plots: Sequence[str],
    note: str = "",
) -> str:
    h = header
    lines = [
        f"# Benchmark: {h.workload} workload, {h.record.date}",
        "",
        *h.record.markdown(),
        f"- load average before the run: {h.load_before}",
        f"- cluster: {h.cluster}",
        f"- capacity: {h.capacity:.2f} req/s ({h.capacity_note}); each rate point runs "
        f"{h.duration:.0f} s of open-loop Poisson arrivals on a freshly started cluster and router",
        "- TTFT = first body byte; ITL = (e2e - TTFT) / (output tokens - 1) per request; "
        "prefix hit = cached / prompt tokens from `usage`; per pod = requests served by each "
        "pod (`x-inference-pod`), slow pod last; pods per group = distinct pods that served each "
        "shared-prefix group (1.0 = full affinity)",
        "",
        *table(points),
        "",
    ]
    if unavailable:
        lines += ["Not run:", ""]
        lines += [f"- {name}: {why}" for name, why in unavailable]
        lines.append("")
    if any(p.cpu for p in points):
        lines += [
            "CPU per point, as a share of one core from the process's start to the end of the "
            "load (the client is the benchmark process itself):",
            "",
            "| router | CPU |",
            "|---|---|",
            *(f"| {p.router} ({p.fraction:.2f}) | {p.cpu_text()} |" for p in points),
            "",
        ]
    if any(p.by_priority for p in points):
        lines += ["## Critical and sheddable requests", "", *priority_table(points), ""]
    replicas = replicas_table(points)
    if replicas:
        lines += ["## EPP replicas against one EPP", "", *replicas, ""]
    metric = "ttft" if h.workload == "shared-prefix" else "e2e"
    lines += ["## Verdict", ""]
    for fraction in sorted({p.fraction for p in points}):
        lines += verdict(points, metric, fraction)
    lines.append("")
    if note:
        lines += [note, ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_json(path: Path, header: Header, points: Sequence[Point]) -> None:
    fields = {f.name: getattr(header, f.name) for f in dataclasses.fields(header)}
    data = {
        "record": header.record.to_json(),
        "header": {k: v for k, v in fields.items() if k != "record"},
        "points": [dataclasses.asdict(p) for p in points],
    }
    path.write_text(json.dumps(data, indent=1, default=str))


def plot(points: Sequence[Point], path: Path, title: str, record: Record) -> Path:
    """TTFT p90 and e2e p90 against offered rate, one line per router (loadtest.results.plot);
    the PNG's text chunks name the run's commit and command."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for p in points:
        if p.stats.ok:
            series.setdefault(p.router, []).append((p.rate, p.stats.ttft.p90, p.stats.e2e.p90))
    return draw(series, path, title, record.commit, record.command)
