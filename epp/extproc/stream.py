"""The per-request ext_proc state machine (one gRPC stream = one HTTP request): translation only.

Request path: headers are held until the body is complete (FULL_DUPLEX_STREAMED), then the
request starts (`Tracking.start`: the director decides), and we reply headers (destination,
Content-Length, clear_route_cache, envoy.lb metadata) followed by the body in ≤ 62,000-byte
chunks. In BUFFERED modes Envoy waits for the header reply, so headers are answered at once and
the decision rides on the body reply, which replaces the body only when it was rewritten; in
STREAMED/NONE modes routing happens before the body.
A GET of /v1/models is the gateway's model catalog (`epp.catalog`), answered here at once.
Response path: the tracker says from the headers how much of the body it needs; where the proxy
allows it (not full-duplex), the reply to the headers overrides the response body mode to just
that, usually none at all. Chunks that do come go to the tracker, which follows usage and
restores the client's model name; its answer is put back into body mutations. The stream going
away (the proxy closes it when the HTTP stream ends) ends the request, once, through its tracker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp import sessions
from epp.catalog import Catalog
from epp.errors import EppError, InternalError, RequestTooLarge
from epp.extproc import messages as m
from epp.request import Body
from epp.settings import ProtocolSettings
from epp.tracking.tracker import RequestTracker, ResponseBody, Tracking

log = logging.getLogger("epp.extproc")
_FULL_DUPLEX = mode_pb.ProcessingMode.FULL_DUPLEX_STREAMED
_BUFFERED = mode_pb.ProcessingMode.BUFFERED
_BUFFERED_PARTIAL = mode_pb.ProcessingMode.BUFFERED_PARTIAL
_STREAMED = mode_pb.ProcessingMode.STREAMED
_NONE = mode_pb.ProcessingMode.NONE
_TRUSTED_SUBSET_HEADER = "x-gateway-destination-endpoint-subset"
_TRUSTED_REWRITE_HEADER = "x-gateway-model-name-rewrite"
_ENCODING_HEADER = "content-encoding"
# the response body mode that gives the tracker what it needs
_BODY_MODES = {
    ResponseBody.SKIP: _NONE,
    ResponseBody.CHUNKS: _STREAMED,
    ResponseBody.WHOLE: _BUFFERED,
}

Replies = list[pb.ProcessingResponse]


class RequestStream:
    def __init__(
        self, tracking: Tracking, protocol: ProtocolSettings, catalog: Catalog | None = None
    ) -> None:
        self._tracking = tracking
        self._protocol = protocol
        self._catalog = catalog
        self._headers: Mapping[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._mode: int = _FULL_DUPLEX  # request body mode, from Envoy's protocol_config
        self._response_mode: int = _FULL_DUPLEX
        self._subset: list[str] | None = None
        self._tracker: RequestTracker | None = None

    async def on_message(self, request: pb.ProcessingRequest) -> Replies:
        kind = request.WhichOneof("request")
        try:
            if kind == "request_headers":
                return await self._on_request_headers(request)
            if kind == "request_body":
                return await self._on_request_body(request.request_body)
            if kind == "request_trailers":
                return [m.trailers_reply("request_trailers")]
            if kind == "response_headers":
                return self._on_response_headers(request)
            if kind == "response_body":
                return self._on_response_body(request.response_body)
            if kind == "response_trailers":
                self.close()
                return [m.trailers_reply("response_trailers")]
        except EppError as exc:
            return [self._fail(exc)]
        except Exception:
            log.exception("internal error while processing %s", kind)
            return [self._fail(InternalError("internal error in the endpoint picker"))]
        return []

    def close(self) -> None:
        """The stream ended (normally, client gone, or upstream reset): end the request once."""
        if self._tracker is not None:
            self._tracker.complete()

    # ---- request path ------------------------------------------------------------------------
    async def _on_request_headers(self, request: pb.ProcessingRequest) -> Replies:
        if request.HasField("protocol_config"):
            self._mode = request.protocol_config.request_body_mode
            self._response_mode = request.protocol_config.response_body_mode
        self._headers = m.header_map(request.request_headers)
        self._subset = m.metadata_strings(request, m.SUBSET_NAMESPACE, m.SUBSET_KEY)
        if self._subset is None and self._protocol.trust_control_headers:
            hint = self._headers.get(_TRUSTED_SUBSET_HEADER)
            self._subset = [h.strip() for h in hint.split(",") if h.strip()] if hint else None
        if request.request_headers.end_of_stream:
            catalog, path = self._catalog, self._headers.get(":path", "")
            if catalog is not None and catalog.asks(self._headers.get(":method", ""), path):
                return [
                    m.json_reply(200, catalog.answer(path), self._headers.get(m.REQUEST_ID_HEADER))
                ]
            tracker = await self._start(Body.NONE)
            return [self._destination_headers(tracker.decision.endpoints[0], None)]
        if self._mode == _FULL_DUPLEX:
            return []  # deferred until the body is complete
        if self._mode in (_STREAMED, _NONE):  # routing happens before the body: decide now
            tracker = await self._start(Body.FOLLOWS)
            return [self._destination_headers(",".join(tracker.decision.endpoints), None)]
        return [m.headers_reply("request_headers", remove=self._removable())]

    async def _on_request_body(self, body: pb.HttpBody) -> Replies:
        if self._mode == _STREAMED:  # already routed: each chunk continues unchanged
            return [pb.ProcessingResponse(request_body=pb.BodyResponse())]
        chunk = body.body  # each read of a protobuf bytes field is a new copy: read it once
        if chunk:
            self._size += len(chunk)
            if self._size > self._protocol.max_body_bytes:
                self._body = []
                raise RequestTooLarge(
                    f"request body exceeds the limit of {self._protocol.max_body_bytes} bytes"
                )
            self._body.append(chunk)
        if not body.end_of_stream:
            return []
        data = b"".join(self._body)
        self._body = []
        decision = (await self._start(data)).decision
        destination = ",".join(decision.endpoints)
        # what goes upstream is the body as the EPP read it: decoded, if it came encoded
        decoded = [_ENCODING_HEADER] if _ENCODING_HEADER in self._headers else []
        if self._mode in (_BUFFERED, _BUFFERED_PARTIAL):
            # Envoy holds the body: it goes back only if rewritten (the request value keeps the
            # very bytes it was given otherwise)
            new = None if decision.body is data else decision.body
            sets = self._destination_set(destination, None if new is None else len(new))
            remove = decoded if new is not None else []
            return [m.buffered_body_reply("request_body", new, sets, destination, remove)]
        return [
            self._destination_headers(destination, len(decision.body), decoded),
            *m.body_replies("request_body", decision.body, self._protocol.chunk_bytes),
        ]

    async def _start(self, body: bytes | Body) -> RequestTracker:
        rewrite = None
        if self._protocol.trust_control_headers:
            rewrite = self._headers.get(_TRUSTED_REWRITE_HEADER) or None
        self._tracker = await self._tracking.start(self._headers, body, self._subset, rewrite)
        return self._tracker

    def _destination_set(self, destination: str, length: int | None) -> list[tuple[str, str]]:
        """The pick, and with a body the request id and the body's new length (None: a length
        that has not changed, or no body)."""
        sets = [(m.DESTINATION_HEADER, destination)]
        if self._tracker is not None and self._tracker.decision.runs_inference:
            if length is not None:
                sets.append(("content-length", str(length)))
            sets.append((m.REQUEST_ID_HEADER, self._tracker.decision.request_id))
        return sets

    def _destination_headers(
        self, destination: str, length: int | None, remove: list[str] | None = None
    ) -> pb.ProcessingResponse:
        return m.headers_reply(
            "request_headers",
            self._destination_set(destination, length),
            remove=self._removable() + (remove or []),
            clear_route_cache=True,
            destination=destination,
        )

    def _removable(self) -> list[str]:
        """Client-sent control headers: removed (the destination one is overwritten instead)."""
        return [h for h in m.CONTROL_HEADERS[1:] if h in self._headers]

    # ---- response path -----------------------------------------------------------------------
    def _on_response_headers(self, request: pb.ProcessingRequest) -> Replies:
        headers = m.header_map(request.response_headers)
        remove: list[str] = []
        sets: list[tuple[str, str]] = []
        tracker = self._tracker
        body = ResponseBody.CHUNKS
        if tracker is not None:
            status = int(headers.get(":status", "0") or 0)
            content_type = headers.get("content-type", "")
            body = tracker.response_headers(status, content_type, m.served_endpoint(request))
            decision = tracker.decision
            if decision.runs_inference:
                sets = [
                    (m.PICKED_HEADER, decision.endpoints[0]),
                    (m.REQUEST_ID_HEADER, decision.request_id),
                ]
                if decision.version:
                    sets.append((m.VERSION_HEADER, decision.version))
                if decision.session_token:
                    sets.append((sessions.TOKEN_HEADER, decision.session_token))
                if decision.session_moved:
                    sets.append((sessions.MOVED_HEADER, decision.session_moved))
                if decision.model_rewritten and "content-length" in headers:
                    remove.append("content-length")
            if request.response_headers.end_of_stream:
                tracker.complete()
        reply = m.headers_reply("response_headers", sets, remove=remove)
        if self._response_mode != _FULL_DUPLEX and not request.response_headers.end_of_stream:
            m.override_response_body(reply, self._mode, _BODY_MODES[body])
        return [reply]

    def _on_response_body(self, body: pb.HttpBody) -> Replies:
        tracker, chunk, end = self._tracker, body.body, body.end_of_stream
        inline = self._response_mode != _FULL_DUPLEX
        out = tracker.response_body(chunk, end, inline) if tracker is not None else chunk
        if inline:  # STREAMED/BUFFERED: one reply per chunk, replacing it if rewritten
            reply = pb.ProcessingResponse()
            common = reply.response_body.response
            common.SetInParent()
            if out != chunk:
                common.body_mutation.body = out
            return [reply]
        if not out and not end and tracker is not None and tracker.following:
            return []  # held back: a non-streaming body is rewritten whole at its end
        return m.body_replies("response_body", out, self._protocol.chunk_bytes, end)

    # ---- endings -----------------------------------------------------------------------------
    def _fail(self, error: EppError) -> pb.ProcessingResponse:
        request_id = self._headers.get(m.REQUEST_ID_HEADER)
        self._tracking.failed(error, request_id, self._tracker)
        return m.immediate_reply(error, request_id)
