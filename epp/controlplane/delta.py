"""Incremental (delta) ADS: what `AdsServer.DeltaAggregatedResources` runs for one Envoy.

Per type, `DeltaStream` tracks what Envoy holds (resource name -> content hash from `XdsCache`,
seeded from `initial_resource_versions` on reconnect), its subscription (wildcard for CDS/LDS,
explicit names for RDS/SDS/EDS) and the one unanswered response. A response carries only the
resources whose hash differs from what Envoy holds, and `removed_resources` for those deleted or
subscribed but absent (as the protocol asks). An ACK folds the response into what Envoy holds; a
NACK goes to the server's NACK list and the rejected resources are not resent until the cache
changes. Order as in `xds`: clusters first, and a removed cluster goes only once Envoy has the
current listeners and routes. `sent_version`/`acked_version` are the cache's type versions, so
`AdsServer.synced`, `acked_everywhere` and the plane's status read delta streams unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envoy.service.discovery.v3 import discovery_pb2

from epp.controlplane.xds import (
    CLUSTER,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    WILDCARD_TYPES,
    StreamState,
    TypeState,
)

if TYPE_CHECKING:
    from epp.controlplane.xds import AdsServer

log = logging.getLogger(__name__)

WILDCARD = "*"
Changes = dict[str, str | None]  # name -> content hash to send, or None: removed


@dataclass(slots=True)
class DeltaTypeState(TypeState):
    wildcard: bool = False
    explicit: set[str] = field(default_factory=set)
    have: dict[str, str] = field(default_factory=dict)  # what Envoy accepted: name -> hash
    absent: set[str] = field(default_factory=set)  # Envoy was told these do not exist
    pending: Changes = field(default_factory=dict)  # the unanswered response
    partial: bool = False  # the unanswered response left rejected resources out
    computed_at: str = ""  # the cache version the unanswered response was computed at
    rejected: Changes = field(default_factory=dict)
    rejected_at: str | None = None

    def subscribed(self, name: str) -> bool:
        return self.wildcard or name in self.explicit


class DeltaStream:
    """The delta protocol on one stream; `AdsServer._serve` feeds it requests and writes `due`."""

    def __init__(self, server: AdsServer) -> None:
        self.server = server
        self.stream = StreamState(protocol="delta")
        self.states: dict[str, DeltaTypeState] = {}

    def on_request(self, stream: StreamState, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if request.node.id and not stream.node:
            stream.node = request.node.id
            log.info("Envoy %s connected over delta ADS", stream.node)
        type_url = request.type_url
        state = self.states.get(type_url)
        first = state is None
        if state is None:
            state = self.states[type_url] = DeltaTypeState(requested=True)
            stream.types[type_url] = state
            state.have = dict(request.initial_resource_versions)
            legacy = not request.resource_names_subscribe and not request.resource_names_unsubscribe
            state.wildcard = legacy and type_url in WILDCARD_TYPES
        # the nonce pairs an ACK/NACK with a response; subscription changes apply even when stale
        if request.response_nonce and request.response_nonce == state.nonce and not state.answered:
            self._answer(stream, type_url, state, request)
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
                continue
            state.explicit.add(name)
            if not first:  # Envoy may have forgotten a resource it asks for again: resend it
                state.have.pop(name, None)
                state.absent.discard(name)
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                state.have = {n: v for n, v in state.have.items() if n in state.explicit}
                continue
            state.explicit.discard(name)
            state.absent.discard(name)
            if state.wildcard:
                state.have[name] = ""  # Envoy must be told whether the wildcard still covers it
            else:
                state.have.pop(name, None)

    def _answer(
        self,
        stream: StreamState,
        type_url: str,
        state: DeltaTypeState,
        request: discovery_pb2.DeltaDiscoveryRequest,
    ) -> None:
        state.answered = True
        pending, state.pending = state.pending, {}
        if request.HasField("error_detail"):
            state.nacked_version = state.sent_version
            state.rejected, state.rejected_at = pending, state.computed_at
            message = request.error_detail.message
            self.server.record_nack(stream, type_url, state.sent_version or "", message)
            return
        for name, version in pending.items():
            if version is None:
                state.have.pop(name, None)
                state.absent.add(name)
            elif state.subscribed(name):
                state.have[name] = version
                state.absent.discard(name)
        if not state.partial:
            state.acked_version = state.sent_version

    def due(self, stream: StreamState) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Responses to send now, clusters first."""
        out = []
        for type_url in PUSH_ORDER:
            state = self.states.get(type_url)
            if state is None:
                continue
            if type_url == CLUSTER and not state.answered:
                break  # clusters are warming: the rest waits for their answer
            if not state.answered:
                continue
            response = self._response(type_url, state)
            if response is not None:
                out.append(response)
                if type_url == CLUSTER:
                    break
        return out

    def _changes(self, type_url: str, state: DeltaTypeState) -> tuple[Changes, bool]:
        """What differs between the cache and what Envoy holds; True when a rejected resource
        was left out (the cache did not change since Envoy refused it)."""
        held = self.server.cache.resources(type_url)
        hashes = self.server.cache.resource_versions(type_url)
        wanted = held.keys() if state.wildcard else state.explicit & held.keys()
        changes: Changes = {n: hashes[n] for n in wanted if state.have.get(n) != hashes[n]}
        for name in state.have.keys() | state.explicit:
            if name not in held and name not in state.absent:
                changes[name] = None
        skipped = False
        if state.rejected_at == self.server.cache.versions[type_url]:
            for name, version in state.rejected.items():
                if name in changes and changes[name] == version:
                    del changes[name]
                    skipped = True
        return changes, skipped

    def _routes_current(self) -> bool:
        for type_url in (LISTENER, ROUTE):
            state = self.states.get(type_url)
            if state is not None and (not state.answered or self._changes(type_url, state)[0]):
                return False
        return True

    def _response(
        self, type_url: str, state: DeltaTypeState
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        version = self.server.cache.versions[type_url]
        changes, skipped = self._changes(type_url, state)
        sent_version = version
        dropping = any(v is None and n in state.have for n, v in changes.items())
        if type_url == CLUSTER and dropping and not self._routes_current():
            # make before break: a cluster leaves only once no route Envoy holds names it
            changes = {n: v for n, v in changes.items() if v is not None or n not in state.have}
            sent_version = f"{version}+kept"
        if not changes and not (state.nonce is None and state.wildcard):
            # nothing this Envoy needs (or only what it refused): it holds this version already
            if state.sent_version != sent_version:
                state.sent_version = sent_version
                if not skipped:
                    state.acked_version = sent_version
            return None
        held = self.server.cache.resources(type_url)
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=sent_version,
            type_url=type_url,
            nonce=self.server.next_nonce(),
            removed_resources=sorted(n for n, v in changes.items() if v is None),
        )
        for name in sorted(changes):
            hashed = changes[name]
            if hashed is not None:
                response.resources.add(name=name, version=hashed, resource=held[name])
        state.pending, state.partial, state.computed_at = changes, skipped, version
        state.sent_version, state.nonce, state.answered = sent_version, response.nonce, False
        return response
