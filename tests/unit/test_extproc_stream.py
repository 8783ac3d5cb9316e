from __future__ import annotations

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.datastore import Datastore
from epp.extproc.stream import RequestStream
from epp.observability import EppMetrics
from epp.settings import ProtocolSettings
from epp.tracking.tracker import EARLY_PACE_EVENTS, Tracking
from epp.types import EndpointMetrics
from tests.factories import SERVED, director, seed_store


def headers(
    pairs: dict[str, str], end: bool = False, mode: int | None = None
) -> pb.ProcessingRequest:
    hdrs = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=end,
    )
    request = pb.ProcessingRequest(request_headers=hdrs)
    if mode is not None:
        request.protocol_config.request_body_mode = mode  # type: ignore[assignment]
    return request


def body(data: bytes, end: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=end))


def response_headers(pairs: dict[str, str]) -> pb.ProcessingRequest:
    hdrs = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        )
    )
    return pb.ProcessingRequest(response_headers=hdrs)


def response_body(data: bytes, end: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=end))


def set_headers(reply: pb.ProcessingResponse, phase: str) -> dict[str, str]:
    common = getattr(reply, phase).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def new_stream(**protocol: float) -> tuple[RequestStream, Datastore]:
    store = seed_store()
    settings = ProtocolSettings(**protocol)  # type: ignore[arg-type]
    tracking = Tracking(
        director(store, protocol=settings), store, EppMetrics(), follow=settings.follow_responses
    )
    return RequestStream(tracking, settings), store


CHAT = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hello"}]}


async def test_full_duplex_defers_headers_then_sends_destination_and_body() -> None:
    stream, _ = new_stream()
    spoof = {":path": "/v1/chat/completions", "x-gateway-destination-endpoint": "127.0.0.1:9"}
    assert await stream.on_message(headers(spoof)) == []
    raw = orjson.dumps(CHAT)
    assert await stream.on_message(body(raw[:10], False)) == []
    replies = await stream.on_message(body(raw[10:], True))
    head, *chunks = replies
    assert head.WhichOneof("response") == "request_headers"
    assert head.request_headers.response.clear_route_cache
    sets = set_headers(head, "request_headers")
    destination = sets["x-gateway-destination-endpoint"]
    assert destination in {"127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"}
    lb = head.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == destination
    sent = b"".join(c.request_body.response.body_mutation.streamed_response.body for c in chunks)
    assert int(sets["content-length"]) == len(sent)
    assert orjson.loads(sent)["model"] == SERVED
    assert chunks[-1].request_body.response.body_mutation.streamed_response.end_of_stream


async def test_one_mebibyte_prompt_is_echoed_in_chunks_of_at_most_62000_bytes() -> None:
    stream, _ = new_stream()
    big = orjson.dumps({"model": SERVED, "prompt": "x" * (1 << 20)})
    await stream.on_message(headers({":path": "/v1/completions"}))
    replies = []
    for i in range(0, len(big), 16384):
        replies += await stream.on_message(body(big[i : i + 16384], i + 16384 >= len(big)))
    chunks = [r.request_body.response.body_mutation.streamed_response for r in replies[1:]]
    assert all(len(c.body) <= 62_000 for c in chunks)
    assert b"".join(c.body for c in chunks) == big
    assert [c.end_of_stream for c in chunks].count(True) == 1 and chunks[-1].end_of_stream


async def test_malformed_json_gets_an_openai_style_400() -> None:
    stream, _ = new_stream()
    await stream.on_message(headers({":path": "/v1/chat/completions", "x-request-id": "abc"}))
    (reply,) = await stream.on_message(body(b'{"model": ', True))
    immediate = reply.immediate_response
    assert immediate.status.code == 400
    error = orjson.loads(immediate.body)["error"]
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]
    sets = {h.header.key: h.header.raw_value.decode() for h in immediate.headers.set_headers}
    assert sets["content-type"] == "application/json"
    assert sets["x-gateway-inference-error"] == "BadRequest"
    assert sets["x-request-id"] == "abc"


async def test_body_over_limit_is_refused_as_soon_as_it_is_exceeded() -> None:
    stream, _ = new_stream(max_body_bytes=100)
    await stream.on_message(headers({}))
    (reply,) = await stream.on_message(body(b"x" * 101, False))
    assert reply.immediate_response.status.code == 413


async def test_bodyless_request_is_answered_at_once() -> None:
    stream, _ = new_stream()
    (reply,) = await stream.on_message(headers({":method": "GET", ":path": "/v1/models"}, end=True))
    assert set_headers(reply, "request_headers")["x-gateway-destination-endpoint"].endswith(":8000")


