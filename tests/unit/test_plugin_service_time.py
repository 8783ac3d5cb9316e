"""`service-time-scorer` on hand-built snapshots: size-aware, speed-aware, wait-aware."""

from __future__ import annotations

from dataclasses import replace

import pytest

from epp.request import output_limit
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.service_time import ServiceTimeScorer
from epp.scheduling.snapshot import Snapshot
from epp.types import Endpoint, EndpointState

FAST, SLOW = 0.025, 0.05  # seconds per output token: the slow GPU is half speed


def ep(address: str, tpot: float = FAST, in_flight: int = 0, limit: int = 0) -> EndpointState:
    state = EndpointState(Endpoint(address, address, "ns/pool"), in_flight=in_flight)
    return replace(state, tpot=tpot, limit=limit)


def req(max_tokens: int | None) -> SchedulingRequest:
    return SchedulingRequest("r", "m", max_output_tokens=max_tokens)


def test_short_requests_lose_little_on_a_slow_gpu_long_ones_lose_everything() -> None:
    scorer = ServiceTimeScorer(typical_output_tokens=200)
    pods = [ep("fast"), ep("slow", SLOW)]
    short, typical, long_ = (scorer.score(req(n), pods) for n in (20, None, 600))
    assert short == [1.0, pytest.approx(0.9)]  # 20 tokens x 25 ms more, over 200 x 25 ms
    assert typical == [1.0, 0.0]  # no max_tokens: a typical request, a typical's time lost
    assert long_ == [1.0, 0.0]  # clamped at 0


def test_a_full_fast_pod_can_lose_to_an_idle_slow_one_for_a_short_request() -> None:
    scorer = ServiceTimeScorer(typical_output_tokens=200)
    # 8-slot batch, 12 in flight: 5 must finish first, 5 x 200 x 25 ms / 8 = 3.1 s of wait
    pods = [ep("fast-full", in_flight=12, limit=8), ep("slow-idle", SLOW, limit=8)]
    short = scorer.score(req(20), pods)
    long_ = scorer.score(req(500), pods)
    assert short[1] == 1.0 and short[0] < 0.5
    assert long_[0] == 1.0 and long_[1] < 1.0  # 12.5 s more on the slow pod vs 3.1 s waiting


def test_unmeasured_endpoints_take_the_mean_pace_and_none_measured_is_neutral() -> None:
    scorer = ServiceTimeScorer()
    assert scorer.score(req(100), [ep("a", 0.0), ep("b", 0.0)]) == [1.0, 1.0]
    scores = scorer.score(req(100), [ep("new", 0.0), ep("fast"), ep("slow", SLOW)])
    assert scores[0] == pytest.approx(scores[1] + (scores[2] - scores[1]) / 2)
    assert scorer.score(req(100), [ep("only", SLOW)]) == [1.0]


def test_output_limit_reads_the_openai_fields() -> None:
    assert output_limit({"max_tokens": 64}) == 64
    assert output_limit({"max_completion_tokens": 32, "max_tokens": 64}) == 32
    for bad in ({}, {"max_tokens": 0}, {"max_tokens": "64"}, {"max_tokens": True}):
        assert output_limit(bad) is None


def test_typical_output_tokens_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ServiceTimeScorer(0)


def test_the_shared_pace_and_queue_columns() -> None:
    snap = Snapshot(
        [
            ep("fast", limit=8, in_flight=10),  # 3 past a full batch of 8, this one included
            ep("slow", SLOW, limit=8, in_flight=4),
            ep("new", 0.0),  # no pace measured, no limit learned
        ]
    )
    assert snap.fastest_tpot == FAST
    assert snap.filled_tpot == [FAST, SLOW, pytest.approx((FAST + SLOW) / 2)]
    assert snap.relative_pace == [1.0, 2.0, 1.0]
    assert snap.queued_share == [3 / 8, 0.0, 0.0]
    assert snap.queued_share is snap.queued_share  # computed once per snapshot
    assert Snapshot([ep("a", 0.0)]).fastest_tpot == 0.0
    assert Snapshot([ep("a")]).queued_share is None  # no limit known anywhere
