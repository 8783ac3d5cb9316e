"""The built-in profiles, written as an EndpointPickerConfig document.

Writing them in the config shape means the defaults go through the same strict loader as a
user's file (so they are always a valid example) and docs/scheduling.md can show them verbatim.
`gpu-aware` is the default; `critical` serves priority > 0 requests of the non-baseline
strategies; the others are the strategies an InferenceModel may name.
"""

from __future__ import annotations

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
KIND = "EndpointPickerConfig"
DEFAULT_PROFILE = "gpu-aware"
CRITICAL_PROFILE = "critical"
BASELINE_PROFILES = frozenset({"least-request", "round-robin", "random"})


def _ref(name: str, weight: float | None = None) -> dict[str, object]:
    return {"pluginRef": name} if weight is None else {"pluginRef": name, "weight": weight}


DEFAULT_CONFIG: dict[str, object] = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "plugins": [
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "running-requests-size-scorer"},
        {"type": "in-flight-scorer"},
        {
            # plain counts for gpu-aware: its service-time scorer already weighs each pod's
            # pace against the request's size, and weighing the count by pace as well kept the
            # half-speed pod at 3.4 of its 8 slots on ShareGPT-like traffic
            "name": "in-flight-count-scorer",
            "type": "in-flight-scorer",
            "parameters": {"speedAware": False},
        },
        {
            "name": "in-flight-tokens-scorer",
            "type": "in-flight-scorer",
            "parameters": {"unit": "tokens"},
        },
        {"type": "prefix-cache-scorer"},
        {"type": "service-time-scorer"},
        {"type": "lora-affinity-scorer"},
        {"type": "gpu-utilization-scorer"},
        {"type": "gpu-utilization-filter"},
        {"type": "saturation-filter"},
        {"type": "max-score-picker"},
        {"type": "random-picker"},
        {"type": "round-robin-picker"},
    ],
    "schedulingProfiles": [
        {
            # prefix (6) outweighs the load scorers together (3 + 1 + 1), so a full prefix hit
            # sticks to its holder until the prefix scorer's load gate breaks the affinity.
            # Weights from the virtual-time study in docs/scheduling.md; in-flight tokens are
            # left out there, they raised p90 TTFT under overload on ShareGPT-like traffic.
            "name": DEFAULT_PROFILE,
            "plugins": [
                _ref("gpu-utilization-filter"),
                _ref("prefix-cache-scorer", 6),
                _ref("in-flight-count-scorer", 3),
                _ref("service-time-scorer", 5),
                _ref("queue-scorer", 1),
                _ref("kv-cache-utilization-scorer", 1),
                _ref("lora-affinity-scorer", 2),
                _ref("gpu-utilization-scorer", 1),
                _ref("max-score-picker"),
            ],
        },
        {
            # load first, affinity weak: a critical request goes to the emptiest pod even when
            # a busier one holds its prefix. No saturation filter: under overload it herded
            # critical requests onto the one pod that looked unsaturated at the last scrape.
            "name": CRITICAL_PROFILE,
            "plugins": [
                _ref("gpu-utilization-filter"),
                _ref("in-flight-scorer", 3),
                _ref("queue-scorer", 2),
                _ref("kv-cache-utilization-scorer", 1),
                _ref("prefix-cache-scorer", 2),
                _ref("lora-affinity-scorer", 1),
                _ref("gpu-utilization-scorer", 1),
                _ref("max-score-picker"),
            ],
        },
        {"name": "least-request", "plugins": [_ref("in-flight-scorer", 1)]},
        {
            "name": "prefix-cache-aware",  # upstream v1.2+ default weights
            "plugins": [
                _ref("prefix-cache-scorer", 3),
                _ref("queue-scorer", 2),
                _ref("kv-cache-utilization-scorer", 2),
            ],
        },
        {
            "name": "kv-cache-aware",
            "plugins": [_ref("kv-cache-utilization-scorer", 2), _ref("in-flight-scorer", 1)],
        },
        {"name": "queue-aware", "plugins": [_ref("queue-scorer", 2), _ref("in-flight-scorer", 1)]},
        {"name": "round-robin", "plugins": [_ref("round-robin-picker")]},
        {"name": "random", "plugins": [_ref("random-picker")]},
    ],
}
