"""Built-in plugins, one small module each, and the explicit list of them.

`BUILTIN_PLUGINS` is the only place a plugin type becomes config-visible: `config.py` maps each
class's `type` (upstream's kebab-case type) to its `from_parameters` factory. Every plugin also
has a `name`: the type, unless the config file names the instance otherwise.
"""

from __future__ import annotations

from epp.scheduling.plugins.gpu_utilization import GpuUtilizationFilter, GpuUtilizationScorer
from epp.scheduling.plugins.in_flight import InFlightScorer, TokenLoadScorer
from epp.scheduling.plugins.kv_cache import KvCacheScorer
from epp.scheduling.plugins.lora_affinity import LoraAffinityFilter, LoraAffinityScorer
from epp.scheduling.plugins.max_score import MaxScorePicker
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.scheduling.plugins.queue import QueueScorer
from epp.scheduling.plugins.random_picker import RandomPicker
from epp.scheduling.plugins.round_robin import RoundRobinPicker
from epp.scheduling.plugins.running import RunningRequestsScorer
from epp.scheduling.plugins.saturation_filter import SaturationFilter
from epp.scheduling.plugins.service_time import ServiceTimeScorer
from epp.scheduling.plugins.weighted_random import WeightedRandomPicker

BUILTIN_PLUGINS = (
    QueueScorer,
    RunningRequestsScorer,
    KvCacheScorer,
    InFlightScorer,
    TokenLoadScorer,
    ServiceTimeScorer,
    GpuUtilizationScorer,
    GpuUtilizationFilter,
    LoraAffinityScorer,
    LoraAffinityFilter,
    PrefixCacheScorer,
    PreciseCacheScorer,
    SaturationFilter,
    MaxScorePicker,
    WeightedRandomPicker,
    RandomPicker,
    RoundRobinPicker,
)

# older upstream names for the same plugins
ALIASES = {"kv-cache-scorer": "kv-cache-utilization-scorer"}

# upstream plugin types that configure parts this EPP does elsewhere (data layer, parsing,
# admission): accepted so upstream files port over, and ignored with a warning
FOREIGN_TYPES = frozenset(
    {
        "metrics-data-source",
        "core-metrics-extractor",
        "models-data-source",
        "approx-prefix-cache-producer",
        "inflight-load-producer",
        "single-profile-handler",
        "openai-parser",
        "utilization-detector",
        "concurrency-detector",
    }
)
