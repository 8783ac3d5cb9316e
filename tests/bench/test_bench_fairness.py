"""Tenants side by side, in virtual time: the waiting room's fairness, TTLs and priorities.

Each run sends tenants' arrivals through the EPP's real request path (director, tickets,
admission, waiting room, default profiles, leases) over simulated vLLM engines
(`waiting_room_sim`: two A100 pods, batch limit 16 each, ShareGPT-like lengths). Capacity is
measured first, in the same simulation, as what the cluster completes with a standing backlog.
- Noisy neighbour: tenants A and B on the same model and priority, A at three times B's rate,
  together 130 % of capacity, for 60 s. B's TTFT p90 beside B alone, and the cluster's throughput
  beside capacity and beside first come, first served on the same arrivals (which holds no slot
  back), with fairness on, with a fair reserve (`--fair-reserve`) and off (`--no-fairness`). Two
  references bound what any order can do: B alone on one pod of two (its fair share of the
  slots, nothing else running) and B at critical priority beside A (the most an order without
  preemption can give B, unfair to A).
- Interactive beside batch: interactive traffic at 60 % of capacity for 240 s, alone and with a
  burst of 1,000 sheddable batch requests whose model gives them a 600 s TTL (so they wait for
  the room the interactive traffic leaves instead of being shed).
- Objectives: traffic at 90 % of capacity for 120 s with a TTFT objective of twice the unloaded
  TTFT p50 (`x-slo-ttft-ms`), beside the same traffic without objectives (the default profile):
  attainment, requests refused early, and the latency model's TTFT error (MAPE, from the EPP's
  decision to the first token, after its first 200 samples). Attainment is counted over all
  requests sent and over the *feasible* ones, whose prefill alone on an idle pod fits in the
  objective (no order can make the others meet it), and the same objective at 10 % load.
Run: pytest -m bench -s -k fairness
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.bench.waiting_room_sim import (
    Outcome,
    Tenant,
    capacity,
    idle_ttft,
    loaded_ttft,
    run,
    throughput,
)

pytestmark = pytest.mark.bench

SECONDS = 60.0
WARMUP = 10.0  # throughput is counted once the overload has filled the room
RESERVE = 0.06  # --fair-reserve: 2 of the 32 batch slots


def line(label: str, out: Outcome, extra: str = "") -> str:
    return (
        f"{label:28s} TTFT p50 {out.pct(0.5):7.3f}s  p90 {out.pct(0.9):7.3f}s  "
        f"p99 {out.pct(0.99):7.3f}s  completed {out.completed:5d}/{out.sent:<5d} "
        f"dropped {sum(out.dropped.values()):4d}{extra}"
    )


def test_bench_noisy_neighbour() -> None:
    cap = capacity()
    total = 1.3 * cap
    a = Tenant("A", "chat", 0.75 * total, SECONDS)
    b = Tenant("B", "chat", 0.25 * total, SECONDS)
    alone = run((b,))["B"]
    half = run((b,), pods=1)["B"]  # B alone on its fair share of the slots: one pod of two
    fair = run((a, b), fair=True)
    reserve = run((a, b), fair=True, reserve=RESERVE)
    fcfs = run((a, b), fair=False)
    # B critical, A standard: the most any order without preemption can give B (unfair to A)
    strict = run((a, replace(b, model="web")))
    work = throughput(fcfs, WARMUP, SECONDS)  # first come, first served holds nothing back
    print(f"\ncapacity {cap:.2f} req/s; A {a.rate:.2f} req/s + B {b.rate:.2f} req/s = 130 %")
    print(line("B alone", alone))
    print(line("B alone on one pod of two", half, f"  p90 {half.pct(0.9) / alone.pct(0.9):5.1f}x"))
    rows = (
        ("B beside A, fairness on", fair),
        (f"B beside A, reserve {RESERVE:.0%}", reserve),
        ("B beside A, fairness off", fcfs),
        ("B beside A, B critical", strict),
    )
    for label, out in rows:
        served = throughput(out, WARMUP, SECONDS)
        ratio = out["B"].pct(0.9) / alone.pct(0.9)
        print(
            line(
                label,
                out["B"],
                f"  p90 {ratio:5.1f}x alone  throughput {served:5.2f} req/s "
                f"({served / cap:4.0%} of capacity, {served / work:4.0%} of fairness off)",
            )
        )
    print(line("A (the flood), fairness on", fair["A"]))
    print(line(f"A (the flood), reserve {RESERVE:.0%}", reserve["A"]))
    print(line("A (the flood), fairness off", fcfs["A"]))
    # fairness keeps B near its own pace while A floods; first come, first served does not
    assert fair["B"].pct(0.9) * 5 < fcfs["B"].pct(0.9)
    assert throughput(fair, WARMUP, SECONDS) >= 0.95 * cap
    assert fair["B"].completed == fair["B"].sent  # nothing of B's is dropped
    # the reserve buys B a slot at once for a few slots' throughput
    assert reserve["B"].pct(0.9) < fair["B"].pct(0.9)
    assert throughput(reserve, WARMUP, SECONDS) >= 0.95 * work


def test_bench_interactive_beside_batch() -> None:
    cap = capacity()
    web = Tenant("web", "chat", 0.6 * cap, 240.0)
    batch = Tenant("batch", "batch", bursts=((20.0, 1000),))
    alone = run((web,))["web"]
    both = run((web, batch))
    jobs = both["batch"]
    ttl = 600.0  # the batch model's queueing.ttlSeconds (waiting_room_sim.MODELS)
    within = sum(1 for t in jobs.completed_at if t - 20.0 <= ttl)
    print(f"\ncapacity {cap:.2f} req/s; interactive {web.rate:.2f} req/s; 1,000 batch at 20 s")
    print(line("interactive alone", alone))
    ratio = both["web"].pct(0.99) / alone.pct(0.99)
    print(line("interactive beside batch", both["web"], f"  p99 {ratio:4.2f}x alone"))
    print(
        line(
            "batch (sheddable, TTL 600 s)",
            jobs,
            f"  within TTL {within / 1000:6.1%}  last at {max(jobs.completed_at) - 20:5.0f}s",
        )
    )
    assert ratio <= 1.5
    assert within >= 990


def test_bench_objectives() -> None:
    cap = capacity()
    quiet = run((Tenant("t", "chat", 0.1 * cap, 60.0),))["t"]
    objective = 2 * quiet.pct(0.5)
    header = (("x-slo-ttft-ms", f"{objective * 1000:.1f}"),)
    idle = run((Tenant("t", "chat", 0.1 * cap, 120.0, headers=header),))["t"]
    plain = run((Tenant("t", "chat", 0.9 * cap, 120.0),))["t"]
    aware = run((Tenant("t", "chat", 0.9 * cap, 120.0, headers=header),))["t"]

    def feasible(prompt_tokens: int) -> bool:  # its prefill alone fits in the objective
        return idle_ttft(prompt_tokens) <= objective

    def busy(prompt_tokens: int) -> bool:  # it fits beside a full batch, after a half step
        return loaded_ttft(prompt_tokens) <= objective

    share = sum(map(feasible, aware.sent_prompts)) / aware.sent
    busy_share = sum(map(busy, aware.sent_prompts)) / aware.sent
    print(
        f"\ncapacity {cap:.2f} req/s; 90 % load; TTFT objective {objective * 1000:.0f} ms "
        f"(2x the unloaded p50); feasible {share:.1%} of requests (the prefill alone of the "
        f"others takes longer on an idle A100), feasible on a busy pod {busy_share:.1%} (their "
        "prefill beside a full batch, after half of its step, fits)"
    )
    for label, out in (
        ("10 % load, objective", idle),
        ("default profile", plain),
        ("with the objective", aware),
    ):
        served = out.completed
        met = sum(1 for t in out.ttft if t <= objective)
        mape = Outcome(predicted=out.predicted[200:]).mape()
        print(
            line(
                label,
                out,
                f"  attained {out.attained(objective):6.1%} of all, "
                f"{out.attained_of(objective, feasible):6.1%} of feasible, "
                f"{out.attained_of(objective, busy):6.1%} of feasible busy, "
                f"{met / served:6.1%} of served  refused {out.dropped.get('ObjectiveUnmet', 0):4d}"
                f"  TTFT MAPE {mape:5.1%}",
            )
        )
    assert aware.attained(objective) > plain.attained(objective)
    # at 90 % load, what can meet the objective beside a full batch does (the 95 %)
    assert aware.attained_of(objective, busy) >= 0.95
    # where load leaves room, what can meet the objective does
    assert idle.attained_of(objective, feasible) >= 0.95
    # no request whose prefill alone takes longer than the objective ever met it
    pairs = zip(aware.ttft, aware.ttft_prompts, strict=True)
    assert all(feasible(p) for t, p in pairs if t <= objective)
