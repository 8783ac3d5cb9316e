"""One request, top to bottom: parse → route → admit → schedule → lease.

`Director.handle` is the whole request path for complete bodies, bodies that follow the routing
decision and requests without a body alike. The only wait is admission's (the waiting room);
there is no await between the snapshot admission returns and the pick. The lease counts the
request on its endpoint at once, because polled metrics lag behind bursts; the request tracker
(`epp.tracking`) releases it when the response ends. Neighbours: `epp.request` reads the body,
`epp.routing` chooses the route, `epp.admission` admits, `epp.scheduling` ranks endpoints,
`epp.datastore` supplies snapshots and leases. Nothing here knows gRPC, HTTP or the clock's
source.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from epp.admission.controller import AdmissionController, Offer
from epp.datastore import Datastore, Lease
from epp.request import API_NONE, Body, read
from epp.routing import Route, Router
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.latency import Prediction
from epp.scheduling.output_length import OutputLengths
from epp.scheduling.registry import select_profile
from epp.scheduling.scheduler import Profile
from epp.sessions import NO_HOLD, Sessions
from epp.settings import ProtocolSettings


@dataclass(slots=True)
class Decision:
    """What the director decided for one request; the edge turns it into proxy mutations."""

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
    api: str = ""  # the request's API (`epp.request.API_*`)
    output_limit: int | None = None  # the client's max_tokens (a cap)
    prediction: Prediction | None = None  # the pick's predicted TTFT and TPOT
    objectives: tuple[float | None, float | None] = (None, None)  # TTFT, TPOT (ms)
    session_token: str | None = None  # names the pod for the session's next request
    session_moved: str | None = None  # why the session left the pod it was held on

    @property
    def model_rewritten(self) -> bool:
        return self.client_model != self.target_model

    @property
    def runs_inference(self) -> bool:
        """False for a request without a body (GET /v1/models): no model runs it."""
        return self.api != API_NONE


class Director:
    def __init__(
        self,
        store: Datastore,
        router: Router,
        admission: AdmissionController,
        profiles: Mapping[str, Profile],
        protocol: ProtocolSettings,
        clock: Callable[[], float] = time.monotonic,
        lengths: OutputLengths | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self.lengths = lengths or OutputLengths()
        self.latency = admission.latency  # what responses show is fed back to it
        self.sessions = sessions or Sessions()
        self._store = store
        self._router = router
        self._admission = admission
        self._profiles = profiles
        self._protocol = protocol
        self._clock = clock

    async def handle(
        self,
        headers: Mapping[str, str],
        body: bytes | Body,
        subset: Sequence[str] | None = None,
        rewrite: str | None = None,
    ) -> Decision:
        """Decide where one request goes. `body`: the complete body, or why there is none yet;
        `subset`: the proxy's endpoint subset hint; `rewrite` (trusted gateways only): the
        served model name to ask for."""
        started = self._clock()
        request_id = headers.get("x-request-id") or str(uuid.uuid4())
        # 1. parse: the body is read once into the request value
        request = read(headers, body, self._protocol.max_body_bytes)
        # 2. route: the client's model → pool, served model, priority, profile, canary version
        route = self._router.route(request, headers, rewrite)
        # 3. admit: wait for room (or be refused); the endpoints the request is offered. The
        # answer's length is planned from what this model's answers have been (a cap is a cap);
        # the ticket says its flow (its turn among tenants), TTL and latency objectives
        plan = self.lengths.plan(route.target_model, request.output_limit)
        ticket = self._admission.ticket(headers, route.defaults)
        scheduling = SchedulingRequest(
            request_id,
            route.target_model,
            route.priority,
            request.prompt_tokens,
            request.prompt,
            _adapter(route),
            route.ceilings,
            max_output_tokens=request.output_limit,
            expected_output_tokens=plan.expected,
            typical_output_tokens=plan.typical,
            payload=request.payload,
        )
        profile = select_profile(self._profiles, route.strategy, route.priority)
        # a free slot is room where the pod's free KV takes the prompt's new tokens: on a pod
        # holding its prefix (as the profile's prefix scorers see it) only the rest is new
        candidates = await self._admission.admit(
            request,
            route.pool.key,
            route.priority,
            subset,
            plan,
            ticket,
            cached=partial(profile.held_tokens, scheduling),
        )
        # 4. schedule: the route's profile ranks the offered endpoints, or passes the pod that
        # holds the request's session while it may still take it
        warm_only = candidates.warm_only if isinstance(candidates, Offer) else None
        inference = request.runs_inference
        pool_key = route.pool.key
        hold = (
            self.sessions.held(headers, pool_key, lambda: self._store.ready(pool_key, subset))
            if inference
            else NO_HOLD
        )
        offered = candidates if hold.endpoint is None else (hold.endpoint,)
        picked = profile.schedule(
            scheduling, offered, 1 + self._protocol.fallback_endpoints, warm_only
        )
        # 5. lease: the pick counts on its endpoint at once (the waiting room hears of it); its
        # predicted latency is kept, to learn from what the response shows
        prediction = self._admission.predict(picked[0], request.prompt_tokens)
        lease = self._store.lease(picked[0].address, request.prompt_tokens)
        self._admission.started(route.pool.key, ticket, lease)
        token = (
            self.sessions.token(headers, route.pool.key, picked[0].address) if inference else None
        )
        return Decision(
            request_id,
            route.pool.key,
            tuple(p.address for p in picked),
            request.body_for(route.target_model),
            request.model,
            route.target_model,
            route.priority,
            route.version,
            request.stream,
            request.prompt_tokens,
            lease,
            started,
            self._clock(),
            request.api,
            request.output_limit,
            prediction if request.runs_inference else None,
            (ticket.ttft_ms, ticket.tpot_ms),
            token,
            hold.moved,
        )


def _adapter(route: Route) -> str | None:
    """The LoRA adapter asked for: a served name other than the pool's base model."""
    served = route.pool.served_model
    target = route.target_model
    return target if served and target and target != served else None
