"""Envoy clusters and HTTP filters for inference pools, their EPPs and plain Services.

Per pool: an ORIGINAL_DST cluster keyed on `x-gateway-destination-endpoint` (where the EPP's pick
goes) and, for FailOpen pools, a `…/fallback` cluster of the pool's known pods that serves the
requests the EPP could not answer. Per EPP address: an HTTP/2 cluster for ext_proc, and one
ext_proc filter per (EPP, failure mode), disabled in the chain and enabled by the routes that go
to one of its pools. An EPP address may name several replicas (`h1:p,h2:p`) or a DNS name that
resolves to several (a headless Service): Envoy spreads ext_proc streams over them, checks their
gRPC health, ejects one that refuses connections and retries a stream that could not start on
another (docs/replicas.md). Settings match `gateway/envoy.yaml`. `translate` assembles them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.api.model import PodInfo, Pool
from epp.api.priority import POOL_HEADER as TRUSTED_POOL_HEADER
from epp.controlplane.backends import ServiceBackend
from epp.datastore import endpoints_of

DESTINATION_HEADER = "x-gateway-destination-endpoint"
POOL_HEADER = TRUSTED_POOL_HEADER
EXT_PROC = "envoy.filters.http.ext_proc"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
REQUEST_BUFFER_BYTES = 16 * 1024 * 1024  # ext_proc buffers a request body whole, up to this
CIRCUIT = {
    "thresholds": [
        {
            "max_connections": 40000,
            "max_pending_requests": 40000,
            "max_requests": 40000,
            "max_retries": 1024,
        }
    ]
}


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    """How pools reach their EPP and where listeners bind; `main` builds it from the CLI."""

    default_epp: str = "127.0.0.1:9002"  # for pools without extensionRef
    pool_epps: Mapping[str, str] = field(default_factory=dict)  # pool key -> host:port
    ignore_extension_refs: bool = False  # the local stack: one EPP serves every pool
    listen_host: str = "0.0.0.0"
    port_map: Mapping[int, int] = field(default_factory=dict)  # Gateway port -> local port
    plain_http_port: int | None = None  # local: every route over plaintext too
    plain_any_host: bool = False  # local: the plaintext port ignores the routes' hostnames
    message_timeout_s: int = 1000
    epp_tls: bool = False  # the EPPs serve ext_proc over TLS (self-signed: not verified)
    route_timeout_s: float = 300.0


def epp_address(pool: Pool, options: TranslateOptions) -> str:
    if pool.key in options.pool_epps:
        return options.pool_epps[pool.key]
    ref = pool.extension_ref
    if ref is None or options.ignore_extension_refs:
        return options.default_epp
    return f"{ref.name}.{pool.namespace}.svc.cluster.local:{ref.port}"


def epp_cluster_name(address: str) -> str:
    return f"epp/{address}"


def ext_proc_filter_name(address: str, fail_open: bool) -> str:
    return f"{EXT_PROC}/{address}/{'failopen' if fail_open else 'failclose'}"


def pool_cluster_name(pool: Pool) -> str:
    return f"pool/{pool.key}"


def fallback_cluster_name(pool: Pool) -> str:
    return f"pool/{pool.key}/fallback"


def service_cluster_name(backend: ServiceBackend) -> str:
    return f"service/{backend.key}/{backend.port}"


# Envoy's view of EPP replicas: a gRPC health check on the ext_proc port (the EPP serves health
# there too), fast enough that a crashed or draining replica gets no new streams within a
# second or two; a replica refusing connections is ejected before the next check.
EPP_HEALTH_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
EPP_HEALTH_INTERVAL_S = 1.0
EPP_STREAMS_PER_CONNECTION = 64


def epp_health_checks() -> list[dict[str, Any]]:
    return [
        {
            "timeout": "1s",
            "interval": f"{EPP_HEALTH_INTERVAL_S:g}s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "no_traffic_interval": f"{EPP_HEALTH_INTERVAL_S:g}s",
            "grpc_health_check": {"service_name": EPP_HEALTH_SERVICE},
        }
    ]


def epp_outlier_detection() -> dict[str, Any]:
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_5xx": 1000000,  # ext_proc answers are never 5xx: only connection errors
        "interval": "1s",
        "base_ejection_time": "2s",
        "max_ejection_percent": 100,
        "successful_active_health_check_uneject_host": True,
    }


def epp_stream_retry() -> dict[str, Any]:
    """A stream that never reached a replica (refused, reset before a reply) starts again on
    another one; a stream a replica answered is never retried (its decision stands)."""
    return {
        "retry_on": "connect-failure,refused-stream,reset-before-request,unavailable",
        "num_retries": 2,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host"
                    ".previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def epp_replicas(address: str) -> list[tuple[str, int]]:
    """The replicas an EPP address names: `host:port` or `h1:p1,h2:p2,…`."""
    return [_split(part.strip()) for part in address.split(",") if part.strip()]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _static(name: str, addresses: Iterable[tuple[str, int]], dns: bool) -> dict[str, Any]:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
        for h, p in addresses
    ]
    return {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": CIRCUIT,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def epp_tls_socket() -> dict[str, Any]:
    """TLS to an EPP. Its certificate is self-signed by default: encrypt without verifying it,
    as the upstream gateways do (Istio DestinationRule insecureSkipVerify)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
            ".UpstreamTlsContext",
            "common_tls_context": {"alpn_protocols": ["h2"]},
        },
    }


