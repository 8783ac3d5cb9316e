"""The rollout store of file mode: one manifests file `epp up` serves, rewritten in place.

`epp up` copies the user's manifests into one file in its run folder and points the EPP at it;
this store reads the InferenceModels that carry a rollout from that file and writes a model's
`status.rollout` back by replacing the whole file (a new file renamed over the old, so the EPP's
file source never reads half of it). A write first checks that the stored status is still the
one the controller read (compare-and-set), so a person's `epp rollout abort` is never undone by
a controller pass that began before it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from epp.api.load import read_file
from epp.api.model import ModelRoute
from epp.api.parse import parse_one
from epp.rollout.controller import Tracked

MODEL_KIND = "InferenceModel"


def _identity(doc: object) -> tuple[str, str] | None:
    if not isinstance(doc, dict) or doc.get("kind") != MODEL_KIND:
        return None
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None
    return str(meta.get("namespace") or "default"), str(meta.get("name", ""))


def _rollout_status(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = doc.get("status")
    found = status.get("rollout") if isinstance(status, dict) else None
    return found if isinstance(found, dict) else None


class FileStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _docs(self) -> list[object]:
        loaded = read_file(self.path)
        if loaded.broken:
            raise OSError("; ".join(str(p) for p in loaded.problems))
        return [doc for _, doc in loaded.docs]

    async def rollouts(self) -> list[Tracked]:
        out: list[Tracked] = []
        for doc in self._docs():
            if _identity(doc) is None or not isinstance(doc, dict):
                continue
            model = parse_one(str(self.path), doc).value
            if isinstance(model, ModelRoute) and model.rollout is not None:
                out.append(Tracked(model, model.rollout, _rollout_status(doc)))
        return out

    async def write(self, tracked: Tracked, status: Mapping[str, Any]) -> bool:
        docs = self._docs()
        target = (tracked.model.namespace, tracked.model.name)
        for doc in docs:
            if _identity(doc) == target and isinstance(doc, dict):
                if _rollout_status(doc) != tracked.status:
                    return False
                current = doc.get("status")
                doc["status"] = {
                    **(current if isinstance(current, dict) else {}),
                    "rollout": dict(status),
                }
                self._replace(docs)
                return True
        return False

    def _replace(self, docs: list[object]) -> None:
        text = yaml.safe_dump_all(docs, sort_keys=False)
        fresh = self.path.with_name(f".{self.path.name}.tmp")
        fresh.write_text(text)
        os.replace(fresh, self.path)
