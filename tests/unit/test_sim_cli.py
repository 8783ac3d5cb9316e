"""`epp sim` flags become pod specs: addresses, names, shared options and per-pod overrides."""

from __future__ import annotations

import pytest

from epp.sim.main import build_specs, make_parser, run


def specs(*argv: str):  # type: ignore[no-untyped-def]
    return build_specs(make_parser().parse_args(list(argv)))


def test_pods_list_and_shared_options() -> None:
    out = specs(
        "--pods", "127.0.0.2:8000,127.0.0.3:8001", "--model", "m", "--profile", "L4",
        "--lora", "a,b=/p/b", "--lora", "c", "--accept-any-model", "--num-gpu-blocks", "99",
    )  # fmt: skip
    assert [(s.host, s.port, s.name) for s in out] == [
        ("127.0.0.2", 8000, "sim-pod-0"),
        ("127.0.0.3", 8001, "sim-pod-1"),
    ]
    assert all(s.model == "m" and s.profile == "L4" and s.accept_any_model for s in out)
    assert out[0].loras == ("a", "b=/p/b", "c") and out[1].num_gpu_blocks == 99
    assert out[0].seed != out[1].seed


def test_replicas_and_per_pod_overrides() -> None:
    out = specs(
        "--replicas", "3", "--first-ip", "127.0.0.10", "--port", "9000",
        "--pod-option", "127.0.0.11:9000:speed=0.5",
        "--pod-option", "sim-pod-2:profile=T4",
        "--pod-option", "0:loras=x;y",
    )  # fmt: skip
    assert [s.host for s in out] == ["127.0.0.10", "127.0.0.11", "127.0.0.12"]
    assert [s.speed for s in out] == [1.0, 0.5, 1.0]
    assert out[2].profile == "T4" and out[0].loras == ("x", "y")


@pytest.mark.parametrize(
    "argv",
    [
        ["--replicas", "1", "--pod-option", "0:colour=red"],
        ["--replicas", "1", "--pod-option", "7:speed=2"],
        ["--replicas", "1", "--speed", "0"],
        ["--replicas", "1", "--profile", "Z80"],
    ],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv) == 2
    assert "epp sim:" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--nope"]) == 2
    assert "usage" in capsys.readouterr().err
