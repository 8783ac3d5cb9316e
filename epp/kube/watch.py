"""List-then-watch of one resource kind in one scope, kept as an in-memory cache (a reflector).

`Reflector.run()` lists, then watches from the list's resourceVersion with bookmarks on, resuming
each new watch from the last version it saw (so a dropped connection loses no event), relisting
when the server answers 410 Gone, reconnecting with capped exponential backoff and relisting every
`resync` seconds anyway. A failure never empties the cache: the last known objects stay, `stale`
turns true until a list or watch succeeds again. A 404 (the CRD is not installed) counts as an
empty, synced list, looked up again every `missing_retry` seconds (so does a 403 for an optional
kind). `on_change` follows changes.
Used by `source.KubeSource`; speaks to the server through `client.KubeApi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TypeVar

from epp.kube.client import JsonObj, KubeApi, KubeError, Resource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    watch_timeout: float = 300.0  # server-side timeoutSeconds of one watch request
    resync: float = 600.0  # relist this often even when the watch is healthy
    backoff_initial: float = 0.2
    backoff_max: float = 30.0
    label_selector: str = ""
    missing_retry: float = 60.0  # how soon to look again for a resource the server lacks (404)


T = TypeVar("T")


class Changes:
    """A change counter with a wake-up, shared by the sources built on reflectors: `touch()` on
    every change; `settled(seen, debounce)` waits for a generation newer than `seen`, lets the
    burst settle, and returns the generation reached. Each consumer keeps its own `seen`, so
    several consumers of one source never steal each other's wake-ups."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()  # replaced on every change: one per generation

    def touch(self) -> None:
        self.generation += 1
        fired, self._event = self._event, asyncio.Event()
        fired.set()

    async def settled(self, seen: int, debounce: float) -> int:
        if seen == self.generation:
            await self._event.wait()
        await asyncio.sleep(debounce)
        return self.generation

    async def follow(
        self, build: Callable[[], T], last: T, seen: int, debounce: float
    ) -> AsyncGenerator[T, None]:
        """`build()` after every settled burst of changes since generation `seen`, whenever
        the result differs from the last one handed out (`last` to begin with)."""
        while True:
            seen = await self.settled(seen, debounce)
            fresh = build()
            if fresh != last:
                last = fresh
                yield fresh


def object_key(obj: JsonObj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _version_of(obj: JsonObj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Reflector:
    """The cached objects of `resource` in `namespace` (None = all namespaces)."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        namespace: str | None,
        settings: WatchSettings,
        on_change: Callable[[], None] = lambda: None,
        optional: bool = False,
    ) -> None:
        """`optional`: a kind the EPP can do without (DRA): 403 Forbidden counts as not
        served, like 404, so a deployment whose RBAC predates it still syncs and serves."""
        self.resource = resource
        self.optional = optional
        self.namespace = namespace if resource.namespaced else None
        self._api = api
        self._settings = settings
        self._on_change = on_change
        self.objects: dict[str, JsonObj] = {}
        self.version = ""
        self.synced = asyncio.Event()
        self.stale = False
        self.installed = True  # False while the server answers 404 for the resource
        self.lists = 0  # how many full lists were taken (for tests and the debug view)
        self.last_error = ""

    @property
    def _missing_codes(self) -> tuple[int, ...]:
        return (404, 403) if self.optional else (404,)

    @property
    def name(self) -> str:
        return f"{self.resource.plural}.{self.resource.group or 'core'}@{self.namespace or '*'}"

    async def run(self) -> None:
        delay = self._settings.backoff_initial
        while True:
            try:
                await self._list()
                delay = self._settings.backoff_initial
                await self._watch_until_resync()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, KubeError, OSError, ValueError) as exc:
                if isinstance(exc, KubeError) and exc.status in self._missing_codes:
                    await asyncio.sleep(self._settings.missing_retry)
                    continue
                if isinstance(exc, KubeError) and exc.status == 410:
                    log.info("%s: version %s is too old; relisting", self.name, self.version)
                    continue
                self._mark_stale(exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._settings.backoff_max)
            except Exception as exc:  # an unknown client failure must not kill the loop
                log.exception("%s: unexpected watch failure", self.name)
                self._mark_stale(exc)
                await asyncio.sleep(self._settings.backoff_max)

    async def _list(self) -> None:
        selector = self._settings.label_selector
        query = {"labelSelector": selector} if selector else {}
        try:
            body = await self._api.get(self.resource.path(self.namespace), query)
        except KubeError as exc:
            if exc.status not in self._missing_codes:
                raise
            if (self.installed or not self.synced.is_set()) and exc.status == 403:
                log.warning("%s: forbidden (%s); going on without it", self.name, exc.message)
            elif self.installed or not self.synced.is_set():
                log.info("%s: not served by the API server (CRD not installed?)", self.name)
            self.installed = False
            self._replace({}, "")
            raise
        items = body.get("items") or []
        fresh = {}
        for item in items:
            if isinstance(item, dict):
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.resource.kind)
                fresh[object_key(item)] = item
        self.installed = True
        self.lists += 1
        self._replace(fresh, str((body.get("metadata") or {}).get("resourceVersion", "")))

    def _replace(self, fresh: dict[str, JsonObj], version: str) -> None:
        changed = fresh != self.objects or self.stale or not self.synced.is_set()
        self.objects, self.version, self.stale, self.last_error = fresh, version, False, ""
        self.synced.set()
        if changed:
            self._on_change()

    async def _watch_until_resync(self) -> None:
        """Watches (reconnecting from the last version) until the resync deadline passes."""
        deadline = time.monotonic() + self._settings.resync
        while (left := deadline - time.monotonic()) > 0:
            timeout = max(1, int(min(self._settings.watch_timeout, left)))
            query = {
                "watch": "1",
                "resourceVersion": self.version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(timeout),
            }
            if self._settings.label_selector:
                query["labelSelector"] = self._settings.label_selector
            path = self.resource.path(self.namespace)
            stream = self._api.stream(path, query, timeout + 10.0)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    self._apply(event)

    def _apply(self, event: JsonObj) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        if kind == "ERROR":
            code = obj.get("code")
            raise KubeError(
                code if isinstance(code, int) else 500,
                str(obj.get("reason", "")),
                str(obj.get("message", "")),
            )
        version = _version_of(obj)
        if kind == "BOOKMARK":
            self.version = version or self.version
            return
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        key = object_key(obj)
        if kind in ("ADDED", "MODIFIED"):
            self.objects[key] = obj  # readers iterate without awaiting, so in place is safe
        elif kind == "DELETED":
            self.objects.pop(key, None)
        else:
            return
        self.version = version or self.version
        self.stale = False
        self._on_change()

    def _mark_stale(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        if not self.stale:
            log.warning("%s: watch failed (%s); serving the last known state", self.name, exc)
            self.stale = True
            self._on_change()
