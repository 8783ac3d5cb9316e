"""The gateway's model catalog (GET /v1/models answered by the EPP, no pod asked) and the
ext_proc edge's side of decoded bodies (the content-encoding header leaves with the encoding)."""

from __future__ import annotations

import gzip

import orjson
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.api.model import ResourceSet
from epp.catalog import Catalog
from epp.extproc.stream import RequestStream
from epp.observability import EppMetrics
from epp.settings import ProtocolSettings
from epp.tracking.tracker import Tracking
from tests.factories import SERVED, director, model, pod, pool, seed_store
from tests.unit.test_extproc_stream import body, headers

CHAT = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hello"}]}


def stream_for(protocol: ProtocolSettings | None = None) -> RequestStream:
    settings = protocol or ProtocolSettings()
    store = seed_store()
    store.apply_resources(
        ResourceSet(
            (pool(), pool("other")),
            (model(), model("b-model", "other")),
            (pod("p0", "127.0.0.2"), pod("q0", "127.0.0.9", "other")),
        )
    )
    tracking = Tracking(director(store, protocol=settings), store, EppMetrics())
    return RequestStream(tracking, settings, Catalog(store, settings, created=1700000000))


def get(path: str, method: str = "GET") -> pb.ProcessingRequest:
    return headers({":method": method, ":path": path, "x-request-id": "r1"}, end=True)


async def test_models_lists_every_inference_model_across_pools_answered_by_the_epp() -> None:
    (reply,) = await stream_for().on_message(get("/v1/models"))
    immediate = reply.immediate_response
    assert immediate.status.code == 200
    listed = orjson.loads(immediate.body)
    assert listed["object"] == "list"
    names = [(m["id"], m["pool"], m["root"]) for m in listed["data"]]
    assert names == [
        ("b-model", "default/other", SERVED),
        ("llama2-7b-chat", "default/llama2-gpu-pool", SERVED),
        (SERVED, "default/llama2-gpu-pool", SERVED),  # the pools' own name is served too
    ]
    assert all(m["object"] == "model" and m["created"] == 1700000000 for m in listed["data"])
    sets = {h.header.key: h.header.raw_value.decode() for h in immediate.headers.set_headers}
    assert sets == {"content-type": "application/json", "x-request-id": "r1"}


async def test_one_model_by_name_and_an_unknown_one() -> None:
    stream = stream_for()
    (one,) = await stream.on_message(get("/v1/models/b-model?x=1"))
    assert orjson.loads(one.immediate_response.body)["id"] == "b-model"
    quoted = "/v1/models/" + SERVED.replace("/", "%2F")
    (served,) = await stream_for().on_message(get(quoted))
    assert orjson.loads(served.immediate_response.body)["id"] == SERVED
    (missing,) = await stream_for().on_message(get("/v1/models/nope"))
    assert missing.immediate_response.status.code == 404
    error = orjson.loads(missing.immediate_response.body)["error"]
    assert error["type"] == "not_found_error" and "nope" in error["message"]


async def test_only_registered_names_when_registration_is_required() -> None:
    strict = stream_for(ProtocolSettings(require_registered_models=True))
    (reply,) = await strict.on_message(get("/v1/models"))
    ids = [m["id"] for m in orjson.loads(reply.immediate_response.body)["data"]]
    assert ids == ["b-model", "llama2-7b-chat"]


async def test_other_bodiless_requests_still_go_to_a_pod() -> None:
    (reply,) = await stream_for().on_message(get("/health"))
    assert reply.WhichOneof("response") == "request_headers"
    (post,) = await stream_for().on_message(get("/v1/models", "POST"))
    assert post.WhichOneof("response") == "request_headers"


async def test_a_decoded_body_goes_upstream_without_its_content_encoding() -> None:
    stream = stream_for()
    packed = gzip.compress(orjson.dumps(CHAT))
    await stream.on_message(headers({":path": "/v1/chat/completions", "content-encoding": "gzip"}))
    head, *chunks = await stream.on_message(body(packed, True))
    mutation = head.request_headers.response.header_mutation
    assert "content-encoding" in mutation.remove_headers
    sent = b"".join(c.request_body.response.body_mutation.streamed_response.body for c in chunks)
    assert orjson.loads(sent)["messages"] == CHAT["messages"]
    buffered = stream_for()
    mode = mode_pb.ProcessingMode.BUFFERED
    await buffered.on_message(
        headers({":path": "/v1/chat/completions", "content-encoding": "gzip"}, mode=mode)
    )
    (reply,) = await buffered.on_message(body(packed, True))
    common = reply.request_body.response
    assert "content-encoding" in common.header_mutation.remove_headers
    assert orjson.loads(common.body_mutation.body)["model"] == SERVED
