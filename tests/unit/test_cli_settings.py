"""One settings surface: every flag default is its settings field's, and one parser tree serves
every sub-command (`epp --log-level DEBUG sim --help` is sim's help)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from epp.cli import build_parser, main
from epp.controlplane.clusters import TranslateOptions
from epp.gpu import GpuSettings, HealthSettings
from epp.kube import flags as kube_flags
from epp.local.stack import StackConfig
from epp.peers.sharing import PeerSettings
from epp.scrape.scraper import ScrapeSettings
from epp.serve_cli import settings_from, staleness_warning
from epp.settings import (
    FlowSettings,
    ProtocolSettings,
    SaturationSettings,
    ServerSettings,
    Settings,
)
from epp.sim.main import make_parser as sim_parser
from epp.sim.spec import SimPodSpec

# (sub-command, flag) -> the settings field whose default it is
FROM_SETTINGS: dict[tuple[str, str], tuple[type[Any], str]] = {
    ("serve", "--host"): (ServerSettings, "grpc_host"),
    ("serve", "--grpc-port"): (ServerSettings, "grpc_port"),
    ("serve", "--health-port"): (ServerSettings, "health_port"),
    ("serve", "--metrics-port"): (ServerSettings, "metrics_port"),
    ("serve", "--secure-serving"): (ServerSettings, "secure_serving"),
    ("serve", "--cert-path"): (ServerSettings, "cert_path"),
    ("serve", "--grpc-server"): (ServerSettings, "grpc_server"),
    ("serve", "--max-body-bytes"): (ProtocolSettings, "max_body_bytes"),
    ("serve", "--fallback-endpoints"): (ProtocolSettings, "fallback_endpoints"),
    ("serve", "--trust-control-headers"): (ProtocolSettings, "trust_control_headers"),
    ("serve", "--require-registered-models"): (ProtocolSettings, "require_registered_models"),
    ("serve", "--pass-unknown-models"): (ProtocolSettings, "pass_unknown_models"),
    ("serve", "--session-header"): (ProtocolSettings, "session_header"),
    ("serve", "--session-key-file"): (ProtocolSettings, "session_key_file"),
    ("serve", "--sticky-header"): (ProtocolSettings, "sticky_header"),
    ("serve", "--no-flow-control"): (FlowSettings, "enabled"),
    ("serve", "--queue-timeout"): (FlowSettings, "queue_timeout"),
    ("serve", "--queue-max-requests"): (FlowSettings, "max_queued"),
    ("serve", "--queue-max-bytes"): (FlowSettings, "max_queued_bytes"),
    ("serve", "--queue-max-flow-requests"): (FlowSettings, "max_flow_queued"),
    ("serve", "--queue-max-pool-requests"): (FlowSettings, "max_pool_queued"),
    ("serve", "--no-fairness"): (FlowSettings, "fairness"),
    ("serve", "--fairness-header"): (FlowSettings, "fairness_header"),
    ("serve", "--sheddable-reserve"): (SaturationSettings, "sheddable_reserve"),
    ("serve", "--sd-queue-depth"): (SaturationSettings, "queue_depth"),
    ("serve", "--sd-kv-cache-util"): (SaturationSettings, "kv_cache_util"),
    ("serve", "--sd-staleness"): (SaturationSettings, "staleness_seconds"),
    ("serve", "--scrape-interval"): (ScrapeSettings, "interval"),
    ("serve", "--scrape-steady-interval"): (ScrapeSettings, "steady_interval"),
    ("serve", "--scrape-quiet-interval"): (ScrapeSettings, "quiet_interval"),
    ("serve", "--prometheus-url"): (GpuSettings, "prometheus_url"),
    ("serve", "--gpu-query"): (GpuSettings, "query"),
    ("serve", "--gpu-interval"): (GpuSettings, "interval"),
    ("serve", "--workers"): (ServerSettings, "workers"),
    ("serve", "--drain-seconds"): (ServerSettings, "drain_seconds"),
    ("serve", "--peer-port"): (PeerSettings, "port"),
    ("serve", "--peer-service-namespace"): (PeerSettings, "service_namespace"),
    ("up", "--epp-replicas"): (StackConfig, "epp_replicas"),
    ("up", "--peer-port"): (StackConfig, "peer_port"),
    ("serve", "--gpu-health"): (HealthSettings, "enabled"),
    ("up", "--port"): (StackConfig, "listener_port"),
    ("up", "--https-port"): (StackConfig, "https_port"),
    ("up", "--xds-port"): (StackConfig, "xds_port"),
    ("up", "--status-port"): (StackConfig, "status_port"),
    ("up", "--admin-port"): (StackConfig, "admin_port"),
    ("up", "--epp-port"): (StackConfig, "epp_port"),
    ("up", "--health-port"): (StackConfig, "health_port"),
    ("up", "--metrics-port"): (StackConfig, "metrics_port"),
    ("up", "--run-dir"): (StackConfig, "run_dir"),
    ("up", "--fail-open"): (StackConfig, "failure_mode_allow"),
    ("up", "--secure-serving"): (StackConfig, "epp_tls"),
    ("sim", "--model"): (SimPodSpec, "model"),
    ("sim", "--profile"): (SimPodSpec, "profile"),
    ("sim", "--speed"): (SimPodSpec, "speed"),
    ("sim", "--max-loras"): (SimPodSpec, "max_loras"),
    ("sim", "--max-num-seqs"): (SimPodSpec, "max_num_seqs"),
    ("sim", "--max-model-len"): (SimPodSpec, "max_model_len"),
    ("sim", "--seed"): (SimPodSpec, "seed"),
    ("sim", "--flush-interval"): (SimPodSpec, "flush_interval"),
    ("controlplane", "--epp-address"): (TranslateOptions, "default_epp"),
    ("controlplane", "--listen-host"): (TranslateOptions, "listen_host"),
}


def command(name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = build_parser().parse_args([name]).command_parser
    return parser


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: a for a in parser._actions for option in a.option_strings}


def field_of(settings: type[Any], name: str) -> dataclasses.Field[Any]:
    (found,) = (f for f in dataclasses.fields(settings) if f.name == name)
    return found


def test_flag_defaults_are_the_settings_defaults() -> None:
    parsers = {name: actions(command(name)) for name in ("serve", "up", "sim", "controlplane")}
    for (name, flag), (settings, field) in FROM_SETTINGS.items():
        default = parsers[name][flag].default
        assert default == field_of(settings, field).default, f"epp {name} {flag}"


def test_flag_defaults_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Change each field's default and the flag's changes with it: no literal copy in the CLI."""
    moved = {key: object() for key in FROM_SETTINGS}
    for key, (settings, field) in FROM_SETTINGS.items():
        monkeypatch.setattr(field_of(settings, field), "default", moved[key])
    parsers = {name: actions(command(name)) for name in ("serve", "up", "sim", "controlplane")}
    for (name, flag), marker in moved.items():
        assert parsers[name][flag].default is marker, f"epp {name} {flag} has a literal default"


