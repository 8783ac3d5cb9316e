"""The internal resource model every shape is parsed into.

Frozen dataclasses, built once per resource change by the parsers next to this module and read by
the datastore, the director, the sources and the programs. Keys are "namespace/name".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from epp.api.rollout import RolloutPolicy

FailureMode = Literal["FailOpen", "FailClose"]

PRIORITY_CRITICAL = 1
PRIORITY_STANDARD = 0
PRIORITY_SHEDDABLE = -1

DEFAULT_STRATEGY = "gpu-aware"


def key_of(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class ExtensionRef:
    """Where the pool's endpoint picker listens (upstream extensionRef / endpointPickerRef)."""

    name: str
    port: int = 9002
    group: str = ""
    kind: str = "Service"


@dataclass(frozen=True, slots=True)
class PoolDeployment:
    """The seed shape's `spec.deployment`: the pool owns its model-server pods."""

    replicas: int
    served_model: str | None  # template env MODEL_NAME, what the vLLM pods serve
    gpu_memory_utilization: float | None = None  # template env GPU_MEMORY_UTILIZATION
    accelerator: str | None = None  # nodeSelector accelerator
    gpus_per_pod: int = 0  # resources.limits nvidia.com/gpu
    image: str | None = None
    max_num_seqs: int | None = None  # `--max-num-seqs` in a template container's command/args
    template: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Pool:
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]  # matchLabels as sorted pairs
    target_ports: tuple[int, ...]
    failure_mode: FailureMode = "FailClose"
    extension_ref: ExtensionRef | None = None
    deployment: PoolDeployment | None = None
    app_protocol: str = "http"
    api_version: str = ""
    created_at: str = ""  # metadata.creationTimestamp, RFC 3339 ("" = unknown)

    @property
    def key(self) -> str:
        return key_of(self.namespace, self.name)

    @property
    def served_model(self) -> str | None:
        return self.deployment.served_model if self.deployment else None


@dataclass(frozen=True, slots=True)
class MetricCeiling:
    """A seed `loadBalancing.metrics[]` entry: keep pods under `target` percent of `name`."""

    name: Literal["gpu_utilization", "memory_utilization"]
    target: float  # percent, 0..100


@dataclass(frozen=True, slots=True)
class SplitTarget:
    """One weighted branch of a model's traffic: to another pool (seed) or model name (upstream)."""

    weight: int
    pool: str | None = None  # pool key; None = the model's own pool
    model: str | None = None  # target model name sent to the server; None = served model
    version: str | None = None  # seed `version` label (stable, canary, ...)


@dataclass(frozen=True, slots=True)
class RequestDefaults:
    """A model's defaults for what a request's headers may say instead (seed `routing.queueing`
    and `routing.objectives`): its flow, how long it may wait in the EPP, its latency
    objectives. None: not set (the request's header, else the EPP's default, decides)."""

    fairness_id: str | None = None
    ttl: float | None = None  # seconds
    ttft_ms: float | None = None
    tpot_ms: float | None = None


NO_DEFAULTS = RequestDefaults()


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One InferenceModel: what clients ask for and how requests for it are routed."""

    namespace: str
    name: str  # resource name
    model_name: str  # what clients put in `model` / x-model-name
    pool: str  # pool key of spec.poolRef
    priority: int = PRIORITY_STANDARD
    strategy: str = DEFAULT_STRATEGY
    ceilings: tuple[MetricCeiling, ...] = ()
    splits: tuple[SplitTarget, ...] = ()  # the weights in force (a rollout's, while one runs)
    api_version: str = ""
    created_at: str = ""
    rollout: RolloutPolicy | None = None  # the canary entry's rollout policy
    defaults: RequestDefaults = NO_DEFAULTS

    @property
    def key(self) -> str:
        return key_of(self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A Pod manifest (file mode) or watched Pod (Kubernetes mode), reduced to what we route on."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    ip: str | None
    ready: bool
    node_name: str | None = None
    deleting: bool = False
    accelerator: str | None = None  # the node's GPU type (label or nodeSelector `accelerator`)
    # `--max-num-seqs` given to the model server in the pod spec: the most requests one batch
    # runs (None: not given, the server's own default applies and the EPP learns the limit)
    max_num_seqs: int | None = None
    # what the GPU layer says (Kubernetes mode reads DRA claims and slices, `epp.api.devices`):
    # capacity prior (None: from `accelerator` alone) and the devices' taint health class
    capacity: float | None = None
    device_health: str = "ok"
    # where its engine publishes KV events, from the pod's annotations (`epp.api.core`): "" =
    # the port convention; checked by the subscriber, which falls back to the convention
    kv_events: str = ""
    kv_events_replay: str = ""

    @property
    def key(self) -> str:
        return key_of(self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Problem:
    """A validation finding. `severity` error = the resource is rejected; warning = accepted."""

    source: str  # file path or namespace/name
    kind: str
    name: str
    path: str  # field path, e.g. spec.routing.trafficSplit[1].weight
    message: str
    severity: Literal["error", "warning"] = "error"
    reason: str = ""  # condition reason where one applies (ModelNameInUse, BackendNotFound, ...)

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}: {self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """Everything a source currently knows, after validation. Rejected resources are absent."""

    pools: tuple[Pool, ...] = ()
    models: tuple[ModelRoute, ...] = ()
    pods: tuple[PodInfo, ...] = ()
    other: tuple[
        dict[str, object], ...
    ] = ()  # Gateway, HTTPRoute, ... kept raw for the control plane
    problems: tuple[Problem, ...] = ()
