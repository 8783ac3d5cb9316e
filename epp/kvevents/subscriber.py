"""One ZMQ subscription per endpoint, feeding the precise prefix index from vLLM's KV events.

`KvEventsSubscriber.run` is one background job (the server's `TaskOwner` starts and restarts
it): every `resync_s` it follows the endpoints the datastore lists, where the pod's annotation
says its engine publishes (`Endpoint.kv_events`, `epp.api.core.KV_EVENTS_ANNOTATION`) or else at
`tcp://<pod ip>:<port>` (llm-d's pod-discovery convention), follows again when that changes, and
forgets those that left. Each pod's stream is checked
by sequence number: a gap is filled from the pod's replay socket when it has one (else, or when
the replay falls short, the pod's entries are dropped: the index must not claim what it cannot
know), a sequence that goes back means the engine restarted with an empty cache, so the pod's
entries are cleared. `stats` keeps counts and the event → index latency of recent batches,
`per_pod` the same counts for each pod followed (`epp.kvevents.metrics` exports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from epp.kvcache.index import KvBlockIndex
from epp.kvcache.prefill import PrefillTracker
from epp.kvcache.wire import Cleared, KvEventsSettings, Removed, Stored, WireError, decode
from epp.types import Endpoint

log = logging.getLogger(__name__)

END = -1


@dataclass(slots=True)
class EventStats:
    batches: int = 0
    events: int = 0
    bad: int = 0
    gaps: int = 0
    replayed: int = 0
    restarts: int = 0
    dropped_pods: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


@dataclass(slots=True)
class PodEvents:
    """One pod's stream: what the subscriber received and repaired."""

    batches: int = 0
    events: int = 0
    bad: int = 0
    gaps: int = 0
    replayed: int = 0
    restarts: int = 0
    dropped: int = 0  # its entries dropped after a gap the replay could not fill
    lag: float = 0.0  # seconds from its last batch's timestamp to the index


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def publisher(annotation: str, address: str, port: int) -> str | None:
    """The ZMQ address of a pod's socket: its annotation ("tcp://host:port", "tcp://*:port" or a
    port; `*` and a bare port mean the pod's own IP, the host of `address`), else `port` on the
    pod's IP (None for 0: no socket). ValueError for an annotation that is none of those."""
    if not annotation:
        return f"tcp://{_host(address)}:{port}" if port else None
    text = annotation.removeprefix("tcp://")
    host, sep, number = text.rpartition(":")
    if not sep or host in ("*", ""):
        host = _host(address)
    if not number.isdigit() or not 0 < int(number) < 65_536 or "/" in host:
        raise ValueError(f"{annotation!r} is not tcp://HOST:PORT, tcp://*:PORT or a port")
    return f"tcp://{host}:{int(number)}"


