"""Model-server signals: a targeted /metrics parser and the async loop that scrapes every endpoint.

`parser` is pure (page text → `EndpointMetrics`); `client` keeps one HTTP/1.1 connection per
endpoint; `scraper` owns the ticker that scrapes every endpoint (adaptive interval, only the
parsed families) and hands results to a sink (the datastore). GPU utilization is `epp.gpu`.
"""

from epp.scrape.parser import ENGINE_SPECS, EngineSpec, MetricRef, MetricsParseError, parse_metrics
from epp.scrape.scraper import Fetch, MetricsSink, ScrapeError, Scraper, ScrapeSettings

__all__ = [
    "ENGINE_SPECS",
    "EngineSpec",
    "Fetch",
    "MetricRef",
    "MetricsParseError",
    "MetricsSink",
    "ScrapeError",
    "ScrapeSettings",
    "Scraper",
    "parse_metrics",
]
