"""One request, top to bottom: parse → resolve model → choose split → admit → schedule → result.

`Director.handle` is synchronous: there is no await between reading the snapshot and returning
the decision. `Director.finish` ends the request's accounting (exactly once, via the lease).
Neighbours: `epp.extproc` translates Envoy messages to and from these calls; `epp.datastore`
supplies snapshots; `epp.scheduling` ranks endpoints. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import orjson
import xxhash

from epp.api.model import PRIORITY_STANDARD, ModelRoute, Pool, SplitTarget
from epp.api.priority import POLICY_HEADER, POOL_HEADER, parse_policy
from epp.datastore import Datastore, Lease
from epp.errors import BadRequest, ModelNotFound, NoEndpoints, RequestTooLarge, Shed
from epp.flowcontrol import FlowControl
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.service_time import TYPICAL_OUTPUT_TOKENS, predict
from epp.scheduling.registry import DEFAULT_PROFILE, select_profile
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.scheduler import Profile
from epp.settings import ProtocolSettings, SaturationSettings
from epp.types import EndpointState

CHARS_PER_TOKEN = 4
# a critical request waits this long for a free batch slot before queueing inside a server
CRITICAL_QUEUE_AFTER = 0.5
# a waiting request declines room where it would finish later than on the best endpoint by more
# than this share of a typical request's time on the fastest one
DECLINE_AFTER = 0.5


@dataclass(slots=True)
class Decision:
    """What the director decided for one request; extproc turns it into Envoy mutations."""

    request_id: str
    pool: str
    endpoints: tuple[str, ...]  # primary first, then fallbacks
    body: bytes  # the body to send upstream (rewritten only when the model changed)
    client_model: str
    target_model: str
    priority: int
    version: str | None
    stream: bool
    prompt_tokens: int
    lease: Lease
    started: float
    decided: float

    @property
    def model_rewritten(self) -> bool:
        return self.client_model != self.target_model


@dataclass(slots=True)
class _Patience:
    """When a waiting request, first in line, first declined room (None: not yet). Only that
    wait counts against what a better endpoint would save: time spent with no room at all, or
    behind other waiters, was not its choice."""

    declined_since: float | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    pool: Pool
    target_model: str
    priority: int
    strategy: str
    version: str | None
    ceilings: tuple[tuple[str, float], ...]


class Director:
    def __init__(
        self,
        store: Datastore,
        profiles: Mapping[str, Profile],
        protocol: ProtocolSettings,
        saturation: SaturationSettings,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        flow: FlowControl | None = None,
    ) -> None:
        self._flow = flow
        self._store = store
        self._profiles = profiles
        self._protocol = protocol
        s = saturation
        self._sheddable_reserve = s.sheddable_reserve
        self._detector = SaturationDetector(
            s.queue_depth, s.kv_cache_util, s.staleness_seconds, s.max_in_flight, s.aggregate
        )
        self._clock = clock
        self._rng = rng or random.Random()

    def handle(
        self,
        headers: Mapping[str, str],
        body: bytes,
        subset: Sequence[str] | None = None,
        rewrite: str | None = None,
    ) -> Decision:
        """Decide for a complete request body, without waiting for room. `rewrite` (trusted
        gateways only) forces the target model name."""
        started, payload, client_model, route = self._prepare(headers, body, rewrite)
        return self._decide(started, headers, payload, client_model, body, subset, route)

    async def handle_queued(
        self,
        headers: Mapping[str, str],
        body: bytes,
        subset: Sequence[str] | None = None,
        rewrite: str | None = None,
    ) -> Decision:
        """`handle`, but when the pool has no room the request first waits its turn (flow
        control: best priority first; sheddable requests are refused instead)."""
        started, payload, client_model, route = self._prepare(headers, body, rewrite)
        await self._wait_for_room(route, subset, output_limit(payload), len(body))
        return self._decide(started, headers, payload, client_model, body, subset, route)

    async def handle_headers_only(
        self, headers: Mapping[str, str], subset: Sequence[str] | None = None
    ) -> Decision:
        """Envoy streams the body after routing (STREAMED mode): decide from the x-model-name
        header; the body passes unchanged, so no model rewrite is possible."""
        started = self._clock()
        model = headers.get("x-model-name", "")
        if not model:
            raise BadRequest(
                "the x-model-name header is required when the proxy streams request bodies"
            )
        route = replace(self._resolve(model, headers, None), target_model=model)
        await self._wait_for_room(route, subset, None)
        return self._decide(started, headers, None, model, b"", subset, route)

    def _prepare(
        self, headers: Mapping[str, str], body: bytes, rewrite: str | None
    ) -> tuple[float, dict[str, object], str, _Route]:
        started = self._clock()
        # 1. parse the OpenAI body
        payload, client_model = self._parse(body)
        # 2. resolve the model to a pool, a served model and a priority (canary split included)
        return started, payload, client_model, self._resolve(client_model, headers, rewrite)

    async def _wait_for_room(
        self,
        route: _Route,
        subset: Sequence[str] | None,
        output_tokens: int | None,
        size: int = 0,
    ) -> None:
        flow = self._flow
        if flow is None or route.priority < 0:
            return  # sheddable requests never wait: no room means 429
        key, since = route.pool.key, self._clock()
        critical = route.priority > 0
        patience = _Patience()
        # a critical request holding out for a free slot looks again when that ends, even if
        # nothing else happens meanwhile
        timer = (
            asyncio.get_running_loop().call_later(CRITICAL_QUEUE_AFTER, flow.notify, key)
            if critical
            else None
        )
        try:
            await flow.wait_for_room(
                key,
                route.priority,
                lambda first: self._room(
                    route.pool, subset, since, output_tokens, critical, first, patience
                ),
                size,
            )
        finally:
            if timer is not None:
                timer.cancel()

    def _room(
        self,
        pool: Pool,
        subset: Sequence[str] | None,
        since: float,
        output_tokens: int | None,
        critical: bool,
        first: bool,
        patience: _Patience,
    ) -> bool:
        """Whether this waiting request may go now (`FlowControl` asks on every wake-up;
        `first`: nothing of its priority waits ahead of it)."""
        try:
            candidates = self._candidates(pool, subset)
        except NoEndpoints:
            return True  # let the request through to get its 503 now
        now = self._clock()
        if critical:
            return _free_slot(candidates, now - since)
        room = [c.has_room for c in candidates]
        if not any(room):
            return False
        declined = patience.declined_since
        waited = 0.0 if declined is None else now - declined
        if _room_worth_taking(candidates, room, waited, output_tokens):
            return True
        if first and declined is None:
            patience.declined_since = now  # its own choice to wait starts now
        return False

    def _decide(
        self,
        started: float,
        headers: Mapping[str, str],
        payload: dict[str, object] | None,
        client_model: str,
        body: bytes,
        subset: Sequence[str] | None,
        route: _Route,
    ) -> Decision:
        request_id = headers.get("x-request-id") or str(uuid.uuid4())
        # 3. rewrite the body only when the server must be asked for another name
        if payload is None:
            route = replace(route, target_model=client_model)
        elif route.target_model != client_model:
            payload["model"] = route.target_model
            body = orjson.dumps(payload)
        # 4. candidates: the pool's healthy endpoints, narrowed by the proxy's subset hint
        candidates = self._candidates(route.pool, subset)
        # 5. admit: sheddable requests are dropped when the pool is saturated or full; with
        # flow control, only endpoints with room are offered to the scheduler
        if route.priority < 0:  # a sheddable request leaves part of each batch free
            with_room = [c for c in candidates if c.has_room_keeping(self._sheddable_reserve)]
            if not with_room or self._detector.saturated(candidates, started):
                raise Shed("system saturated, sheddable request dropped")
        elif self._flow is not None:  # only flow control narrows to endpoints with room
            with_room = [c for c in candidates if c.has_room]
            if route.priority > 0:  # critical: a free batch slot beats a queue on a faster pod
                with_room = (
                    [c for c in with_room if _free(c)]
                    or [c for c in with_room if _probe(c)]
                    or with_room
                )
        else:
            with_room = []
        if self._flow is not None and with_room:
            candidates = with_room
        # 6. schedule
        prompt = prompt_text(payload) if payload is not None else b""
        prompt_tokens = max(1, len(prompt) // CHARS_PER_TOKEN)
        served = route.pool.served_model
        adapter = route.target_model if served and route.target_model != served else None
        request = SchedulingRequest(
            request_id,
            route.target_model,
            route.priority,
            prompt_tokens,
            prompt,
            adapter,
            route.ceilings,
            max_output_tokens=output_limit(payload) if payload is not None else None,
        )
        profile = select_profile(self._profiles, route.strategy, route.priority)
        picked = profile.schedule(request, candidates, 1 + self._protocol.fallback_endpoints)
        # 7. account the pick at once: polled metrics lag behind bursts
        lease = self._store.lease(picked[0].address, prompt_tokens)
        if self._flow is not None:
            self._flow.notify(route.pool.key)  # room may remain: the next waiter may go
        return Decision(
            request_id,
            route.pool.key,
            tuple(p.address for p in picked),
            body,
            client_model,
            route.target_model,
            route.priority,
            route.version,
            payload is not None and payload.get("stream") is True,
            prompt_tokens,
            lease,
            started,
            self._clock(),
        )

    def handle_bodyless(self, headers: Mapping[str, str]) -> str:
        """A request without a body (GET /v1/models): any ready endpoint of any pool."""
        pools = self._store.pools()
        candidates = [c for p in pools for c in self._store.candidates(p.key) if c.healthy]
        if not candidates:
            raise NoEndpoints("no ready endpoint in any pool")
        return self._rng.choice(candidates).address

    def finish(
        self, decision: Decision, streamed_seconds: float = 0.0, output_tokens: int = 0
    ) -> None:
        """End the request's accounting. A streamed response's pace (`output_tokens` over the
        `streamed_seconds` after its first byte) teaches the endpoint's speed."""
        decision.lease.release()
        if output_tokens > 1 and streamed_seconds > 0:
            self._store.record_tokens(decision.lease.address, streamed_seconds, output_tokens)

    def early_pace(self, decision: Decision, streamed_seconds: float, output_tokens: int) -> None:
        """A response still streaming shows the pace of an endpoint not measured yet: long
        answers take many seconds to finish, and until then a slow GPU would look like any
        other (the first requests of a fresh pool would land on it blind)."""
        address = decision.lease.address
        self._store.record_tokens(address, streamed_seconds, output_tokens, first_only=True)

    def move_lease(self, decision: Decision, address: str) -> None:
        """The proxy served the request elsewhere (a fallback): account it where it ran."""
        tokens = decision.lease.tokens
        decision.lease.release()
        decision.lease = self._store.lease(address, tokens)

    # ---- steps -----------------------------------------------------------------------------
    def _parse(self, body: bytes) -> tuple[dict[str, object], str]:
        if len(body) > self._protocol.max_body_bytes:
            raise RequestTooLarge(
                f"request body is {len(body)} bytes; the limit is {self._protocol.max_body_bytes}"
            )
        if not body:
            raise BadRequest("request body is empty; expected a JSON object")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadRequest("request body must be a JSON object")
        model = payload.get("model")
        if model is None:
            raise BadRequest("model not found in request body")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' must be a non-empty string")
        return payload, model

    def _resolve(
        self, client_model: str, headers: Mapping[str, str], rewrite: str | None
    ) -> _Route:
        trusted = self._protocol.trust_control_headers
        pin = headers.get(POOL_HEADER) if trusted else None
        model = self._store.model(client_model)
        if model is None:
            route = self._default_route(client_model, pin)
        else:
            route = self._model_route(model, client_model, pin, headers)
        policy_text = headers.get(POLICY_HEADER) if trusted else None
        policy = parse_policy(policy_text) if policy_text else None
        if policy is not None:
            priority = policy.decide(headers.get(policy.header), model.priority if model else None)
            route = replace(route, priority=priority)
        return replace(route, target_model=rewrite) if rewrite else route

    def _model_route(
        self, model: ModelRoute, client_model: str, pin: str | None, headers: Mapping[str, str]
    ) -> _Route:
        splits, pool_key = model.splits, model.pool
        if pin is not None and self._store.pool(pin) is not None:
            # the proxy already chose this pool (weighted backendRefs): split only within it
            splits = tuple(s for s in splits if (s.pool or model.pool) == pin)
            pool_key = pin
        target = version = None
        if splits:
            sticky = self._protocol.sticky_header
            split = self._weighted(splits, headers.get(sticky) if sticky else None, model.key)
            pool_key = split.pool or pool_key
            target, version = split.model, split.version
        pool = self._store.pool(pool_key) or self._store.pool(model.pool)
        if pool is None:
            raise NoEndpoints(f"InferencePool {model.pool} of model {client_model!r} is not known")
        ceilings = tuple((c.name, c.target) for c in model.ceilings)
        served = target or pool.served_model or client_model
        return _Route(pool, served, model.priority, model.strategy, version, ceilings)

    def _default_route(self, client_model: str, pin: str | None = None) -> _Route:
        pools = self._store.pools()
        pinned = self._store.pool(pin) if pin else None
        if pinned is not None or not self._protocol.require_registered_models:
            by_served = [p for p in pools if p.served_model == client_model]
            if pinned is not None or by_served or len(pools) == 1:
                pool = pinned or (by_served or list(pools))[0]
                target = pool.served_model or client_model
                return _Route(pool, target, PRIORITY_STANDARD, DEFAULT_PROFILE, None, ())
        raise ModelNotFound(f"The model `{client_model}` does not exist.")

    def _weighted(
        self, splits: Sequence[SplitTarget], sticky_key: str | None, salt: str
    ) -> SplitTarget:
        """A split by weight: random, or fixed per user when a sticky key is given."""
        total = sum(s.weight for s in splits)
        if sticky_key:
            point = xxhash.xxh64_intdigest(f"{salt}\0{sticky_key}".encode()) / 2**64 * total
        else:
            point = self._rng.random() * total
        for split in splits:
            point -= split.weight
            if point < 0:
                return split
        return splits[-1]

    def _candidates(self, pool: Pool, subset: Sequence[str] | None) -> list[EndpointState]:
        states = self._store.candidates(pool.key)
        if subset is not None:
            wanted = set(subset)
            states = tuple(s for s in states if s.address in wanted or _host(s.address) in wanted)
            if not states:
                raise NoEndpoints("no endpoint of the pool matches the proxy's subset hint")
        healthy = [s for s in states if s.healthy]
        if not healthy:
            raise NoEndpoints(f"no ready endpoint in InferencePool {pool.key}")
        return healthy