def test_every_literal_default_is_accounted_for() -> None:
    """A new flag with a default of its own must come from a settings field (or be listed)."""
    kube = argparse.ArgumentParser()
    kube_flags.add_arguments(kube)
    elsewhere = set(actions(kube))  # Kubernetes-mode flags: defaults kept in epp.kube.flags
    for name in ("serve", "up"):
        for flag, action in actions(command(name)).items():
            if action.default in (None, False, [], "", argparse.SUPPRESS) or flag in elsewhere:
                continue
            same = [f for f in action.option_strings if (name, f) in FROM_SETTINGS]
            assert same, f"epp {name} {flag}: default {action.default!r} is not a settings field's"


def test_no_flags_gives_the_default_settings() -> None:
    args = build_parser().parse_args(["serve"])
    assert settings_from(args) == (Settings(), ScrapeSettings(), GpuSettings())
    args = build_parser().parse_args(["serve", "--no-flow-control", "--scrape-interval", "5"])
    settings, scrape, _ = settings_from(args)
    assert not settings.flow.enabled and scrape.interval == 5.0 and scrape.backoff_max == 5.0


def test_top_reads_the_default_metrics_address() -> None:
    server = ServerSettings()
    url = build_parser().parse_args(["top"]).url
    assert url == f"http://{server.grpc_host}:{server.metrics_port}"


