"""A simulated pod's GPU as DCGM sees it, and the GPU faults `/sim/config` switches at run time.

`GpuFault` is the fault document (`{"gpu": {"throttle": "thermal", "clock": 0.5}}`, `{"gpu":
{"xid": 79}}`, `{"gpu": null}` clears); `SimGpu` keeps it with what a real GPU accumulates
while it holds: microseconds of thermal and power violation. A throttle slows the pod's steps
by `clock` (`epp.sim.pod` multiplies it into the engine's speed) and shows in the exporter's
families (`epp.sim.metrics.render_dcgm`): the clock-event reasons bit mask, a lower SM clock, a
hot GPU, violation counters that grow; an XID error makes the pod fail its requests (500) and
shows as the last XID. Clearing the fault restores speed, answers and readings (the XID reads 0
again, as after the GPU is reset).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# NVML / DCGM clocks event reasons (nvml.h `nvmlClocksEventReason*`)
REASON_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40
REASON_HW_POWER_BRAKE = 0x80
# what each throttle sets: thermal slowdown is software (driver) and hardware (the GPU's own
# sensor, which also raises HW slowdown); a power brake is an external signal, also HW slowdown
THROTTLE_REASONS = {
    "thermal": REASON_SW_THERMAL | REASON_HW_THERMAL | REASON_HW_SLOWDOWN,
    "power": REASON_HW_POWER_BRAKE | REASON_HW_SLOWDOWN | REASON_SW_POWER_CAP,
}
IDLE_TEMP_C = 34.0
BUSY_TEMP_C = 68.0  # a data-centre GPU under steady load, well under its slowdown point
THERMAL_TEMP_C = 91.0  # at a thermal slowdown (H100/A100 slow down near 87-90 C)
MAX_XID = 1 << 16
IDLE_SM_CLOCK_MHZ = 210
# boost SM clocks of the simulator's profiles (a MIG slice runs at its GPU's clock)
BOOST_SM_CLOCK_MHZ = {"h100": 1980, "a100-80g": 1410, "a100-40g": 1410, "l4": 2040, "t4": 1590,
                      "mig-1g.10gb": 1980}  # fmt: skip


def sm_clock_mhz(profile: str) -> int:
    return BOOST_SM_CLOCK_MHZ.get(profile.lower(), 1410)


@dataclass(frozen=True, slots=True)
class GpuFault:
    throttle: str | None = None  # "thermal" | "power": clocks slowed, reasons shown
    clock: float = 0.5  # share of the SM clock (and of step speed) left while throttled
    xid: int | None = None  # the XID error the GPU raised: every request fails until cleared
    temperature: float | None = None  # reported GPU temperature (C); None: from load and fault

    def __post_init__(self) -> None:
        if self.throttle is not None and self.throttle not in THROTTLE_REASONS:
            raise ValueError(
                f"gpu.throttle must be one of {sorted(THROTTLE_REASONS)} or null, "
                f"not {self.throttle!r}"
            )
        if not _is_number(self.clock) or not 0.0 < self.clock <= 1.0:
            raise ValueError(f"gpu.clock must be a number in (0, 1], not {self.clock!r}")
        if self.xid is not None and (
            not isinstance(self.xid, int)
            or isinstance(self.xid, bool)
            or not 0 < self.xid < MAX_XID
        ):
            raise ValueError(f"gpu.xid must be a positive integer XID or null, not {self.xid!r}")
        t = self.temperature
        if t is not None and (not _is_number(t) or not math.isfinite(t) or not -50 <= t <= 150):
            raise ValueError(f"gpu.temperature must be a number of degrees C in [-50, 150] or "
                             f"null, not {t!r}")  # fmt: skip

    @property
    def speed(self) -> float:
        """The share of its healthy speed the GPU runs at."""
        return self.clock if self.throttle is not None else 1.0

    @classmethod
    def parse(cls, current: GpuFault, changes: Any) -> GpuFault:
        """`current` with the `gpu` object of a `/sim/config` document applied (null clears;
        a key set to null takes its default); ValueError naming what is wrong."""
        if changes is None:
            return cls()
        if not isinstance(changes, dict):
            raise ValueError("gpu must be an object or null")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown gpu keys: {sorted(unknown)}; known: {sorted(names)}")
        defaults = cls()
        fixed = {k: getattr(defaults, k) if v is None else v for k, v in changes.items()}
        return dataclasses.replace(current, **fixed)


class SimGpu:
    """The fault in force and the violation time it has accumulated (clock: the loop's)."""

    def __init__(self, sm_clock_mhz: int) -> None:
        self.fault = GpuFault()
        self.sm_clock_mhz = sm_clock_mhz
        self._since = 0.0  # when the current throttle began
        self._thermal_us = 0.0  # violation time of throttles that ended
        self._power_us = 0.0

    def set(self, fault: GpuFault, now: float) -> None:
        old = self.fault
        if old.throttle is not None and old.throttle != fault.throttle:
            self._bank(old.throttle, now)
        if fault.throttle is not None and fault.throttle != old.throttle:
            self._since = now
        self.fault = fault

    def _bank(self, throttle: str, now: float) -> None:
        spent = max(0.0, now - self._since) * 1e6
        if throttle == "thermal":
            self._thermal_us += spent
        else:
            self._power_us += spent

    def violation_us(self, now: float) -> tuple[float, float]:
        """Microseconds of (thermal, power) violation since the pod started."""
        thermal, power = self._thermal_us, self._power_us
        running = max(0.0, now - self._since) * 1e6
        if self.fault.throttle == "thermal":
            thermal += running
        elif self.fault.throttle == "power":
            power += running
        return thermal, power

    def reasons(self, utilization: float) -> int:
        f = self.fault
        if f.throttle is not None:
            return THROTTLE_REASONS[f.throttle]
        return REASON_IDLE if utilization <= 0.0 else 0

    def sm_clock(self, utilization: float) -> int:
        if utilization <= 0.0 and self.fault.throttle is None:
            return IDLE_SM_CLOCK_MHZ
        return round(self.sm_clock_mhz * self.fault.speed)

    def temperature(self, utilization: float) -> float:
        f = self.fault
        if f.temperature is not None:
            return f.temperature
        if f.throttle == "thermal":
            return THERMAL_TEMP_C
        return round(IDLE_TEMP_C + (BUSY_TEMP_C - IDLE_TEMP_C) * utilization, 1)

    def xid(self) -> int:
        return self.fault.xid or 0


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
