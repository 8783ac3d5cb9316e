"""How long a pick takes to reach a peer replica (`epp.peers`): prints p50/p99/max.

Two replicas' sharing ends over real UDP on 127.0.0.1, in one process: one schedules cold
prompts with the gpu-aware profile (each pick goes out with its blocks and the prefill it
queued), the other learns them. The delay is the receiver's count, from the oldest pick in a
datagram (the sender's clock) to the datagram's arrival: the flush wait (`flush_delay`, 2 ms),
encoding, the socket and decoding. Picks come alone (every 20 ms) and in bursts (10 at once,
which travel in one datagram). `loadtest.bench`'s replicas table reads the same numbers from
each `epp serve` replica's /debug/peers under load. Asserts only that every pick arrived.
Run: pytest -m bench -s -k peer_delay
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from epp.api.model import ResourceSet
from epp.datastore import Datastore
from epp.peers.sharing import PeerSettings, PeerSharing
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.registry import build_default_profiles
from tests.factories import model, pod, pool
from tests.ports import free_ports

pytestmark = pytest.mark.bench

POOL = "default/llama2-gpu-pool"


def store() -> Datastore:
    s = Datastore()
    pods = tuple(pod(f"p{i}", f"10.0.0.{i + 1}") for i in range(6))
    s.apply_resources(ResourceSet((pool(),), (model(),), pods))
    return s


@pytest.mark.parametrize(("burst", "rounds"), [(1, 200), (10, 40)])
async def test_bench_peer_delay(burst: int, rounds: int) -> None:
    port_a, port_b = free_ports(2)
    one, two = store(), store()
    profiles = [build_default_profiles(random.Random(i)) for i in (1, 2)]
    sides = []
    for s, name, mine, theirs in ((one, "a", port_a, port_b), (two, "b", port_b, port_a)):
        settings = PeerSettings(name=name, port=mine, peers=(f"127.0.0.1:{theirs}",))
        sides.append(PeerSharing(s, settings, "127.0.0.1"))
    tasks = [asyncio.create_task(side.run()) for side in sides]
    sender, receiver = sides
    try:
        sender.share_prefixes(profiles[0])
        receiver.share_prefixes(profiles[1])
        await asyncio.sleep(0.1)  # both listen
        for r in range(rounds):
            for k in range(burst):
                prompt = f"cold prompt {r}-{k} ".encode() * 400
                request = SchedulingRequest(f"{r}-{k}", "m", 0, 2000, prompt)
                profiles[0]["gpu-aware"].schedule(request, one.candidates(POOL), 1)
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 2.0
        while receiver.stats.picks_learned < rounds * burst and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    delay = receiver.stats.delay_percentiles()
    assert receiver.stats.picks_learned == rounds * burst and delay is not None
    print(
        f"\npicks in bursts of {burst:2d}: {rounds * burst} picks in {delay['n']} datagrams,"
        f" delay p50 {delay['p50']:.2f} ms p99 {delay['p99']:.2f} ms max {delay['max']:.2f} ms;"
        f" prefill learned {receiver.stats.prefill_learned:.1f} s",
        end="",
    )
