"""Two EPP servers given each other as `--peers` learn each other's prefix picks, and the
prefill they queued, over UDP."""

from __future__ import annotations

import asyncio
import time

import pytest

from epp.peers.sharing import PeerSettings
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.server import EppServer, ServeConfig
from epp.settings import ServerSettings, Settings
from epp.types import Endpoint, EndpointState
from tests.ports import free_ports

pytestmark = pytest.mark.integration

PODS = ("127.0.0.2:8000", "127.0.0.3:8000")


def prefix_scorer(server: EppServer) -> PrefixCacheScorer:
    profile = server.profiles["prefix-cache-aware"]
    (scorer,) = (w.scorer for w in profile.scorers if isinstance(w.scorer, PrefixCacheScorer))
    return scorer


async def test_a_replicas_pick_reaches_the_others_prefix_index() -> None:
    one, two = free_ports(2)
    servers = []
    for mine, theirs, name in ((one, two, "r1"), (two, one, "r2")):
        settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0))
        peers = PeerSettings(name=name, port=mine, peers=(f"127.0.0.1:{theirs}",))
        servers.append(EppServer(ServeConfig(settings, endpoints=PODS, peers=peers)))
    for server in servers:
        await server.start()
    try:
        first, second = (prefix_scorer(s) for s in servers)
        request = SchedulingRequest("r", "m", prompt=b"a system prompt shared by many " * 40)
        pod = EndpointState(Endpoint(PODS[1], PODS[1], "pool"))
        first.score(request, [pod])
        first.picked(request, pod)

        def asked() -> SchedulingRequest:  # a new request each time (scorers reuse a lookup)
            return SchedulingRequest("q", "m", prompt=request.prompt)

        assert second.score(asked(), [pod]) == [0.0]
        for _ in range(100):
            if second.score(asked(), [pod])[0] > 0.9:
                break
            await asyncio.sleep(0.02)
        assert second.score(asked(), [pod])[0] > 0.9
        assert servers[1].peers is not None and servers[1].peers.stats.picks_learned == 1
        # and the prefill that cold prompt queued there, with how long the pick took to arrive
        assert second.prefill.seconds(PODS[1], time.monotonic()) > 0.0
        assert second.prefill.seconds(PODS[0], time.monotonic()) == 0.0
        delay = servers[1].peers.snapshot()["pick_delay_ms"]
        assert isinstance(delay, dict) and delay["n"] == 1 and delay["max"] < 2000.0
    finally:
        for server in servers:
            await server.stop()
