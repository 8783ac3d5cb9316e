"""`epp serve --workers N`: each worker's command line."""

from __future__ import annotations

from epp.workers import without_workers, worker_argv


def test_the_workers_flag_is_taken_out_in_both_spellings() -> None:
    argv = ["serve", "--workers", "3", "--endpoints", "a:1", "--workers=2", "--grpc-port", "9"]
    assert without_workers(argv) == ["serve", "--endpoints", "a:1", "--grpc-port", "9"]


def test_each_worker_gets_its_own_ports_name_and_the_others_as_peers() -> None:
    argv = worker_argv(["epp", "serve"], 1, 3, 9090, 9004, "box", ("10.0.0.9:9004",))
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags == {
        "--metrics-port": "9091",
        "--peer-port": "9005",
        "--replica-name": "box-w1",
        "--peers": "127.0.0.1:9004,127.0.0.1:9006,10.0.0.9:9004",
    }
