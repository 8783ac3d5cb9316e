"""Frozen settings, grouped per topic, with the upstream defaults.

Read once at the edge (`epp.cli` turns flags into these, and reads each flag's default from the
field it fills, so a default is written only here); nothing else reads `os.environ`.
Neighbours: every layer receives the group it needs from the composition root.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

GRPC_SERVERS = ("auto", "grpcio", "lean")
BODY_CHUNK_BYTES = 62_000  # upstream BodyByteLimit: some Envoys cap a streamed chunk near 64 KB


@dataclass(frozen=True, slots=True)
class ServerSettings:
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9002
    health_port: int = 9003
    metrics_port: int = 9090
    grace_seconds: float = 5.0  # in-flight streams get this long to finish on shutdown
    drain_seconds: float = 1.0  # NOT_SERVING but still answering, so proxies move away first
    workers: int = 1  # processes behind these ports (SO_REUSEPORT), each one replica
    secure_serving: bool = False  # TLS on the ext_proc port
    cert_path: str | None = None  # folder with tls.crt/tls.key; self-signed when unset
    # "grpcio": grpc.aio; "lean": our own HTTP/2 server on the event loop (epp.grpcwire), cleartext
    # only; "auto": lean, or grpc.aio where TLS is asked for
    grpc_server: str = "auto"

    def __post_init__(self) -> None:
        if self.grpc_server not in GRPC_SERVERS:
            raise ValueError(f"grpc_server must be one of {GRPC_SERVERS}, not {self.grpc_server!r}")
        if self.grpc_server == "lean" and self.secure_serving:
            raise ValueError("the lean gRPC server serves cleartext only: drop --secure-serving")

    @property
    def lean_grpc(self) -> bool:
        """Whether the lean server (epp.grpcwire) serves ext_proc and health."""
        return self.grpc_server == "lean" or (
            self.grpc_server == "auto" and not self.secure_serving
        )


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    max_body_bytes: int = 16 * 1024 * 1024
    chunk_bytes: int = BODY_CHUNK_BYTES
    fallback_endpoints: int = 0  # how many fallbacks follow the primary in the destination list
    trust_control_headers: bool = False  # honour client x-gateway-* headers (trusted gateways only)
    require_registered_models: bool = False  # only InferenceModel names; others → 404
    # names no InferenceModel and no pool's served model declares go to the only pool (as
    # upstream does), instead of 404; pools that do not declare what they serve always take them
    pass_unknown_models: bool = False
    # an agent's own session id header (e.g. x-session-id): one session stays on one pod
    session_header: str | None = None
    # the key that signs session tokens; replicas that share it honour each other's tokens
    # (None: a random key per process)
    session_key_file: str | None = None
    sticky_header: str | None = None  # e.g. x-user-id: one user stays on one canary version
    # share of responses whose body is read (to count their tokens) when nothing else needs it
    follow_responses: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.follow_responses <= 1.0:
            raise ValueError(f"follow_responses must be in [0, 1], not {self.follow_responses}")


@dataclass(frozen=True, slots=True)
class SaturationSettings:
    queue_depth: int = 5
    kv_cache_util: float = 0.8
    staleness_seconds: float = 0.25  # > the scraper's steady interval plus a tick
    max_in_flight: int = 0  # EPP-side requests per endpoint that count as full; 0 = not used
    # "min": saturated only when no endpoint has room (upstream v1.0); "mean": pool average
    aggregate: str = "min"
    # sheddable requests are admitted only while an endpoint keeps this share of its learned
    # batch limit free, so that critical and standard requests still find room
    sheddable_reserve: float = 0.4


@dataclass(frozen=True, slots=True)
class FlowSettings:
    enabled: bool = True  # hold requests in the EPP, best priority first, when pods are full
    queue_timeout: float = 30.0  # default TTL: seconds a request may wait for room (then 503)
    # per pool and priority: waiting requests and their body bytes before a 429 (0 = no limit)
    max_queued: int = 0
    max_queued_bytes: int = 1_000_000_000
    max_flow_queued: int = 0  # per pool, priority and flow (0 = no limit)
    max_pool_queued: int = 0  # per pool, all priorities: better arrivals evict sheddable ones
    fairness: bool = True  # flows take turns inside a priority (else first come, first served)
    fairness_header: str | None = None  # e.g. x-user-id, read after x-gateway-inference-fairness-id
    # share of a pool's batch slots kept free for flows under their fair share while flows
    # contend (0: none; docs/fairness.md measures what it buys and costs)
    fair_reserve: float = 0.0


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    saturation: SaturationSettings = field(default_factory=SaturationSettings)
    flow: FlowSettings = field(default_factory=FlowSettings)


def field_default(settings: type[Any], name: str) -> Any:
    """The default of one field of a settings dataclass: the only place it is written (flags
    read it from here)."""
    (found,) = (f for f in fields(settings) if f.name == name)
    if found.default is MISSING:
        raise TypeError(f"{settings.__name__}.{name} has no plain default")
    return found.default