class KvEventsSubscriber:
    def __init__(
        self,
        index: KvBlockIndex,
        endpoints: Callable[[], Iterable[Endpoint]],
        settings: KvEventsSettings,
        ctx: zmq.asyncio.Context | None = None,
        clock: Callable[[], float] = time.time,
        prefill: PrefillTracker | None = None,
    ) -> None:
        self.index = index
        self.prefill = prefill
        self.settings = settings
        self.stats = EventStats()
        self.per_pod: dict[str, PodEvents] = {}
        self._endpoints = endpoints
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._clock = clock
        self._last: dict[str, int] = {}  # address → last sequence number applied
        self._sockets: dict[str, tuple[str | None, str | None]] = {}  # address → (pub, replay)
        self._warned: set[str] = set()  # annotations already reported as unusable
        self._payload: dict[str, bytes] = {}  # and its batch: the same number again is a restart

    async def run(self) -> None:
        followed: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                wanted = {ep.address: self._sockets_of(ep) for ep in self._endpoints()}
                for address in followed.keys() - wanted.keys():
                    followed.pop(address).cancel()
                    self._forget(address)
                for address, sockets in wanted.items():
                    if address in followed and self._sockets.get(address) != sockets:
                        followed.pop(address).cancel()  # its annotation moved the publisher
                        self._forget(address)
                    if address not in followed:
                        self._sockets[address] = sockets
                        followed[address] = asyncio.create_task(
                            self.follow(address), name=f"kv-events {address}"
                        )
                for address, task in list(followed.items()):
                    if task.done() and not task.cancelled():  # crashed: logged, started again
                        log.error("kv events of %s: %r", address, task.exception())
                        del followed[address]
                await asyncio.sleep(self.settings.resync_s)
        finally:
            for task in followed.values():
                task.cancel()
            await asyncio.gather(*followed.values(), return_exceptions=True)

    def _sockets_of(self, ep: Endpoint) -> tuple[str | None, str | None]:
        """The endpoint's publisher and replay socket, by annotation or by the convention."""
        s = self.settings
        out: list[str | None] = []
        for annotation, port in ((ep.kv_events, s.port), (ep.kv_events_replay, s.replay_port)):
            try:
                out.append(publisher(annotation, ep.address, port))
            except ValueError as e:
                if annotation not in self._warned:
                    self._warned.add(annotation)
                    log.warning("kv events of %s: annotation %s: the port convention", ep.pod, e)
                out.append(publisher("", ep.address, port))
        return out[0], out[1]

    def _forget(self, address: str) -> None:
        self.index.clear(address)
        if self.prefill is not None:
            self.prefill.forget(address)
        self._last.pop(address, None)
        self._payload.pop(address, None)
        self.per_pod.pop(address, None)
        self._sockets.pop(address, None)

    def _pod(self, address: str) -> PodEvents:
        pod = self.per_pod.get(address)
        if pod is None:
            pod = self.per_pod[address] = PodEvents()
        return pod

    async def follow(self, address: str) -> None:
        """Read one pod's stream until cancelled."""
        s = self.settings
        endpoint = self._sockets.get(address, (None, None))[0]
        endpoint = endpoint or f"tcp://{_host(address)}:{s.port}"
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(endpoint)
        sub.subscribe(s.topic.encode())
        try:
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    self.stats.bad += 1
                    self._pod(address).bad += 1
                    continue
                await self.receive(address, int.from_bytes(frames[1], "big"), frames[2])
        finally:
            sub.close(linger=0)

    async def receive(self, address: str, seq: int, payload: bytes) -> None:
        """One batch from `address`'s stream: check its sequence number, then apply it."""
        last = self._last.get(address)
        pod = self._pod(address)
        if last is not None and seq <= last:
            if seq == last and payload == self._payload.get(address):
                return  # seen already
            log.info(
                "kv events of %s restarted at %d (after %d): cache cleared", address, seq, last
            )
            self.stats.restarts += 1
            pod.restarts += 1
            self.index.clear(address)
        elif (last is not None and seq > last + 1) or (last is None and seq > 0):
            self.stats.gaps += 1
            pod.gaps += 1
            start = 0 if last is None else last + 1
            if not await self._replay(address, start, seq):
                # what was missed is unknown: better to claim nothing than something stale
                self.stats.dropped_pods += 1
                pod.dropped += 1
                self.index.clear(address)
        self._apply(address, payload)
        self._last[address] = seq
        self._payload[address] = payload

    def _apply(self, address: str, payload: bytes) -> None:
        try:
            batch = decode(payload)
        except WireError as e:
            self.stats.bad += 1
            self._pod(address).bad += 1
            log.warning("kv events of %s: %s", address, e)
            return
        index = self.index
        stored = 0
        for event in batch.events:
            if isinstance(event, Stored):
                index.store(address, event.hashes, event.medium)
                stored += event.tokens
            elif isinstance(event, Removed):
                index.remove(address, event.hashes, event.medium)
            elif isinstance(event, Cleared):
                index.clear(address)
        if self.prefill is not None and stored and batch.ts:
            self.prefill.stored(address, stored, batch.ts)
        stats, pod = self.stats, self._pod(address)
        stats.batches += 1
        stats.events += len(batch.events)
        pod.batches += 1
        pod.events += len(batch.events)
        if batch.ts:
            pod.lag = self._clock() - batch.ts
            stats.latencies.append(pod.lag)

    async def _replay(self, address: str, start: int, end: int) -> bool:
        """Apply batches [start, end) from the pod's replay socket; whether all were there."""
        s = self.settings
        replay = self._sockets[address][1] if address in self._sockets else None
        replay = replay or publisher("", address, s.replay_port)
        if replay is None:
            return False
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(replay)
        expected = start
        try:
            await dealer.send_multipart((b"", start.to_bytes(8, "big")))
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), s.replay_timeout_s)
                seq = int.from_bytes(frames[-2], "big", signed=True)
                if seq == END or seq >= end:
                    break
                if seq != expected:
                    return False  # the pod's buffer no longer reaches back that far
                self._apply(address, frames[-1])
                self.stats.replayed += 1
                self._pod(address).replayed += 1
                expected += 1
        except TimeoutError:
            log.warning("kv events of %s: no replay within %ss", address, s.replay_timeout_s)
            return False
        finally:
            with contextlib.suppress(zmq.ZMQError):
                dealer.close(linger=0)
        return expected == end
