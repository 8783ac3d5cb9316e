"""Strict reading of one plugin's `parameters` mapping from an EndpointPickerConfig.

Every read names its key; `done()` then refuses any key nobody read, so a typo such as
`blockSze` fails at start-up with the plugin and field in the message instead of silently
falling back to a default (upstream's loose decoding). Used by the plugin factories and
`config.py`; errors are `ConfigError`, a `ManifestError` carrying the field path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from epp.errors import ManifestError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


class ConfigError(ManifestError):
    """The scheduling configuration is invalid; `path` names the plugin/profile and field."""


class Params:
    def __init__(self, raw: object, path: str, source: str = "") -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(path, f"must be a mapping, got {_type(raw)}", source)
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError(path, f"keys must be strings, got {key!r}", source)
        self._raw: Mapping[str, object] = raw
        self._read: set[str] = set()
        self.path = path
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self._at(key), message, self.source)

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str) -> object:
        self._read.add(key)
        return self._raw.get(key)

    def value(self, key: str) -> object:
        """The raw value (None when absent), marked as read; the caller checks its shape."""
        return self._get(key)

    def string(self, key: str, required: bool = True) -> str | None:
        value = self._get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {_type(value)}")
        return value

    def number(
        self, key: str, default: float, low: float | None = None, high: float | None = None
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {_type(value)}")
        return self._bounded(key, float(value), low, high)

    def integer(
        self, key: str, default: int, low: int | None = None, high: int | None = None
    ) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_type(value)}")
        return int(self._bounded(key, value, low, high))

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_type(value)}")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def duration(self, key: str, default: float, low: float = 0.0) -> float:
        """Seconds, written as a number of seconds or a string such as "200ms", "1.5s", "2m"."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            raise self.error(key, "must be a duration such as 200ms or 1s, got a boolean")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        else:
            raise self.error(key, f"must be a duration such as 200ms or 1s, got {value!r}")
        return self._bounded(key, seconds, low, None)

    def done(self) -> None:
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise self.error(unknown[0], f"unknown parameter (known parameters: {known})")

    def _bounded(self, key: str, value: float, low: float | None, high: float | None) -> float:
        if math.isnan(value):
            raise self.error(key, "must be a number, got NaN")
        if low is not None and value < low:
            raise self.error(key, f"must be >= {low:g}, got {value:g}")
        if high is not None and value > high:
            raise self.error(key, f"must be <= {high:g}, got {value:g}")
        return value


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__
