"""The EPP's whole request path in virtual time, over simulated vLLM engines, for tenants.

No sockets and no wall clock: `epp.sim.engine` engines advance on a shared virtual clock, every
50 ms a "scrape" copies their queue and KV use into the datastore, and each arrival goes through
the real `Director` (tickets, routing, admission and the waiting room, the default profiles,
leases) with its tenant's headers; a finished answer releases its lease, which wakes the
waiting room. The asyncio loop runs on the same virtual clock (its `time` is the simulation's),
so the waiting room's TTL timers fire in virtual time too.
Used by tests/bench/test_bench_fairness.py.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import orjson

from epp.admission.controller import AdmissionController
from epp.admission.flow_control import FlowControl
from epp.admission.limits import BatchLimitLearner
from epp.admission.tickets import Tickets
from epp.api.model import ModelRoute, RequestDefaults, ResourceSet
from epp.datastore import Datastore
from epp.director import Decision, Director
from epp.errors import EppError
from epp.routing import Router
from epp.scheduling.output_length import OutputLengths
from epp.scheduling.registry import build_default_profiles, service_time_of
from epp.settings import ProtocolSettings, SaturationSettings
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile
from epp.types import EndpointMetrics
from tests.factories import pod, pool
from tests.sim_hashes import block_hashes

POOL = "default/llama2-gpu-pool"
SCRAPE_S = 0.05
PODS = 2
BATCH = 16  # --max-num-seqs of each pod (declared in the pod spec, so the limit is known)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str  # its flow (x-gateway-inference-fairness-id)
    model: str  # an InferenceModel of `MODELS`: its priority and defaults
    rate: float = 0.0  # Poisson arrivals per second from 0 to `until`
    until: float = 0.0
    bursts: tuple[tuple[float, int], ...] = ()  # (at, requests) all at once
    headers: tuple[tuple[str, str], ...] = ()  # more request headers (objectives, TTL)


# the InferenceModels the tenants use: priority and per-model defaults
MODELS = (
    ModelRoute("default", "chat", "chat", POOL, 0),
    ModelRoute("default", "web", "web", POOL, 1),
    ModelRoute("default", "batch", "batch", POOL, -1, defaults=RequestDefaults("batch", ttl=600.0)),
    ModelRoute("default", "bulk", "bulk", POOL, 0, defaults=RequestDefaults(ttl=3600.0)),
)


@dataclass(slots=True)
class Outcome:
    """What became of one tenant's requests."""

    ttft: list[float] = field(default_factory=list)  # from arrival at the EPP
    ttft_prompts: list[int] = field(default_factory=list)  # the prompt tokens of each of those
    sent_prompts: list[int] = field(default_factory=list)  # the prompt tokens of each request
    engine_ttft: list[float] = field(default_factory=list)  # from arrival at the engine
    completed: int = 0
    completed_at: list[float] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # by drop reason
    sent: int = 0
    # (predicted, observed) TTFT from the EPP's decision, per completed request
    predicted: list[tuple[float, float]] = field(default_factory=list)

    def mape(self) -> float:
        """Mean absolute percentage error of the TTFT predictions."""
        pairs = [(p, o) for p, o in self.predicted if o > 0]
        return sum(abs(p - o) / o for p, o in pairs) / len(pairs) if pairs else math.nan

    def attained(self, ttft: float) -> float:
        """Share of the requests sent whose first token came within `ttft` of arrival."""
        return sum(1 for t in self.ttft if t <= ttft) / self.sent if self.sent else math.nan

    def attained_of(self, ttft: float, prompts: Callable[[int], bool]) -> float:
        """Share of the requests sent with a prompt length `prompts` accepts whose first token
        came within `ttft` of arrival."""
        met = sum(
            1 for t, p in zip(self.ttft, self.ttft_prompts, strict=True) if t <= ttft and prompts(p)
        )
        sent = sum(1 for p in self.sent_prompts if prompts(p))
        return met / sent if sent else math.nan

    def pct(self, q: float) -> float:
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else math.nan


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    tenant: Tenant
    prompt_tokens: int
    output_tokens: int


def lengths(rng: random.Random) -> tuple[int, int]:
    """ShareGPT-like: lognormal prompt (median ~200 tokens) and answer (median ~150)."""
    p = int(min(1500, max(8, rng.lognormvariate(5.3, 1.0))))
    o = int(min(600, max(4, rng.lognormvariate(5.0, 0.8))))
    return p, o


