"""How long a request would take on each endpoint: the one model the scorer and admission share.

The predicted time on an endpoint is the request's expected output tokens (its output limit, or
`typical_output_tokens` when it names none) times the endpoint's measured pace
(`EndpointState.tpot`), plus a wait when its batch is full (`limit` learned, `load` above it:
the excess drains at `limit` requests per typical request time). Endpoints with no measured pace
count as the mean of the measured ones; none measured → no prediction. Built once by the
composition root (from the service-time scorer's parameters, see `registry.service_time_of`),
so the `service-time-scorer` and admission's room rules agree on what a typical request is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState

TYPICAL_OUTPUT_TOKENS = 200


@dataclass(frozen=True, slots=True)
class ServiceTime:
    typical_output_tokens: int = TYPICAL_OUTPUT_TOKENS

    def __post_init__(self) -> None:
        if self.typical_output_tokens < 1:
            raise ValueError("typical_output_tokens must be positive")

    def predict(
        self,
        candidates: Sequence[EndpointState],
        output_tokens: int | None,
        typical: int | None = None,
    ) -> tuple[list[float], float] | None:
        """(predicted seconds per candidate, the fastest measured pace); on the hot path, so
        it reads the snapshot's shared columns."""
        found = _columns(candidates)
        if found is None:
            return None
        paces, queued, fastest = found
        typical = typical or self.typical_output_tokens
        tokens = output_tokens or typical
        if queued is None:
            return [tokens * p for p in paces], fastest
        # a full batch adds a wait: the excess drains `limit` requests per typical request time
        return [p * (tokens + q * typical) for p, q in zip(paces, queued, strict=True)], fastest

    def lines(
        self, candidates: Sequence[EndpointState], typical: int | None = None
    ) -> tuple[list[float], list[float], float] | None:
        """`predict` as lines in the output tokens, for callers that ask for many sizes: per
        candidate its pace (slope) and the wait behind its full batch (intercept), and the
        fastest measured pace; None when no pace is measured."""
        found = _columns(candidates)
        if found is None:
            return None
        paces, queued, fastest = found
        if queued is None:
            return paces, [0.0] * len(paces), fastest
        typical = typical or self.typical_output_tokens
        return paces, [p * q * typical for p, q in zip(paces, queued, strict=True)], fastest


def _columns(
    candidates: Sequence[EndpointState],
) -> tuple[list[float], list[float] | None, float] | None:
    """The snapshot's shared columns both forms read: paces (unmeasured ones filled), queued
    shares (None: no batch limit known) and the fastest measured pace; None when none is."""
    snap = snapshot_of(candidates)
    fastest = snap.fastest_tpot
    if not fastest:
        return None
    return snap.filled_tpot, snap.queued_share, fastest