def test_sim_sub_command_has_the_standalone_flags() -> None:
    standalone = {f: a.default for f, a in actions(sim_parser()).items()}
    assert {f: a.default for f, a in actions(command("sim")).items()} == standalone


@pytest.mark.parametrize(
    ("log_level", "program", "flag"),
    [
        (["--log-level", "DEBUG"], "sim", "--max-num-seqs"),
        (["--log-level=DEBUG"], "sim", "--max-num-seqs"),
        (["--log-level", "DEBUG"], "controlplane", "--xds-port"),
        (["--log-level", "DEBUG"], "operator", "--lease-name"),
    ],
)
def test_help_after_the_global_log_level(
    log_level: list[str], program: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*log_level, program, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: epp {program}") and flag in out


def test_sim_runs_with_its_flags_after_the_global_log_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[argparse.Namespace] = []

    def run_parsed(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr("epp.sim.main.run_parsed", run_parsed)
    assert main(["--log-level", "DEBUG", "sim", "--replicas", "2", "--speed", "0.5"]) == 0
    (args,) = seen
    assert (args.log_level, args.replicas, args.speed) == ("DEBUG", 2, 0.5)


def test_log_level_before_or_after_the_program() -> None:
    before = build_parser().parse_args(["--log-level", "DEBUG", "controlplane", "--manifests", "x"])
    after = build_parser().parse_args(["controlplane", "--log-level", "warning", "--kubernetes"])
    assert (before.log_level, after.log_level) == ("DEBUG", "warning")
    assert build_parser().parse_args(["operator"]).log_level == "INFO"


def test_a_stray_flag_is_reported_with_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sim", "--nope"])
    assert info.value.code == 2
    assert "epp sim: error: unrecognized arguments: --nope" in capsys.readouterr().err


def test_controlplane_usage_error_names_the_sub_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["controlplane", "--kubernetes", "--manifests", "x"])
    assert info.value.code == 2
    assert "epp controlplane: error: --manifests and --kubernetes" in capsys.readouterr().err


def test_grpc_server_choice_and_its_limits() -> None:
    args = build_parser().parse_args(["serve", "--grpc-server", "lean"])
    assert settings_from(args)[0].server.grpc_server == "lean"
    with pytest.raises(ValueError, match="cleartext only"):
        ServerSettings(grpc_server="lean", secure_serving=True)
    with pytest.raises(ValueError, match="grpc_server must be one of"):
        ServerSettings(grpc_server="grpclib")


def test_a_staleness_bound_under_the_steady_scrape_period_is_named() -> None:
    defaults = build_parser().parse_args(["serve"])
    settings, scrape, _ = settings_from(defaults)
    assert scrape.steady_period == pytest.approx(0.15)
    assert staleness_warning(scrape, settings.saturation) is None
    tight = build_parser().parse_args(["serve", "--sd-staleness", "0.19"])
    settings, scrape, _ = settings_from(tight)
    warning = staleness_warning(scrape, settings.saturation)
    assert warning is not None and "--sd-staleness 0.19s" in warning and "at least 0.2s" in warning
    faster = ["serve", "--sd-staleness", "0.19", "--scrape-steady-interval", "0.1"]
    settings, scrape, _ = settings_from(build_parser().parse_args(faster))
    assert scrape.steady_ticks == 2 and staleness_warning(scrape, settings.saturation) is None