async def test_buffered_mode_answers_headers_first_and_decides_on_the_body() -> None:
    stream, _ = new_stream()
    first = await stream.on_message(
        headers(
            {"x-gateway-inference-objective": "x", "x-gateway-inference-ttl-ms": "500"},
            mode=mode_pb.ProcessingMode.BUFFERED,
        )
    )
    assert first[0].request_headers.response.header_mutation.remove_headers == [
        "x-gateway-inference-objective",
        "x-gateway-inference-ttl-ms",  # read by the waiting room, never sent on to the pod
    ]
    (reply,) = await stream.on_message(body(orjson.dumps(CHAT), True))
    common = reply.request_body.response
    assert common.status == pb.CommonResponse.CONTINUE_AND_REPLACE
    assert orjson.loads(common.body_mutation.body)["model"] == SERVED
    assert "x-gateway-destination-endpoint" in set_headers(reply, "request_body")
    assert common.clear_route_cache


async def test_streamed_response_restores_model_name_and_releases_once() -> None:
    stream, store = new_stream()
    await stream.on_message(headers({}))
    head, *_ = await stream.on_message(body(orjson.dumps(CHAT), True))
    address = set_headers(head, "request_headers")["x-gateway-destination-endpoint"]
    assert store.in_flight(address) == 1
    (rh,) = await stream.on_message(
        response_headers({":status": "200", "content-type": "text/event-stream"})
    )
    assert rh.WhichOneof("response") == "response_headers"
    event = b'data: {"id":"1","model":"' + SERVED.encode() + b'","choices":[]}\n\n'
    out = b""
    for i in range(0, len(event), 7):  # the model name is split across chunks
        for r in await stream.on_message(response_body(event[i : i + 7], False)):
            out += r.response_body.response.body_mutation.streamed_response.body
    usage = (
        b'data: {"model":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}'
        b"\n\ndata: [DONE]\n\n"
    )
    for r in await stream.on_message(response_body(usage, True)):
        out += r.response_body.response.body_mutation.streamed_response.body
    assert b'"model":"llama2-7b-chat"' in out and SERVED.encode() not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert store.in_flight(address) == 0
    stream.close()
    assert store.in_flight(address) == 0


async def test_client_gone_mid_response_releases_the_lease() -> None:
    stream, store = new_stream()
    await stream.on_message(headers({}))
    head, *_ = await stream.on_message(body(orjson.dumps(CHAT), True))
    address = set_headers(head, "request_headers")["x-gateway-destination-endpoint"]
    await stream.on_message(
        response_headers({":status": "200", "content-type": "application/json"})
    )
    await stream.on_message(response_body(b'{"model": "', False))
    assert store.in_flight(address) == 1
    stream.close()
    assert store.in_flight(address) == 0


async def test_a_long_stream_shows_an_unmeasured_endpoints_pace_before_it_ends() -> None:
    stream, store = new_stream()
    await stream.on_message(headers({}))
    head, *_ = await stream.on_message(body(orjson.dumps(CHAT), True))
    address = set_headers(head, "request_headers")["x-gateway-destination-endpoint"]
    await stream.on_message(
        response_headers({":status": "200", "content-type": "text/event-stream"})
    )

    def pace() -> float:
        return next(s.tpot for s in store.candidates("default/llama2-gpu-pool")
                    if s.address == address)  # fmt: skip

    event = b'data: {"model":"' + SERVED.encode() + b'","choices":[]}\n\n'
    for _ in range(EARLY_PACE_EVENTS - 1):
        await stream.on_message(response_body(event, False))
    assert pace() == 0.0  # not enough tokens yet to tell
    await stream.on_message(response_body(event, False))
    first = pace()
    assert first > 0.0  # measured while the answer is still streaming
    for _ in range(EARLY_PACE_EVENTS):
        await stream.on_message(response_body(event, False))
    assert pace() == first  # one early sample per response, and only while nothing is known
    await stream.on_message(response_body(b"data: [DONE]\n\n", True))
    assert store.in_flight(address) == 0


# ---- response bodies only when needed ---------------------------------------------------------
_PM = mode_pb.ProcessingMode
BUFFERED_CONFIG = {"request": _PM.BUFFERED, "response": _PM.STREAMED}  # as gateway/envoy.yaml


def configured(
    request_mode: int, response_mode: int, pairs: dict[str, str]
) -> pb.ProcessingRequest:
    message = headers(pairs, mode=request_mode)
    message.protocol_config.response_body_mode = response_mode  # type: ignore[assignment]
    return message


def engine_paced(store: Datastore) -> None:
    for address in ("127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"):
        store.set_metrics(address, EndpointMetrics(itl_seconds=0.0, itl_count=0.0))


async def decide_buffered(
    stream: RequestStream, payload: dict[str, object]
) -> pb.ProcessingResponse:
    await stream.on_message(
        configured(_PM.BUFFERED, _PM.STREAMED, {":path": "/v1/chat/completions"})
    )
    (reply,) = await stream.on_message(body(orjson.dumps(payload), True))
    return reply


