"""Envoy's view of EPP replicas: one ext_proc cluster per EPP address with every replica in it,
gRPC health checks, ejection on refused connections, and streams that never started retried."""

from __future__ import annotations

from pathlib import Path

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format

from epp.controlplane import translate  # noqa: F401 - registers the Any types
from epp.controlplane.clusters import (
    EPP_HEALTH_SERVICE,
    TranslateOptions,
    epp_cluster,
    epp_replicas,
    ext_proc_filter,
)
from epp.health import READY_SERVICES
from epp.local.envoy import EnvoyPorts, render_bootstrap

REPO = Path(__file__).resolve().parents[2]


def test_an_epp_address_may_name_several_replicas() -> None:
    assert epp_replicas("127.0.0.1:9002, 127.0.1.1:9002") == [
        ("127.0.0.1", 9002),
        ("127.0.1.1", 9002),
    ]
    cluster = epp_cluster("127.0.0.1:9002,127.0.1.1:9002", tls=False)
    hosts = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(hosts) == 2 and cluster["type"] == "STATIC"
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == EPP_HEALTH_SERVICE
    assert EPP_HEALTH_SERVICE in READY_SERVICES  # what the EPP turns NOT_SERVING on SIGTERM
    proto = json_format.ParseDict(cluster, cluster_pb2.Cluster())
    assert proto.outlier_detection.consecutive_local_origin_failure.value == 1


def test_a_headless_service_name_is_re_resolved_for_replicas() -> None:
    cluster = epp_cluster("epp.gw.svc.cluster.local:9002", tls=True)
    assert cluster["type"] == "STRICT_DNS" and cluster["dns_refresh_rate"] == "2s"
    assert cluster["health_checks"] and cluster["transport_socket"]
    json_format.ParseDict(cluster, cluster_pb2.Cluster())


def test_ext_proc_streams_that_never_started_go_to_another_replica() -> None:
    flt = ext_proc_filter("127.0.0.1:9002,127.0.1.1:9002", False, TranslateOptions())
    config = dict(flt["typed_config"])
    config.pop("@type")
    proto = json_format.ParseDict(config, ext_proc_pb2.ExternalProcessor())
    retry = proto.grpc_service.envoy_grpc.retry_policy
    assert "connect-failure" in retry.retry_on and retry.num_retries.value == 2
    assert retry.retry_host_predicate[0].name == "envoy.retry_host_predicates.previous_hosts"


def test_the_static_bootstrap_lists_every_replica_and_checks_them() -> None:
    ports = EnvoyPorts(epps=(("127.0.0.1", 9002), ("127.0.1.1", 9002), ("127.0.1.2", 9002)))
    config = render_bootstrap(ports)
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "ext_proc"]
    addresses = [
        e["endpoint"]["address"]["socket_address"]["address"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert addresses == ["127.0.0.1", "127.0.1.1", "127.0.1.2"]
    plain = yaml.safe_load((REPO / "gateway" / "envoy.yaml").read_text())
    (static,) = [c for c in plain["static_resources"]["clusters"] if c["name"] == "ext_proc"]
    # the shipped bootstrap and the control plane's clusters check replicas the same way
    assert static["health_checks"][0]["grpc_health_check"]["service_name"] == EPP_HEALTH_SERVICE
    assert cluster["health_checks"] == static["health_checks"]
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    h2 = static["typed_extension_protocol_options"][options]["explicit_http_config"]
    controlled = epp_cluster("127.0.0.1:9002", tls=False)["typed_extension_protocol_options"]
    assert (
        h2["http2_protocol_options"]["max_concurrent_streams"]
        == controlled[options]["explicit_http_config"]["http2_protocol_options"][
            "max_concurrent_streams"
        ]
    )  # enough connections for an EPP's workers, the same in both
