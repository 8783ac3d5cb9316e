"""The simulated pods a set of manifests asks for, and the Pod manifests that declare them.

Seed-shaped pools get `deployment.replicas` new pods on their own loopback addresses
(127.0.0.2, 127.0.0.3, … on the pool's target port, like pod IPs); pools whose Pod manifests are
given get a server at each declared address; others get a default number. A `--max-num-seqs`
in the template (or a declared Pod) is the simulated server's batch size, as it would be vLLM's.
`epp.local.stack` starts them; the control-plane tests use the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.api.model import Pool, ResourceSet
from epp.datastore import endpoints_of
from epp.sim.cluster import SimPodSpec

DEFAULT_MODEL = "meta-llama/Llama-2-7b-chat-hf"


def plan_pods(
    resources: ResourceSet,
    first_pod_ip: int = 2,
    default_replicas: int = 2,
    sim_options: Mapping[str, Any] | None = None,
) -> tuple[list[SimPodSpec], list[dict[str, Any]]]:
    """The simulated pods each pool needs, and the Pod manifests that declare the new ones.

    Seed-shaped pools get `deployment.replicas` new pods; pools whose Pod manifests are given
    get a simulated server at each declared address; others get `default_replicas` new pods.
    """
    specs: dict[tuple[str, int], SimPodSpec] = {}
    manifests: list[dict[str, Any]] = []
    next_ip = first_pod_ip
    for pool in resources.pools:
        options = {**_served_names(pool, resources), **(sim_options or {})}
        model = pool.served_model or DEFAULT_MODEL
        ranks = len(pool.target_ports) > 1  # data-parallel: one engine per port
        declared = endpoints_of(pool, resources.pods)
        if declared and pool.deployment is None:
            for ep in declared:
                host, port = split_address(ep.address)
                name = ep.pod.split("/", 1)[1] + (f"-{port}" if ranks else "")
                spec = SimPodSpec(host, port, name, model, **_batched(options, ep.max_num_seqs))
                specs.setdefault((host, port), spec)
            continue
        replicas = pool.deployment.replicas if pool.deployment else default_replicas
        batch_size = pool.deployment.max_num_seqs if pool.deployment else None
        pod_options = _batched(options, batch_size)
        for i in range(replicas):
            ip = f"127.0.0.{next_ip}"
            next_ip += 1
            name = f"{pool.name}-{i}"
            for port in pool.target_ports:
                pod_name = f"{name}-{port}" if ranks else name
                specs[(ip, port)] = SimPodSpec(ip, port, pod_name, model, **pod_options)
            manifests.append(_pod_manifest(pool, name, ip, batch_size))
    return list(specs.values()), manifests


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _served_names(pool: Pool, resources: ResourceSet) -> dict[str, Any]:
    """What the pool's servers answer to, as a real deployment would configure vLLM: target
    models of the pool's InferenceModels as LoRA adapters, and the client-facing model names as
    extra served names (so requests still work when the filter fails open and nothing rewrites
    the model). A pool with no declared model and no InferenceModel serves any name."""
    routed = [
        m
        for m in resources.models
        if m.pool == pool.key or any(s.pool == pool.key for s in m.splits)
    ]
    served = pool.served_model or DEFAULT_MODEL
    targets = {s.model for m in routed for s in m.splits if s.model} - {served}
    aliases = {m.model_name for m in routed} - targets - {served}
    if pool.served_model is None and not routed:
        return {"accept_any_model": True}
    return {"aliases": tuple(sorted(aliases)), "loras": tuple(sorted(targets))}


def _batched(options: dict[str, Any], max_num_seqs: int | None) -> dict[str, Any]:
    """The simulator options, with the declared batch size where one is given."""
    return {**options, "max_num_seqs": max_num_seqs} if max_num_seqs else options


def _pod_manifest(
    pool: Pool, name: str, ip: str, max_num_seqs: int | None = None
) -> dict[str, Any]:
    accel = pool.deployment.accelerator if pool.deployment else None
    container: dict[str, Any] = {"name": "vllm-sim", "image": "epp-sim"}
    if max_num_seqs:  # as the template says: the EPP reads it as the batch size
        container["args"] = ["--max-num-seqs", str(max_num_seqs)]
    template = pool.deployment.template if pool.deployment else {}
    template_spec = template.get("spec") if isinstance(template, dict) else None
    # the template's DRA claims: the EPP follows them to the devices in the manifests folder
    claims = template_spec.get("resourceClaims") if isinstance(template_spec, dict) else None
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": pool.namespace, "labels": dict(pool.selector)},
        "spec": {
            "containers": [container],
            **({"nodeSelector": {"accelerator": accel}} if accel else {}),
            **({"resourceClaims": claims} if claims else {}),
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }
