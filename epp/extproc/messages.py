"""Builders for the ext_proc protobuf replies (header/body mutations, immediate responses)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

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
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(
            set_headers=[header(k, v) for k, v in set_headers], remove_headers=list(remove)
        ),
        clear_route_cache=clear_route_cache,
    )
    reply = pb.ProcessingResponse(**{phase: pb.HeadersResponse(response=common)})
    if destination is not None:
        reply.dynamic_metadata.CopyFrom(lb_metadata(destination))
    return reply


def lb_metadata(destination: str) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    meta.fields[LB_NAMESPACE].struct_value.fields[DESTINATION_HEADER].string_value = destination
    return meta


def body_replies(
    phase: str, body: bytes, chunk: int, end: bool = True
) -> list[pb.ProcessingResponse]:
    """`body` as streamed body mutations of at most `chunk` bytes; end_of_stream on the last."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    last = len(pieces) - 1
    return [
        pb.ProcessingResponse(
            **{
                phase: pb.BodyResponse(
                    response=pb.CommonResponse(
                        body_mutation=pb.BodyMutation(
                            streamed_response=pb.StreamedBodyResponse(
                                body=piece, end_of_stream=end and i == last
                            )
                        )
                    )
                )
            }
        )
        for i, piece in enumerate(pieces)
    ]


def buffered_body_reply(
    phase: str,
    body: bytes | None,
    set_headers: Sequence[tuple[str, str]],
    destination: str | None,
    remove: Iterable[str] = (),
) -> pb.ProcessingResponse:
    """BUFFERED mode: one body reply carrying the header mutation; it replaces the body only
    when there is a new one (`body` None: Envoy sends the buffered body on unchanged)."""
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(
            set_headers=[header(k, v) for k, v in set_headers], remove_headers=list(remove)
        ),
        clear_route_cache=destination is not None,
    )
    if body is not None:
        common.status = pb.CommonResponse.CONTINUE_AND_REPLACE
        common.body_mutation.body = body
    reply = pb.ProcessingResponse(**{phase: pb.BodyResponse(response=common)})
    if destination is not None:
        reply.dynamic_metadata.CopyFrom(lb_metadata(destination))
    return reply


def response_body_mode(request_mode: int, body_mode: int) -> mode_pb.ProcessingMode:
    """A `mode_override` for the reply to the response headers: the response body in
    `body_mode` (NONE: not sent at all), response trailers asked for, so that Envoy keeps the
    stream open until the HTTP stream ends and its end tells that the request ended. Envoy
    takes both body modes from an override, so the request's is repeated as it is; it honours
    an override only with `allow_mode_override` and neither body mode FULL_DUPLEX_STREAMED in
    the filter's configuration."""
    return _MODE(
        request_body_mode=request_mode,
        response_body_mode=body_mode,
        response_trailer_mode=_MODE.SEND,
    )


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
        out[h.key.lower()] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
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
