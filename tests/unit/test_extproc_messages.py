"""The ext_proc reply builders (`epp.extproc.messages`): the messages Envoy reads, field by
field, including the sub-messages that must be present even when empty."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.extproc import messages as m

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def test_a_headers_reply_sets_overwrites_removes_and_routes() -> None:
    reply = m.headers_reply(
        "request_headers",
        [(m.DESTINATION_HEADER, "10.0.0.1:8000"), ("x-request-id", "é1")],
        remove=["x-gateway-model-name-rewrite"],
        clear_route_cache=True,
        destination="10.0.0.1:8000",
    )
    common = reply.request_headers.response
    sets = [(o.header.key, o.header.raw_value, o.append_action) for o in
            common.header_mutation.set_headers]  # fmt: skip
    assert sets == [
        (m.DESTINATION_HEADER, b"10.0.0.1:8000", _OVERWRITE),
        ("x-request-id", "é1".encode(), _OVERWRITE),
    ]
    assert list(common.header_mutation.remove_headers) == ["x-gateway-model-name-rewrite"]
    assert common.clear_route_cache
    lb = reply.dynamic_metadata.fields[m.LB_NAMESPACE].struct_value.fields
    assert lb[m.DESTINATION_HEADER].string_value == "10.0.0.1:8000"


def test_an_empty_headers_reply_still_carries_its_phase_and_an_empty_mutation() -> None:
    reply = m.headers_reply("response_headers")
    assert reply.WhichOneof("response") == "response_headers"
    assert reply.response_headers.response.HasField("header_mutation")
    assert not reply.response_headers.response.clear_route_cache
    assert not reply.HasField("dynamic_metadata")


def test_a_buffered_body_reply_replaces_the_body_only_when_given_one() -> None:
    kept = m.buffered_body_reply("request_body", None, [("a", "b")], "10.0.0.1:8000")
    assert kept.request_body.response.status == pb.CommonResponse.CONTINUE
    assert not kept.request_body.response.HasField("body_mutation")
    assert kept.request_body.response.clear_route_cache
    new = m.buffered_body_reply("request_body", b"{}", [], None, ["content-encoding"])
    common = new.request_body.response
    assert common.status == pb.CommonResponse.CONTINUE_AND_REPLACE
    assert common.body_mutation.body == b"{}"
    assert list(common.header_mutation.remove_headers) == ["content-encoding"]
    assert not common.clear_route_cache and not new.HasField("dynamic_metadata")


def test_body_replies_cut_the_body_and_end_only_the_last_piece() -> None:
    replies = m.body_replies("response_body", b"abcdefg", 3)
    pieces = [r.response_body.response.body_mutation.streamed_response for r in replies]
    assert [(p.body, p.end_of_stream) for p in pieces] == [
        (b"abc", False), (b"def", False), (b"g", True),
    ]  # fmt: skip
    (empty,) = m.body_replies("request_body", b"", 3, end=False)
    mutation = empty.request_body.response.body_mutation
    assert mutation.HasField("streamed_response")  # an empty piece is still a piece
    assert not mutation.streamed_response.end_of_stream


def test_the_response_body_override_repeats_the_request_mode_and_asks_for_trailers() -> None:
    reply = m.headers_reply("response_headers")
    m.override_response_body(reply, mode_pb.ProcessingMode.BUFFERED, mode_pb.ProcessingMode.NONE)
    mode = reply.mode_override
    assert reply.HasField("mode_override")
    assert mode.request_body_mode == mode_pb.ProcessingMode.BUFFERED
    assert mode.response_body_mode == mode_pb.ProcessingMode.NONE
    assert mode.response_trailer_mode == mode_pb.ProcessingMode.SEND