def arrivals(tenants: tuple[Tenant, ...], seed: int) -> list[Arrival]:
    out: list[Arrival] = []
    for tenant in tenants:
        rng = random.Random(f"{seed}/{tenant.name}")  # a tenant's arrivals, whoever else sends
        t = 0.0
        while tenant.rate and (t := t + rng.expovariate(tenant.rate)) < tenant.until:
            out.append(Arrival(t, tenant, *lengths(rng)))
        for at, count in tenant.bursts:
            out.extend(Arrival(at + i * 1e-4, tenant, *lengths(rng)) for i in range(count))
    return sorted(out, key=lambda a: a.at)


class Cluster:
    """Engines, the datastore that sees them, and a director wired as `epp serve` wires it."""

    def __init__(self, now: list[float], fair: bool, reserve: float, pods: int) -> None:
        self.now = now
        gpu = get_profile("A100-80G")
        self.engines = [
            Engine(EngineConfig(gpu, max_num_seqs=BATCH, max_model_len=4096)) for _ in range(pods)
        ]
        self.store = Datastore(BatchLimitLearner())
        pods = tuple(
            replace(pod(f"p{i}", f"10.0.0.{i + 2}"), max_num_seqs=BATCH) for i in range(pods)
        )
        self.store.apply_resources(ResourceSet((pool(),), MODELS, pods))
        self.addresses = [s.address for s in self.store.candidates(POOL)]
        clock = self.clock
        self.flow = FlowControl(self.store, 30.0, fair=fair, fair_reserve=reserve, clock=clock)
        profiles = build_default_profiles(random.Random(1), clock)
        service_time = service_time_of(profiles)
        admission = AdmissionController(
            self.store,
            SaturationSettings(),
            self.flow,
            service_time,
            clock,
            tickets=Tickets(30.0, trusted=True),  # the gateway sets the fairness id
        )
        protocol = ProtocolSettings()
        lengths_ = OutputLengths(prior=service_time.typical_output_tokens)
        router = Router(self.store, protocol, random.Random(1))
        self.director = Director(self.store, router, admission, profiles, protocol, clock, lengths_)

    def clock(self) -> float:
        return self.now[0]

    def scrape(self) -> None:
        for address, e in zip(self.addresses, self.engines, strict=True):
            metrics = EndpointMetrics(
                len(e.waiting),
                len(e.running),
                e.kv.usage(),
                block_size=16,
                num_gpu_blocks=e.kv.num_blocks,
                scraped_at=self.now[0],
            )
            self.store.set_metrics(address, metrics)


def run(
    tenants: tuple[Tenant, ...],
    fair: bool = True,
    seed: int = 7,
    reserve: float = 0.0,
    pods: int = PODS,
) -> dict[str, Outcome]:
    """Every arrival through the director, until every request has an answer. `reserve`: the
    EPP's --fair-reserve; `pods`: how many simulated pods serve."""
    now = [0.0]
    loop = asyncio.new_event_loop()
    loop.time = lambda: now[0]  # type: ignore[method-assign]  # timers in virtual time
    try:
        return loop.run_until_complete(_simulate(tenants, Cluster(now, fair, reserve, pods), seed))
    finally:
        loop.close()


