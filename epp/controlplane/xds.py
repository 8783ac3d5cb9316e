"""The aggregated xDS server (ADS) that feeds Envoy its configuration.

`XdsCache` holds the current resources per type URL and versions each type by a generation
counter that moves only when that type's content changes (each resource also has a content hash,
for delta xDS). `AdsServer` serves any number of Envoys, state of the world here and incremental
in `delta`: per stream and type it tracks the subscribed names, the nonce and version last sent,
and what Envoy ACKed or NACKed. A NACK is recorded and the same version is not resent (Envoy keeps
its last accepted config). Clusters go first: the other types wait while a changed CDS response
is unanswered, so a route never names a cluster Envoy does not have yet; a removed cluster stays
(version "N+kept") until Envoy has the routes that stopped using it. `translate` builds the
resources, `main` owns the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

log = logging.getLogger(__name__)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
WILDCARD_TYPES = (CLUSTER, LISTENER)

Resources = Mapping[str, Mapping[str, Message]]  # type URL -> resource name -> message
_Request = TypeVar("_Request", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)


@dataclass(frozen=True, slots=True)
class Nack:
    node: str
    type_url: str
    version: str
    message: str
    at: float


@dataclass(slots=True)
class TypeState:
    requested: bool = False
    names: frozenset[str] | None = None  # None: wildcard
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    sent: dict[str, any_pb2.Any] = field(default_factory=dict)
    nonce: str | None = None
    answered: bool = True  # Envoy replied to the last response we sent
    acked_version: str | None = None
    nacked_version: str | None = None


@dataclass(slots=True)
class StreamState:
    """One connected Envoy: its node id and what it holds of each type."""

    node: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)
    protocol: str = "sotw"  # or "delta"
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class XdsCache:
    """The current resources; `set` bumps each changed type's version and wakes the streams."""

    def __init__(self) -> None:
        self.generation = 0
        self._resources: dict[str, dict[str, any_pb2.Any]] = {t: {} for t in PUSH_ORDER}
        self._digests: dict[str, bytes] = {t: b"" for t in PUSH_ORDER}
        self._hashes: dict[str, dict[str, str]] = {t: {} for t in PUSH_ORDER}
        self.versions: dict[str, str] = {t: "0" for t in PUSH_ORDER}
        self.changed_at: float = time.monotonic()
        self._listeners: set[asyncio.Event] = set()

    def set(self, resources: Resources) -> bool:
        """Install a full set of resources; True when any type changed."""
        generation = self.generation + 1
        changed = False
        for type_url in PUSH_ORDER:
            packed: dict[str, any_pb2.Any] = {}
            for name, message in sorted(resources.get(type_url, {}).items()):
                item = any_pb2.Any()
                item.Pack(message, deterministic=True)
                packed[name] = item
            digest = b"".join(n.encode() + b"\0" + a.value + b"\0" for n, a in packed.items())
            if digest != self._digests[type_url]:
                self._resources[type_url] = packed
                self._digests[type_url] = digest
                self._hashes[type_url] = {n: _hash(a.value) for n, a in packed.items()}
                self.versions[type_url] = str(generation)
                changed = True
        if changed:
            self.generation = generation
            self.changed_at = time.monotonic()
            for event in self._listeners:
                event.set()
        return changed

    def resources(self, type_url: str) -> dict[str, any_pb2.Any]:
        return self._resources.get(type_url, {})

    def resource_versions(self, type_url: str) -> dict[str, str]:
        """Name -> a hash of the resource's serialized content (delta xDS versions)."""
        return self._hashes.get(type_url, {})

    def subscribe(self, event: asyncio.Event) -> None:
        self._listeners.add(event)

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """ADS over one cache, state of the world or delta, for many Envoys at once."""

    def __init__(self, cache: XdsCache) -> None:
        self.cache = cache
        self.streams: dict[int, StreamState] = {}
        self.nacks: list[Nack] = []
        self._nonce = 0
        self._synced = asyncio.Event()
        self._next_id = 0

    # ---- queries used by status, tests and the benchmark ---------------------------------
    def synced(self) -> bool:
        """Every connected Envoy answered (ACK or NACK) the current version of what it asked."""
        for stream in self.streams.values():
            if not stream.node:
                return False
            for type_url, state in stream.types.items():
                current = self.cache.versions[type_url]
                rejected = state.nacked_version == state.sent_version
                settled = state.answered and (state.sent_version == current or rejected)
                if state.requested and not settled:
                    return False
        return True

    def acked_everywhere(self) -> bool:
        """At least one Envoy is connected and all of them ACKed what they hold now."""
        if not self.streams or not self.synced():
            return False
        return all(
            s.acked_version == self.cache.versions[t]
            for stream in self.streams.values()
            for t, s in stream.types.items()
            if s.requested and s.sent_version is not None
        )

    async def wait_synced(self, timeout: float = 10.0, envoys: int = 1) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (len(self.streams) >= envoys and self.synced()):
            self._synced.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("Envoy did not answer the configuration in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), remaining)

    # ---- the streams -----------------------------------------------------------------------
    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        await self._serve(StreamState(), request_iterator, context, self._on_request, self._due)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        from epp.controlplane.delta import DeltaStream  # delta builds on this module's types

        delta = DeltaStream(self)
        await self._serve(delta.stream, request_iterator, context, delta.on_request, delta.due)

    async def _serve(
        self,
        stream: StreamState,
        requests: AsyncIterator[_Request],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        on_request: Callable[[StreamState, _Request], None],
        due: Callable[[StreamState], Sequence[Message]],
    ) -> None:
        """One stream, either protocol: apply requests as they come, write what is due."""
        self._next_id += 1
        stream_id = self._next_id
        self.streams[stream_id] = stream
        self.cache.subscribe(stream.wake)
        reader = asyncio.create_task(self._read(requests, stream, on_request))
        try:
            while not reader.done():
                stream.wake.clear()
                for response in due(stream):
                    await context.write(response)
                self._synced.set()
                waker = asyncio.create_task(stream.wake.wait())
                await asyncio.wait({reader, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
            reader.result()
        finally:
            reader.cancel()
            self.cache.unsubscribe(stream.wake)
            del self.streams[stream_id]
            self._synced.set()
            log.info("xDS stream from %s closed", stream.node or "?")

    async def _read(
        self,
        requests: AsyncIterator[_Request],
        stream: StreamState,
        on_request: Callable[[StreamState, _Request], None],
    ) -> None:
        async for request in requests:
            on_request(stream, request)
            stream.wake.set()

    def record_nack(self, stream: StreamState, type_url: str, version: str, message: str) -> None:
        self.nacks.append(Nack(stream.node, type_url, version, message, time.time()))
        del self.nacks[:-100]
        log.warning(
            "Envoy %s rejected %s version %s: %s", stream.node, _short(type_url), version, message
        )

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def _on_request(self, stream: StreamState, request: discovery_pb2.DiscoveryRequest) -> None:
        if request.node.id and not stream.node:
            stream.node = request.node.id
            log.info("Envoy %s connected over ADS", stream.node)
        state = stream.types.setdefault(request.type_url, TypeState())
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                return  # an answer to a response superseded since: ignore it
            state.answered = True
            if request.HasField("error_detail"):
                state.nacked_version = state.sent_version
                message = request.error_detail.message
                self.record_nack(stream, request.type_url, state.sent_version or "", message)
            else:
                state.acked_version = state.sent_version
        state.requested = True
        names = frozenset(request.resource_names)
        wildcard = "*" in names or (not names and request.type_url in WILDCARD_TYPES)
        state.names = None if wildcard else names

    def _due(self, stream: StreamState) -> list[discovery_pb2.DiscoveryResponse]:
        """Responses to send now, clusters first."""
        out = []
        for type_url in PUSH_ORDER:
            state = stream.types.get(type_url)
            if state is None or not state.requested:
                continue
            if type_url == CLUSTER and not state.answered:
                break  # clusters are warming: the rest waits for their answer
            if not state.answered:
                continue
            version = self.cache.versions[type_url]
            held = self.cache.resources(type_url)
            if type_url == CLUSTER:
                # make before break: a cluster leaves only once no route Envoy holds names it
                kept = {n: a for n, a in state.sent.items() if n not in held}
                if kept and not self._routes_current(stream):
                    version, held = f"{version}+kept", {**held, **kept}
            if state.sent_version == version and state.sent_names == state.names:
                continue
            out.append(self._response(state, type_url, version, held))
            if type_url == CLUSTER:
                break
        return out

    def _routes_current(self, stream: StreamState) -> bool:
        for type_url in (LISTENER, ROUTE):
            state = stream.types.get(type_url)
            if state is None or not state.requested:
                continue
            if not state.answered or state.sent_version != self.cache.versions[type_url]:
                return False
        return True

    def _response(
        self, state: TypeState, type_url: str, version: str, held: Mapping[str, any_pb2.Any]
    ) -> discovery_pb2.DiscoveryResponse:
        names = held.keys() if state.names is None else [n for n in state.names if n in held]
        state.sent_version = version
        state.sent_names = state.names
        state.sent = {name: held[name] for name in names}
        state.nonce = self.next_nonce()
        state.answered = False
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=[state.sent[name] for name in sorted(state.sent)],
            type_url=type_url,
            nonce=state.nonce,
        )


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def _hash(value: bytes) -> str:
    return hashlib.blake2b(value, digest_size=8).hexdigest()


async def start_server(server: AdsServer, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Serves ADS on host:port (0 = any free port); returns the server and the bound port."""
    grpc_server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, grpc_server)
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    await grpc_server.start()
    return grpc_server, bound
