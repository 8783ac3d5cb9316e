"""Pools, models and endpoints, with each endpoint's latest signals, as immutable snapshots.

Sources call `apply_resources`; the scraper and GPU poller call `set_metrics` / `set_health` /
`set_gpu` (an engine's inter-token latency counters become the endpoint's pace; the request
tracker measures it from responses where they are missing); the director reads
`candidates(pool)` and takes an in-flight `Lease` per pick. Other EPP replicas' in-flight counts
(`set_peer_in_flight`, from `epp.peers`) add to this replica's own in each endpoint's state. Every
endpoint state is replaced whole, never edited, so a tuple handed to the scheduler stays
consistent; asyncio rebinding is atomic, so the hot path takes no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from epp.answer_lengths import AnswerBatch, EngineAnswers
from epp.api.model import ModelRoute, PodInfo, Pool, ResourceSet
from epp.cache_hits import CacheHits
from epp.errors import NoEndpoints
from epp.hardware import HEALTH_DRAIN, capacity_of
from epp.prefill_pace import PrefillPaces
from epp.types import Endpoint, EndpointMetrics, EndpointState, GpuMetrics

log = logging.getLogger(__name__)

ENGINE_LABEL = "inference.networking.k8s.io/engine-type"
TPOT_SMOOTHING = 0.2
# output tokens of an engine's inter-token latency histogram per pace sample: the first sample
# comes early (an unmeasured slow GPU must show soon), later ones weigh about one answer each
FIRST_PACE_TOKENS = 24
PACE_TOKENS = 128


def format_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def endpoints_of(pool: Pool, pods: Iterable[PodInfo]) -> list[Endpoint]:
    """The pool's endpoints: every ready, selected pod with an IP, once per target port."""
    selector = pool.selector
    found: list[Endpoint] = []
    for pod in pods:
        if pod.namespace != pool.namespace or not pod.ready or pod.deleting or not pod.ip:
            continue
        labels = dict(pod.labels)
        if not selector or any(labels.get(k) != v for k, v in selector):
            continue
        engine = labels.get(ENGINE_LABEL, "vllm")
        capacity = pod.capacity if pod.capacity is not None else capacity_of(pod.accelerator)
        found.extend(
            Endpoint(
                format_address(pod.ip, port),
                pod.key,
                pool.key,
                pod.labels,
                engine,
                pod.accelerator,
                pod.max_num_seqs or 0,
                capacity,
                pod.device_health,
                pod.kv_events,
                pod.kv_events_replay,
            )
            for port in pool.target_ports
        )
    return found


def _host(address: str) -> str:
    """The host part of an address: subset entries may name a host without its port."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


class Lease:
    """One request's claim on an endpoint; `release` is idempotent so cleanup paths can race."""

    __slots__ = ("_store", "address", "on_release", "released", "tokens")

    def __init__(self, store: Datastore, address: str, tokens: int) -> None:
        self._store = store
        self.address = address
        self.tokens = tokens
        self.released = False
        # told first when the lease ends (before the waiting room hears of the free room)
        self.on_release: Callable[[], None] | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.on_release is not None:
                self.on_release()
            self._store._adjust_in_flight(self.address, -1, -self.tokens)


class LimitLearner(Protocol):
    """Learns an endpoint's batch limit from its scrapes (`epp.admission.limits`)."""

    def learn(self, endpoint: Endpoint, metrics: EndpointMetrics, learned: int) -> int | None:
        """The new learned limit, or None when it stays `learned` (0: none yet)."""
        ...

    def forget(self, address: str) -> None: ...


class Datastore:
    def __init__(self, learner: LimitLearner | None = None) -> None:
        """`learner`: where batch limits are learned from scrapes (None: only declared ones)."""
        self._learner = learner
        self._pools: dict[str, Pool] = {}
        self._models: dict[str, ModelRoute] = {}
        self._states: dict[str, dict[str, EndpointState]] = {}  # pool key → address → state
        # address → the pools it serves in (pools may share pods: one scrape feeds them all)
        self._pools_of: dict[str, tuple[str, ...]] = {}
        self._by_pod: dict[str, list[str]] = {}  # "ns/pod" and bare "pod" → addresses
        self._cached: dict[str, tuple[EndpointState, ...]] = {}
        self._metrics: dict[str, EndpointMetrics] = {}
        # in-flight total (requests, prompt tokens) when each was last scraped
        self._at_scrape: dict[str, tuple[int, int]] = {}
        self._gpu: dict[str, GpuMetrics] = {}  # pod key → gpu
        self._in_flight: dict[str, tuple[int, int]] = {}  # this replica's own leases
        self._peer_flights: dict[str, tuple[int, int]] = {}  # the other replicas' together
        self._in_flight_listeners: list[Callable[[], None]] = []
        # address → how many times its in-flight count (own or peers') changed: the scraper
        # knows a pod's load moved since a scrape when this did (`load_changes`)
        self._load_changes: dict[str, int] = {}
        self._health: dict[str, bool] = {}
        self._limits: dict[str, int] = {}  # learned concurrency limit per address
        self._tpot: dict[str, float] = {}  # moving average of seconds per output token
        self._tpot_spread: dict[str, float] = {}  # moving mean deviation of its samples
        self._pace_from: dict[str, tuple[float, float]] = {}  # engine ITL sum, count at last sample
        self._prefill = PrefillPaces()  # seconds per computed prompt token, from engine counters
        self._hits = CacheHits()  # share of prompt tokens found cached, from engine counters
        self._answers = EngineAnswers()
        # where batches of answers the engines report go (the output-length model); None: nowhere
        self.on_answers: Callable[[AnswerBatch], None] | None = None
        self._listeners: list[Callable[[str], None]] = []
        self.synced = False

    # ---- resources -------------------------------------------------------------------------
    def apply_resources(self, resources: ResourceSet, extra_pods: Sequence[PodInfo] = ()) -> None:
        pods = (*resources.pods, *extra_pods)
        pools = {p.key: p for p in resources.pools}
        endpoints = {key: endpoints_of(pool, pods) for key, pool in pools.items()}
        self._replace(pools, endpoints)
        self._models = {m.model_name: m for m in resources.models}
        self.synced = True

    def set_static_pool(self, pool: Pool, addresses: Sequence[str]) -> None:
        """Serve one pool of exactly these addresses (`epp serve --endpoints`), no manifests."""
        eps = [Endpoint(a, a, pool.key) for a in addresses]
        self._replace({pool.key: pool}, {pool.key: eps})
        self._models = {}
        self.synced = True

    def _replace(self, pools: dict[str, Pool], endpoints: dict[str, list[Endpoint]]) -> None:
        states: dict[str, dict[str, EndpointState]] = {}
        pools_of: dict[str, tuple[str, ...]] = {}
        for key, eps in endpoints.items():
            old = self._states.get(key, {})
            per_pool: dict[str, EndpointState] = {}
            for ep in eps:
                previous = old.get(ep.address)
                if previous is not None and previous.endpoint == ep:
                    per_pool[ep.address] = previous
                else:
                    per_pool[ep.address] = self._fresh_state(ep)
                pools_of[ep.address] = (*pools_of.get(ep.address, ()), key)
            states[key] = per_pool
        for gone in set(self._pools_of) - set(pools_of):
            self._metrics.pop(gone, None)
            self._at_scrape.pop(gone, None)
            self._load_changes.pop(gone, None)
            self._health.pop(gone, None)
            self._limits.pop(gone, None)
            if self._learner is not None:
                self._learner.forget(gone)
            self._tpot.pop(gone, None)
            self._tpot_spread.pop(gone, None)
            self._pace_from.pop(gone, None)
            self._prefill.forget(gone)
            self._hits.forget(gone)
            self._answers.forget(gone)
        by_pod: dict[str, list[str]] = {}
        for per_pool in states.values():
            for address, state in per_pool.items():
                pod = state.endpoint.pod
                by_pod.setdefault(pod, []).append(address)
                if "/" in pod:  # GPU series without a namespace label name the bare pod
                    by_pod.setdefault(pod.split("/", 1)[1], []).append(address)
        self._pools, self._states, self._pools_of, self._by_pod = pools, states, pools_of, by_pod
        self._cached = {}

    def _fresh_state(self, ep: Endpoint) -> EndpointState:
        flights, tokens = self._in_flight_total(ep.address)
        at_flights, at_tokens = self._at_scrape.get(ep.address, (0, 0))
        return EndpointState(
            ep,
            self._metrics.get(ep.address, EndpointMetrics()),
            self._gpu.get(ep.pod) or self._gpu.get(ep.pod.split("/", 1)[-1], GpuMetrics()),
            flights,
            tokens,
            self._health.get(ep.address, True),
            self._limits.get(ep.address) or ep.max_num_seqs,
            self._tpot.get(ep.address, 0.0),
            self._prefill.get(ep.address),
            flights - at_flights,
            self._tpot_spread.get(ep.address, 0.0),
            tokens - at_tokens,
            self._hits.get(ep.address),
        )

    # ---- reads (hot path) ------------------------------------------------------------------
    def pool(self, key: str) -> Pool | None:
        return self._pools.get(key)

    def pools(self) -> tuple[Pool, ...]:
        return tuple(self._pools.values())

    def model(self, model_name: str) -> ModelRoute | None:
        return self._models.get(model_name)

    def models(self) -> tuple[ModelRoute, ...]:
        return tuple(self._models.values())

    def candidates(self, pool_key: str) -> tuple[EndpointState, ...]:
        """All endpoint states of a pool (healthy or not), as one immutable tuple."""
        cached = self._cached.get(pool_key)
        if cached is None:
            cached = tuple(self._states.get(pool_key, {}).values())
            self._cached[pool_key] = cached
        return cached

    def ready(self, pool_key: str, subset: Sequence[str] | None = None) -> list[EndpointState]:
        """The pool's healthy endpoints (a drained GPU's excluded), narrowed by a proxy's subset
        hint (addresses, or hosts without a port); none is `NoEndpoints` (503)."""
        states = self.candidates(pool_key)
        if subset is not None:
            wanted = set(subset)
            states = tuple(s for s in states if s.address in wanted or _host(s.address) in wanted)
            if not states:
                raise NoEndpoints("no endpoint of the pool matches the proxy's subset hint")
        # a GPU drained for maintenance takes no new request; its in-flight ones finish
        healthy = [
            s
            for s in states
            if s.healthy and HEALTH_DRAIN not in (s.endpoint.device_health, s.gpu.health)
        ]
        if not healthy:
            raise NoEndpoints(f"no ready endpoint in InferencePool {pool_key}")
        return healthy

    def endpoints(self) -> list[Endpoint]:
        return [s.endpoint for per_pool in self._states.values() for s in per_pool.values()]

    # ---- signals ---------------------------------------------------------------------------
    def _update(self, address: str, **changes: object) -> None:
        for pool_key in self._pools_of.get(address, ()):
            per_pool = self._states[pool_key]
            per_pool[address] = replace(per_pool[address], **changes)  # type: ignore[arg-type]
            self._cached.pop(pool_key, None)

    def _set_in_flight(self, address: str) -> None:
        """`_update` of the three in-flight fields from this replica's and its peers' counts,
        twice per request (lease and release): the state is built with its constructor,
        positionally (in `EndpointState`'s field order), at half the cost of
        `dataclasses.replace`."""
        flights, tokens = self._in_flight_total(address)
        at_flights, at_tokens = self._at_scrape.get(address, (0, 0))
        keys = self._pools_of.get(address, ())
        if keys:
            self._load_changes[address] = self._load_changes.get(address, 0) + 1
        for pool_key in keys:
            per_pool = self._states[pool_key]
            s = per_pool[address]
            per_pool[address] = EndpointState(
                s.endpoint,
                s.metrics,
                s.gpu,
                flights,
                tokens,
                s.healthy,
                s.limit,
                s.tpot,
                s.prefill_pace,
                flights - at_flights,
                s.tpot_spread,
                tokens - at_tokens,
                s.cache_hit,
            )
            self._cached.pop(pool_key, None)

    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
        self._metrics[address] = metrics
        self._at_scrape[address] = self._in_flight_total(address)
        changes: dict[str, object] = {
            "metrics": metrics,
            "in_flight_since_scrape": 0,
            "tokens_since_scrape": 0,
        }
        keys = self._pools_of.get(address)
        state = self._states[keys[0]].get(address) if keys else None
        if self._learner is not None and state is not None:
            limit = self._learner.learn(state.endpoint, metrics, self._limits.get(address, 0))
            if limit is not None:
                self._limits[address] = limit
                changes["limit"] = limit
        if metrics.itl_count is not None and metrics.itl_seconds is not None:
            paced = self._engine_pace(address, metrics.itl_seconds, metrics.itl_count)
            if paced is not None:
                changes["tpot"], changes["tpot_spread"] = paced
        prefill = self._prefill.observe(address, metrics, self._tpot.get(address, 0.0))
        if prefill is not None:
            changes["prefill_pace"] = prefill
            log.debug(
                "endpoint %s: prefill pace %.1f us per computed token", address, prefill * 1e6
            )
        hits = self._hits.observe(address, metrics)
        if hits is not None:
            changes["cache_hit"] = hits
        batch = self._answers.observe(address, metrics)
        if batch is not None and self.on_answers is not None:
            self.on_answers(batch)
        self._update(address, **changes)
        self._changed(address)

    def load_changes(self, address: str) -> int:
        """A count that grows whenever a request of this replica or of a peer starts or ends on
        the endpoint: equal counts at two instants mean the EPP changed nothing there between."""
        return self._load_changes.get(address, 0)

    def flights(self, address: str) -> int:
        """Requests of this replica and of its peers in flight on the endpoint."""
        return self._in_flight_total(address)[0]

    def set_health(self, address: str, healthy: bool) -> None:
        if self._health.get(address, True) != healthy:
            log.warning("endpoint %s is now %s", address, "healthy" if healthy else "unhealthy")
        self._health[address] = healthy
        self._update(address, healthy=healthy)

    def set_gpu(self, pod_key: str, gpu: GpuMetrics) -> None:
        self._gpu[pod_key] = gpu
        for address in self._by_pod.get(pod_key, ()):
            self._update(address, gpu=gpu)

    def record_tokens(
        self, address: str, seconds: float, tokens: int, first_only: bool = False
    ) -> None:
        """A response streamed `tokens` output tokens over `seconds` after its first byte.
        `first_only`: a sample taken mid-stream, kept only while nothing else is known."""
        if tokens < 2 or seconds <= 0:
            return
        if first_only and address in self._tpot:
            return
        tpot, spread = self._pace(address, seconds / (tokens - 1))
        self._update(address, tpot=tpot, tpot_spread=spread)

    def engine_paced(self, address: str) -> bool:
        """Whether the endpoint's engine reports its own pace (an inter-token latency histogram),
        so that responses need not be read to measure it."""
        return address in self._pace_from

    def _engine_pace(
        self, address: str, seconds: float, count: float
    ) -> tuple[float, float] | None:
        """A new pace when the engine's histogram grew by enough tokens since the last sample."""
        since = self._pace_from.get(address)
        if since is None or count < since[1] or seconds < since[0]:  # first page, or a restart
            self._pace_from[address] = (seconds, count)
            return None
        tokens = count - since[1]
        if tokens < (PACE_TOKENS if address in self._tpot else FIRST_PACE_TOKENS):
            return None
        self._pace_from[address] = (seconds, count)
        return self._pace(address, (seconds - since[0]) / tokens)

    def _pace(self, address: str, sample: float) -> tuple[float, float]:
        """Take one pace sample: the moving average and its spread (0 before a second one)."""
        old = self._tpot.get(address)
        if old is None:
            tpot = sample
        else:
            tpot = old + TPOT_SMOOTHING * (sample - old)
            # the pace's noise: how far samples stray from the average they update
            off = abs(sample - old)
            spread = self._tpot_spread.get(address)
            self._tpot_spread[address] = (
                off if spread is None else spread + TPOT_SMOOTHING * (off - spread)
            )
        self._tpot[address] = tpot
        return tpot, self._tpot_spread.get(address, 0.0)

    # ---- in-flight accounting --------------------------------------------------------------
    def lease(self, address: str, tokens: int) -> Lease:
        self._adjust_in_flight(address, 1, tokens)
        return Lease(self, address, tokens)

    def _adjust_in_flight(self, address: str, requests: int, tokens: int) -> None:
        flights, toks = self._in_flight.get(address, (0, 0))
        flights, toks = flights + requests, toks + tokens
        if flights <= 0:
            self._in_flight.pop(address, None)
        else:
            self._in_flight[address] = (flights, toks)
        self._set_in_flight(address)
        for listener in self._in_flight_listeners:
            listener()
        # a finished request frees room; a new one may leave room for the next waiter too
        self._changed(address)

    def _in_flight_total(self, address: str) -> tuple[int, int]:
        own, toks = self._in_flight.get(address, (0, 0))
        peers = self._peer_flights.get(address)
        return (own, toks) if peers is None else (own + peers[0], toks + peers[1])

    # ---- other replicas (epp.peers) --------------------------------------------------------
    def own_in_flight(self) -> dict[str, tuple[int, int]]:
        """This replica's own in-flight requests and tokens per address (what it shares)."""
        return dict(self._in_flight)

    def add_in_flight_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` is called whenever this replica's own in-flight counts change."""
        self._in_flight_listeners.append(listener)

    def set_peer_in_flight(self, flights: dict[str, tuple[int, int]]) -> None:
        """The other replicas' in-flight requests and tokens per address, summed: replaces
        what they said before (an address missing has none)."""
        old, self._peer_flights = self._peer_flights, flights
        for address in old.keys() | flights.keys():
            before, after = old.get(address), flights.get(address)
            if before == after or address not in self._pools_of:
                continue
            self._set_in_flight(address)
            if after is None or (before is not None and after[0] < before[0]):
                self._changed(address)  # a peer's request ended: room for a waiter here

    # ---- change notification (flow control wakes queued requests) ----------------------
    def add_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(pool_key)` is called when an endpoint may have gained room."""
        self._listeners.append(listener)

    def _changed(self, address: str) -> None:
        for pool_key in self._pools_of.get(address, ()):
            for listener in self._listeners:
                listener(pool_key)

    def limit_source(self, state: EndpointState) -> str | None:
        """Where an endpoint's batch limit comes from: "learned" from its queue, "pod-spec"
        (`--max-num-seqs`), or None when there is none yet."""
        if not state.limit:
            return None
        return "learned" if self._limits.get(state.address) else "pod-spec"

    def in_flight(self, address: str) -> int:
        return self._in_flight.get(address, (0, 0))[0]
