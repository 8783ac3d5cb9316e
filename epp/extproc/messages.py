"""Builders for the ext_proc protobuf replies (header/body mutations, immediate responses)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from epp.errors import EppError

DESTINATION_HEADER = "x-gateway-destination-endpoint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
ERROR_HEADER = "x-gateway-inference-error"
PICKED_HEADER = "x-inference-endpoint"  # on responses: the endpoint the EPP picked
VERSION_HEADER = "x-inference-version"  # on responses: the canary version chosen, if any
REQUEST_ID_HEADER = "x-request-id"

# Headers a client may send but never decide with: removed before the request leaves Envoy.
CONTROL_HEADERS = (
    DESTINATION_HEADER,
    SUBSET_KEY,
    SERVED_KEY,
    "x-gateway-inference-fairness-id",
    "x-gateway-inference-objective",
    "x-gateway-model-name-rewrite",
    "x-gateway-inference-ttl-ms",  # the waiting room's TTL (epp.admission.tickets)
)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_MODE = mode_pb.ProcessingMode


def header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


def headers_reply(
    phase: str,
    set_headers: Sequence[tuple[str, str]] = (),
    remove: Iterable[str] = (),
    clear_route_cache: bool = False,
    destination: str | None = None,
) -> pb.ProcessingResponse:
    reply = pb.ProcessingResponse()
    _mutate(getattr(reply, phase).response, set_headers, remove, clear_route_cache)
    if destination is not None:
        _lb_destination(reply, destination)
    return reply


def _mutate(
    common: pb.CommonResponse,
    set_headers: Sequence[tuple[str, str]],
    remove: Iterable[str],
    clear_route_cache: bool,
) -> None:
    """A header mutation (present even when empty) in `common`. Fields are set in place:
    building each message from keyword arguments and copying it in costs about three times as
    much in the protobuf runtime."""
    mutation = common.header_mutation
    mutation.SetInParent()
    if set_headers:
        add = mutation.set_headers.add
        for key, value in set_headers:
            field = add(append_action=_OVERWRITE).header
            field.key = key
            field.raw_value = value.encode()
    if remove:
        mutation.remove_headers.extend(remove)
    if clear_route_cache:
        common.clear_route_cache = True


def _lb_destination(reply: pb.ProcessingResponse, destination: str) -> None:
    fields = reply.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
    fields[DESTINATION_HEADER].string_value = destination


def body_replies(
    phase: str, body: bytes, chunk: int, end: bool = True
) -> list[pb.ProcessingResponse]:
    """`body` as streamed body mutations of at most `chunk` bytes; end_of_stream on the last."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    last = len(pieces) - 1
    replies = []
    for i, piece in enumerate(pieces):
        reply = pb.ProcessingResponse()
        streamed = getattr(reply, phase).response.body_mutation.streamed_response
        streamed.SetInParent()
        streamed.body = piece
        if end and i == last:
            streamed.end_of_stream = True
        replies.append(reply)
    return replies


def buffered_body_reply(
    phase: str,
    body: bytes | None,
    set_headers: Sequence[tuple[str, str]],
    destination: str | None,
    remove: Iterable[str] = (),
) -> pb.ProcessingResponse:
    """BUFFERED mode: one body reply carrying the header mutation; it replaces the body only
    when there is a new one (`body` None: Envoy sends the buffered body on unchanged)."""
    reply = pb.ProcessingResponse()
    common = getattr(reply, phase).response
    _mutate(common, set_headers, remove, destination is not None)
    if body is not None:
        common.status = pb.CommonResponse.CONTINUE_AND_REPLACE
        common.body_mutation.body = body
    if destination is not None:
        _lb_destination(reply, destination)
    return reply


def override_response_body(reply: pb.ProcessingResponse, request_mode: int, body_mode: int) -> None:
    """A `mode_override` in the reply to the response headers: the response body in
    `body_mode` (NONE: not sent at all), response trailers asked for, so that Envoy keeps the
    stream open until the HTTP stream ends and its end tells that the request ended. Envoy
    takes both body modes from an override, so the request's is repeated as it is; it honours
    an override only with `allow_mode_override` and neither body mode FULL_DUPLEX_STREAMED in
    the filter's configuration."""
    mode = reply.mode_override
    mode.request_body_mode = request_mode
    mode.response_body_mode = body_mode
    mode.response_trailer_mode = _MODE.SEND


def trailers_reply(phase: str) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(**{phase: pb.TrailersResponse()})


def error_body(error: EppError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": None,
                "code": error.status,
            }
        }
    )


def immediate_reply(error: EppError, request_id: str | None = None) -> pb.ProcessingResponse:
    return json_reply(
        error.status, error_body(error), request_id, [header(ERROR_HEADER, error.reason)],
        f"epp_{error.reason}",
    )  # fmt: skip


def json_reply(
    status: int,
    body: bytes,
    request_id: str | None = None,
    extra: Sequence[base_pb2.HeaderValueOption] = (),
    details: str = "epp_answered",
) -> pb.ProcessingResponse:
    """An answer from the EPP itself (an error, or the model catalog): no pod sees the request."""
    ids = [header(REQUEST_ID_HEADER, request_id)] if request_id else []
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=pb.HeaderMutation(
                set_headers=[header("content-type", "application/json"), *extra, *ids]
            ),
            body=body,
            details=details,
        )
    )


def header_map(headers: pb.HttpHeaders) -> dict[str, str]:
    """Envoy headers as a dict with lower-case keys (raw_value preferred over value)."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        raw = h.raw_value  # each read of a bytes field is a new copy: read once
        out[h.key.lower()] = raw.decode("utf-8", "replace") if raw else h.value
    return out


def served_endpoint(request: pb.ProcessingRequest) -> str | None:
    """Where the proxy actually sent the request: `envoy.lb` served metadata (protocol v1.0),
    else the `upstream.address` attribute when Envoy is configured to send it."""
    served = metadata_strings(request, LB_NAMESPACE, SERVED_KEY)
    if served:
        return served[0]
    for attrs in request.attributes.values():
        value = attrs.fields.get("upstream.address")
        if value is not None and value.WhichOneof("kind") == "string_value":
            return value.string_value or None
    return None


def metadata_strings(request: pb.ProcessingRequest, namespace: str, key: str) -> list[str] | None:
    """A string or list-of-strings value from the request's metadata context, or None if absent."""
    ns = request.metadata_context.filter_metadata.get(namespace)
    if ns is None or key not in ns.fields:
        return None
    value = ns.fields[key]
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return [v.strip() for v in value.string_value.split(",") if v.strip()]
    if kind == "list_value":
        return [v.string_value for v in value.list_value.values if v.HasField("string_value")]
    return []
