"""Replica state sharing: the datagram, and two replicas' datastores agreeing over real UDP."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from epp.api.model import ResourceSet
from epp.datastore import Datastore
from epp.kvcache.hashing import BlockHasher
from epp.peers.kube import peers_of
from epp.peers.sharing import PeerSettings, PeerSharing, parse_peers
from epp.peers.wire import MAX_DATAGRAM, Announcement, Pick, decode, encode, encode_all
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.max_score import MaxScorePicker
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.scheduling.plugins.prefix_index import block_hashes
from epp.scheduling.plugins.queue import QueueScorer
from epp.scheduling.registry import build_default_profiles
from epp.scheduling.scheduler import Profile, WeightedScorer
from epp.tokenization import Tokenizer
from epp.types import CHARS_PER_TOKEN
from tests.factories import model, pod, pool

POOL = "default/llama2-gpu-pool"
TOKENIZER = Path(__file__).resolve().parents[2] / "epp" / "assets" / "tiny-tokenizer"
A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def store() -> Datastore:
    s = Datastore()
    s.apply_resources(
        ResourceSet((pool(),), (model(),), (pod("a", "10.0.0.1"), pod("b", "10.0.0.2")))
    )
    return s


def flights(s: Datastore) -> dict[str, int]:
    return {st.address: st.in_flight for st in s.candidates(POOL)}


def test_announcements_round_trip_and_bad_ones_are_named() -> None:
    note = Announcement("epp-0", 7, {A: (2, 300), B: (0, 0)})
    assert decode(encode(note)) == note
    for bad, problem in [
        (b"{", "not JSON"),
        (b'{"v": 2}', "version 1"),
        (b'{"v": 1, "r": "", "s": 1, "f": []}', "replica name"),
        (b'{"v": 1, "r": "x", "s": -1, "f": []}', "sequence"),
        (b'{"v": 1, "r": "x", "s": 1, "f": [["a", 1]]}', "bad in-flight entry"),
        (b'{"v": 1, "r": "x", "s": 1, "f": [["a", 1, true]]}', "bad in-flight entry"),
    ]:
        with pytest.raises(ValueError, match=problem):
            decode(bad)


def test_peer_addresses_are_checked() -> None:
    assert parse_peers("127.0.0.1:9004, 127.0.1.1:9004") == ("127.0.0.1:9004", "127.0.1.1:9004")
    with pytest.raises(ValueError, match="not host:port"):
        parse_peers("127.0.0.1")


def test_endpoint_slices_name_the_other_ready_replicas() -> None:
    slices = [
        {
            "ports": [{"name": "peers", "port": 9104, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "targetRef": {"name": "epp-a"}},
                {"addresses": ["10.1.0.2"], "targetRef": {"name": "epp-b"}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": False}},
                {"addresses": ["fd00::4"], "targetRef": {"name": "epp-d"}},
                {"addresses": ["10.1.0.5"], "conditions": {"terminating": True}},
            ],
        }
    ]
    assert peers_of(slices, "epp-a", "peers", 9004) == ["10.1.0.2:9104", "[fd00::4]:9104"]
    assert peers_of([{"endpoints": [{"addresses": ["10.1.0.9"]}]}], "", "peers", 9004) == [
        "10.1.0.9:9004"
    ]


@contextlib.asynccontextmanager
async def sharing(
    s: Datastore, name: str, port: int, peer: int, expiry: float = 1.0
) -> AsyncIterator[PeerSharing]:
    settings = PeerSettings(
        name=name, port=port, peers=(f"127.0.0.1:{peer}",), heartbeat=0.05, expiry=expiry
    )
    peers = PeerSharing(s, settings, "127.0.0.1")
    task = asyncio.create_task(peers.run())
    try:
        yield peers
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_two_replicas_see_each_others_requests_and_forget_a_silent_one() -> None:
    from tests.ports import free_ports

    port_a, port_b = free_ports(2)
    one, two = store(), store()
    async with sharing(one, "epp-0", port_a, port_b) as a:
        async with sharing(two, "epp-1", port_b, port_a):
            lease = one.lease(A, 120)
            await until(lambda: flights(two) == {A: 1, B: 0})
            assert two.candidates(POOL)[0].in_flight_tokens == 120
            assert two.own_in_flight() == {}  # what a peer said is never passed on
            other = two.lease(A, 10)
            await until(lambda: flights(one) == {A: 2, B: 0})
            lease.release()
            await until(lambda: flights(two) == {A: 1, B: 0})
            other.release()
            await until(lambda: flights(one) == {A: 0, B: 0})
            snapshot = a.snapshot()
            assert snapshot["sent"] and snapshot["received"]  # type: ignore[truthy-bool]
            assert set(snapshot["peers"]) == {"epp-1"}  # type: ignore[arg-type]
            third = two.lease(B, 5)
            await until(lambda: flights(one)[B] == 1)
        # epp-1 is gone (crashed, or cut off): its requests stop counting after `expiry`
        await until(lambda: flights(one)[B] == 0)
        third.release()


async def test_garbage_datagrams_are_counted_and_ignored() -> None:
    from tests.ports import free_ports

    (port,) = free_ports(1)
    s = store()
    async with sharing(s, "epp-0", port, port + 1) as peers:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
        )
        transport.sendto(b"garbage")
        transport.sendto(b'{"v": 1, "r": "x", "s": 1, "f": [], "p": [], "q": [0.5]}')
        transport.sendto(b'{"v": 1, "r": "x", "s": 1, "f": [], "t": "now"}')
        transport.sendto(encode(Announcement("epp-9", 1, {A: (4, 4)})))
        await until(lambda: flights(s)[A] == 4)
        transport.sendto(encode(Announcement("epp-9", 1, {A: (9, 9)})))  # not newer: dropped
        transport.sendto(encode(Announcement("epp-9", 2, {A: (1, 1)})))
        await until(lambda: flights(s)[A] == 1)
        transport.close()
        assert peers.stats.refused == 3


def test_picks_travel_in_datagrams_that_fit() -> None:
    picks = [
        Pick("gpu-aware/prefix-cache-scorer", 16, A, tuple(range(i, i + 2000))) for i in range(40)
    ]
    datagrams = encode_all("epp-0", 5, {A: (1, 2)}, picks)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    notes = [decode(d) for d in datagrams]
    assert [n.seq for n in notes] == list(range(5, 5 + len(notes)))
    assert all(n.flights == {A: (1, 2)} for n in notes)
    assert [p for n in notes for p in n.picks] == picks
    with pytest.raises(ValueError, match="bad pick"):
        decode(b'{"v": 1, "r": "x", "s": 1, "f": [], "p": [["s", 16, "a", ["h"]]]}')


@contextlib.asynccontextmanager
async def two_sharing_replicas(
    profiles: Callable[[random.Random], dict[str, Profile]] = build_default_profiles,
) -> AsyncIterator[
    tuple[Datastore, dict[str, Profile], dict[str, Profile], PeerSharing, PeerSharing]
]:
    """Two replicas over real UDP, each sharing its profiles' prefix picks (the default
    profiles unless told): yields the first one's store and profiles, the second one's
    profiles, and both sharings."""
    from tests.ports import free_ports

    port_a, port_b = free_ports(2)
    one, two = store(), store()
    profiles_one = profiles(random.Random(1))
    profiles_two = profiles(random.Random(2))
    async with (
        sharing(one, "epp-0", port_a, port_b) as a,
        sharing(two, "epp-1", port_b, port_a) as b,
    ):
        a.share_prefixes(profiles_one)
        b.share_prefixes(profiles_two)
        await asyncio.sleep(0.1)  # both listen
        yield one, profiles_one, profiles_two, a, b


async def test_replicas_learn_each_others_picks_into_their_prefix_index() -> None:
    request = SchedulingRequest("r1", "m", 0, 3000, b"a shared system prompt " * 600)
    async with two_sharing_replicas() as (one, profiles_one, profiles_two, a, b):
        candidates = one.candidates(POOL)
        (chosen,) = profiles_one["gpu-aware"].schedule(request, candidates, 1)
        scorer = prefix_scorer(profiles_two["gpu-aware"])
        await until(lambda: scorer.index.match(hashes_of(scorer, request)) != {})
        assert set(scorer.index.match(hashes_of(scorer, request))) == {chosen.address}
        assert b.stats.picks_learned >= 1 and a.stats.picks_sent >= 1


def prefix_scorer(profile: Profile) -> PrefixCacheScorer:
    return next(ws.scorer for ws in profile.scorers if isinstance(ws.scorer, PrefixCacheScorer))


def hashes_of(scorer: PrefixCacheScorer, request: SchedulingRequest) -> list[int]:
    chars = scorer.block_size_tokens * CHARS_PER_TOKEN
    return block_hashes(request.target_model, request.prompt, chars, scorer.max_blocks)


def test_picks_carry_the_prefill_they_queued_and_old_datagrams_still_decode() -> None:
    key = "gpu-aware/prefix-cache-scorer"
    picks = [Pick(key, 16, A, (1, 2), 0.25), Pick(key, 16, B, (3,), 0.0)]
    note = Announcement("epp-0", 3, {A: (1, 2)}, tuple(picks), 1_700_000_000.5)
    data = encode(note)
    assert decode(data) == note
    doc = orjson.loads(data)
    # an older replica reads only v, r, s, f, p: those are as they were (4-item picks)
    assert doc["v"] == 1 and all(len(p) == 4 for p in doc["p"])
    assert doc["q"] == [0.25, 0.0] and doc["t"] == 1_700_000_000.5
    # from an older replica: no prefill, no time
    old = b'{"v": 1, "r": "x", "s": 1, "f": [], "p": [["k", 16, "a", [1]]]}'
    assert decode(old) == Announcement("x", 1, {}, (Pick("k", 16, "a", (1,), 0.0),), None)
    # nothing queued: no "q" key at all; a split announcement carries each pick's own seconds
    assert b'"q"' not in encode(Announcement("epp-0", 1, {}, (Pick(key, 16, A, (1,)),)))
    many = [Pick(key, 16, A, tuple(range(i, i + 2000)), i / 10) for i in range(40)]
    notes = [decode(d) for d in encode_all("epp-0", 5, {}, many, 12.0)]
    assert len(notes) > 1 and [p for n in notes for p in n.picks] == many
    assert all(n.picked_at == 12.0 for n in notes)
    for bad, problem in [
        (b'"p": [["k", 16, "a", [1]]], "q": [0.1, 0.2]', "prefill"),
        (b'"p": [["k", 16, "a", [1]]], "q": [-1]', "prefill"),
        (b'"p": [["k", 16, "a", [1]]], "q": [true]', "prefill"),
        (b'"p": [["k", 16, "a", [1]]], "q": 0.5', "prefill"),
        (b'"p": [], "t": -3', "pick time"),
    ]:
        with pytest.raises(ValueError, match=problem):
            decode(b'{"v": 1, "r": "x", "s": 1, "f": [], ' + bad + b"}")


async def test_replicas_learn_the_prefill_each_others_picks_queued() -> None:
    """A cold prompt one replica sends to a pod is prefill the others must count there too:
    without it each would send its next cold prompt to the same idle-looking pod."""
    request = SchedulingRequest("r1", "m", 0, 3000, b"a cold prompt seen once " * 600)
    async with two_sharing_replicas() as (one, profiles_one, profiles_two, _, b):
        (chosen,) = profiles_one["gpu-aware"].schedule(request, one.candidates(POOL), 1)
        mine = prefix_scorer(profiles_one["gpu-aware"]).prefill
        theirs = prefix_scorer(profiles_two["gpu-aware"]).prefill
        queued = mine.seconds(chosen.address, time.monotonic())
        assert queued > 0.2  # 3,000 uncached tokens at the prior pace: ~0.37 s
        await until(lambda: theirs.seconds(chosen.address, time.monotonic()) > 0.0)
        now = time.monotonic()
        # the same queue, less the few ms the datagram took (it drains from its arrival)
        assert theirs.seconds(chosen.address, now) == pytest.approx(
            mine.seconds(chosen.address, now), abs=0.05
        )
        other = B if chosen.address == A else A
        assert theirs.seconds(other, now) == 0.0
        assert b.stats.prefill_learned == pytest.approx(queued, rel=1e-3)
        delay = b.snapshot()["pick_delay_ms"]
        assert isinstance(delay, dict) and delay["n"] >= 1 and 0.0 <= delay["p50"] < 1000.0


def precise_profiles(rng: random.Random) -> dict[str, Profile]:
    """A profile with the precise scorer (no KV events flow: what it knows of a pick is its
    memory of picks) and the queue scorer."""
    scorer = PreciseCacheScorer(Tokenizer.from_dir(TOKENIZER), BlockHasher(16, "sha256", "0"))
    scorers = [WeightedScorer(scorer, 3.0), WeightedScorer(QueueScorer(), 1.0)]
    return {"precise": Profile("precise", [], scorers, MaxScorePicker(rng), [scorer])}


def precise_scorer(profile: Profile) -> PreciseCacheScorer:
    return next(ws.scorer for ws in profile.scorers if isinstance(ws.scorer, PreciseCacheScorer))


async def test_precise_replicas_learn_each_others_picks_before_the_events_tell() -> None:
    """A pod reports a prompt's blocks only once it has computed them: until then the other
    replica learns the pick, and the prefill it queued, from its peer."""
    prompt = [7 + i % 1000 for i in range(1_000)]  # 62 whole blocks of 16 tokens
    request = SchedulingRequest("r1", "m", payload={"prompt": prompt})
    async with two_sharing_replicas(precise_profiles) as (one, mine, theirs, a, b):
        (chosen,) = mine["precise"].schedule(request, one.candidates(POOL), 1)
        scorer = precise_scorer(theirs["precise"])
        ask = SchedulingRequest("r2", "m", payload={"prompt": prompt})
        await until(lambda: b.stats.picks_learned >= 1)
        _, counts, tokens, _ = scorer.matches(ask)
        assert tokens == 1_000 and counts == {chosen.address: 62.0}
        now = time.monotonic()
        queued = precise_scorer(mine["precise"]).prefill.queued(chosen.address, now)
        assert queued > 900  # the whole prompt was cold; a few ms of it prefilled since
        assert scorer.prefill.queued(chosen.address, now) == pytest.approx(queued, rel=0.05)
        other = B if chosen.address == A else A
        assert scorer.prefill.queued(other, now) == 0.0 and a.stats.picks_sent >= 1
