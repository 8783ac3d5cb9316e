"""`epp up` runs the rollouts its manifests ask for, on a copy of them it serves.

When an InferenceModel carries a rollout policy, the stack copies every manifest it was given
into one file in its run folder (`served.yaml`) and points the EPP and the control plane at that
copy, so the controller can write weights and status there without touching the user's files.
`LocalRollouts` runs the `RolloutController` on that file, reading every EPP replica's /metrics, and
prints each step. `epp rollout status|promote|abort MODEL --manifests <run>/served.yaml` reads
and writes the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from epp.api.load import collect_files, read_file
from epp.api.model import ResourceSet
from epp.rollout.controller import RolloutController
from epp.rollout.files import FileStore
from epp.rollout.queries import PrometheusQueries
from epp.rollout.signals import MetricsSource

SERVED_FILE = "served.yaml"


def wants_rollouts(resources: ResourceSet) -> bool:
    return any(m.rollout is not None for m in resources.models)


def serve_copy(manifests: Sequence[Path], run_dir: Path) -> Path:
    """Every document of the manifests, in one file the controller may rewrite."""
    files, _ = collect_files(list(manifests))
    docs = [doc for path in files for _, doc in read_file(path).docs]
    served = run_dir / SERVED_FILE
    served.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return served


class LocalRollouts:
    def __init__(
        self,
        served: Path,
        metrics_urls: Sequence[str],
        say: Callable[[str], None] = print,
        prometheus: str | None = None,
    ) -> None:
        self.served = served
        self.events: list[str] = []
        self._say = say
        self._signals = MetricsSource(metrics_urls)
        self._queries = PrometheusQueries(prometheus) if prometheus else None
        store = FileStore(served)
        self.controller = RolloutController(store, self._signals, self._event, "", self._queries)
        self._task: asyncio.Task[None] | None = None

    def _event(self, line: str) -> None:
        self.events.append(line)
        self._say(line)

    def start(self) -> None:
        self._task = asyncio.create_task(self.controller.run(), name="rollouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._signals.aclose()
        if self._queries is not None:
            await self._queries.aclose()
