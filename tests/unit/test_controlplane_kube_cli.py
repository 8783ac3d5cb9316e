"""`epp controlplane` flags: exactly one source, Kubernetes flags only with --kubernetes."""

from __future__ import annotations

import pytest

from epp.controlplane.main import kube_config, mode_error, parser, run


def test_exactly_one_source_is_required() -> None:
    assert "--manifests PATH" in (mode_error(parser().parse_args([])) or "")
    both = parser().parse_args(["--manifests", "x", "--kubernetes"])
    assert "exclusive" in (mode_error(both) or "")
    stray = parser().parse_args(["--manifests", "x", "--namespace", "a"])
    assert "--namespace" in (mode_error(stray) or "")
    assert mode_error(parser().parse_args(["--manifests", "x"])) is None
    assert mode_error(parser().parse_args(["--kubernetes"])) is None


def test_a_bad_mode_exits_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["--kubernetes", "--manifests", "x"])
    assert exc.value.code == 2
    assert "exclusive" in capsys.readouterr().err


def test_kubernetes_flags_become_the_mode_config() -> None:
    args = parser().parse_args(
        ["--kubernetes", "--api-server", "http://127.0.0.1:1", "--namespace", "a",
         "--namespace", "b", "--no-leader-elect", "--lease-name", "l", "--gateway-class", "c",
         "--secret-namespace", "tls"]
    )  # fmt: skip
    config = kube_config(args)
    assert config.client.host == "http://127.0.0.1:1"
    assert config.source.namespaces == ("a", "b")
    assert config.source.secret_namespaces == ("tls",)
    assert not config.leader_elect and config.leader.name == "l" and config.write_status
    assert config.gateway_classes == ("c",)
    alias = parser().parse_args(["--kubernetes", "--kube-api", "http://h:2"])
    assert kube_config(alias).client.host == "http://h:2"
    assert kube_config(alias).source.secret_namespaces is None
