"""A GPU's health from DCGM's families in Prometheus, as `epp.hardware`'s classes, with hysteresis.

- clock event (throttle) reasons `DCGM_FI_DEV_CLOCKS_EVENT_REASONS` (older exporters:
  `DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`), a bit mask ORed over the pod's GPUs: hardware slowdown,
  software or hardware thermal slowdown, power brake → degraded (power capping and idle are not);
- temperature `DCGM_FI_DEV_GPU_TEMP` at or above `temperature_degraded` → degraded, cleared only
  below it by `temperature_band`;
- thermal and power violation time (`DCGM_FI_DEV_THERMAL_VIOLATION`, `..._POWER_VIOLATION`, in
  microseconds): throttled more than `violation_share` of the last 30 s → degraded;
- the last XID error `DCGM_FI_DEV_XID_ERRORS` when it is one that means the GPU itself failed
  (double-bit ECC, fallen off the bus, row remap failure, NVLink, uncontained ECC) → drain.
A pod's class rises at once and falls only after it stayed better for `clear_after` seconds, so
a GPU hovering at a threshold does not flap. `poller.GpuPoller` runs the queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, HEALTH_OK, worst

# NVML clocks event reasons: HW slowdown, SW thermal slowdown, HW thermal slowdown, power brake
THROTTLE_BITS = 0x8 | 0x20 | 0x40 | 0x80
# XIDs that mean the GPU failed, not the application: 48 double-bit ECC, 61/62 internal micro-
# controller, 63/64 row remapping, 74 NVLink, 79 fallen off the bus, 92 high single-bit ECC
# rate, 94/95 contained/uncontained ECC, 119/120 GSP errors
CRITICAL_XIDS = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120})
_RANK = {HEALTH_OK: 0, HEALTH_DEGRADED: 1, HEALTH_DRAIN: 2}


@dataclass(frozen=True, slots=True)
class HealthSettings:
    enabled: bool = True
    reasons_query: str = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS or DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"
    temperature_query: str | None = "max by (pod, namespace) (DCGM_FI_DEV_GPU_TEMP)"
    # microseconds of violation per second, thermal and power apart (their max counts)
    violation_queries: tuple[str, ...] = (
        "max by (pod, namespace) (rate(DCGM_FI_DEV_THERMAL_VIOLATION[30s]))",
        "max by (pod, namespace) (rate(DCGM_FI_DEV_POWER_VIOLATION[30s]))",
    )
    xid_query: str | None = "max by (pod, namespace) (DCGM_FI_DEV_XID_ERRORS)"
    temperature_degraded: float = 87.0  # degrees C; most data-centre GPUs slow down near 90
    temperature_band: float = 5.0
    violation_share: float = 0.1  # of wall time spent throttled
    clear_after: float = 30.0  # seconds a better class must last before it is believed

    def __post_init__(self) -> None:
        if self.clear_after < 0 or self.temperature_band < 0 or self.violation_share <= 0:
            raise ValueError("GPU health clear_after, temperature_band >= 0, violation_share > 0")


@dataclass(frozen=True, slots=True)
class Readings:
    """One poll's DCGM values per pod key (absent: the exporter reports none)."""

    reasons: Mapping[str, int]
    temperature: Mapping[str, float]
    violation: Mapping[str, float]  # microseconds of violation per second
    xid: Mapping[str, float]

    def pods(self) -> set[str]:
        return {*self.reasons, *self.temperature, *self.violation, *self.xid}


class DcgmHealth:
    """Each pod's health class from successive readings, rising at once, falling slowly."""

    def __init__(self, settings: HealthSettings) -> None:
        self._settings = settings
        self._current: dict[str, str] = {}
        self._better_since: dict[str, float] = {}

    def classify(self, pod: str, readings: Readings) -> str:
        """The class these readings alone say (the temperature band uses the current class)."""
        s = self._settings
        health = HEALTH_OK
        xid = readings.xid.get(pod)
        if xid is not None and int(xid) in CRITICAL_XIDS:
            health = HEALTH_DRAIN
        if readings.reasons.get(pod, 0) & THROTTLE_BITS:
            health = worst(health, HEALTH_DEGRADED)
        temperature = readings.temperature.get(pod)
        if temperature is not None:
            hot = s.temperature_degraded
            if self._current.get(pod, HEALTH_OK) != HEALTH_OK:
                hot -= s.temperature_band
            if temperature >= hot:
                health = worst(health, HEALTH_DEGRADED)
        if readings.violation.get(pod, 0.0) / 1e6 > s.violation_share:
            health = worst(health, HEALTH_DEGRADED)
        return health

    def update(self, readings: Readings, now: float) -> dict[str, str]:
        """The stable class of every pod the readings or the past name; pods back to ok and
        no longer reported are forgotten."""
        out: dict[str, str] = {}
        for pod in readings.pods() | self._current.keys():
            raw = self.classify(pod, readings)
            current = self._current.get(pod, HEALTH_OK)
            if _RANK[raw] >= _RANK[current]:
                current = raw
                self._better_since.pop(pod, None)
            else:
                since = self._better_since.setdefault(pod, now)
                if now - since >= self._settings.clear_after:
                    current = raw
                    self._better_since.pop(pod, None)
            out[pod] = current
            if current == HEALTH_OK:
                self._current.pop(pod, None)
            else:
                self._current[pod] = current
        return out

    def reset(self) -> None:
        self._current.clear()
        self._better_since.clear()
