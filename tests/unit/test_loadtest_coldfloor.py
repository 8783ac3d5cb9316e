"""The cold-prefill floor of a shared-prefix cell: the requests it replays and when it binds."""

from __future__ import annotations

from loadtest.bench import coldfloor
from loadtest.bench.stats import percentile

COMMAND = (
    ".venv/bin/python -m loadtest.bench --workloads shared-prefix --pods 4 --prefix-groups 32 "
    "--prefix-tokens 1000 --lengths cap --fractions 0.9 --duration 30 --seed 1 --capacity 9.45"
)


def test_a_cells_first_sightings_are_replayed_from_its_command() -> None:
    a = coldfloor.cell_args(COMMAND)
    assert a.prefix_groups == 32 and a.seed == 1 and a.lengths == "cap"
    sent, firsts = coldfloor.first_sightings(a, 8.505)
    # the 2026-12-05 22:19 matrix sent 242 requests in this cell, seed 1
    assert sent == 242
    assert len(firsts) == 32 and len({r.group for r in firsts}) == 32
    again = coldfloor.first_sightings(a, 8.505)[1]
    assert [r.messages for r in again] == [r.messages for r in firsts]  # seeded


def test_the_floor_binds_p90_exactly_when_enough_requests_are_cold() -> None:
    for n in (10, 135, 242, 289, 936):
        needed = coldfloor.above_p90(n)
        cold, warm = 1.0, 0.1
        # `needed` requests at the floor or above: p90 is at least the floor
        assert percentile([cold] * needed + [warm] * (n - needed), 90) >= cold
        # one fewer: p90 falls below it
        assert percentile([cold] * (needed - 1) + [warm] * (n - needed + 1), 90) < cold


def test_a_mark_below_a_binding_floor_is_out_of_reach() -> None:
    floor = coldfloor.Floor("c", 1, 242, 32, 26, True, 0.4, {"pod-0": 0.4}, {}, 0.3)
    assert not floor.mark_reachable
    assert coldfloor.Floor("c", 1, 242, 8, 26, False, 0.4, {}, {}, 0.3).mark_reachable
    assert coldfloor.Floor("c", 1, 242, 32, 26, True, 0.2, {}, {}, 0.3).mark_reachable
