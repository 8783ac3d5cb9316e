"""Envoy config built from resources: listeners, TLS over SDS, routes, weights, FailOpen."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from google.protobuf import json_format

from epp.api.load import load_paths
from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.plane import ControlPlane, referenced_secrets
from epp.controlplane.tls import CertificateFolder
from epp.controlplane.xds import CLUSTER, LISTENER, ROUTE, SECRET

REPO = Path(__file__).resolve().parents[2]
OPTIONS = TranslateOptions(
    default_epp="127.0.0.1:9002",
    ignore_extension_refs=True,
    listen_host="127.0.0.1",
    port_map={443: 8443},
    plain_http_port=8080,
)


def _plane(tmp_path: Path, *docs: object, canary: bool = True) -> ControlPlane:
    folder = tmp_path / "manifests"
    folder.mkdir()
    if canary:
        for name in ("gateway.yaml", "inference.yaml", "priority-filter.yaml"):
            (folder / name).write_text((REPO / "examples" / "canary" / name).read_text())
    (folder / "extra.yaml").write_text(yaml.safe_dump_all(docs))
    plane = ControlPlane(OPTIONS, tmp_path / "certs")
    assert plane.apply(load_paths([folder]))
    assert plane.error is None
    return plane


def _get(plane: ControlPlane, type_url: str, name: str) -> dict[str, Any]:
    item = plane.cache.resources(type_url)[name]
    message = json_format.Parse("{}", _empty(type_url))
    item.Unpack(message)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _empty(type_url: str) -> Any:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    return {
        CLUSTER: cluster_pb2.Cluster,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
        SECRET: secret_pb2.Secret,
    }[type_url]()


def _routes(plane: ControlPlane, name: str) -> list[dict[str, Any]]:
    return [r for vh in _get(plane, ROUTE, name)["virtual_hosts"] for r in vh["routes"]]


def _pool(name: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "targetPortNumber": 8000,
            "extensionRef": {"name": f"{name}-epp", "failureMode": mode},
        },
    }


def _http_route(name: str, refs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "ai-inference-gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
                    "backendRefs": refs,
                }
            ],
        },
    }


def _pool_ref(name: str, weight: int = 1) -> dict[str, Any]:
    return {
        "group": "inference.networking.x-k8s.io",
        "kind": "InferencePool",
        "name": name,
        "weight": weight,
    }


def test_seed_listener_terminates_tls_with_an_sds_secret(tmp_path: Path) -> None:
    plane = _plane(tmp_path)
    listener = _get(plane, LISTENER, "gateway/8443")
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8443}
    (chain,) = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_certificate_sds_secret_configs"][0]["name"] == "default/inference-tls-cert"
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "https/8443/default/ai-inference-gateway/https"
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_proc/127.0.0.1:9002/failclose",
        "envoy.filters.http.router",
    ]
    ext_proc = hcm["http_filters"][1]
    assert ext_proc["disabled"] is True
    mode = ext_proc["typed_config"]["processing_mode"]
    assert (mode["request_body_mode"], mode["response_body_mode"]) == ("BUFFERED", "STREAMED")
    assert ext_proc["typed_config"]["allow_mode_override"] is True  # responses only if needed
    secret = _get(plane, SECRET, "default/inference-tls-cert")
    pem = secret["tls_certificate"]["certificate_chain"]["inline_string"].encode()
    sans = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "api.ai-platform.example.com" in sans.value.get_values_for_type(x509.DNSName)
    assert "gateway/8080" in plane.cache.resources(LISTENER)  # the local plaintext port


def test_seed_routes_enable_the_pool_epp_and_set_trusted_headers(tmp_path: Path) -> None:
    plane = _plane(tmp_path)
    routes = _routes(plane, "https/8443/default/ai-inference-gateway/https")
    assert [r["match"].get("path_separated_prefix", r["match"].get("prefix")) for r in routes] == [
        "/v1/chat/completions",
        "/",
        "/v1/models",  # last: the catalog, answered by the pool's EPP
    ]
    assert routes[1]["match"]["headers"][0]["name"] == "x-model-name"
    catalog = routes[2]
    assert catalog["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}]
    assert (
        "envoy.filters.http.ext_proc/127.0.0.1:9002/failclose" in catalog["typed_per_filter_config"]
    )
    for route in routes[:2]:
        assert route["route"]["cluster"] == "pool/default/llama2-gpu-pool"
        per = route["typed_per_filter_config"]
        assert "envoy.filters.http.ext_proc/127.0.0.1:9002/failclose" in per
        mutations = per["envoy.filters.http.header_mutation"]["mutations"]["request_mutations"]
        removed = {m["remove"] for m in mutations if "remove" in m}
        assert "x-gateway-destination-endpoint" in removed
        assert "x-gateway-priority-policy" in removed
        (added,) = [m["append"]["header"] for m in mutations if "append" in m]
        assert added["key"] == "x-gateway-priority-policy"
        assert added["value"] == "header=x-request-priority; default=medium; client-override=false"
    cluster = _get(plane, CLUSTER, "pool/default/llama2-gpu-pool")
    assert cluster["type"] == "ORIGINAL_DST"
    assert cluster["original_dst_lb_config"]["http_header_name"] == "x-gateway-destination-endpoint"
    epp = _get(plane, CLUSTER, "epp/127.0.0.1:9002")
    assert epp["type"] == "STATIC" and "transport_socket" not in epp
    assert "http2_protocol_options" in str(epp["typed_extension_protocol_options"])


def test_weighted_backends_become_cumulative_runtime_fractions(tmp_path: Path) -> None:
    route = _http_route("split", [_pool_ref("a", 1), _pool_ref("b", 1), _pool_ref("c", 2)])
    plane = _plane(
        tmp_path, _pool("a", "FailClose"), _pool("b", "FailClose"), _pool("c", "FailClose"), route
    )
    routes = [r for r in _routes(plane, "plain/8080") if r["name"].startswith("default/split")]
    fractions = [r["match"].get("runtime_fraction", {}).get("default_value", {}) for r in routes]
    assert [f.get("numerator") for f in fractions] == [250000, 500000, None]
    assert [r["route"]["cluster"] for r in routes] == [f"pool/default/{p}" for p in "abc"]
    pins = [
        m["append"]["header"]["value"]
        for r in routes
        for m in r["typed_per_filter_config"]["envoy.filters.http.header_mutation"]["mutations"][
            "request_mutations"
        ]
        if "append" in m
    ]
    assert pins == ["default/a", "default/b", "default/c"]  # x-gateway-inference-pool


def test_fail_open_pool_falls_back_to_its_pods_without_the_epp(tmp_path: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a-0", "labels": {"app": "a"}},
        "status": {"podIP": "127.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    plane = _plane(
        tmp_path,
        _pool("a", "FailOpen"),
        _pool("b", "FailOpen"),
        pod,
        _http_route("a", [_pool_ref("a")]),
        _http_route("b", [_pool_ref("b")]),
    )
    routes = {r["name"]: r for r in _routes(plane, "plain/8080")}
    picked = routes["default/a/rules[0]/matches[0]/backends[0]"]
    assert picked["match"]["dynamic_metadata"][0]["filter"] == "envoy.lb"
    assert picked["route"]["cluster"] == "pool/default/a"
    fallback = routes["default/a/rules[0]/matches[0]/backends[0]/fallback"]
    assert fallback["route"]["cluster"] == "pool/default/a/fallback"
    assert routes["default/b/rules[0]/matches[0]/backends[0]/fallback"]["direct_response"] == {
        "status": 503  # no pod known: nothing to fall back to
    }
    cluster = _get(plane, CLUSTER, "pool/default/a/fallback")
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.9", "port_value": 8000}
    listener = _get(plane, LISTENER, "gateway/8080")
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    fail_open = next(f for f in filters if f["name"].endswith("/failopen"))
    assert fail_open["typed_config"]["failure_mode_allow"] is True
    assert fail_open["typed_config"]["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert fail_open["typed_config"]["processing_mode"]["response_body_mode"] == "STREAMED"
    assert listener["per_connection_buffer_limit_bytes"] == 16 * 1024 * 1024


def test_unresolved_backends_answer_500_and_secrets_come_from_manifests(tmp_path: Path) -> None:
    cert = CertificateFolder(tmp_path / "other").pair("x/y", ["api.ai-platform.example.com"])
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "inference-tls-cert"},
        "stringData": {"tls.crt": cert.cert_pem.decode(), "tls.key": cert.key_pem.decode()},
    }
    plane = _plane(tmp_path, secret, _http_route("gone", [_pool_ref("missing")]))
    routes = {r["name"]: r for r in _routes(plane, "plain/8080")}
    assert routes["default/gone/rules[0]/matches[0]/backends[0]"]["direct_response"] == {
        "status": 500
    }
    served = _get(plane, SECRET, "default/inference-tls-cert")
    assert served["tls_certificate"]["certificate_chain"]["inline_string"] == cert.cert_pem.decode()
    assert not (tmp_path / "certs" / "default_inference-tls-cert.crt").exists()


def test_generated_certificates_chain_to_the_ca_and_are_reused(tmp_path: Path) -> None:
    folder = CertificateFolder(tmp_path)
    first = folder.pair("default/cert", ["api.example.com"])
    again = folder.pair("default/cert", ["api.example.com"])
    assert first == again
    leaf = x509.load_pem_x509_certificate(first.cert_pem)
    ca = x509.load_pem_x509_certificate(folder.ca_path.read_bytes())
    leaf.verify_directly_issued_by(ca)
    other = folder.pair("default/cert", ["new.example.com"])  # a new hostname: re-issued
    assert other != first


def test_referenced_secrets_collect_route_hostnames() -> None:
    docs = list(yaml.safe_load_all((REPO / "examples" / "canary" / "gateway.yaml").read_text()))
    assert referenced_secrets(docs) == {
        "default/inference-tls-cert": {"api.ai-platform.example.com"}
    }


def test_reapplying_the_same_resources_pushes_nothing(tmp_path: Path) -> None:
    plane = _plane(tmp_path)
    before = plane.cache.generation
    assert not plane.apply(load_paths([tmp_path / "manifests"]))
    assert plane.cache.generation == before
    status = plane.status()
    programmed = status.condition("Gateway", "default/ai-inference-gateway", "Programmed")
    assert programmed is not None and programmed.reason == "Pending"  # no Envoy connected


def test_the_local_plain_port_can_ignore_hostnames(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    for name in ("gateway.yaml", "inference.yaml", "priority-filter.yaml"):
        (folder / name).write_text((REPO / "examples" / "canary" / name).read_text())
    plane = ControlPlane(replace(OPTIONS, plain_any_host=True), tmp_path / "certs")
    assert plane.apply(load_paths([folder]))
    (host,) = _get(plane, ROUTE, "plain/8080")["virtual_hosts"]
    assert host["domains"] == ["*"]
    (tls_host,) = _get(plane, ROUTE, "https/8443/default/ai-inference-gateway/https")[
        "virtual_hosts"
    ]
    assert tls_host["domains"] == ["api.ai-platform.example.com"]


def test_two_gateways_on_one_https_port_do_not_produce_a_config_envoy_rejects(
    tmp_path: Path,
) -> None:
    twin = next(yaml.safe_load_all((REPO / "examples" / "canary" / "gateway.yaml").read_text()))
    twin["metadata"]["name"] = "twin-gateway"
    plane = _plane(tmp_path, twin)
    listener = _get(plane, LISTENER, "gateway/8443")
    assert len(listener["filter_chains"]) == 1
    assert len(plane.resolved.status.gateways) == 2
