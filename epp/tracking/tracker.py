"""The request tracker: one request's life after the decision, and the EPP's per-request metrics.

`Tracking.start` asks the director for a decision and counts the request; the `RequestTracker`
it returns follows the response: where the proxy really served it (the lease moves there), and
from its headers decides whether the body must be read at all (`ResponseBody`): only to restore
the client's model name, to measure the pace of an engine that does not report it, or for a
sampled share whose tokens are counted. A body that is read gives the first byte, token progress
(an early pace sample), the usage and the back-rewrite (`ResponseFollower`). The end comes
exactly once, from the body or from the proxy closing the request's stream: the lease is
released, the pace recorded, the metrics observed and the request log line written.
`Tracking.failed` counts and logs a request that got an error instead. Neighbours: the edge
(`epp.extproc`) calls these and only translates; `epp.director` decides; `epp.datastore` holds
leases and paces; `epp.observability` owns the metric objects.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from enum import Enum

from epp.datastore import Datastore
from epp.director import Decision, Director
from epp.errors import EppError
from epp.observability import EppMetrics
from epp.request import Body
from epp.tracking.follower import ResponseFollower

log = logging.getLogger("epp.requests")
# output tokens (SSE events) after which a still-streaming response shows an unmeasured
# endpoint's pace
EARLY_PACE_EVENTS = 24


class ResponseBody(Enum):
    """How much of a response's body the EPP needs; the edge asks the proxy for just that."""

    SKIP = "skip"  # none: the end of the request's stream ends it
    CHUNKS = "chunks"  # every chunk as it comes (a stream of events)
    WHOLE = "whole"  # the whole body at once (one JSON answer)


class _Series:
    """The per-request metric series of one (client model, target model): `labels()` finds a
    child by its label values on every call (six of them per request, ~5 % of a decision's
    CPU), so each pair's children are looked up once."""

    __slots__ = ("duration", "input_tokens", "ntpot", "output_tokens", "requests", "running")

    def __init__(self, m: EppMetrics, model: str, target: str) -> None:
        self.requests = m.requests.labels(model, target)
        self.running = m.running.labels(model)
        self.duration = m.duration.labels(model, target)
        self.input_tokens = m.input_tokens.labels(model, target)
        self.output_tokens = m.output_tokens.labels(model, target)
        self.ntpot = m.ntpot.labels(model, target)


_MAX_SERIES = 1024  # model pairs kept looked up (the metrics themselves keep every one)


