"""The seed's pool-owned model servers: one apps/v1 Deployment per seed InferencePool.

`desired_deployment` is pure: name and namespace of the pool, labels = the pool's selector (as
`epp.api.seed` derives it: the template's labels plus `inference.networking.x-k8s.io/pool`), so
the pods it makes are exactly the pods the pool selects; replicas and the pod template from
`spec.deployment`; a controller ownerReference to the pool so deleting the pool lets the API
server's garbage collector delete the Deployment and its pods. `DeploymentReconciler` creates what
is missing and replaces what drifted (replicas, or the template hash it stamps), and never touches
a Deployment of the same name that the pool does not own. Only the leader runs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from epp.api.model import Pool
from epp.kube.client import DEPLOYMENTS, SEED_POOLS, JsonObj, KubeApi, KubeError
from epp.kube.source import KubeView

log = logging.getLogger(__name__)

HASH_ANNOTATION = "inference.networking.x-k8s.io/template-hash"
MANAGED_BY = ("app.kubernetes.io/managed-by", "epp")


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # a same-named Deployment the pool does not own


def desired_deployment(pool: Pool, owner: JsonObj) -> JsonObj:
    assert pool.deployment is not None
    selector = dict(pool.selector)
    template = pool.deployment.template
    tmeta = template.get("metadata") if isinstance(template.get("metadata"), dict) else {}
    tlabels = tmeta.get("labels") if isinstance(tmeta, dict) else None
    pod_labels = {**(tlabels if isinstance(tlabels, dict) else {}), **selector}
    pod_meta: JsonObj = {"labels": pod_labels}
    if isinstance(tmeta, dict) and isinstance(tmeta.get("annotations"), dict):
        pod_meta["annotations"] = tmeta["annotations"]
    spec = {
        "replicas": pool.deployment.replicas,
        "selector": {"matchLabels": selector},
        "template": {"metadata": pod_meta, "spec": template.get("spec") or {}},
    }
    digest = hashlib.sha256(json.dumps(spec["template"], sort_keys=True).encode()).hexdigest()
    meta = owner.get("metadata") or {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": pool.name,
            "namespace": pool.namespace,
            "labels": {**selector, MANAGED_BY[0]: MANAGED_BY[1]},
            "annotations": {HASH_ANNOTATION: digest[:16]},
            "ownerReferences": [
                {
                    "apiVersion": owner.get("apiVersion", SEED_POOLS.api_version),
                    "kind": "InferencePool",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def _owned_by(obj: JsonObj, uid: object) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(r, dict) and r.get("uid") == uid for r in refs)


def _drifted(current: JsonObj, want: JsonObj) -> bool:
    cur_meta, want_meta = current.get("metadata") or {}, want["metadata"]
    cur_hash = (cur_meta.get("annotations") or {}).get(HASH_ANNOTATION)
    return (
        cur_hash != want_meta["annotations"][HASH_ANNOTATION]
        or (current.get("spec") or {}).get("replicas") != want["spec"]["replicas"]
        or any((cur_meta.get("labels") or {}).get(k) != v for k, v in want_meta["labels"].items())
    )


class DeploymentReconciler:
    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def reconcile(self, view: KubeView) -> ReconcileResult:
        pools = {(p.key, p.api_version): p for p in view.resources.pools if p.deployment}
        created: list[str] = []
        updated: list[str] = []
        skipped: list[str] = []
        for resource, owner in view.raw:
            if resource is not SEED_POOLS:
                continue
            meta = owner.get("metadata") or {}
            key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            pool = pools.get((key, SEED_POOLS.api_version))
            if pool is None:
                continue  # rejected by validation: leave what runs alone
            want = desired_deployment(pool, owner)
            path = DEPLOYMENTS.path(pool.namespace, pool.name)
            try:
                current = await self._api.get(path)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                await self._api.request("POST", DEPLOYMENTS.path(pool.namespace), body=want)
                log.info("created Deployment %s for its InferencePool", key)
                created.append(key)
                continue
            if not _owned_by(current, meta.get("uid")):
                log.warning("Deployment %s exists and is not owned by its pool; left alone", key)
                skipped.append(key)
                continue
            if _drifted(current, want):
                body = {**current, "spec": {**(current.get("spec") or {}), **want["spec"]}}
                body["metadata"] = {
                    **current["metadata"],
                    "labels": {
                        **(current["metadata"].get("labels") or {}),
                        **want["metadata"]["labels"],
                    },
                    "annotations": {
                        **(current["metadata"].get("annotations") or {}),
                        **want["metadata"]["annotations"],
                    },
                }
                await self._api.request("PUT", path, body=body)  # a 409 retries next round
                log.info("updated Deployment %s (replicas %d)", key, want["spec"]["replicas"])
                updated.append(key)
        return ReconcileResult(tuple(created), tuple(updated), tuple(skipped))
