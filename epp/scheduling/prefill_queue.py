"""Prefill queued on each endpoint: the seconds of prompt computing this EPP has sent it lately.

A pod that was just sent a long uncached prompt is busy computing it for a while, whatever its
request count says: one cold 2,000-token prompt costs it as much as hundreds of cached ones.
Each pick adds the prompt tokens the pod does not hold, times the pod's prefill pace (seconds
per computed token, `EndpointState.prefill_pace`, learned from the engine's own histogram), to
that pod's queue; the queue drains in real time. So `seconds(address, now)` is how long a new
prompt would wait there before its own prefill starts. It is an estimate kept from this EPP's
own picks and its peer replicas' (`epp.peers` carries the seconds each pick added; other
clients' prompts are not in it), and it forgets a pod as soon as its queue has drained. Pure
data; the prefix-cache scorer feeds and reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# seconds per computed prompt token of one unit of capacity (an H100-class GPU) until an
# endpoint's own pace is measured: ~8,000 tokens/s, in line with the precise scorer's prior
PRIOR_PACE = 1.0 / 8_000.0


class PrefillQueue:
    def __init__(self) -> None:
        self._queued: dict[str, tuple[float, float]] = {}  # address → (seconds left, as of)

    def seconds(self, address: str, now: float) -> float:
        """Seconds of prefill queued on `address` at `now` (0.0 when none)."""
        entry = self._queued.get(address)
        if entry is None:
            return 0.0
        left = entry[0] - (now - entry[1])
        if left <= 0.0:
            del self._queued[address]
            return 0.0
        return left

    def add(self, address: str, tokens: float, pace: float, now: float) -> float:
        """`tokens` uncached prompt tokens were sent to `address`, which computes one per `pace`
        seconds. Returns the seconds of prefill this added (what peers are told)."""
        if tokens > 0.0 and pace > 0.0:
            return self.add_seconds(address, tokens * pace, now)
        return 0.0

    def add_seconds(self, address: str, seconds: float, now: float) -> float:
        """`seconds` of prefill were queued on `address` (by a peer replica's pick, as it
        measured them). Returns what was added: 0.0 for a non-positive or non-finite amount."""
        if not 0.0 < seconds < math.inf:
            return 0.0
        self._queued[address] = (self.seconds(address, now) + seconds, now)
        return seconds

    def forget(self, address: str) -> None:
        self._queued.pop(address, None)

    def __len__(self) -> int:
        return len(self._queued)


def filled_paces(paces: Sequence[float], capacity: Sequence[float]) -> list[float]:
    """Prefill paces with the unmeasured ones (0.0) filled: the measured mean pace of one unit
    of capacity over the endpoint's capacity, or `PRIOR_PACE` per unit while none is measured."""
    units = [p * c for p, c in zip(paces, capacity, strict=True) if p > 0.0 and c > 0.0]
    unit = sum(units) / len(units) if units else PRIOR_PACE
    return [
        p if p > 0.0 else unit / (c if c > 0.0 else 1.0)
        for p, c in zip(paces, capacity, strict=True)
    ]
