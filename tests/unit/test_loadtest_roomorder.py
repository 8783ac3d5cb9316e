"""`loadtest.bench.roomorder`: the waiting room's order, replayed on the simulator's engines."""

from __future__ import annotations

from epp.sim.spec import SimPodSpec
from loadtest.bench import lengthbound as lb
from loadtest.bench import roomorder as ro

FAST = SimPodSpec("127.0.0.2", 8000, "p", speed=0.25, num_gpu_blocks=2000, max_num_seqs=1)
SLOW = SimPodSpec("127.0.0.3", 8000, "p", speed=0.125, num_gpu_blocks=2000, max_num_seqs=1)


def first_token_order(
    policy: lb.Policy, specs: list[SimPodSpec], requests: list[lb.Request]
) -> list[float]:
    outcomes = lb.simulate(specs, requests, policy)
    assert sorted(o.at for o in outcomes) == [r.at for r in requests]
    return [o.at for o in sorted(outcomes, key=lambda o: o.first)]


def test_a_long_answer_holds_out_for_the_fast_pod_and_a_short_one_takes_the_slow() -> None:
    requests = [lb.Request(0.0, 100, 300), lb.Request(0.01, 100, 300), lb.Request(0.02, 100, 20)]
    outcomes = {
        o.at: o.pod for o in lb.simulate([FAST, SLOW], requests, ro.room(lambda r: r.at, 250))
    }
    assert outcomes == {0.0: 0, 0.01: 0, 0.02: 1}


def test_the_due_order_lets_a_shorter_answer_overtake_and_arrival_order_does_not() -> None:
    requests = [lb.Request(0.0, 100, 100), lb.Request(0.01, 100, 300), lb.Request(0.02, 100, 10)]
    found = ro.policies([FAST], 0.5, 250)
    assert first_token_order(found["room-due"], [FAST], requests) == [0.0, 0.02, 0.01]
    assert first_token_order(found["room-arrival"], [FAST], requests) == [0.0, 0.01, 0.02]
    # with no weight on the answer's time the due order is the arrival order
    plain = ro.policies([FAST], 0.0, 250)["room-due"]
    assert first_token_order(plain, [FAST], requests) == [0.0, 0.01, 0.02]


def test_the_fastest_pace_alone_is_the_engines_and_halves_at_half_speed() -> None:
    fast, slow = ro.alone_pace(FAST), ro.alone_pace(SLOW)
    assert fast > 0.0 and abs(slow / fast - 2.0) < 0.05
