"""Latency against offered rate, one line per router: the benchmark's PNG, drawn from its points
as the run writes them or again from a report's JSON (`python -m loadtest.results plot`).

A series is (rate, p90 TTFT, p90 e2e) per successful point; ours (`epp:*`) are drawn bold. The
PNG's text chunks name the run's commit and command. matplotlib (Agg) is imported lazily.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Series = Mapping[str, Sequence[tuple[float, float, float]]]  # router -> [(rate, ttft90, e2e90)]


def series_of_json(data: Mapping[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """The series of a bench report's JSON ("points": router, rate, stats)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for p in data.get("points") or []:
        s = p["stats"]
        if s.get("ok"):
            out.setdefault(p["router"], []).append(
                (float(p["rate"]), float(s["ttft"]["p90"]), float(s["e2e"]["p90"]))
            )
    return out


def draw(series: Series, path: Path, title: str, commit: str, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    routers = sorted(series, key=lambda r: (not r.startswith("epp:"), r))
    for router in routers:
        rows = sorted(series[router])
        if not rows:
            continue
        style = {"linewidth": 2.5} if router.startswith("epp:") else {"linestyle": "--"}
        rates = [r for r, _, _ in rows]
        axes[0].plot(rates, [t for _, t, _ in rows], marker="o", label=router, **style)
        axes[1].plot(rates, [e for _, _, e in rows], marker="o", label=router, **style)
    for ax, what in zip(axes, ("TTFT p90 (s)", "end-to-end p90 (s)"), strict=True):
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Description": f"commit {commit}", "Comment": command})
    plt.close(fig)
    return path


def redraw(report_json: Path, out: Path | None = None) -> Path:
    """The PNG of a bench report's JSON again, beside it unless `out` says where."""
    data = json.loads(report_json.read_text())
    record = data.get("record") or {}
    header = data.get("header") or {}
    workload = header.get("workload", report_json.stem)
    return draw(
        series_of_json(data),
        out or report_json.with_suffix(".png"),
        f"{workload}: p90 latency vs rate",
        record.get("commit", "unrecorded"),
        record.get("command", header.get("command", "")),
    )
