"""Object metadata, Pods, and the kinds kept raw (Gateway, HTTPRoute, PriorityFilter, ...).

`read_meta` is shared by every shape parser (`seed`, `upstream`); `read_pod` reduces a v1 Pod to
`PodInfo`; `read_other` only checks the envelope of resources the control plane consumes raw
(`read_priority_filter` checks our own PriorityFilter fully, then keeps it raw too).
`parse` dispatches documents here by apiVersion and kind.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from dataclasses import dataclass

from epp.api.fields import DNS_LABEL, DNS_SUBDOMAIN, Obj
from epp.api.model import PodInfo

DEFAULT_NAMESPACE = "default"

META_FIELDS = (
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
)

# Kinds that are valid input but not parsed into the model: the control plane or the operator
# reads them raw. Anything else is ignored with a warning.
RAW_KINDS = frozenset(
    {
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
        ("gateway.networking.k8s.io", "HTTPRoute"),
        ("gateway.networking.k8s.io", "GRPCRoute"),
        ("gateway.networking.k8s.io", "ReferenceGrant"),
        ("inference.networking.x-k8s.io", "InferenceObjective"),
        ("inference.networking.x-k8s.io", "InferenceModelRewrite"),
        ("inference.networking.x-k8s.io", "EndpointPickerConfig"),
        ("monitoring.coreos.com", "ServiceMonitor"),
        ("monitoring.coreos.com", "PodMonitor"),
        ("", "Service"),
        ("", "ConfigMap"),
        ("", "Secret"),
        ("", "Namespace"),
        ("", "ServiceAccount"),
        ("apps", "Deployment"),
    }
)


@dataclass(frozen=True, slots=True)
class Meta:
    namespace: str
    name: str
    created_at: str
    labels: dict[str, str]


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def normalize_timestamp(value: object) -> str | None:
    """RFC 3339 in UTC ("2025-01-02T03:04:05Z"); PyYAML hands unquoted stamps over as datetime."""
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_meta(doc: Obj) -> Meta:
    meta = doc.obj("metadata", required=True)
    if meta is None:
        return Meta(DEFAULT_NAMESPACE, "", "", {})
    meta.only(*META_FIELDS)
    name = meta.string("name", required=True, pattern=DNS_SUBDOMAIN, pattern_desc="a DNS subdomain")
    namespace = meta.string("namespace", max_len=63, pattern=DNS_LABEL, pattern_desc="a DNS label")
    labels = meta.str_map("labels", labels=True) or {}
    meta.str_map("annotations")
    created = ""
    raw = meta.get("creationTimestamp")
    if raw is not None:
        stamp = normalize_timestamp(raw)
        if stamp is None:
            meta.error("creationTimestamp", "must be an RFC 3339 timestamp")
        created = stamp or ""
    return Meta(namespace or DEFAULT_NAMESPACE, name or "", created, labels)


# where a pod's engine publishes its KV events (vLLM's `--kv-events-config` endpoint and
# replay_endpoint), for `precise-prefix-cache-scorer`: "tcp://host:port", "tcp://*:port" or a
# bare port on the pod's IP; without them the scorer's port convention applies
KV_EVENTS_ANNOTATION = "epp.inference-gateway.dev/kv-events"
KV_EVENTS_REPLAY_ANNOTATION = "epp.inference-gateway.dev/kv-events-replay"


def read_pod(doc: Obj) -> PodInfo:
    """A v1 Pod as a file-mode endpoint: only the fields routing needs are checked."""
    meta = read_meta(doc)
    spec = doc.obj("spec")
    node = spec.string("nodeName") if spec else None
    selector = spec.str_map("nodeSelector") if spec else None
    accelerator = (selector or {}).get("accelerator")
    status = doc.obj("status")
    ip: str | None = None
    ready = False
    if status is not None:
        ip = status.string("podIP", max_len=45)
        for cond in status.objs("conditions"):
            if cond.string("type") == "Ready":
                ready = cond.enum("status", ("True", "False", "Unknown")) == "True"
    max_num_seqs = None
    if spec is not None:
        for container in spec.objs("containers"):
            max_num_seqs = max_num_seqs_of(container.get("command"), container.get("args"))
            if max_num_seqs is not None:
                break
    deleting = False
    metadata = doc.obj("metadata")
    if metadata is not None and metadata.has("deletionTimestamp"):
        deleting = True
    notes = metadata.get("annotations") if metadata is not None else None
    notes = notes if isinstance(notes, dict) else {}
    events, replay = notes.get(KV_EVENTS_ANNOTATION), notes.get(KV_EVENTS_REPLAY_ANNOTATION)
    return PodInfo(
        namespace=meta.namespace,
        name=meta.name,
        labels=tuple(sorted(meta.labels.items())),
        ip=ip,
        ready=ready,
        node_name=node,
        deleting=deleting,
        accelerator=accelerator,
        max_num_seqs=max_num_seqs,
        kv_events=events.strip() if isinstance(events, str) else "",
        kv_events_replay=replay.strip() if isinstance(replay, str) else "",
    )


def max_num_seqs_of(*argument_lists: object) -> int | None:
    """vLLM's `--max-num-seqs N` (or `=N`) in a container's command and args, also inside a
    shell line (`sh -c "vllm serve … --max-num-seqs 64"`); None when absent or not a positive
    integer (the pod is still served, its limit is learned instead)."""
    words: list[str] = []
    for arguments in argument_lists:
        if not isinstance(arguments, list):
            continue
        for arg in arguments:
            if not isinstance(arg, str):
                continue
            try:
                words.extend(shlex.split(arg) if " " in arg else [arg])
            except ValueError:  # an unbalanced quote in a shell line: take the words as they are
                words.extend(arg.split())
    for i, word in enumerate(words):
        value: str | None = None
        if word == "--max-num-seqs" and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith("--max-num-seqs="):
            value = word.partition("=")[2]
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return None


HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
PRIORITY_WORDS = ("high", "medium", "low")


def read_priority_filter(doc: Obj) -> dict[str, object]:
    """Our own PriorityFilter CRD: checked as strictly as the inference kinds, kept raw."""
    doc.only("apiVersion", "kind", "metadata", "spec", "status")
    read_meta(doc)
    spec = doc.obj("spec")
    if spec is not None:
        spec.only("headerName", "defaultPriority", "allowClientOverride")
        spec.string(
            "headerName", max_len=256, pattern=HEADER_NAME, pattern_desc="an HTTP header name"
        )
        spec.enum("defaultPriority", PRIORITY_WORDS)
        spec.boolean("allowClientOverride")
    return dict(doc.data)


def read_other(doc: Obj) -> dict[str, object]:
    """A raw resource: apiVersion, kind and metadata.name are checked, the rest is kept as is."""
    meta = doc.obj("metadata", required=True)
    if meta is not None:
        meta.string("name", required=True, pattern=DNS_SUBDOMAIN, pattern_desc="a DNS subdomain")
        meta.string("namespace", max_len=63, pattern=DNS_LABEL, pattern_desc="a DNS label")
    return dict(doc.data)
