"""HTTPRoute match values: paths, headers, methods, query params, timeouts and hostnames.

`parse_match` checks one `matches[]` entry (regexes compile; unknown types are refused with a
ValueError that `resolve` reports as UnsupportedValue), `duration` reads Gateway API durations,
`domains` intersects a listener's hostname with a route's. `routes` turns `Match` into Envoy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DURATION = re.compile(r"^(?:([0-9]{1,5})(h|ms|m|s)){1,4}$")
UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass(frozen=True, slots=True)
class Match:
    path_type: str  # Exact | PathPrefix | RegularExpression
    path: str
    headers: tuple[tuple[str, str, str], ...]  # (Exact|RegularExpression, name, value)
    method: str | None
    query: tuple[tuple[str, str, str], ...]


def domains(listener: str | None, route: list[str]) -> tuple[str, ...]:
    if not route:
        return (listener or "*",)
    if listener is None:
        return tuple(route)
    out = []
    for host in route:
        if _covers(listener, host):
            out.append(host)
        elif _covers(host, listener):
            out.append(listener)
    return tuple(dict.fromkeys(out))


def _covers(pattern: str, host: str) -> bool:
    if pattern == host:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and not host.startswith("*.")
    return pattern == host


def parse_match(raw: Mapping[str, Any]) -> Match:
    path = _dict(raw.get("path"))
    path_type = str(path.get("type", "PathPrefix"))
    value = str(path.get("value", "/"))
    if path_type not in ("Exact", "PathPrefix", "RegularExpression"):
        raise ValueError(f"path match type {path_type} is not supported")
    if path_type == "RegularExpression":
        _check_regex(value)
    elif not value.startswith("/"):
        raise ValueError(f"path {value!r} must start with '/'")
    headers = []
    for h in _list(raw.get("headers")):
        kind = str(h.get("type", "Exact"))
        if kind not in ("Exact", "RegularExpression"):
            raise ValueError(f"header match type {kind} is not supported")
        if kind == "RegularExpression":
            _check_regex(str(h.get("value", "")))
        headers.append((kind, str(h.get("name", "")).lower(), str(h.get("value", ""))))
    query = tuple(
        (str(q.get("type", "Exact")), str(q.get("name", "")), str(q.get("value", "")))
        for q in _list(raw.get("queryParams"))
    )
    method = raw.get("method")
    return Match(path_type, value, tuple(headers), str(method) if method else None, query)


def _check_regex(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None


def duration(value: object) -> float | None:
    if value is None:
        return None
    text = str(value)
    if not DURATION.match(text):
        raise ValueError(f"timeout {text!r} is not a Gateway API duration (e.g. 10s, 1m30s)")
    return sum(int(n) * UNIT_SECONDS[u] for n, u in re.findall(r"([0-9]{1,5})(h|ms|m|s)", text))


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
