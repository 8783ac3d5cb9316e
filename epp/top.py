"""`epp top`: a live table of what the EPP sees of each endpoint, read from its debug endpoint.

Reads `GET /debug/endpoints` on the EPP's metrics port (see `epp.server`) and prints queue,
running, KV %, GPU %, in-flight, LoRA adapters, metrics age and health per endpoint, with the
capacity prior from its hardware (CAP, 1.0 = one A100) and the GPU's health (degraded, drain);
then, from `GET /debug/flows`, what waits in the EPP per pool, priority and flow (tenant).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import httpx

COLUMNS = (
    ("POOL", 22), ("ENDPOINT", 22), ("HEALTH", 8), ("CAP", 5), ("QUEUE", 6), ("RUN", 5), ("KV%", 6),
    ("GPU%", 6), ("INFLIGHT", 9), ("TOKENS", 8), ("AGE", 8), ("LORA", 20),
)  # fmt: skip


def _pct(value: object, scale: float = 1.0) -> str:
    return f"{float(value) * scale:5.1f}" if isinstance(value, int | float) else "    -"


def _health(row: Mapping[str, Any]) -> str:
    if not row.get("healthy"):
        return "DOWN"
    return str(row.get("gpu_health") or "ok")


def _cap(value: object) -> str:
    return f"{float(value):.2f}" if isinstance(value, int | float) else "-"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = " ".join(name.ljust(width) for name, width in COLUMNS)
    lines = [head]
    for r in rows:
        age = r.get("metrics_age_s")
        lora = ",".join(r.get("lora_active", [])) + (
            " (+" + ",".join(r["lora_waiting"]) + ")" if r.get("lora_waiting") else ""
        )
        cells = (
            r.get("pool", ""), r.get("address", ""), _health(r),
            _cap(r.get("capacity")),
            str(r.get("waiting", 0)), str(r.get("running", 0)), _pct(r.get("kv_usage"), 100),
            _pct(r.get("gpu_utilization")), str(r.get("in_flight", 0)),
            str(r.get("in_flight_tokens", 0)),
            "never" if age is None else f"{age * 1000:.0f}ms", lora or "-",
        )  # fmt: skip
        lines.append(
            " ".join(str(c)[:w].ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
        )
    return "\n".join(lines)


FLOW_COLUMNS = (("POOL", 22), ("PRIORITY", 9), ("FLOW", 32), ("WAITING", 8), ("BYTES", 10))


def format_flows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The waiting room per pool, priority and flow; a line saying so when nothing waits."""
    if not rows:
        return "waiting room: empty"
    lines = [" ".join(name.ljust(width) for name, width in FLOW_COLUMNS)]
    for r in rows:
        cells = (r.get("pool", ""), r.get("priority", 0), r.get("flow", ""), r.get("waiting", 0),
                 r.get("bytes", 0))  # fmt: skip
        lines.append(
            " ".join(str(c)[:w].ljust(w) for c, (_, w) in zip(cells, FLOW_COLUMNS, strict=True))
        )
    return "\n".join(lines)


def _flows(client: httpx.Client, url: str) -> list[Mapping[str, Any]] | None:
    """The flows table's rows, or None from an EPP without flow control (or without the view)."""
    try:
        got = client.get(url.rstrip("/") + "/debug/flows").raise_for_status().json()
    except (httpx.HTTPError, ValueError):
        return None
    return list(got["flows"]) if got.get("flow_control") else None


def run(url: str, interval: float, once: bool, out: TextIO = sys.stdout) -> int:
    endpoint = url.rstrip("/") + "/debug/endpoints"
    with httpx.Client(timeout=2.0) as client:
        while True:
            try:
                rows = client.get(endpoint).raise_for_status().json()["endpoints"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                print(f"epp top: cannot read {endpoint}: {exc}", file=sys.stderr)
                return 1
            flows = _flows(client, url)
            if not once:
                out.write("\x1b[2J\x1b[H")
            out.write(format_table(rows) + "\n")
            if flows is not None:
                out.write("\n" + format_flows(flows) + "\n")
            out.flush()
            if once:
                return 0
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return 0
