"""The default profiles and the rule that chooses a profile for one request.

Profiles are built once by the composition root (`build_default_profiles`, or
`config.load_config` for a user's EndpointPickerConfig) and passed to the director, which calls
`select_profile` per request: the InferenceModel's `routing.loadBalancing.strategy` names a
profile, a critical request (priority > 0) of a non-baseline strategy gets `critical`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

from epp.scheduling.base import BuildContext, Clock
from epp.scheduling.config import build_profiles
from epp.scheduling.defaults import (
    BASELINE_PROFILES,
    CRITICAL_PROFILE,
    DEFAULT_CONFIG,
    DEFAULT_PROFILE,
)
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.scheduling.plugins.service_time import ServiceTimeScorer
from epp.scheduling.scheduler import Profile
from epp.scheduling.service_time import ServiceTime

__all__ = [
    "CRITICAL_PROFILE",
    "DEFAULT_PROFILE",
    "build_default_profiles",
    "precise_scorers",
    "prefix_scorers",
    "select_profile",
    "service_time_of",
]


def build_default_profiles(
    rng: random.Random | None = None, clock: Clock = time.monotonic
) -> dict[str, Profile]:
    ctx = BuildContext(rng or random.Random(), clock)
    return build_profiles(DEFAULT_CONFIG, ctx, "built-in profiles")


def select_profile(profiles: Mapping[str, Profile], strategy: str, priority: int) -> Profile:
    """The profile for one request; unknown strategies get the default."""
    if priority > 0 and strategy not in BASELINE_PROFILES:
        critical = profiles.get(CRITICAL_PROFILE)
        if critical is not None:
            return critical
    return profiles.get(strategy) or profiles[DEFAULT_PROFILE]


def prefix_scorers(profiles: Mapping[str, Profile]) -> list[PrefixCacheScorer]:
    """Each distinct prefix index once: for hit-ratio/size metrics and `forget(address)`."""
    found: dict[int, PrefixCacheScorer] = {}
    for profile in profiles.values():
        for ws in profile.scorers:
            if isinstance(ws.scorer, PrefixCacheScorer):
                found.setdefault(id(ws.scorer), ws.scorer)
    return list(found.values())


def precise_scorers(profiles: Mapping[str, Profile]) -> list[PreciseCacheScorer]:
    """Each distinct precise scorer once: the server feeds each one's index from KV events."""
    found: dict[int, PreciseCacheScorer] = {}
    for profile in profiles.values():
        for ws in profile.scorers:
            if isinstance(ws.scorer, PreciseCacheScorer):
                found.setdefault(id(ws.scorer), ws.scorer)
    return list(found.values())


def service_time_of(profiles: Mapping[str, Profile]) -> ServiceTime:
    """The service-time model admission shares with the scorer: the default profile's
    `service-time-scorer` (else any profile's), so a user's `typicalOutputTokens` moves both."""
    ordered = [profiles[DEFAULT_PROFILE]] if DEFAULT_PROFILE in profiles else []
    for profile in (*ordered, *profiles.values()):
        for ws in profile.scorers:
            if isinstance(ws.scorer, ServiceTimeScorer):
                return ws.scorer.model
    return ServiceTime()
