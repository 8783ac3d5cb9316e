"""What the EPP learns from a simulated vLLM's own counters, over real HTTP: each pod's prefill
pace (seconds per computed prompt token) and the answers' lengths, with no response body read."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from epp.api.model import Pool
from epp.datastore import Datastore
from epp.scheduling.output_length import OutputLengths
from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.sim.cluster import SimCluster, SimPodSpec
from epp.sim.profiles import get_profile
from tests.integration.test_scraper_sim import wait_for

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-2-7b-chat-hf"
H100, MIG = "H100", "MIG-1g.10gb"  # a computed prompt token costs the MIG slice 7x as much


async def test_prefill_pace_and_answer_lengths_come_from_the_engines_counters() -> None:
    specs = [
        SimPodSpec("127.0.0.2", 0, "h100", profile="H100", speed=4.0, answer_from_prompt=True),
        SimPodSpec(
            "127.0.0.3", 0, "mig", profile="MIG-1g.10gb", speed=4.0, answer_from_prompt=True
        ),
    ]
    async with SimCluster(specs) as cluster:
        store = Datastore()
        pool = Pool("default", "p", (), (8000,))
        store.set_static_pool(pool, cluster.addresses)
        lengths = OutputLengths(prior=500, min_samples=5)
        store.on_answers = lengths.observe_batch
        endpoints = store.endpoints
        settings = ScrapeSettings(interval=0.05, timeout=0.5, backoff_max=0.1)
        task = asyncio.create_task(Scraper(store, endpoints, settings).run())
        rng = random.Random(7)
        try:
            async with aiohttp.ClientSession() as http:

                async def ask(address: str, i: int) -> None:
                    words = " ".join(f"w{rng.randrange(10**6)}" for _ in range(400))
                    body = {
                        "model": MODEL,
                        # the simulator ends each answer where the prompt says (a bench-only
                        # channel), long before the client's cap
                        "messages": [{"role": "user", "content": f"{i} {words} #answer=20"}],
                        "max_tokens": 1000,
                    }
                    url = f"http://{address}/v1/chat/completions"
                    async with http.post(url, json=body) as r:
                        assert r.status == 200, await r.text()

                for i in range(8):
                    await asyncio.gather(*(ask(a, i) for a in cluster.addresses))
            key = pool.key

            def learned() -> bool:
                return all(s.prefill_pace > 0 for s in store.candidates(key))

            await wait_for(learned, timeout=5.0)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    fast, slow = (s.prefill_pace for s in store.candidates(pool.key))
    # the profiles' cost of a computed prompt token, at speed 4: the pace is that, learned
    h100, mig = (
        get_profile("H100").prefill_token_s / 4,
        get_profile("MIG-1g.10gb").prefill_token_s / 4,
    )
    assert fast == pytest.approx(h100, rel=0.5) and slow == pytest.approx(mig, rel=0.5)
    plan = lengths.plan(MODEL, 1000)
    assert plan.told is False and plan.expected == pytest.approx(20, abs=2)
