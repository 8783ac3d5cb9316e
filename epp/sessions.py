"""Sessions: a conversation stays on the pod that holds its context, without a routing key.

Every answer carries a session token (`x-session-token`): the pool and pod it was served by,
signed with HMAC-SHA256, so any EPP replica that shares the key honours it and a client cannot
forge one that aims at an address of its choosing (a token is only ever a preference among the
pool's own endpoints). An agent that sends its own session id in a configured header
(`--session-header`) is held the same way: the EPP remembers the pod of each id (a bounded
LRU map in this replica). A held request goes to its pod while that pod is offered, healthy and
not saturated (room in its batch, a short queue, KV cache under the saturation mark); the pod
still passes through the route's profile alone, so the prefix scorers see where the session's
context went. Otherwise it moves to the profile's best pick and the answer says so
(`x-session-moved: unavailable | saturated`), with a token for the new pod. Neighbours:
`epp.director` calls `held` and `token`; `epp.admission.rooms` says what room is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from epp.admission.rooms import has_queue_room
from epp.settings import SaturationSettings
from epp.types import EndpointState

TOKEN_HEADER = "x-session-token"
MOVED_HEADER = "x-session-moved"
MOVED_UNAVAILABLE = "unavailable"  # the pod left the pool, failed, or was drained
MOVED_SATURATED = "saturated"  # the pod has no room
_SIGNATURE_BYTES = 16
_MAX_TOKENS = 4096  # (pool, pod) tokens kept signed


@dataclass(frozen=True, slots=True)
class Hold:
    """Where a request's session is held: the endpoint to take (None: schedule freely) and,
    when it had a pod but must move, why."""

    endpoint: EndpointState | None = None
    moved: str | None = None


NO_HOLD = Hold()


class Sessions:
    def __init__(
        self,
        key: bytes | None = None,
        header: str | None = None,
        saturation: SaturationSettings | None = None,
        max_remembered: int = 100_000,
    ) -> None:
        self._key = key or os.urandom(32)
        self._header = header.lower() if header else None
        self._saturation = saturation or SaturationSettings()
        self._max = max_remembered
        self._remembered: OrderedDict[str, str] = OrderedDict()  # "pool\0id" -> address
        # (pool, address) -> its token: a token is the same for every answer from one pod, so
        # it is signed once (an HMAC per answer was ~4 % of a decision's CPU)
        self._tokens: dict[tuple[str, str], str] = {}

    def held(
        self,
        headers: Mapping[str, str],
        pool: str,
        ready: Callable[[], Sequence[EndpointState]],
    ) -> Hold:
        """The endpoint this request's session holds, if it may still take it. `ready` gives
        the pool's ready endpoints, asked only when the request names a pod: the session's own
        room test judges its pod, not admission's offer (a request of unknown length may be
        offered no pod with a free slot while its pod still has room)."""
        address = self._pod_of(headers, pool)
        if address is None:
            return NO_HOLD
        for state in ready():
            if state.address == address:
                if not state.healthy:
                    return Hold(None, MOVED_UNAVAILABLE)
                return Hold(state) if self._has_room(state) else Hold(None, MOVED_SATURATED)
        return Hold(None, MOVED_UNAVAILABLE)

    def token(self, headers: Mapping[str, str], pool: str, address: str) -> str:
        """The token for a request served by `address`; a header session remembers it too."""
        session = headers.get(self._header) if self._header else None
        if session:
            key = f"{pool}\0{session}"
            self._remembered[key] = address
            self._remembered.move_to_end(key)
            if len(self._remembered) > self._max:
                self._remembered.popitem(last=False)
        token = self._tokens.get((pool, address))
        if token is None:
            if len(self._tokens) >= _MAX_TOKENS:  # pods come and go: start over now and then
                self._tokens.clear()
            payload = f"{pool}\n{address}".encode()
            token = self._tokens[pool, address] = f"{_b64(payload)}.{_b64(self._sign(payload))}"
        return token

    def _pod_of(self, headers: Mapping[str, str], pool: str) -> str | None:
        token = headers.get(TOKEN_HEADER)
        if token:
            named = self._verify(token)
            if named is not None and named[0] == pool:
                return named[1]
        session = headers.get(self._header) if self._header else None
        if session:
            return self._remembered.get(f"{pool}\0{session}")
        return None

    def _verify(self, token: str) -> tuple[str, str] | None:
        """(pool, address) of a token this key signed; None for anything else."""
        body, _, signature = token.partition(".")
        try:
            payload = _unb64(body)
            given = _unb64(signature)
        except (ValueError, binascii.Error):
            return None
        if not hmac.compare_digest(given, self._sign(payload)):
            return None
        pool, _, address = payload.decode("utf-8", "replace").partition("\n")
        return (pool, address) if address else None

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def _has_room(self, state: EndpointState) -> bool:
        """Room for the session's next turn: a batch slot (or a short queue) and KV cache to
        spare, by the same marks that call a pool saturated."""
        m, s = state.metrics, self._saturation
        return has_queue_room(state) and m.waiting <= s.queue_depth and m.kv_usage < s.kv_cache_util


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
