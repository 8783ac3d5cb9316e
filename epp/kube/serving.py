"""How a serving replica consumes Kubernetes mode: resources in, readiness out.

`feed` applies the first complete set (every list answered), only then declares the replica
ready, and applies every later set. A watch outage yields the last known state marked `Stale`
(see `source.py`), so readiness and endpoints survive it. Callables keep this module free of the
server's own types: the EPP server passes `Datastore.apply_resources` and `Health.set_ready`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from epp.api.model import ResourceSet
from epp.kube.source import KubeSource

log = logging.getLogger(__name__)


async def feed(
    source: KubeSource,
    apply: Callable[[ResourceSet], None],
    set_ready: Callable[[bool], Awaitable[None]],
) -> None:
    first = await source.synced()
    apply(first)
    await set_ready(True)
    log.info("first full sync: %d pool(s), %d model(s), %d pod(s)",
             len(first.pools), len(first.models), len(first.pods))  # fmt: skip
    async for resources in source.watch(since=first):
        apply(resources)
