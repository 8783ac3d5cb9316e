"""Strict readers for manifest fields: every wrong type, range or unknown key becomes a finding.

The shape parsers (`seed`, `upstream`, `core`) walk a document through `Obj`; each reader
checks one field and records `(path, message)` in a shared `Findings` instead of raising, so one
pass reports every problem of a resource (epp.api sits beside epp.errors in the lowest layer and
may not import it, so nothing here raises `ManifestError`). Paths read like
`spec.routing.trafficSplit[1].weight`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

_TYPE_NAMES: dict[type, str] = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    part = key if _PLAIN_KEY.match(key) else f'["{key}"]'
    if not path:
        return part
    return f"{path}{part}" if part.startswith("[") else f"{path}.{part}"


@dataclass(slots=True)
class Findings:
    """The (path, message) pairs found while reading one resource."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def label_key_error(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return "key prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return "key name must be 1-63 alphanumerics, '-', '_' or '.'"
    return None


def label_value_error(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return "must be at most 63 alphanumerics, '-', '_' or '.'"
    return None


@dataclass(slots=True)
class Obj:
    """One mapping inside a document, at `path`, reporting into `findings`."""

    data: Mapping[str, object]
    path: str
    findings: Findings

    def at(self, key: str | int) -> str:
        return join(self.path, key)

    def get(self, key: str) -> object | None:
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def error(self, key: str | None, message: str) -> None:
        self.findings.add(self.at(key) if key is not None else self.path, message)

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if not isinstance(key, str):
                self.findings.add(self.path, f"keys must be strings, got {type_name(key)}")
            elif key not in allowed:
                self.error(key, "unknown field")

    def _typed(self, key: str, kind: type | tuple[type, ...], what: str, required: bool) -> object:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "required")
            return None
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.error(key, f"must be {what}, got boolean")
            return None
        if not isinstance(value, kind):
            self.error(key, f"must be {what}, got {type_name(value)}")
            return None
        return value

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        max_len: int = 253,
        min_len: int = 1,
        pattern: re.Pattern[str] | None = None,
        pattern_desc: str = "",
    ) -> str | None:
        value = self._typed(key, str, "a string", required)
        if not isinstance(value, str):
            return None
        if not min_len <= len(value) <= max_len:
            self.error(key, f"length must be {min_len}..{max_len}, got {len(value)}")
            return None
        if pattern is not None and not pattern.match(value):
            self.error(key, f"must be {pattern_desc or 'match ' + pattern.pattern}, got {value!r}")
            return None
        return value

    def integer(self, key: str, *, lo: int, hi: int, required: bool = False) -> int | None:
        value = self._typed(key, int, "an integer", required)
        if not isinstance(value, int):
            return None
        if not lo <= value <= hi:
            self.error(key, f"must be {lo}..{hi}, got {value}")
            return None
        return value

    def boolean(self, key: str, *, required: bool = False) -> bool | None:
        value = self._typed(key, bool, "a boolean", required)
        return value if isinstance(value, bool) else None

    def number(self, key: str, *, lo: float, hi: float, required: bool = False) -> float | None:
        value = self._typed(key, (int, float), "a number", required)
        if not isinstance(value, int | float):
            return None
        if not lo <= value <= hi:
            self.error(key, f"must be {_num(lo)}..{_num(hi)}, got {_num(value)}")
            return None
        return float(value)

    def enum(self, key: str, choices: Sequence[str], *, required: bool = False) -> str | None:
        value = self._typed(key, str, "a string", required)
        if not isinstance(value, str):
            return None
        if value not in choices:
            self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
            return None
        return value

    def part(self, key: str) -> Obj:
        """A required object; when it is missing or wrong, an empty detached one, so the fields
        below it do not each report `required` again."""
        found = self.obj(key, required=True)
        return found if found is not None else Obj({}, self.at(key), Findings())

    def obj(self, key: str, *, required: bool = False) -> Obj | None:
        value = self._typed(key, dict, "an object", required)
        if not isinstance(value, dict):
            return None
        return Obj(value, self.at(key), self.findings)

    def items(
        self, key: str, *, required: bool = False, min_items: int = 0, max_items: int = 1000
    ) -> list[tuple[str, object]] | None:
        """The list at `key` as (path, element) pairs, after checking its length."""
        value = self._typed(key, list, "an array", required)
        if not isinstance(value, list):
            return None
        if not min_items <= len(value) <= max_items:
            if len(value) < min_items:
                self.error(key, f"must have at least {min_items} item(s), got {len(value)}")
            else:
                self.error(key, f"must have at most {max_items} items, got {len(value)}")
            return None
        return [(self.at(key) + f"[{i}]", item) for i, item in enumerate(value)]

    def objs(
        self, key: str, *, required: bool = False, min_items: int = 0, max_items: int = 1000
    ) -> list[Obj]:
        found = self.items(key, required=required, min_items=min_items, max_items=max_items)
        out: list[Obj] = []
        for path, item in found or ():
            if isinstance(item, dict):
                out.append(Obj(item, path, self.findings))
            else:
                self.findings.add(path, f"must be an object, got {type_name(item)}")
        return out

    def str_map(
        self, key: str, *, required: bool = False, labels: bool = False, max_props: int = 1000
    ) -> dict[str, str] | None:
        """A map of string to string; `labels` also checks Kubernetes label syntax."""
        value = self._typed(key, dict, "an object", required)
        if not isinstance(value, dict):
            return None
        path = self.at(key)
        if len(value) > max_props:
            self.error(key, f"must have at most {max_props} entries, got {len(value)}")
            return None
        out: dict[str, str] = {}
        ok = True
        for k, v in value.items():
            if not isinstance(k, str):
                self.findings.add(path, f"keys must be strings, got {type_name(k)}")
                ok = False
                continue
            if not isinstance(v, str):
                self.findings.add(join(path, k), f"must be a string, got {type_name(v)}")
                ok = False
                continue
            problem = (label_key_error(k) or label_value_error(v)) if labels else None
            if problem:
                self.findings.add(join(path, k), problem)
                ok = False
                continue
            out[k] = v
        return out if ok else None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