class Tracking:
    """Starts, follows and ends the requests of one EPP process. `follow`: the share of
    responses read (and their tokens counted) even when nothing else needs their body."""

    def __init__(
        self,
        director: Director,
        store: Datastore,
        metrics: EppMetrics,
        clock: Callable[[], float] = time.monotonic,
        follow: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.director = director
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.follow = follow
        self._rng = rng or random.Random()
        self._series: dict[tuple[str, str], _Series] = {}

    def series(self, model: str, target: str) -> _Series:
        series = self._series.get((model, target))
        if series is None:
            if len(self._series) >= _MAX_SERIES:
                self._series.clear()
            series = self._series[model, target] = _Series(self.metrics, model, target)
        return series

    def sampled(self) -> bool:
        return self.follow >= 1.0 or (self.follow > 0.0 and self._rng.random() < self.follow)

    async def start(
        self,
        headers: Mapping[str, str],
        body: bytes | Body,
        subset: Sequence[str] | None = None,
        rewrite: str | None = None,
    ) -> RequestTracker:
        decision = await self.director.handle(headers, body, subset, rewrite)
        if decision.runs_inference:
            m, model = self.metrics, decision.client_model
            series = self.series(model, decision.target_model)
            series.requests.inc()
            if decision.version is not None:
                m.versions.labels(model, decision.version, decision.pool).inc()
            series.running.inc()
            m.scheduler_e2e.observe(decision.decided - decision.started)
        return RequestTracker(self, decision)

    def failed(
        self, error: EppError, request_id: str | None, tracker: RequestTracker | None = None
    ) -> None:
        """A request answered with an error by the EPP itself."""
        model = tracker.decision.client_model if tracker is not None else ""
        self.metrics.errors.labels(model, model, error.reason).inc()
        log.info(
            "request failed request_id=%s status=%d reason=%s message=%s",
            request_id or "-",
            error.status,
            error.reason,
            error.message,
        )
        if tracker is not None:
            tracker.complete()


class RequestTracker:
    def __init__(self, tracking: Tracking, decision: Decision) -> None:
        self.decision = decision
        self._tracking = tracking
        self._follower: ResponseFollower | None = None
        self._status = 0
        self._first_byte: float | None = None
        self._paced = False  # an early pace sample was taken (or the chance has passed)
        self._ended = False  # the whole response body was seen
        self._streaming = False
        self.done = False

    @property
    def following(self) -> bool:
        """Whether the response body is followed (a request some model ran, headers seen)."""
        return self._follower is not None

    def response_headers(self, status: int, content_type: str, served: str | None) -> ResponseBody:
        """The response began: its status, its media type and where the proxy sent it. Returns
        how much of its body the EPP needs."""
        self._status = status
        decision, tracking = self.decision, self._tracking
        if not decision.runs_inference:
            return ResponseBody.SKIP
        if served and decision.lease.address != served:  # a fallback served it
            lease = decision.lease
            lease.release()
            decision.lease = tracking.store.lease(served, lease.tokens)
        streaming = self._streaming = "text/event-stream" in content_type
        unpaced = streaming and not tracking.store.engine_paced(decision.lease.address)
        # a version of a split is followed: its first byte and tokens are what a rollout judges
        versioned = decision.version is not None
        if not (decision.model_rewritten or unpaced or versioned or tracking.sampled()):
            return ResponseBody.SKIP
        self._follower = ResponseFollower(streaming, decision.target_model, decision.client_model)
        return ResponseBody.CHUNKS if streaming else ResponseBody.WHOLE

    def response_body(self, chunk: bytes, end: bool, inline: bool = False) -> bytes:
        """One chunk of the response body; returns what to forward now (rewritten if needed).
        `inline`: every chunk must be answered by its own replacement (nothing held back)."""
        if self._first_byte is None:
            self._first_byte = self._tracking.clock()
        follower = self._follower
        if follower is None:  # not followed: pass through
            if end:
                self.complete()
            return chunk
        if inline:
            out = follower.feed_inline(chunk)
            if end:
                follower.finish(inline=True)
        else:
            out = follower.feed(chunk)
            self._early_pace(follower)
            if end:
                out += follower.finish()
        if end:
            self._ended = True
            self.complete()
        return out

    def _early_pace(self, follower: ResponseFollower) -> None:
        """A response still streaming shows the pace of an endpoint not measured yet: long
        answers take many seconds to finish, and until then a slow GPU would look like any
        other (the first requests of a fresh pool would land on it blind)."""
        if self._paced or follower.events < EARLY_PACE_EVENTS or self._first_byte is None:
            return
        self._paced = True
        store, address = self._tracking.store, self.decision.lease.address
        if self._status < 400 and not store.engine_paced(address):
            streamed = self._tracking.clock() - self._first_byte
            store.record_tokens(address, streamed, follower.events, first_only=True)

    def complete(self) -> None:
        """The request ended (normally, client gone, or upstream reset): account it once."""
        if self.done:
            return
        self.done = True
        decision = self.decision
        decision.lease.release()
        if not decision.runs_inference:
            return
        tracking = self._tracking
        now = tracking.clock()
        follower = self._follower
        outputs = follower.output_tokens if follower else 0
        # only a streamed, successful response shows the endpoint's pace (where its engine does
        # not report it)
        streamed = follower is not None and follower.streaming and self._status < 400
        if streamed and self._first_byte is not None and outputs > 1:
            address = decision.lease.address
            if not tracking.store.engine_paced(address):
                tracking.store.record_tokens(address, now - self._first_byte, outputs)
        if self._ended and self._status < 400 and outputs:  # a whole answer: its length counts
            tracking.director.lengths.observe(decision.target_model, outputs, decision.output_limit)
        self._observe(now, outputs)
        if self._streaming and self._status < 400 and self._first_byte is not None:
            self._observe_latency(now, self._first_byte, outputs)

    def _observe_latency(self, now: float, first: float, outputs: int) -> None:
        """A streamed answer's TTFT and TPOT: fed back to the latency model, and counted
        against the prediction and the request's objectives."""
        decision, tracking = self.decision, self._tracking
        ttft = first - decision.decided
        tpot = (now - first) / (outputs - 1) if outputs > 1 else None
        prediction = decision.prediction
        if prediction is not None:
            tracking.director.latency.observe(prediction.features, ttft, tpot)
            tracking.metrics.prediction(prediction.ttft, ttft, prediction.tpot, tpot)
        ttft_ms, tpot_ms = decision.objectives
        tracking.metrics.attainment(
            decision.client_model, ttft_ms, (first - decision.started) * 1000, tpot_ms, tpot
        )

    def _observe(self, now: float, outputs: int) -> None:
        decision, m, follower = self.decision, self._tracking.metrics, self._follower
        labels = (decision.client_model, decision.target_model)
        series = self._tracking.series(*labels)
        elapsed = now - decision.started
        series.running.dec()
        series.duration.observe(elapsed)
        if follower is not None:
            series.input_tokens.observe(follower.prompt_tokens or decision.prompt_tokens)
            series.output_tokens.observe(outputs)
            if outputs:
                series.ntpot.observe(elapsed / outputs)
        elif self._status:  # answered, body not read: the prompt's estimate only
            series.input_tokens.observe(decision.prompt_tokens)
        if self._status >= 400 or not self._status:
            code = f"ModelServerError{self._status}" if self._status else "Incomplete"
            m.errors.labels(*labels, code).inc()
        if decision.version is not None:
            self._observe_version(now, outputs)
        log.info(
            "request request_id=%s model=%s target=%s pool=%s endpoint=%s decision_ms=%.3f "
            "status=%d duration_ms=%.1f output_tokens=%s",
            decision.request_id,
            decision.client_model,
            decision.target_model,
            decision.pool,
            decision.lease.address,
            (decision.decided - decision.started) * 1000,
            self._status,
            elapsed * 1000,
            outputs if follower is not None else "-",
        )

    def _observe_version(self, now: float, outputs: int) -> None:
        """The per-version signals of a split model (`epp.rollout` compares versions by them):
        a failure is a 5xx or no complete answer (a 4xx is the client's own)."""
        decision, m, follower = self.decision, self._tracking.metrics, self._follower
        labels = (decision.client_model, decision.version or "")
        m.version_completed.labels(*labels).inc()
        status = self._status
        if status >= 500 or not status or (follower is not None and not self._ended):
            code = f"ModelServerError{status}" if status >= 500 else "Incomplete"
            m.version_errors.labels(*labels, code).inc()
            return
        if status >= 400 or follower is None:
            return
        m.version_input_tokens.labels(*labels).inc(follower.prompt_tokens or decision.prompt_tokens)
        m.version_output_tokens.labels(*labels).inc(outputs)
        first = self._first_byte
        if follower.streaming and first is not None:
            m.version_ttft.labels(*labels).observe(first - decision.started)
            if outputs > 1:
                m.version_tpot.labels(*labels).observe((now - first) / (outputs - 1))