def epp_cluster(address: str, tls: bool) -> dict[str, Any]:
    replicas = epp_replicas(address)
    dns = not all(_is_ip(host) for host, _ in replicas)
    cluster = _static(epp_cluster_name(address), replicas, dns=dns)
    if dns:  # a headless Service: one host per ready replica, re-read as replicas come and go
        cluster["dns_refresh_rate"] = "2s"
        cluster["respect_dns_ttl"] = False
    cluster["health_checks"] = epp_health_checks()
    cluster["outlier_detection"] = epp_outlier_detection()
    if tls:
        cluster["transport_socket"] = epp_tls_socket()
    cluster["typed_extension_protocol_options"] = {
        HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
            "explicit_http_config": {
                "http2_protocol_options": {
                    "initial_stream_window_size": 65536,
                    "initial_connection_window_size": 1048576,
                    # past this many streams on a connection Envoy opens another: the kernel
                    # spreads connections over an EPP's worker processes (epp serve --workers)
                    "max_concurrent_streams": EPP_STREAMS_PER_CONNECTION,
                }
            },
        }
    }
    return cluster


def pool_cluster(pool: Pool) -> dict[str, Any]:
    return {
        "name": pool_cluster_name(pool),
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "cleanup_interval": "60s",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_HEADER},
        "circuit_breakers": CIRCUIT,
    }


def fallback_cluster(pool: Pool, pods: Iterable[PodInfo]) -> dict[str, Any] | None:
    """The pool's ready pods, round robin: where FailOpen requests go without the EPP."""
    addresses = sorted({_split(e.address) for e in endpoints_of(pool, pods)})
    if not addresses:
        return None
    return _static(fallback_cluster_name(pool), addresses, dns=False)


def service_cluster(backend: ServiceBackend) -> dict[str, Any]:
    return _static(service_cluster_name(backend), [(backend.host, backend.port)], backend.dns)


def ext_proc_filter(address: str, fail_open: bool, options: TranslateOptions) -> dict[str, Any]:
    return {
        "name": ext_proc_filter_name(address, fail_open),
        "disabled": True,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
            ".ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {
                    "cluster_name": epp_cluster_name(address),
                    "authority": "epp",
                    "retry_policy": epp_stream_retry(),
                },
                "timeout": "10s",
            },
            "failure_mode_allow": fail_open,
            "message_timeout": f"{options.message_timeout_s}s",
            # the pick also arrives as envoy.lb metadata: FailOpen routes match on it
            "metadata_options": {"receiving_namespaces": {"untyped": ["envoy.lb"]}},
            # as gateway/envoy.yaml: the request body buffered (Envoy keeps it, so that a dead
            # EPP can still be skipped when failing open), and the response body only as far as
            # the EPP asks in its reply to the response headers (usually not at all); response
            # trailers keep the stream open until the response ends
            "allow_mode_override": True,
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_body_mode": "STREAMED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SEND",
            },
        },
    }
