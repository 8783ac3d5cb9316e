"""The seed document's shape: `gateway.networking.x-k8s.io/v1alpha1` InferencePool/InferenceModel.

The pool owns its pods through `spec.deployment` (replicas + pod template), so its selector and
port are derived: the label `inference.networking.x-k8s.io/pool: <name>` plus the template's
labels, and the first declared containerPort (8000 when none). The model carries `routing`
(priority words, a load-balancing strategy with metric ceilings, a traffic split across pools).
Called by `parse`; reads fields through `fields.Obj`; builds `model` dataclasses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from epp.api.core import Meta, max_num_seqs_of
from epp.api.fields import Obj, type_name
from epp.api.model import (
    NO_DEFAULTS,
    PRIORITY_CRITICAL,
    PRIORITY_SHEDDABLE,
    PRIORITY_STANDARD,
    FailureMode,
    MetricCeiling,
    ModelRoute,
    Pool,
    PoolDeployment,
    RequestDefaults,
    SplitTarget,
    key_of,
)
from epp.api.rollout import RolloutPolicy, check_entries, effective_splits, read_rollout

POOL_LABEL = "inference.networking.x-k8s.io/pool"
DEFAULT_TARGET_PORT = 8000
MAX_REPLICAS = 1024
MAX_WEIGHT = 1_000_000
MAX_SPLITS = 16
STRATEGIES = (
    "gpu-aware",
    "least-request",
    "prefix-cache-aware",
    "round-robin",
    "random",
    "kv-cache-aware",
    "queue-aware",
)
PRIORITIES = {"high": PRIORITY_CRITICAL, "medium": PRIORITY_STANDARD, "low": PRIORITY_SHEDDABLE}
FAILURE_MODES = ("FailOpen", "FailClose")
CEILING_METRICS = ("gpu_utilization", "memory_utilization")

QUANTITY = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$"
)

POD_SPEC_FIELDS = (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers",
    "dnsConfig", "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases",
    "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname", "imagePullSecrets",
    "initContainers", "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy",
    "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext",
    "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace",
    "subdomain", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints",
    "volumes",
)  # fmt: skip
CONTAINER_FIELDS = (
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle",
    "livenessProbe", "name", "ports", "readinessProbe", "resizePolicy", "resources",
    "restartPolicy", "securityContext", "startupProbe", "stdin", "stdinOnce",
    "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "volumeMounts", "workingDir",
)  # fmt: skip


def read_pool(doc: Obj, meta: Meta, api_version: str) -> Pool:
    doc.only("apiVersion", "kind", "metadata", "spec", "status")
    spec = doc.part("spec")
    spec.only("deployment", "targetPortNumber", "failureMode")
    dep = spec.part("deployment")
    dep.only("replicas", "template")
    replicas = dep.integer("replicas", lo=0, hi=MAX_REPLICAS)
    tmpl = dep.part("template")
    tmpl.only("metadata", "spec")
    if len(meta.name) > 63:
        doc.findings.add(
            "metadata.name", f"must be at most 63 characters: it is the {POOL_LABEL} label"
        )
    labels: dict[str, str] = {}
    tmeta = tmpl.obj("metadata")
    if tmeta is not None:
        tmeta.only("labels", "annotations")
        labels = tmeta.str_map("labels", labels=True) or {}
        tmeta.str_map("annotations")
        if labels.get(POOL_LABEL, meta.name) != meta.name:
            tmeta.findings.add(
                tmeta.at("labels") + f'["{POOL_LABEL}"]', f"must be {meta.name!r} or absent"
            )
    pod = _read_pod_spec(tmpl.obj("spec", required=True))
    port = spec.integer("targetPortNumber", lo=1, hi=65535) or pod.port or DEFAULT_TARGET_PORT
    mode = failure_mode(spec)
    selector = {**labels, POOL_LABEL: meta.name}
    deployment = PoolDeployment(
        replicas=1 if replicas is None else replicas,
        served_model=pod.served_model,
        gpu_memory_utilization=pod.gpu_memory_utilization,
        accelerator=pod.accelerator,
        gpus_per_pod=pod.gpus,
        image=pod.image,
        max_num_seqs=pod.max_num_seqs,
        template=dict(tmpl.data),
    )
    return Pool(
        namespace=meta.namespace,
        name=meta.name,
        selector=tuple(sorted(selector.items())),
        target_ports=(port,),
        failure_mode=mode,
        deployment=deployment,
        api_version=api_version,
        created_at=meta.created_at,
    )


@dataclass(slots=True)
class _PodFacts:
    """What the pool needs from its pod template, gathered while the template is checked."""

    served_model: str | None = None
    gpu_memory_utilization: float | None = None
    accelerator: str | None = None
    gpus: int = 0
    image: str | None = None
    port: int | None = None
    max_num_seqs: int | None = None


def failure_mode(parent: Obj) -> FailureMode:
    return "FailOpen" if parent.enum("failureMode", FAILURE_MODES) == "FailOpen" else "FailClose"


def _read_pod_spec(spec: Obj | None) -> _PodFacts:
    facts = _PodFacts()
    if spec is None:
        return facts
    spec.only(*POD_SPEC_FIELDS)
    selector = spec.str_map("nodeSelector") or {}
    facts.accelerator = selector.get("accelerator")
    for i, box in enumerate(spec.objs("containers", required=True, min_items=1)):
        box.only(*CONTAINER_FIELDS)
        box.string("name", required=True, max_len=63)
        image = box.string("image", max_len=4096)
        if i == 0:
            facts.image = image
        _read_env(box, facts)
        if facts.max_num_seqs is None:
            facts.max_num_seqs = max_num_seqs_of(box.get("command"), box.get("args"))
        for port_obj in box.objs("ports"):
            port_obj.only("containerPort", "name", "protocol", "hostPort", "hostIP")
            number = port_obj.integer("containerPort", lo=1, hi=65535, required=True)
            port_obj.enum("protocol", ("TCP", "UDP", "SCTP"))
            if facts.port is None and number is not None:
                facts.port = number
        facts.gpus += _read_resources(box.obj("resources"))
    return facts


def _read_env(box: Obj, facts: _PodFacts) -> None:
    for env in box.objs("env"):
        env.only("name", "value", "valueFrom")
        name = env.string("name", required=True)
        value = env.string("value", min_len=0, max_len=1 << 20)
        env.obj("valueFrom")
        if value is None:
            continue
        if name == "MODEL_NAME" and facts.served_model is None:
            facts.served_model = value
        elif name == "GPU_MEMORY_UTILIZATION" and facts.gpu_memory_utilization is None:
            try:
                util = float(value)
            except ValueError:
                util = -1.0
            if not 0.0 < util <= 1.0:
                env.error("value", f"GPU_MEMORY_UTILIZATION must be in (0, 1], got {value!r}")
            else:
                facts.gpu_memory_utilization = util


def _read_resources(res: Obj | None) -> int:
    if res is None:
        return 0
    res.only("limits", "requests", "claims")
    res.objs("claims")
    gpus = 0
    for part in ("limits", "requests"):
        quantities = res.obj(part)
        if quantities is None:
            continue
        for name, value in quantities.data.items():
            text = (
                str(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else value
            )
            if not isinstance(text, str) or not QUANTITY.match(text):
                quantities.error(str(name), f"must be a quantity, got {type_name(value)} {value!r}")
            elif name == "nvidia.com/gpu" and part == "limits":
                if not text.isdigit():
                    quantities.error(name, f"must be a whole number of GPUs, got {text!r}")
                else:
                    gpus = int(text)
    return gpus


def read_model(doc: Obj, meta: Meta, api_version: str) -> ModelRoute:
    doc.only("apiVersion", "kind", "metadata", "spec", "status")
    spec = doc.part("spec")
    spec.only("modelName", "poolRef", "routing")
    model_name = spec.string("modelName", max_len=256) or meta.name
    pool = read_pool_ref(spec, "poolRef", required=True) or ""
    priority = PRIORITY_STANDARD
    strategy = STRATEGIES[0]
    ceilings: list[MetricCeiling] = []
    splits: list[SplitTarget] = []
    rollout: RolloutPolicy | None = None
    defaults = NO_DEFAULTS
    routing = spec.obj("routing")
    if routing is not None:
        routing.only("priority", "loadBalancing", "trafficSplit", "queueing", "objectives")
        priority = PRIORITIES[routing.enum("priority", tuple(PRIORITIES)) or "medium"]
        balancing = routing.obj("loadBalancing")
        if balancing is not None:
            balancing.only("strategy", "metrics")
            strategy = balancing.enum("strategy", STRATEGIES) or strategy
            ceilings = _read_ceilings(balancing)
        splits, rollout = _read_splits(routing, meta.namespace)
        defaults = _read_defaults(routing)
    return ModelRoute(
        namespace=meta.namespace,
        name=meta.name,
        model_name=model_name,
        pool=key_of(meta.namespace, pool),
        priority=priority,
        strategy=strategy,
        ceilings=tuple(ceilings),
        splits=effective_splits(tuple(splits), rollout, doc.data),
        api_version=api_version,
        created_at=meta.created_at,
        rollout=rollout,
        defaults=defaults,
    )


def _read_defaults(routing: Obj) -> RequestDefaults:
    """`routing.queueing{fairnessId, ttlSeconds}` and `routing.objectives{ttftMs, tpotMs}`."""
    fairness_id = ttl = ttft = tpot = None
    queueing = routing.obj("queueing")
    if queueing is not None:
        queueing.only("fairnessId", "ttlSeconds")
        fairness_id = queueing.string("fairnessId", max_len=128)
        ttl = queueing.number("ttlSeconds", lo=0.001, hi=86_400)
    objectives = routing.obj("objectives")
    if objectives is not None:
        objectives.only("ttftMs", "tpotMs")
        ttft = objectives.number("ttftMs", lo=1, hi=3_600_000)
        tpot = objectives.number("tpotMs", lo=0.1, hi=60_000)
    return RequestDefaults(fairness_id, ttl, ttft, tpot)


def read_pool_ref(parent: Obj, key: str, *, required: bool) -> str | None:
    ref = parent.obj(key, required=required)
    if ref is None:
        return None
    ref.only("name", "group", "kind")
    ref.string("group", min_len=0)
    ref.enum("kind", ("InferencePool",))
    return ref.string("name", required=True)


def _read_ceilings(balancing: Obj) -> list[MetricCeiling]:
    out: list[MetricCeiling] = []
    seen: set[str] = set()
    for metric in balancing.objs("metrics", max_items=len(CEILING_METRICS)):
        metric.only("name", "target")
        name = metric.enum("name", CEILING_METRICS, required=True)
        target = metric.number("target", lo=0, hi=100, required=True)
        if name is not None and name in seen:
            metric.error("name", f"duplicate metric {name!r}")
        elif name == "gpu_utilization" and target is not None:
            out.append(MetricCeiling("gpu_utilization", target))
        elif name == "memory_utilization" and target is not None:
            out.append(MetricCeiling("memory_utilization", target))
        if name is not None:
            seen.add(name)
    return out


def _read_splits(routing: Obj, namespace: str) -> tuple[list[SplitTarget], RolloutPolicy | None]:
    out: list[SplitTarget] = []
    rollout: RolloutPolicy | None = None
    versions: list[str | None] = []
    canary_at: list[int] = []
    entries = routing.objs("trafficSplit", max_items=MAX_SPLITS)
    for i, entry in enumerate(entries):
        entry.only("weight", "version", "poolRef", "rollout")
        weight = entry.integer("weight", lo=0, hi=MAX_WEIGHT, required=True)
        version = entry.string("version", max_len=63)
        versions.append(version)
        block = entry.obj("rollout")
        if block is not None:
            canary_at.append(i)
            if version is None and not entry.has("version"):
                entry.error("version", "required on the entry that carries a rollout")
            rollout = read_rollout(block, version) if len(canary_at) == 1 else rollout
        pool = read_pool_ref(entry, "poolRef", required=False)
        if weight is not None:
            out.append(
                SplitTarget(weight, key_of(namespace, pool) if pool else None, None, version)
            )
    if entries and len(out) == len(entries) and all(s.weight == 0 for s in out):
        routing.error("trafficSplit", "at least one weight must be greater than 0")
    check_entries(routing, "trafficSplit", versions, canary_at)
    return out, rollout
