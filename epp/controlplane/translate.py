"""Resolved Gateway API resources → Envoy listeners, routes, clusters and secrets (xDS protos).

One Envoy listener per local port. HTTP ports share a route config; an HTTPS port has one
filter chain per Gateway listener (SNI when it names a hostname) with its certificate over SDS.
The HTTP filter chain is the same everywhere: `header_mutation` (per-route: strip and set the
trusted headers), one ext_proc filter per (EPP, failure mode), disabled unless a route enables
it, then the router. Routes are built by `routes`, clusters and filters by `clusters`; the ADS
server (`xds`) serves the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401 - Any types
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format
from google.protobuf.message import Message

from epp.api.model import ResourceSet
from epp.controlplane import clusters as cl
from epp.controlplane.backends import PoolBackend, ServiceBackend
from epp.controlplane.resolve import Attachment, Listener, Resolved
from epp.controlplane.routes import route_config
from epp.controlplane.tls import CertPair
from epp.controlplane.xds import CLUSTER, LISTENER, ROUTE, SECRET

ADS = {"ads": {}, "resource_api_version": "V3"}
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"


def translate(
    resolved: Resolved,
    resources: ResourceSet,
    certs: Mapping[str, CertPair],
    options: cl.TranslateOptions,
) -> dict[str, dict[str, Message]]:
    clusters: dict[str, dict[str, Any]] = {}
    filters: dict[str, dict[str, Any]] = {}
    for att in resolved.attachments:
        for rule in att.rules:
            for backend in rule.backends:
                _backend_config(backend, resources, options, clusters, filters)
    http_filters = [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {"@type": f"{MUTATION}.HeaderMutation"},
        },
        *(filters[name] for name in sorted(filters)),
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
    ]
    routes: dict[str, list[Attachment]] = {}
    chains: dict[int, list[dict[str, Any]]] = {}
    for listener in resolved.listeners:
        port = options.port_map.get(listener.port, listener.port)
        name = _route_config_name(listener, port)
        chain = _chain(listener, name, http_filters)
        found = chains.setdefault(port, [])
        if any(c.get("filter_chain_match") == chain.get("filter_chain_match") for c in found):
            continue  # another Gateway's listener holds this port and hostname: Envoy would NACK
        routes.setdefault(name, [])
        found.append(chain)
    for att in resolved.attachments:
        port = options.port_map.get(att.listener.port, att.listener.port)
        routes.get(_route_config_name(att.listener, port), []).append(att)
    if options.plain_http_port is not None:
        name = f"plain/{options.plain_http_port}"
        routes[name] = [
            replace(a, domains=("*",)) if options.plain_any_host else a
            for a in resolved.attachments
        ]
        chains[options.plain_http_port] = [_chain(None, name, http_filters)]
    listeners = {
        f"gateway/{port}": {
            "name": f"gateway/{port}",
            "address": {"socket_address": {"address": options.listen_host, "port_value": port}},
            "per_connection_buffer_limit_bytes": cl.REQUEST_BUFFER_BYTES,
            "filter_chains": found,
        }
        for port, found in chains.items()
    }
    fallbacks = {n for n in clusters if n.endswith("/fallback")}
    used = {ls.secret for ls in resolved.listeners if ls.secret}
    secrets = {key: _secret(key, certs[key]) for key in sorted(used) if key in certs}
    return {
        CLUSTER: {n: _parse(c, cluster_pb2.Cluster()) for n, c in clusters.items()},
        LISTENER: {n: _parse(x, listener_pb2.Listener()) for n, x in listeners.items()},
        ROUTE: {
            n: _parse(route_config(n, atts, options, fallbacks), route_pb2.RouteConfiguration())
            for n, atts in routes.items()
        },
        SECRET: {n: _parse(s, secret_pb2.Secret()) for n, s in secrets.items()},
    }


def _parse(data: dict[str, Any], message: Message) -> Message:
    return json_format.ParseDict(data, message)


def _backend_config(
    backend: object,
    resources: ResourceSet,
    options: cl.TranslateOptions,
    clusters: dict[str, dict[str, Any]],
    filters: dict[str, dict[str, Any]],
) -> None:
    if isinstance(backend, ServiceBackend):
        clusters[cl.service_cluster_name(backend)] = cl.service_cluster(backend)
    elif isinstance(backend, PoolBackend):
        pool = backend.pool
        address = cl.epp_address(pool, options)
        fail_open = pool.failure_mode == "FailOpen"
        clusters[cl.pool_cluster_name(pool)] = cl.pool_cluster(pool)
        clusters[cl.epp_cluster_name(address)] = cl.epp_cluster(address, options.epp_tls)
        if fail_open and (fallback := cl.fallback_cluster(pool, resources.pods)) is not None:
            clusters[fallback["name"]] = fallback
        name = cl.ext_proc_filter_name(address, fail_open)
        filters[name] = cl.ext_proc_filter(address, fail_open, options)


def _route_config_name(listener: Listener, port: int) -> str:
    if listener.protocol == "HTTPS":
        return f"https/{port}/{listener.key}"
    return f"http/{port}"


def _chain(listener: Listener | None, route_name: str, http_filters: list[Any]) -> dict[str, Any]:
    hcm = {
        "@type": f"{cl.HCM_TYPE}.HttpConnectionManager",
        "stat_prefix": route_name.replace("/", "_"),
        "codec_type": "AUTO",
        "stream_idle_timeout": "300s",
        "strip_any_host_port": True,
        "normalize_path": True,
        "rds": {"route_config_name": route_name, "config_source": ADS},
        "http_filters": http_filters,
    }
    chain: dict[str, Any] = {
        "name": route_name,
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
    }
    if listener is not None and listener.secret is not None:
        if listener.hostname:
            chain["filter_chain_match"] = {"server_names": [listener.hostname]}
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                ".DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificate_sds_secret_configs": [
                        {"name": listener.secret, "sds_config": ADS}
                    ],
                },
            },
        }
    return chain


def _secret(name: str, pair: CertPair) -> dict[str, Any]:
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": pair.cert_pem.decode()},
            "private_key": {"inline_string": pair.key_pem.decode()},
        },
    }