def prompt_text(payload: Mapping[str, object]) -> bytes:
    """The text a prefix cache would see: chat turns with role markers, or the completion prompt.

    Only string contents count (and the text parts of multi-part contents); the same
    conversation prefix always yields the same leading bytes.
    """
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            if isinstance(content, str):
                parts.append(f"<|im_start|>{message.get('role', '')}\n{content}<|im_end|>\n")
        return "".join(parts).encode()
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt.encode()
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "".join(prompt).encode()
    return b""


def _free_slot(candidates: Sequence[EndpointState], waited: float) -> bool:
    """Room for a critical request: a free slot in some batch. Queued inside a server it would
    wait for that server's next finished request; waiting here, for the first one anywhere (a
    pool of N servers frees slots N times as often). After a short wait any room will do, so
    the learned limits can still grow under critical-only traffic."""
    if any(c.healthy and _free(c) for c in candidates):
        return True
    return waited >= CRITICAL_QUEUE_AFTER and any(c.healthy and _probe(c) for c in candidates)


def _room_worth_taking(
    candidates: Sequence[EndpointState],
    room: Sequence[bool],
    waited: float,
    output_tokens: int | None,
) -> bool:
    """Room for a standard request: an endpoint with room where it would not finish much later
    than on the best endpoint, full ones included (their queue counted). A long request
    declines a free slot on a slow GPU while a fast one frees up soon enough; the time it has
    `waited` since it first declined counts against the gain, so it never holds out for longer
    than it would lose. `room`: each candidate's `has_room`, some of them true."""
    if all(room):
        return True
    found = predict(candidates, output_tokens, TYPICAL_OUTPUT_TOKENS)
    if found is None:
        return True
    predicted, fastest = found
    best_with_room = min(p for p, ok in zip(predicted, room, strict=True) if ok)
    slack = DECLINE_AFTER * TYPICAL_OUTPUT_TOKENS * fastest + waited
    return best_with_room - min(predicted) <= slack


def _probe(state: EndpointState) -> bool:
    """The batch is full but nothing queues behind it: one request may wait there, first in
    line for that server's next free slot, and shows whether it can run more than learned."""
    return state.limit == 0 or state.load <= state.limit


def _free(state: EndpointState) -> bool:
    """A free slot in the endpoint's batch (or no limit learned yet)."""
    return state.limit == 0 or state.load < state.limit


def output_limit(payload: Mapping[str, object]) -> int | None:
    """The completion's token bound (`max_completion_tokens`, else `max_tokens`), if valid."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _host(address: str) -> str:
    """The host part of an address: subset entries may name a host without its port."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host
