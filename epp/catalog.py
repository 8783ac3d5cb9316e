"""One model catalog: `GET /v1/models` answered by the EPP, in OpenAI's list shape.

Every InferenceModel is listed by the name clients use, across all pools, and so is each pool's
own served model that clients may ask for by name (unless only registered names are served).
`GET /v1/models/{name}` answers one entry, or 404 for a name nothing routes. The answer comes
from the datastore alone: no pod is asked. The edge (`epp.extproc`) calls `answer` for a GET
without a body and sends what it returns as the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import orjson

from epp.datastore import Datastore
from epp.errors import ModelNotFound
from epp.settings import ProtocolSettings

MODELS_PATH = "/v1/models"
OWNER = "inference-gateway"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str  # what clients ask for
    pool: str  # the pool key that serves it
    served: str | None  # what the pool's servers are asked for, where known


class Catalog:
    def __init__(self, store: Datastore, protocol: ProtocolSettings, created: int = 0) -> None:
        self._store = store
        self._protocol = protocol
        self._created = created

    def asks(self, method: str, path: str) -> bool:
        """Whether a request is a catalog read (GET /v1/models or /v1/models/{name})."""
        path = path.partition("?")[0]
        return method == "GET" and (path == MODELS_PATH or path.startswith(MODELS_PATH + "/"))

    def entries(self) -> list[Entry]:
        seen: dict[str, Entry] = {}
        for model in sorted(self._store.models(), key=lambda m: m.model_name):
            pool = self._store.pool(model.pool)
            served = pool.served_model if pool is not None else None
            seen.setdefault(model.model_name, Entry(model.model_name, model.pool, served))
        if not self._protocol.require_registered_models:
            for pool in sorted(self._store.pools(), key=lambda p: p.key):
                name = pool.served_model
                if name:
                    seen.setdefault(name, Entry(name, pool.key, name))
        return list(seen.values())

    def answer(self, path: str) -> bytes:
        """The body of the answer to a catalog read; an unknown name raises `ModelNotFound`."""
        path = path.partition("?")[0]
        entries = self.entries()
        if path.rstrip("/") == MODELS_PATH:
            return orjson.dumps({"object": "list", "data": [self._card(e) for e in entries]})
        name = unquote(path[len(MODELS_PATH) + 1 :])
        for entry in entries:
            if entry.name == name:
                return orjson.dumps(self._card(entry))
        raise ModelNotFound(f"The model `{name}` does not exist.")

    def _card(self, entry: Entry) -> dict[str, object]:
        return {
            "id": entry.name,
            "object": "model",
            "created": self._created,
            "owned_by": OWNER,
            "root": entry.served or entry.name,
            "parent": None,
            "pool": entry.pool,
        }
