"""A policy's own PromQL checks, asked of Prometheus when an analysis is due.

Each `analysis.queries[]` entry is an instant query; `$model` and `$version` in its text become
the model name clients ask for and the canary's version, so one policy reads the canary's own
series. The first sample of the answer (a scalar, or the first element of a vector) is the
value compared with the entry's `max` / `min` (`analysis.py`); no sample, or Prometheus not
answering, is no value, and the analysis waits rather than passing a check it could not make.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import httpx

from epp.api.rollout import MetricQuery

log = logging.getLogger(__name__)


def expand(query: MetricQuery, model: str, version: str) -> str:
    return query.query.replace("$model", model).replace("$version", version)


def first_value(answer: object) -> float | None:
    """The first sample's value of a Prometheus /api/v1/query answer, None when there is none."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        return None
    result = data.get("result")
    if data.get("resultType") != "scalar" and isinstance(result, list):  # a vector
        result = result[0].get("value") if result and isinstance(result[0], dict) else None
    if not isinstance(result, list) or len(result) != 2:
        return None
    try:
        value = float(result[1])
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class PrometheusQueries:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout)

    async def evaluate(
        self, queries: Sequence[MetricQuery], model: str, version: str
    ) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for query in queries:
            text = expand(query, model, version)
            try:
                response = await self._client.get(
                    f"{self.url}/api/v1/query", params={"query": text}
                )
                response.raise_for_status()
                out[query.name] = first_value(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("rollout query %s (%s) failed: %s", query.name, text, exc)
                out[query.name] = None
        return out

    async def aclose(self) -> None:
        await self._client.aclose()
