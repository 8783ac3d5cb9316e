"""The Kubernetes API client edge: one `KubeApi` over `kubernetes_asyncio`'s `ApiClient`.

`connect` builds the client from in-cluster service-account config, a kubeconfig file, or a bare
host URL (tests, `kubectl proxy`). `KubeApi` speaks raw JSON over the official client's HTTP layer
(auth, TLS, token refresh are the client's), so every kind, custom resources included, goes
through one generic path built by `Resource.path`. `watch.py`, `status.py`, `leader.py` and
`deployments.py` use it; nothing here knows about pools or models.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

JsonObj = dict[str, Any]
MAX_EVENT_BYTES = 16 << 20  # etcd caps one object near 1.5 MiB; leave generous room


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource: group ("" = core), version, plural, kind; namespaced or cluster-wide."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if sub:
                base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods", "Pod")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
SEED_POOLS = Resource("gateway.networking.x-k8s.io", "v1alpha1", "inferencepools", "InferencePool")
SEED_MODELS = Resource(
    "gateway.networking.x-k8s.io", "v1alpha1", "inferencemodels", "InferenceModel"
)
X_POOLS = Resource("inference.networking.x-k8s.io", "v1alpha2", "inferencepools", "InferencePool")
X_MODELS = Resource(
    "inference.networking.x-k8s.io", "v1alpha2", "inferencemodels", "InferenceModel"
)
V1_POOLS = Resource("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
POOL_RESOURCES = (SEED_POOLS, X_POOLS, V1_POOLS)
# Dynamic Resource Allocation, every shape still served (v1alpha2 until 1.30 and in the seed,
# v1beta1 from 1.32, v1 from 1.34); one object served in several versions is read once,
# from the first version in these tuples that lists it
DRA = "resource.k8s.io"
RESOURCE_SLICES = tuple(
    Resource(DRA, v, "resourceslices", "ResourceSlice", namespaced=False)
    for v in ("v1", "v1beta1", "v1alpha2")
)
RESOURCE_CLAIMS = tuple(
    Resource(DRA, v, "resourceclaims", "ResourceClaim") for v in ("v1", "v1beta1", "v1alpha2")
)
RESOURCE_CLASSES = (Resource(DRA, "v1alpha2", "resourceclasses", "ResourceClass", False),)
DEVICE_TAINT_RULES = tuple(
    Resource(DRA, v, "devicetaintrules", "DeviceTaintRule", namespaced=False)
    for v in ("v1", "v1beta2", "v1alpha3")
)
MODEL_RESOURCES = (SEED_MODELS, X_MODELS)


class KubeError(Exception):
    """A non-2xx answer (or an ERROR watch event): `status` is the HTTP code, 0 = no answer."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the API server is: `host` wins, then `kubeconfig`, then in-cluster, then ~/.kube."""

    kubeconfig: str | None = None
    context: str | None = None
    host: str | None = None
    in_cluster: bool | None = None  # None = in-cluster when the service-account env is set
    request_timeout: float = 30.0


async def connect(cfg: ClientConfig) -> KubeApi:
    conf = kclient.Configuration()
    if cfg.host:
        conf.host = cfg.host.rstrip("/")
    elif cfg.kubeconfig:
        await kconfig.load_kube_config(
            config_file=cfg.kubeconfig, context=cfg.context, client_configuration=conf
        )
    elif cfg.in_cluster or (cfg.in_cluster is None and _in_cluster_env()):
        kconfig.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    else:
        await kconfig.load_kube_config(context=cfg.context, client_configuration=conf)
    return KubeApi(kclient.ApiClient(conf), cfg.request_timeout)


def _in_cluster_env() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class KubeApi:
    """JSON requests and watch streams over one `ApiClient`; `close()` releases its sessions."""

    def __init__(self, api: kclient.ApiClient, request_timeout: float = 30.0) -> None:
        self._api = api
        self._timeout = request_timeout

    async def close(self) -> None:
        await self._api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: JsonObj | None = None,
        content_type: str = "application/json",
    ) -> JsonObj:
        limit = aiohttp.ClientTimeout(total=self._timeout)
        try:
            resp = await self._call(method, path, query, body, content_type, limit)
            try:
                data = await resp.read()
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, "Unreachable", f"{method} {path}: {exc!r}") from exc
        if not 200 <= resp.status < 300:
            raise _error_of(resp.status, data)
        decoded = json.loads(data) if data else {}
        return decoded if isinstance(decoded, dict) else {}

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> JsonObj:
        return await self.request("GET", path, query=query)

    async def stream(
        self, path: str, query: Mapping[str, str], read_timeout: float
    ) -> AsyncGenerator[JsonObj, None]:
        """A watch: one decoded event per line, until the server closes or reading stalls."""
        limit = aiohttp.ClientTimeout(sock_connect=10.0, sock_read=read_timeout)
        try:
            resp = await self._call("GET", path, query, None, "application/json", limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, "Unreachable", f"watch {path}: {exc!r}") from exc
        try:
            if not 200 <= resp.status < 300:
                raise _error_of(resp.status, await resp.read())
            async for event in _lines(resp.content):
                yield event
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, "Disconnected", f"watch {path}: {exc!r}") from exc
        finally:
            resp.release()

    async def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: JsonObj | None,
        content_type: str,
        limit: aiohttp.ClientTimeout,
    ) -> Any:
        return await self._api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=limit,
        )


async def _lines(content: aiohttp.StreamReader) -> AsyncGenerator[JsonObj, None]:
    """Watch events: one JSON object per line; a line may span many network chunks."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        if len(buffer) > MAX_EVENT_BYTES:
            raise KubeError(0, "EventTooLarge", f"{len(buffer)} bytes without a newline")
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event


def _error_of(status: int, data: bytes) -> KubeError:
    """A `Status` body's reason and message when there is one, the raw text otherwise."""
    try:
        decoded = json.loads(data) if data else {}
    except ValueError:
        decoded = {}
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        return KubeError(status, str(decoded.get("reason", "")), str(decoded.get("message", "")))
    return KubeError(status, "", data[:200].decode("utf-8", "replace"))
