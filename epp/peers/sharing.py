"""Sharing what each EPP replica learns from its own traffic with the others, off the request path.

Each replica sends its own in-flight requests and tokens per endpoint, and the prompt blocks
of its picks per prefix scorer (the approximate index's hashes, the precise scorer's block keys
for its memory of picks) with the seconds of prefill each queued (`epp.peers.wire`), to
every peer over UDP: a few milliseconds
after they change (changes within that window travel together) and on a heartbeat. What the
peers last said, summed, is added to this replica's own counts in the datastore
(`Datastore.set_peer_in_flight`), so that the scorers and the admission of every replica see
the requests the others sent; their picks go into this replica's prefix indexes and queued
prefill, as if it had made them. A peer not heard from for `expiry` seconds
is forgotten: a replica cut off from its peers keeps serving on its own view, and a dead
replica's requests (lost with it) stop counting. Peers come from `--peers` or from the EPP
Service's EndpointSlices (`epp.peers.kube`). Neighbours: `epp.server` owns the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from epp.datastore import Datastore
from epp.peers.wire import Pick, decode, encode_all
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.scheduling.scheduler import Profile

log = logging.getLogger("epp.peers")
# the prefix scorers whose picks travel: the approximate index and the precise scorer's memory
PrefixScorer = PrefixCacheScorer | PreciseCacheScorer
MAX_PENDING_PICKS = 10_000  # picks waiting for a flush beyond this are not shared
DELAY_SAMPLES = 4096  # the latest pick delays kept for /debug/peers


@dataclass(frozen=True, slots=True)
class PeerSettings:
    name: str = ""  # this replica's name among its peers ("": host name and process id)
    port: int = 9004  # the UDP port every replica receives on
    peers: tuple[str, ...] = ()  # host:port of the other replicas, given
    service: str | None = None  # Kubernetes: the EPP Service whose EndpointSlices list peers
    service_namespace: str = "default"
    flush_delay: float = 0.002  # seconds a change waits for others to travel with it
    heartbeat: float = 0.25  # seconds between announcements when nothing changes
    expiry: float = 1.0  # seconds of silence after which a peer's counts are dropped
    discovery_interval: float = 2.0  # seconds between reads of the EndpointSlices

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat < self.expiry:
            raise ValueError("the peers' heartbeat must be positive and shorter than expiry")
        if self.flush_delay < 0:
            raise ValueError("flush_delay must be >= 0")

    @property
    def enabled(self) -> bool:
        return bool(self.peers) or self.service is not None

    def replica_name(self) -> str:
        return self.name or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class PeerStats:
    """What went between this replica and its peers (`/debug/peers`)."""

    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    received_bytes: int = 0
    refused: int = 0  # datagrams that did not parse
    picks_sent: int = 0
    picks_learned: int = 0  # picks whose blocks went into a prefix index here
    prefill_learned: float = 0.0  # seconds of peers' queued prefill added here
    # seconds from the oldest pick in a datagram to its arrival here, by the two replicas' wall
    # clocks (on one machine exact; across machines it includes their clocks' offset)
    delays: deque[float] = field(default_factory=lambda: deque(maxlen=DELAY_SAMPLES))

    def delay_percentiles(self) -> dict[str, float] | None:
        """p50, p99 and max of the kept pick delays in milliseconds (None before any)."""
        if not self.delays:
            return None
        ordered = sorted(self.delays)
        n = len(ordered)
        return {
            "n": n,
            "p50": round(ordered[(n - 1) // 2] * 1000.0, 3),
            "p99": round(ordered[min(n - 1, int(n * 0.99))] * 1000.0, 3),
            "max": round(ordered[-1] * 1000.0, 3),
        }


def parse_peers(text: str) -> tuple[str, ...]:
    items = tuple(a.strip() for a in text.split(",") if a.strip())
    for item in items:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--peers: {item!r} is not host:port")
    return items


def _target(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerSharing(asyncio.DatagramProtocol):
    """One replica's end of the sharing: `run()` under the server's task owner."""

    def __init__(self, store: Datastore, settings: PeerSettings, host: str) -> None:
        self.store = store
        self.settings = settings
        self.host = host
        self.name = settings.replica_name()
        self.stats = PeerStats()
        self._targets = [_target(p) for p in settings.peers]
        self._transport: asyncio.DatagramTransport | None = None
        self._seq = time.time_ns()  # grows across restarts too: peers drop nothing new
        self._pending = False
        # peer name → (seq, flights, when heard)
        self._heard: dict[str, tuple[int, dict[str, tuple[int, int]], float]] = {}
        self._picks: list[Pick] = []  # made here since the last flush
        self._first_pick_at: float | None = None  # wall-clock time of the oldest of them
        self._scorers: dict[str, PrefixScorer] = {}  # "profile/plugin" → scorer
        store.add_in_flight_listener(self._own_changed)

    def share_prefixes(self, profiles: Mapping[str, Profile]) -> None:
        """Tell peers the blocks of every pick of these profiles' prefix scorers, and learn
        theirs (replicas run the same configuration, so the scorers' names match)."""
        for name, profile in profiles.items():
            for ws in profile.scorers:
                if isinstance(ws.scorer, PrefixCacheScorer | PreciseCacheScorer):
                    key = f"{name}/{ws.scorer.name}"
                    self._scorers[key] = ws.scorer
                    ws.scorer.on_add = partial(self._picked, key, ws.scorer)

    @property
    def targets(self) -> list[tuple[str, int]]:
        return list(self._targets)

    def set_targets(self, addresses: Sequence[str]) -> None:
        targets = [_target(a) for a in addresses]
        if targets != self._targets:
            log.info("peers: %s", ", ".join(addresses) or "none")
            self._targets = targets

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.settings.port), reuse_port=False
        )
        self._transport = transport
        log.info(
            "sharing in-flight counts as %s on udp %s:%d", self.name, self.host, self.settings.port
        )
        try:
            while True:
                self._flush()
                self._expire()
                await asyncio.sleep(self.settings.heartbeat)
        finally:
            self._transport = None
            transport.close()

    # ---- sending -------------------------------------------------------------------------
    def _own_changed(self) -> None:
        if self._pending or self._transport is None:
            return
        self._pending = True
        asyncio.get_running_loop().call_later(self.settings.flush_delay, self._flush)

    def _picked(
        self,
        key: str,
        scorer: PrefixScorer,
        address: str,
        hashes: list[int],
        prefill: float,
    ) -> None:
        if self._transport is None or not self._targets or len(self._picks) >= MAX_PENDING_PICKS:
            return
        if not self._picks:
            self._first_pick_at = time.time()
        self._picks.append(Pick(key, scorer.block_size_tokens, address, tuple(hashes), prefill))
        self._own_changed()

    def _flush(self) -> None:
        self._pending = False
        transport = self._transport
        picks, self._picks = self._picks, []
        picked_at, self._first_pick_at = self._first_pick_at, None
        if transport is None or not self._targets:
            return
        try:
            datagrams = encode_all(
                self.name, self._seq + 1, self.store.own_in_flight(), picks, picked_at
            )
        except ValueError as exc:
            log.warning("not sharing in-flight counts: %s", exc)
            return
        self._seq += len(datagrams)
        for data in datagrams:
            for target in self._targets:
                transport.sendto(data, target)
            self.stats.sent += len(self._targets)
            self.stats.sent_bytes += len(data) * len(self._targets)
        self.stats.picks_sent += len(picks)

    # ---- receiving -----------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            note = decode(data)
        except ValueError as exc:
            self.stats.refused += 1
            log.debug("refused a datagram from %s: %s", addr, exc)
            return
        self.stats.received += 1
        self.stats.received_bytes += len(data)
        if note.replica == self.name:
            return
        before = self._heard.get(note.replica)
        if before is not None and note.seq <= before[0]:
            return  # late: a newer one came first
        now = time.monotonic()
        self._heard[note.replica] = (note.seq, note.flights, now)
        if before is None or before[1] != note.flights:
            self._publish()
        if note.picked_at is not None:
            self.stats.delays.append(time.time() - note.picked_at)
        for pick in note.picks:
            scorer = self._scorers.get(pick.scorer)
            if scorer is None:
                continue
            if scorer.learn_pick(pick.address, pick.block_tokens, pick.hashes, now):
                self.stats.picks_learned += 1
            # the prefill the peer's pick queued there, whatever the block size
            self.stats.prefill_learned += scorer.prefill.add_seconds(
                pick.address, pick.prefill, now
            )

    def error_received(self, exc: Exception) -> None:
        log.debug("peer datagram error: %s", exc)  # a peer not listening (yet): it will be

    def _expire(self) -> None:
        horizon = time.monotonic() - self.settings.expiry
        gone = [name for name, (_, _, at) in self._heard.items() if at < horizon]
        for name in gone:
            log.info(
                "peer %s silent for %.1fs: its in-flight counts dropped", name, self.settings.expiry
            )
            del self._heard[name]
        if gone:
            self._publish()

    def _publish(self) -> None:
        total: dict[str, tuple[int, int]] = {}
        for _, flights, _ in self._heard.values():
            for address, (n, t) in flights.items():
                had = total.get(address)
                total[address] = (n, t) if had is None else (had[0] + n, had[1] + t)
        self.store.set_peer_in_flight(total)

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        s = self.stats
        return {
            "name": self.name,
            "port": self.settings.port,
            "targets": [f"{h}:{p}" for h, p in self._targets],
            "peers": {
                name: {"age_s": round(now - at, 3), "in_flight": sum(n for n, _ in f.values())}
                for name, (_, f, at) in self._heard.items()
            },
            "sent": s.sent,
            "sent_bytes": s.sent_bytes,
            "received": s.received,
            "received_bytes": s.received_bytes,
            "refused": s.refused,
            "picks_sent": s.picks_sent,
            "picks_learned": s.picks_learned,
            "prefill_learned_s": round(s.prefill_learned, 3),
            "pick_delay_ms": s.delay_percentiles(),
        }
