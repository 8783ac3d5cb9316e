"""Routing: the client's model and headers → a route (pool, served model, priority, profile).

An InferenceModel names its pool, priority, strategy and ceilings, and may split its traffic by
weight across canary versions (other pools or other served models): random per request, or
fixed per user when a sticky header is configured. An unregistered model takes the default
route: the pool serving that name, or the only pool when that pool does not declare what it
serves (or unknown names are passed on); any other name is unknown (404), and so is every
unregistered one when registration is required. Behind a
trusted gateway, the pool may be pinned by header and the priority decided by the route's
priority policy. Neighbours: `epp.request` supplies the client's model, `epp.datastore` the
resources, `epp.director` calls `route`; nothing here knows the proxy or the wire.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import xxhash

from epp.api.model import (
    NO_DEFAULTS,
    PRIORITY_STANDARD,
    ModelRoute,
    Pool,
    RequestDefaults,
    SplitTarget,
)
from epp.api.priority import POLICY_HEADER, POOL_HEADER, parse_policy
from epp.datastore import Datastore
from epp.errors import ModelNotFound, NoEndpoints
from epp.request import InferenceRequest
from epp.scheduling.registry import DEFAULT_PROFILE
from epp.settings import ProtocolSettings

ANY_ENDPOINT_STRATEGY = "random"  # requests that run no inference go to any ready endpoint


@dataclass(frozen=True, slots=True)
class Route:
    pool: Pool
    target_model: str  # the model name the server is asked for
    priority: int  # > 0 critical, 0 standard, < 0 sheddable
    strategy: str  # the scheduling profile's name
    version: str | None = None  # the canary version chosen, if the model splits
    ceilings: tuple[tuple[str, float], ...] = ()  # (metric, percent) a pod should stay under
    defaults: RequestDefaults = NO_DEFAULTS  # the model's flow, TTL and objectives


class Router:
    def __init__(
        self, store: Datastore, protocol: ProtocolSettings, rng: random.Random | None = None
    ) -> None:
        self._store = store
        self._protocol = protocol
        self._rng = rng or random.Random()

    def route(
        self, request: InferenceRequest, headers: Mapping[str, str], rewrite: str | None = None
    ) -> Route:
        """Where the request goes. `rewrite` (trusted gateways only) forces the served model."""
        if not request.runs_inference:
            return self._any_pool()
        trusted = self._protocol.trust_control_headers
        pin = headers.get(POOL_HEADER) if trusted else None
        model = self._store.model(request.model)
        if model is None:
            route = self._default_route(request.model, pin)
        else:
            route = self._model_route(model, request.model, pin, headers)
        policy_text = headers.get(POLICY_HEADER) if trusted else None
        policy = parse_policy(policy_text) if policy_text else None
        if policy is not None:
            priority = policy.decide(headers.get(policy.header), model.priority if model else None)
            route = replace(route, priority=priority)
        if request.payload is None:  # the body passes unchanged: no name can be rewritten
            return replace(route, target_model=request.model)
        return replace(route, target_model=rewrite) if rewrite else route

    def _model_route(
        self, model: ModelRoute, client_model: str, pin: str | None, headers: Mapping[str, str]
    ) -> Route:
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
            # upstream targets have no version label: the target model names the version
            target, version = split.model, split.version or split.model
        pool = self._store.pool(pool_key) or self._store.pool(model.pool)
        if pool is None:
            raise NoEndpoints(f"InferencePool {model.pool} of model {client_model!r} is not known")
        ceilings = tuple((c.name, c.target) for c in model.ceilings)
        served = target or pool.served_model or client_model
        return Route(
            pool, served, model.priority, model.strategy, version, ceilings, model.defaults
        )

    def _default_route(self, client_model: str, pin: str | None = None) -> Route:
        protocol = self._protocol
        pinned = self._store.pool(pin) if pin else None
        if pinned is not None or not protocol.require_registered_models:
            pools = [pinned] if pinned is not None else list(self._store.pools())
            by_served = [p for p in pools if p.served_model == client_model]
            # a pool that does not say what it serves may serve anything
            passes = len(pools) == 1 and (
                pools[0].served_model is None or protocol.pass_unknown_models
            )
            if not by_served and passes:
                by_served = pools
            if by_served:
                pool = by_served[0]
                target = pool.served_model or client_model
                return Route(pool, target, PRIORITY_STANDARD, DEFAULT_PROFILE)
        raise ModelNotFound(f"The model `{client_model}` does not exist.")

    def _any_pool(self) -> Route:
        """A request no model runs: any pool with a ready endpoint, each endpoint alike."""
        ready = [
            pool
            for pool in self._store.pools()
            for state in self._store.candidates(pool.key)
            if state.healthy
        ]
        if not ready:
            raise NoEndpoints("no ready endpoint in any pool")
        return Route(self._rng.choice(ready), "", PRIORITY_STANDARD, ANY_ENDPOINT_STRATEGY)

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
