"""The rollout store of Kubernetes mode: InferenceModels listed from, and status written to, the
API server.

`rollouts()` lists both InferenceModel kinds (every namespace, or the ones given) and keeps the
models that carry a rollout policy, with the object as read; `write` PUTs the object's status
subresource with the resourceVersion it was read at, so a write that lost a race (another
writer, a person's `epp rollout abort`) gets a 409 and is dropped, and the controller's next pass
starts from what is there. Only the Lease holder runs the controller (`controller.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from epp.api.model import ModelRoute
from epp.api.parse import parse_one
from epp.kube.client import MODEL_RESOURCES, JsonObj, KubeApi, KubeError, Resource
from epp.rollout.controller import Tracked


class KubeRolloutStore:
    def __init__(self, api: KubeApi, namespaces: Sequence[str] = ()) -> None:
        self._api = api
        self._namespaces = tuple(namespaces)
        self._read: dict[str, tuple[Resource, JsonObj]] = {}

    async def _list(self, resource: Resource) -> list[JsonObj]:
        out: list[JsonObj] = []
        for namespace in self._namespaces or (None,):
            try:
                page = await self._api.get(resource.path(namespace))
            except KubeError as exc:
                if exc.status == 404:  # that CRD is not installed
                    continue
                raise
            out += [i for i in page.get("items", ()) if isinstance(i, dict)]
        return out

    async def rollouts(self) -> list[Tracked]:
        found: list[Tracked] = []
        read: dict[str, tuple[Resource, JsonObj]] = {}
        for resource in MODEL_RESOURCES:
            for obj in await self._list(resource):
                obj.setdefault("apiVersion", resource.api_version)
                obj.setdefault("kind", resource.kind)
                model = parse_one(f"{resource.plural}", obj).value
                if not isinstance(model, ModelRoute) or model.rollout is None:
                    continue
                read[model.key] = (resource, obj)
                status = obj.get("status")
                rollout = status.get("rollout") if isinstance(status, dict) else None
                found.append(
                    Tracked(model, model.rollout, rollout if isinstance(rollout, dict) else None)
                )
        self._read = read
        return found

    async def write(self, tracked: Tracked, status: Mapping[str, Any]) -> bool:
        seen = self._read.get(tracked.model.key)
        if seen is None:
            return False
        resource, obj = seen
        body = copy.deepcopy(obj)
        current = body.get("status")
        body["status"] = {**(current if isinstance(current, dict) else {}), "rollout": dict(status)}
        path = resource.path(tracked.model.namespace, tracked.model.name, "status")
        try:
            written = await self._api.request("PUT", path, body=body)
        except KubeError as exc:
            if exc.status in (404, 409):
                return False
            raise
        self._read[tracked.model.key] = (resource, written)
        return True