async def _simulate(tenants: tuple[Tenant, ...], cluster: Cluster, seed: int) -> dict[str, Outcome]:
    now = cluster.now
    engines = cluster.engines
    outcomes = {t.name: Outcome() for t in tenants}
    pending = arrivals(tenants, seed)
    owner: dict[str, tuple[Decision, Arrival, Outcome, float]] = {}
    progress = [0]
    rng = random.Random(seed)

    async def request(i: int, a: Arrival) -> None:
        out = outcomes[a.tenant.name]
        out.sent += 1
        out.sent_prompts.append(a.prompt_tokens)
        body = {
            "model": a.tenant.model,
            "prompt": rng.randbytes(2 * a.prompt_tokens).hex(),
            "max_tokens": a.output_tokens,
        }
        headers = {"x-gateway-inference-fairness-id": a.tenant.name, **dict(a.tenant.headers)}
        try:
            decision = await cluster.director.handle(headers, orjson.dumps(body))
        except EppError as error:
            out.dropped[error.reason] = out.dropped.get(error.reason, 0) + 1
            progress[0] += 1
            return
        k = cluster.addresses.index(decision.endpoints[0])
        rid = str(i)
        prompt = rng.randbytes(4 * a.prompt_tokens)
        seq = Seq(
            rid, a.prompt_tokens, a.output_tokens, block_hashes(prompt, a.prompt_tokens, 16, "m")
        )
        engines[k].submit(seq, now[0])
        owner[rid] = (decision, a, out, now[0])
        progress[0] += 1

    async def settle() -> None:
        """Let every task that can move, move (a freed slot wakes a chain of waiters)."""
        quiet, seen = 0, -1
        for _ in range(200):
            await asyncio.sleep(0)
            quiet = quiet + 1 if progress[0] == seen else 0
            seen = progress[0]
            if quiet >= 3:
                return

    tasks: list[asyncio.Task[None]] = []
    step_end: list[float | None] = [None] * len(engines)
    next_scrape, i = 0.0, 0
    while True:
        for k, engine in enumerate(engines):
            if step_end[k] is None and (d := engine.plan_step(now[0])) is not None:
                step_end[k] = now[0] + d
        steps = min((s for s in step_end if s is not None), default=math.inf)
        arrival = pending[i].at if i < len(pending) else math.inf
        if steps == arrival == math.inf and all(t.done() for t in tasks):
            break
        now[0] = min(arrival, steps, next_scrape)
        if now[0] == next_scrape:
            cluster.scrape()
            next_scrape += SCRAPE_S
        elif now[0] == steps:
            for k, engine in enumerate(engines):
                if step_end[k] != steps:
                    continue
                step_end[k] = None
                for seq in engine.finish_step(now[0]):
                    if seq.finished_at is None or seq.rid not in owner:
                        continue
                    decision, a, out, sent_at = owner.pop(seq.rid)
                    first = seq.first_token_at
                    assert first is not None
                    out.ttft.append(first - a.at)
                    out.ttft_prompts.append(a.prompt_tokens)
                    out.engine_ttft.append(first - seq.arrival)
                    out.completed += 1
                    out.completed_at.append(now[0])
                    # what the tracker feeds back: TTFT from the decision, TPOT after it
                    tpot = (now[0] - first) / (a.output_tokens - 1) if a.output_tokens > 1 else None
                    if decision.prediction is not None:
                        out.predicted.append((decision.prediction.ttft, first - sent_at))
                        cluster.director.latency.observe(
                            decision.prediction.features, first - sent_at, tpot
                        )
                    decision.lease.release()  # wakes the waiting room
        else:
            tasks.append(asyncio.ensure_future(request(i, pending[i])))
            i += 1
        await settle()
    return outcomes


def capacity(seed: int = 11, backlog: int = 2000) -> float:
    """Requests per second the cluster completes with a standing backlog (the same mix)."""
    flood = Tenant("flood", "bulk", bursts=((0.0, backlog),))
    out = run((flood,), seed=seed)["flood"]
    done = sorted(out.completed_at)
    # the steady middle: from the 10th to the 90th percentile of completions
    lo, hi = done[len(done) // 10], done[len(done) * 9 // 10]
    return (len(done) * 8 // 10) / (hi - lo)


def idle_ttft(prompt_tokens: int) -> float:
    """The least time to first token a prompt can have on the simulated pods: its prefill
    alone, in one step of an idle engine (no queue, no batch)."""
    return get_profile("A100-80G").step_time(prompt_tokens, 0, 0)


def loaded_ttft(prompt_tokens: int) -> float:
    """The least time to first token a prompt can expect on a busy simulated pod: half a step
    of a full batch (the mean wait for the step in progress), then its prefill in a step beside
    that batch's decodes (each sequence ~300 tokens into its context)."""
    gpu = get_profile("A100-80G")
    full = gpu.step_time(0, BATCH, BATCH * 300)
    return full / 2 + gpu.step_time(prompt_tokens, BATCH, BATCH * 300)


def throughput(outcomes: dict[str, Outcome], start: float, end: float) -> float:
    done = [t for o in outcomes.values() for t in o.completed_at if start <= t < end]
    return len(done) / (end - start)