async def test_buffered_body_goes_back_only_when_rewritten() -> None:
    stream, _ = new_stream()
    reply = await decide_buffered(stream, {**CHAT, "model": SERVED})
    common = reply.request_body.response
    assert common.status == pb.CommonResponse.CONTINUE and not common.HasField("body_mutation")
    sets = set_headers(reply, "request_body")
    assert "content-length" not in sets and "x-gateway-destination-endpoint" in sets
    assert reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields  # the pick for Envoy
    rewritten = (await decide_buffered(new_stream()[0], CHAT)).request_body.response
    assert rewritten.status == pb.CommonResponse.CONTINUE_AND_REPLACE
    assert set_headers_of(rewritten)["content-length"] == str(len(rewritten.body_mutation.body))


def set_headers_of(common: pb.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


async def test_no_response_body_is_asked_for_and_the_stream_end_ends_the_request() -> None:
    stream, store = new_stream()
    engine_paced(store)
    reply = await decide_buffered(stream, {**CHAT, "model": SERVED, "stream": True})
    address = set_headers(reply, "request_body")["x-gateway-destination-endpoint"]
    (rh,) = await stream.on_message(
        response_headers({":status": "200", "content-type": "text/event-stream"})
    )
    override = rh.mode_override
    assert override.response_body_mode == _PM.NONE
    assert override.response_trailer_mode == _PM.SEND  # Envoy keeps the stream open till the end
    assert override.request_body_mode == _PM.BUFFERED  # unchanged
    assert store.in_flight(address) == 1  # the response is still streaming
    stream.close()  # Envoy closed the stream: the HTTP stream ended (or was reset)
    assert store.in_flight(address) == 0
    stream.close()
    assert store.in_flight(address) == 0  # released exactly once


async def test_a_rewritten_answer_is_read_in_the_mode_that_restores_the_name() -> None:
    stream, store = new_stream()
    engine_paced(store)
    await decide_buffered(stream, {**CHAT, "stream": True})
    (rh,) = await stream.on_message(
        response_headers({":status": "200", "content-type": "text/event-stream"})
    )
    assert rh.mode_override.response_body_mode == _PM.STREAMED
    stream, store = new_stream()
    await decide_buffered(stream, CHAT)
    (rh,) = await stream.on_message(
        response_headers(
            {":status": "200", "content-type": "application/json", "content-length": "99"}
        )
    )
    assert rh.mode_override.response_body_mode == _PM.BUFFERED  # one piece, rewritten whole
    assert "content-length" in rh.response_headers.response.header_mutation.remove_headers
    answer = orjson.dumps({"model": SERVED, "choices": [], "usage": {"completion_tokens": 3}})
    (rb,) = await stream.on_message(response_body(answer, True))
    assert orjson.loads(rb.response_body.response.body_mutation.body)["model"] == "llama2-7b-chat"
    assert sum(store.in_flight(a) for a in ("127.0.0.2:8000", "127.0.0.3:8000",
                                            "127.0.0.4:8000")) == 0  # fmt: skip


async def test_an_engine_without_pace_metrics_has_its_streams_read() -> None:
    stream, _ = new_stream()  # no scrape has shown an inter-token latency histogram
    await decide_buffered(stream, {**CHAT, "model": SERVED, "stream": True})
    (rh,) = await stream.on_message(
        response_headers({":status": "200", "content-type": "text/event-stream"})
    )
    assert rh.mode_override.response_body_mode == _PM.STREAMED


async def test_a_sampled_share_of_answers_is_read_to_count_tokens() -> None:
    stream, store = new_stream(follow_responses=1.0)
    engine_paced(store)
    await decide_buffered(stream, {**CHAT, "model": SERVED})
    (rh,) = await stream.on_message(
        response_headers({":status": "200", "content-type": "application/json"})
    )
    assert rh.mode_override.response_body_mode == _PM.BUFFERED


async def test_full_duplex_configuration_gets_no_override_and_every_chunk_is_answered() -> None:
    stream, store = new_stream()
    engine_paced(store)
    await stream.on_message(configured(_PM.FULL_DUPLEX_STREAMED, _PM.FULL_DUPLEX_STREAMED, {}))
    head, *_ = await stream.on_message(body(orjson.dumps({**CHAT, "model": SERVED}), True))
    address = set_headers(head, "request_headers")["x-gateway-destination-endpoint"]
    (rh,) = await stream.on_message(
        response_headers({":status": "200", "content-type": "text/event-stream"})
    )
    assert not rh.HasField("mode_override")  # Envoy would ignore it
    (echo,) = await stream.on_message(response_body(b"data: {}\n\n", False))
    assert echo.response_body.response.body_mutation.streamed_response.body == b"data: {}\n\n"
    await stream.on_message(response_body(b"data: [DONE]\n\n", True))
    assert store.in_flight(address) == 0
