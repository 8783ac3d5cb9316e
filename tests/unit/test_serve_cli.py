"""`epp serve` flags: the waiting-room bounds parse, default to upstream's 1 GB of bodies per
priority band, and refuse negative or non-numeric values with a message naming the problem."""

from __future__ import annotations

import pytest

from epp.cli import build_parser


def test_waiting_room_bounds_default_and_parse() -> None:
    args = build_parser().parse_args(["serve", "--endpoints", "127.0.0.1:8000"])
    assert (args.queue_max_requests, args.queue_max_bytes) == (0, 1_000_000_000)
    args = build_parser().parse_args(
        ["serve", "--queue-max-requests", "500", "--queue-max-bytes", "0"]
    )
    assert (args.queue_max_requests, args.queue_max_bytes) == (500, 0)


@pytest.mark.parametrize(("value", "why"), [("-1", "negative"), ("lots", "not a whole number")])
def test_waiting_room_bounds_refuse_bad_values(
    value: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--queue-max-requests", value])
    assert info.value.code == 2
    assert why in capsys.readouterr().err
