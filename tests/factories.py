"""Small builders shared by the unit tests: pools, models, endpoint states, a director."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace

from epp.admission.controller import AdmissionController
from epp.admission.flow_control import FlowControl
from epp.admission.limits import BatchLimitLearner
from epp.admission.tickets import Tickets
from epp.api.model import ModelRoute, PodInfo, Pool, PoolDeployment, ResourceSet, SplitTarget
from epp.datastore import Datastore
from epp.director import Director
from epp.routing import Router
from epp.scheduling.output_length import OutputLengths
from epp.scheduling.registry import build_default_profiles, service_time_of
from epp.settings import ProtocolSettings, SaturationSettings
from epp.types import Endpoint, EndpointMetrics, EndpointState

SERVED = "meta-llama/Llama-2-7b-chat-hf"


def pool(name: str = "llama2-gpu-pool", served: str | None = SERVED, port: int = 8000) -> Pool:
    return Pool(
        "default",
        name,
        (("app", name),),
        (port,),
        deployment=PoolDeployment(replicas=3, served_model=served) if served else None,
    )


def pod(name: str, ip: str, pool_name: str = "llama2-gpu-pool", ready: bool = True) -> PodInfo:
    return PodInfo("default", name, (("app", pool_name),), ip, ready)


def model(
    name: str = "llama2-7b-chat",
    pool_name: str = "llama2-gpu-pool",
    priority: int = 0,
    splits: tuple[SplitTarget, ...] = (),
) -> ModelRoute:
    return ModelRoute("default", name, name, f"default/{pool_name}", priority, splits=splits)


def seed_store(n: int = 3, models: tuple[ModelRoute, ...] | None = None) -> Datastore:
    store = Datastore(BatchLimitLearner())
    pods = tuple(pod(f"p{i}", f"127.0.0.{i + 2}") for i in range(n))
    store.apply_resources(
        ResourceSet((pool(),), models if models is not None else (model(),), pods)
    )
    return store


class ManualClock:
    """A clock that moves only when a test moves it (`now`)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_of_two(max_num_seqs: int = 1) -> Datastore:
    """Pods a (127.0.0.2) and b (127.0.0.3) of the default pool, each declaring a batch of
    `max_num_seqs`."""
    store = Datastore()
    pods = tuple(
        replace(pod(name, ip), max_num_seqs=max_num_seqs)
        for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3"))
    )
    store.apply_resources(ResourceSet((pool(),), (), pods))
    return store


def fresh(waiting: int = 0, kv: float = 0.0, running: int = 0) -> EndpointMetrics:
    return EndpointMetrics(waiting, running, kv, scraped_at=time.monotonic())


def state(address: str, waiting: int = 0, kv: float = 0.0, in_flight: int = 0) -> EndpointState:
    ep = Endpoint(address, address, "default/pool")
    return EndpointState(ep, fresh(waiting, kv), in_flight=in_flight)


def director(
    store: Datastore,
    seed: int = 1,
    protocol: ProtocolSettings | None = None,
    saturation: SaturationSettings | None = None,
    flow: FlowControl | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Director:
    """A director wired as `epp serve` wires it (router, admission, default profiles)."""
    rng = random.Random(seed)
    protocol = protocol or ProtocolSettings()
    profiles = build_default_profiles(rng)
    tickets = Tickets(flow.timeout if flow else 30.0, trusted=protocol.trust_control_headers)
    admission = AdmissionController(
        store,
        saturation or SaturationSettings(),
        flow,
        service_time_of(profiles),
        clock,
        tickets=tickets,
    )
    lengths = OutputLengths(prior=service_time_of(profiles).typical_output_tokens)
    router = Router(store, protocol, rng)
    return Director(store, router, admission, profiles, protocol, clock, lengths)
