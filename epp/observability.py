"""The EPP's own Prometheus metrics, with upstream's names and labels.

One `EppMetrics` per process, built by the composition root with its own registry (no global
state), served on the metrics port by `epp.server`. Names follow the upstream EPP so existing
dashboards keep working (reference/upstream-epp.md §5).
"""

from __future__ import annotations

import math
import time

from prometheus_client import REGISTRY, CollectorRegistry, PlatformCollector, ProcessCollector

from epp.admission.flow_control import FlowControl
from epp.admission.flows import DEFAULT_FLOW
from epp.api.model import PRIORITY_STANDARD
from epp.datastore import Datastore
from epp.loop_metrics import LoopCounter as Counter
from epp.loop_metrics import LoopGauge as Gauge
from epp.loop_metrics import LoopHistogram as Histogram

MAX_FLOW_LABELS = 100  # flows (tenants) with histogram series of their own
OTHER_FLOWS = "other"
_LATENCY_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 60, 120, 300)
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 131072)
_DECISION_BUCKETS = (
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
)
# per-version signals a rollout judges by (`epp.rollout.signals` reads them back by these names);
# fine buckets (x1.25) so that a quantile ratio of two versions is not one bucket's coarse step
VERSION_COMPLETED = "inference_model_version_completed_total"
VERSION_ERRORS = "inference_model_version_error_total"
VERSION_TTFT = "inference_model_version_ttft_seconds"
VERSION_TPOT = "inference_model_version_tpot_seconds"
VERSION_INPUT_TOKENS = "inference_model_version_input_tokens_total"
VERSION_OUTPUT_TOKENS = "inference_model_version_output_tokens_total"
_TTFT_BUCKETS = tuple(round(0.002 * 1.25**i, 6) for i in range(46))  # 2 ms .. ~45 s
_TPOT_BUCKETS = tuple(round(0.0005 * 1.25**i, 6) for i in range(38))  # 0.5 ms .. ~2.4 s


class EppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        model_labels = ("model_name", "target_model_name")
        r = self.registry
        if r is not REGISTRY:  # the default registry has them already; ours needs its own
            ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open fds
            PlatformCollector(registry=r)  # python_info
        self.requests = Counter(
            "inference_objective_request_total", "Requests per model", model_labels, registry=r
        )
        self.errors = Counter(
            "inference_objective_request_error_total",
            "Failed requests per model and error code",
            (*model_labels, "error_code"),
            registry=r,
        )
        self.versions = Counter(
            "inference_model_split_requests_total",
            "Requests per canary version (trafficSplit / targetModels) of a model",
            ("model_name", "version", "pool"),
            registry=r,
        )
        version_labels = ("model_name", "version")
        self.version_completed = Counter(
            VERSION_COMPLETED.removesuffix("_total"),
            "Requests of a model's version (canary split) that ended, whatever their outcome",
            version_labels,
            registry=r,
        )
        self.version_errors = Counter(
            VERSION_ERRORS.removesuffix("_total"),
            "Requests of a model's version that failed: a 5xx answer or no complete answer",
            (*version_labels, "error_code"),
            registry=r,
        )
        self.version_ttft = Histogram(
            VERSION_TTFT,
            "Time to the first streamed byte of the answer, per model version",
            version_labels,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.version_tpot = Histogram(
            VERSION_TPOT,
            "Time per output token after the first, streamed answers, per model version",
            version_labels,
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.version_input_tokens = Counter(
            VERSION_INPUT_TOKENS.removesuffix("_total"),
            "Prompt tokens per model version",
            version_labels,
            registry=r,
        )
        self.version_output_tokens = Counter(
            VERSION_OUTPUT_TOKENS.removesuffix("_total"),
            "Output tokens per model version",
            version_labels,
            registry=r,
        )
        self.duration = Histogram(
            "inference_objective_request_duration_seconds",
            "End-to-end request latency as the EPP saw it",
            model_labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Prompt tokens per request",
            model_labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Output tokens per request",
            model_labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.ntpot = Histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "End-to-end latency divided by output tokens",
            model_labels,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
            registry=r,
        )
        self.running = Gauge(
            "inference_objective_running_requests",
            "Requests in flight per model",
            ("model_name",),
            registry=r,
        )
        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Time the EPP spent deciding one request",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.plugin_duration = Histogram(
            "inference_extension_plugin_duration_seconds",
            "Time one scheduling plugin took (sampled: one request in 16 per profile)",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=(0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005),
            registry=r,
        )
        self.ext_proc_messages = Counter(
            "epp_ext_proc_messages_total",
            "ext_proc messages received from the proxy, by kind (response bodies only when needed)",
            ("kind",),
            registry=r,
        )
        self.pool_kv = Gauge(
            "inference_pool_average_kv_cache_utilization",
            "Mean KV-cache utilization of the pool's endpoints",
            ("name",),
            registry=r,
        )
        self.pool_queue = Gauge(
            "inference_pool_average_queue_size",
            "Mean waiting queue of the pool's endpoints",
            ("name",),
            registry=r,
        )
        self.pool_ready = Gauge(
            "inference_pool_ready_pods", "Ready endpoints per pool", ("name",), registry=r
        )
        self.batch_limit = Gauge(
            "epp_endpoint_batch_limit",
            "Requests an endpoint runs in one batch before it queues, as the EPP knows it "
            "(source: learned from its queue, or the pod spec's --max-num-seqs)",
            ("pool", "endpoint", "source"),
            registry=r,
        )
        self.metrics_age = Gauge(
            "epp_endpoint_metrics_age_seconds",
            "Seconds since the endpoint's /metrics was last scraped successfully (+Inf: never)",
            ("pool", "endpoint"),
            registry=r,
        )
        flow_labels = ("inference_pool", "priority", "fairness_id")
        self._flow_labels: set[str] = set()  # flows with series of their own
        self.queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            "Requests waiting in the EPP for room in the pool, per priority and flow",
            flow_labels,
            registry=r,
        )
        self.queue_bytes = Gauge(
            "inference_extension_flow_control_queue_bytes",
            "Request body bytes waiting in the EPP for room in the pool, per priority and flow",
            flow_labels,
            registry=r,
        )
        self.flow_running = Gauge(
            "epp_flow_control_running_requests",
            "Requests of a flow this EPP sent to the pool and that have not finished (counted "
            "with --fair-reserve: a flow's share of the batch slots)",
            ("inference_pool", "fairness_id"),
            registry=r,
        )
        self.queue_duration = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Time a request spent in the EPP's waiting room, by how it left (outcome: "
            "Dispatched, RejectedCapacity, EvictedTTL, EvictedDisplaced, EvictedContextCancelled)",
            (*flow_labels, "outcome"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.prediction_error = Histogram(
            "epp_latency_prediction_error_ratio",
            "|predicted - observed| / observed, per streamed answer, of the latency model's TTFT "
            "(from the EPP's decision) and TPOT predictions",
            ("kind",),
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.objective_attainment = Counter(
            "epp_objective_attainment_total",
            "Streamed answers of requests with a latency objective, by objective (ttft, tpot) "
            "and whether it was met",
            ("model_name", "objective", "met"),
            registry=r,
        )

    def prediction(
        self, ttft_predicted: float, ttft: float, tpot_predicted: float, tpot: float | None
    ) -> None:
        if ttft > 0:
            self.prediction_error.labels("ttft").observe(abs(ttft_predicted - ttft) / ttft)
        if tpot:
            self.prediction_error.labels("tpot").observe(abs(tpot_predicted - tpot) / tpot)

    def attainment(
        self,
        model: str,
        ttft_ms: float | None,
        ttft_seen_ms: float,
        tpot_ms: float | None,
        tpot: float | None,
    ) -> None:
        """One answer against its objectives (TTFT from its arrival at the EPP)."""
        if ttft_ms is not None:
            met = "true" if ttft_seen_ms <= ttft_ms else "false"
            self.objective_attainment.labels(model, "ttft", met).inc()
        if tpot_ms is not None and tpot is not None:
            met = "true" if tpot * 1000 <= tpot_ms else "false"
            self.objective_attainment.labels(model, "tpot", met).inc()

    def plugin_timing(self, point: str, plugin_type: str, name: str, seconds: float) -> None:
        self.plugin_duration.labels(point, plugin_type, name).observe(seconds)

    def queue_outcome(
        self, pool_key: str, priority: int, flow: str, outcome: str, seconds: float
    ) -> None:
        """How one request left the waiting room (`FlowControl.on_outcome`). The first
        `MAX_FLOW_LABELS` flows get their own series, later ones share `other`: a histogram's
        series live as long as the process, and flows may be users."""
        if flow not in self._flow_labels:
            if len(self._flow_labels) >= MAX_FLOW_LABELS:
                flow = OTHER_FLOWS
            else:
                self._flow_labels.add(flow)
        pool = pool_key.rpartition("/")[2]
        self.queue_duration.labels(pool, str(priority), flow, outcome).observe(seconds)

    def refresh_pools(self, store: Datastore, flow: FlowControl | None = None) -> None:
        """Pool gauges, computed on each scrape of /metrics rather than per request."""
        for pool in store.pools():
            states = [s for s in store.candidates(pool.key) if s.healthy]
            n = len(states)
            self.pool_ready.labels(pool.name).set(n)
            self.pool_kv.labels(pool.name).set(
                sum(s.metrics.kv_usage for s in states) / n if n else 0.0
            )
            self.pool_queue.labels(pool.name).set(
                sum(s.metrics.waiting for s in states) / n if n else 0.0
            )
        self.batch_limit.clear()  # endpoints come and go, and a limit changes its source
        self.metrics_age.clear()
        now = time.monotonic()  # the scraper's clock
        for pool in store.pools():
            for state in store.candidates(pool.key):
                scraped = state.metrics.scraped_at
                age = now - scraped if scraped else math.inf
                self.metrics_age.labels(pool.name, state.address).set(age)
                source = store.limit_source(state)
                if source is not None:
                    self.batch_limit.labels(pool.name, state.address, source).set(state.limit)
        if flow is not None:
            self._refresh_queues(store, flow)

    def _refresh_queues(self, store: Datastore, flow: FlowControl) -> None:
        """Waiting requests per pool, priority and flow; the standard band's default flow is
        always there (0 when empty), so an autoscaler reading it sees a series, not nothing."""
        self.queue_size.clear()
        self.queue_bytes.clear()
        self.flow_running.clear()
        for pool in store.pools():
            for name, running in flow.shares.running_flows(pool.key).items():
                self.flow_running.labels(pool.name, name).set(running)
            flows = {(PRIORITY_STANDARD, DEFAULT_FLOW): (0, 0), **flow.flows(pool.key)}
            for (priority, name), (count, held) in flows.items():
                self.queue_size.labels(pool.name, str(priority), name).set(count)
                self.queue_bytes.labels(pool.name, str(priority), name).set(held)
