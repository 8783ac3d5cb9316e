"""The per-request ext_proc state machine (one gRPC stream = one HTTP request).

Request path: headers are held until the body is complete (FULL_DUPLEX_STREAMED), then the
director decides, and we reply headers (destination, Content-Length, clear_route_cache, envoy.lb
metadata) followed by the body in ≤ 62,000-byte chunks. In BUFFERED/STREAMED modes Envoy waits for
the header reply, so headers are answered at once and the decision rides on the body reply.
Response path: follow the body for usage and restore the client's model name. The request's
accounting ends exactly once: at the end of the response, or when the stream goes away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.director import Decision, Director
from epp.errors import EppError, InternalError, RequestTooLarge
from epp.extproc import messages as m
from epp.extproc.response import ResponseFollower
from epp.observability import EppMetrics
from epp.settings import ProtocolSettings

log = logging.getLogger("epp.extproc")
_FULL_DUPLEX = mode_pb.ProcessingMode.FULL_DUPLEX_STREAMED
_BUFFERED = mode_pb.ProcessingMode.BUFFERED
_BUFFERED_PARTIAL = mode_pb.ProcessingMode.BUFFERED_PARTIAL
_STREAMED = mode_pb.ProcessingMode.STREAMED
_NONE = mode_pb.ProcessingMode.NONE
_TRUSTED_SUBSET_HEADER = "x-gateway-destination-endpoint-subset"
# output tokens (SSE events) after which a still-streaming response shows an unmeasured
# endpoint's pace
EARLY_PACE_EVENTS = 24
_TRUSTED_REWRITE_HEADER = "x-gateway-model-name-rewrite"

Replies = list[pb.ProcessingResponse]


class RequestStream:
    def __init__(self, director: Director, metrics: EppMetrics, protocol: ProtocolSettings) -> None:
        self._director = director
        self._metrics = metrics
        self._protocol = protocol
        self._headers: Mapping[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._mode: int = _FULL_DUPLEX  # request body mode, from Envoy's protocol_config
        self._response_mode: int = _FULL_DUPLEX
        self._decision: Decision | None = None
        self._follower: ResponseFollower | None = None
        self._status = 0
        self._first_byte: float | None = None
        self._paced = False  # an early pace sample was taken (or the chance has passed)
        self._subset: list[str] | None = None
        self.done = False

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
                self._complete()
                return [m.trailers_reply("response_trailers")]
        except EppError as exc:
            return [self._fail(exc)]
        except Exception:
            log.exception("internal error while processing %s", kind)
            return [self._fail(InternalError("internal error in the endpoint picker"))]
        return []

    def close(self) -> None:
        """The stream ended (normally, client gone, or upstream reset): end accounting once."""
        self._complete()

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
            address = self._director.handle_bodyless(self._headers)
            return [self._destination_headers(address, None)]
        if self._mode == _FULL_DUPLEX:
            return []  # deferred until the body is complete
        if self._mode in (_STREAMED, _NONE):  # routing happens before the body: decide now
            headers_only = self._director.handle_headers_only(self._headers, self._subset)
            decision = self._started(await headers_only)
            return [self._destination_headers(",".join(decision.endpoints), None)]
        return [m.headers_reply("request_headers", remove=self._removable())]

    async def _on_request_body(self, body: pb.HttpBody) -> Replies:
        if self._mode == _STREAMED:  # already routed: each chunk continues unchanged
            return [pb.ProcessingResponse(request_body=pb.BodyResponse())]
        if body.body:
            self._size += len(body.body)
            if self._size > self._protocol.max_body_bytes:
                self._body = []
                raise RequestTooLarge(
                    f"request body exceeds the limit of {self._protocol.max_body_bytes} bytes"
                )
            self._body.append(body.body)
        if not body.end_of_stream:
            return []
        data = b"".join(self._body)
        self._body = []
        rewrite = None
        if self._protocol.trust_control_headers:
            rewrite = self._headers.get(_TRUSTED_REWRITE_HEADER) or None
        queued = self._director.handle_queued(self._headers, data, self._subset, rewrite)
        decision = self._started(await queued)
        destination = ",".join(decision.endpoints)
        if self._mode in (_BUFFERED, _BUFFERED_PARTIAL):
            sets = self._destination_set(destination, decision)
            return [m.buffered_body_reply("request_body", decision.body, sets, destination)]
        return [
            self._destination_headers(destination, decision),
            *m.body_replies("request_body", decision.body, self._protocol.chunk_bytes),
        ]

    def _started(self, decision: Decision) -> Decision:
        self._decision = decision
        self._metrics.requests.labels(decision.client_model, decision.target_model).inc()
        if decision.version is not None:
            self._metrics.versions.labels(
                decision.client_model, decision.version, decision.pool
            ).inc()
        self._metrics.running.labels(decision.client_model).inc()
        self._metrics.scheduler_e2e.observe(decision.decided - decision.started)
        return decision

    def _destination_set(
        self, destination: str, decision: Decision | None
    ) -> list[tuple[str, str]]:
        sets = [(m.DESTINATION_HEADER, destination)]
        if decision is not None:
            sets.append(("content-length", str(len(decision.body))))
            sets.append((m.REQUEST_ID_HEADER, decision.request_id))
        return sets

    def _destination_headers(
        self, destination: str, decision: Decision | None
    ) -> pb.ProcessingResponse:
        return m.headers_reply(
            "request_headers",
            self._destination_set(destination, decision),
            remove=self._removable(),
            clear_route_cache=True,
            destination=destination,
        )

    def _removable(self) -> list[str]:
        """Client-sent control headers: removed (the destination one is overwritten instead)."""
        return [h for h in m.CONTROL_HEADERS[1:] if h in self._headers]

    # ---- response path -----------------------------------------------------------------------
    def _on_response_headers(self, request: pb.ProcessingRequest) -> Replies:
        headers = m.header_map(request.response_headers)
        self._status = int(headers.get(":status", "0") or 0)
        served = m.served_endpoint(request)
        decision = self._decision
        remove: list[str] = []
        sets: list[tuple[str, str]] = []
        if decision is not None:
            sets = [
                (m.PICKED_HEADER, decision.endpoints[0]),
                (m.REQUEST_ID_HEADER, decision.request_id),
            ]
            if decision.version:
                sets.append((m.VERSION_HEADER, decision.version))
            if served and decision.lease.address != served:
                self._director.move_lease(decision, served)
            streaming = "text/event-stream" in headers.get("content-type", "")
            self._follower = ResponseFollower(
                streaming, decision.target_model, decision.client_model
            )
            if decision.model_rewritten and "content-length" in headers:
                remove.append("content-length")
        if request.response_headers.end_of_stream:
            self._complete()
        return [m.headers_reply("response_headers", sets, remove=remove)]

    def _on_response_body(self, body: pb.HttpBody) -> Replies:
        if self._first_byte is None:
            self._first_byte = time.monotonic()
        first_byte = self._first_byte
        follower = self._follower
        if self._response_mode != _FULL_DUPLEX:
            return [self._inline_body_reply(follower, body)]
        if follower is None:  # a body-less request's response: pass through
            return m.body_replies(
                "response_body", body.body, self._protocol.chunk_bytes, body.end_of_stream
            )
        out = follower.feed(body.body)
        if not self._paced and follower.events >= EARLY_PACE_EVENTS:
            self._paced = True
            if self._decision is not None and self._status < 400:
                streamed = time.monotonic() - first_byte
                self._director.early_pace(self._decision, streamed, follower.events)
        if body.end_of_stream:
            out += follower.finish()
            self._complete()
        elif not out:
            return []
        return m.body_replies("response_body", out, self._protocol.chunk_bytes, body.end_of_stream)

    def _inline_body_reply(
        self, follower: ResponseFollower | None, body: pb.HttpBody
    ) -> pb.ProcessingResponse:
        """STREAMED/BUFFERED response bodies: one reply per chunk, replacing it if rewritten."""
        out = follower.feed_inline(body.body) if follower else body.body
        if body.end_of_stream:
            if follower:
                follower.finish(inline=True)
            self._complete()
        common = pb.CommonResponse()
        if out != body.body:
            common.body_mutation.body = out
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))

    # ---- endings -----------------------------------------------------------------------------
    def _fail(self, error: EppError) -> pb.ProcessingResponse:
        decision = self._decision
        model = decision.client_model if decision else ""
        self._metrics.errors.labels(model, model, error.reason).inc()
        log.info(
            "request failed request_id=%s status=%d reason=%s message=%s",
            self._headers.get(m.REQUEST_ID_HEADER, "-"),
            error.status,
            error.reason,
            error.message,
        )
        self._complete()
        return m.immediate_reply(error, self._headers.get(m.REQUEST_ID_HEADER))

    def _complete(self) -> None:
        if self.done:
            return
        self.done = True
        decision = self._decision
        if decision is None:
            return
        now = time.monotonic()
        follower = self._follower
        streamed = 0.0  # only a streamed, successful response shows the endpoint's pace
        ok_stream = follower is not None and follower.streaming and self._status < 400
        if ok_stream and self._first_byte is not None:
            streamed = now - self._first_byte
        outputs = follower.output_tokens if follower else 0
        self._director.finish(decision, streamed, outputs)
        labels = (decision.client_model, decision.target_model)
        elapsed = now - decision.started
        self._metrics.running.labels(decision.client_model).dec()
        self._metrics.duration.labels(*labels).observe(elapsed)
        if follower is not None:
            self._metrics.input_tokens.labels(*labels).observe(
                follower.prompt_tokens or decision.prompt_tokens
            )
            self._metrics.output_tokens.labels(*labels).observe(outputs)
            if outputs:
                self._metrics.ntpot.labels(*labels).observe(elapsed / outputs)
        if self._status >= 400 or follower is None:
            code = f"ModelServerError{self._status}" if self._status else "Incomplete"
            self._metrics.errors.labels(*labels, code).inc()
        log.info(
            "request request_id=%s model=%s target=%s pool=%s endpoint=%s decision_ms=%.3f "
            "status=%d duration_ms=%.1f output_tokens=%d",
            decision.request_id,
            decision.client_model,
            decision.target_model,
            decision.pool,
            decision.lease.address,
            (decision.decided - decision.started) * 1000,
            self._status,
            elapsed * 1000,
            outputs,
        )
