"""Production answer lengths in the benchmark: a cap or no max_tokens from the client, the true
length told to the simulator in a prompt marker that no router interprets."""

from __future__ import annotations

import orjson
import pytest

from epp.sim.openai import parse_request
from epp.sim.pod import SimPod, answer_marker
from epp.sim.spec import SimPodSpec
from loadtest.workloads import ANNOUNCED, CAPPED, UNCAPPED, ChatRequest

REQUEST = ChatRequest((("system", "be brief"), ("user", "what is a gateway?")), 77, "g")


def seq_of(body: dict[str, object], told: bool = True) -> tuple[int, str]:
    pod = SimPod(SimPodSpec("127.0.0.2", 8000, "pod-0", answer_from_prompt=told))
    seq = pod.new_seq(parse_request(orjson.dumps(body), chat=True), None)
    return seq.max_tokens, seq.stop_reason


def test_the_three_conventions_shape_the_body() -> None:
    announced = REQUEST.body("m", lengths=ANNOUNCED)
    assert announced["max_tokens"] == 77 and "#answer" not in orjson.dumps(announced).decode()
    capped = REQUEST.body("m", lengths=CAPPED, cap=1024)
    assert capped["max_tokens"] == 1024
    uncapped = REQUEST.body("m", lengths=UNCAPPED)
    assert "max_tokens" not in uncapped
    for body in (capped, uncapped):
        last = body["messages"][-1]  # type: ignore[index]
        assert last["content"].endswith(" #answer=77")
    with pytest.raises(ValueError, match="lengths"):
        REQUEST.body("m", lengths="guess")


def test_the_simulator_ends_the_answer_where_it_was_told() -> None:
    assert seq_of(REQUEST.body("m", lengths=UNCAPPED)) == (77, "stop")
    assert seq_of(REQUEST.body("m", lengths=CAPPED, cap=1024)) == (77, "stop")
    assert seq_of(REQUEST.body("m", lengths=CAPPED, cap=50)) == (50, "length")
    assert seq_of(REQUEST.body("m", lengths=ANNOUNCED)) == (77, "length")
    # without the benchmark flag the marker is ordinary text: the length is drawn
    drawn, reason = seq_of(REQUEST.body("m", lengths=UNCAPPED), told=False)
    assert reason == "stop" and 32 <= drawn <= 384


def test_the_last_marker_counts_and_garbage_is_ignored() -> None:
    assert answer_marker(b"#answer=5 then #answer=12") == 12
    assert answer_marker(b"no marker") is None
    assert answer_marker(b"#answer=x") is None
    assert answer_marker(b"#answer=0") is None
