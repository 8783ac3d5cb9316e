"""The EndpointPickerConfig file (upstream's shape) to scheduling profiles, checked strictly.

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins: [{name?, type, parameters?}]              # name defaults to type
    schedulingProfiles: [{name, plugins: [{pluginRef, weight?}]}]

Unknown plugin types, unknown parameters, wrong value types and dangling references raise
`ConfigError` naming the plugin or profile and the field. Upstream data-layer/parser/admission
entries are accepted and ignored with a warning. The caller decodes the YAML (this layer does
no I/O and imports no YAML library); `load_config` returns the built-in profiles overlaid with
the file's; when the file has no `gpu-aware` profile its first profile also serves as the default.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from epp.scheduling.base import BuildContext, Clock, Filter, Picker, PickObserver, Scorer
from epp.scheduling.defaults import API_VERSION, DEFAULT_CONFIG, DEFAULT_PROFILE, KIND
from epp.scheduling.params import ConfigError, Params
from epp.scheduling.plugins import ALIASES, BUILTIN_PLUGINS, FOREIGN_TYPES
from epp.scheduling.plugins.max_score import MaxScorePicker
from epp.scheduling.scheduler import Profile, WeightedScorer

log = logging.getLogger(__name__)

Factory = Callable[[Params, BuildContext], object]
FOREIGN_KEYS = ("featureGates", "saturationDetector", "dataLayer", "parser", "flowControl")


@dataclass(frozen=True, slots=True)
class _Entry:
    type: str
    plugin: object  # a Filter, Scorer or Picker; None for an ignored upstream type


def builtin_factories() -> dict[str, Factory]:
    return {cls.type: cls.from_parameters for cls in BUILTIN_PLUGINS}


def load_config(
    document: object,
    rng: random.Random | None = None,
    clock: Clock = time.monotonic,
    source: str = "",
) -> dict[str, Profile]:
    """Built-in profiles overlaid with the document's (a decoded YAML/JSON mapping)."""
    ctx = BuildContext(rng or random.Random(), clock)
    profiles = build_profiles(DEFAULT_CONFIG, ctx, "built-in profiles")
    mine = build_profiles(document, ctx, source)
    profiles.update(mine)
    if DEFAULT_PROFILE not in mine:
        first = next(iter(mine.values()))
        log.info("profile %r of %s serves as the default", first.name, source or "the config")
        profiles[DEFAULT_PROFILE] = first
    return profiles


def build_profiles(document: object, ctx: BuildContext, source: str = "") -> dict[str, Profile]:
    top = Params(document, "", source)
    if top.string("apiVersion") != API_VERSION:
        raise top.error("apiVersion", f"must be {API_VERSION}")
    if top.string("kind") != KIND:
        raise top.error("kind", f"must be {KIND}")
    for key in FOREIGN_KEYS:
        if top.value(key) is not None:
            log.warning("%s: %s is not used by this scheduler; ignored", source or "config", key)
    entries = _plugins(top.value("plugins"), ctx, source)
    profiles_raw = top.value("schedulingProfiles")
    top.done()
    if profiles_raw is None:  # upstream: one profile with every plugin
        refs: list[object] = [{"pluginRef": name} for name, e in entries.items() if e.plugin]
        return {"default": _profile("default", refs, entries, ctx, "default profile", source)}
    if not isinstance(profiles_raw, list) or not profiles_raw:
        raise ConfigError("schedulingProfiles", "must be a non-empty list", source)
    profiles: dict[str, Profile] = {}
    for i, item in enumerate(profiles_raw):
        p = Params(item, f"schedulingProfiles[{i}]", source)
        name = p.string("name") or ""
        if name in profiles:
            raise p.error("name", f"profile {name!r} is defined twice")
        where = f"schedulingProfiles[{i}]({name})"
        profile_refs = p.value("plugins")
        p.done()
        if not isinstance(profile_refs, list) or not profile_refs:
            raise ConfigError(f"{where}.plugins", "must be a non-empty list", source)
        profiles[name] = _profile(name, profile_refs, entries, ctx, where, source)
    return profiles


def _plugins(raw: object, ctx: BuildContext, source: str) -> dict[str, _Entry]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "plugins", "must be a non-empty list of {name?, type, parameters?}", source
        )
    factories = builtin_factories()
    entries: dict[str, _Entry] = {}
    for i, item in enumerate(raw):
        p = Params(item, f"plugins[{i}]", source)
        kind = p.string("type") or ""
        name = p.string("name", required=False) or kind
        p.path = f"plugins[{i}]({name})"
        if name in entries:
            raise p.error("name", f"plugin name {name!r} is used twice; give one a distinct name")
        raw_params = p.value("parameters")
        p.done()
        kind = ALIASES.get(kind, kind)
        if kind in FOREIGN_TYPES:
            log.warning("%s: plugin type %s is not used by this scheduler; ignored", source, kind)
            entries[name] = _Entry(kind, None)
            continue
        factory = factories.get(kind)
        if factory is None:
            known = ", ".join(sorted(factories))
            raise p.error("type", f"unknown plugin type {kind!r} (known types: {known})")
        params = Params(raw_params, f"{p.path}.parameters", source)
        try:
            plugin = factory(params, ctx)
        except ValueError as exc:
            raise ConfigError(params.path, str(exc), source) from None
        params.done()
        if name != kind:  # the type stays the class's: metrics report both
            plugin.name = name  # type: ignore[attr-defined]
        entries[name] = _Entry(kind, plugin)
    return entries


def _profile(
    name: str,
    refs: list[object],
    entries: dict[str, _Entry],
    ctx: BuildContext,
    where: str,
    source: str,
) -> Profile:
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[Picker] = []
    observers: list[PickObserver] = []
    seen: set[str] = set()
    for j, item in enumerate(refs):
        p = Params(item, f"{where}.plugins[{j}]", source)
        ref = p.string("pluginRef") or ""
        weight = p.number("weight", 1.0, low=0.0)
        has_weight = p.value("weight") is not None
        p.done()
        entry = entries.get(ref)
        if entry is None:
            raise p.error("pluginRef", f"no plugin named {ref!r} in plugins")
        if entry.plugin is None:
            raise p.error("pluginRef", f"{ref!r} ({entry.type}) is not a scheduling plugin here")
        if ref in seen:
            raise p.error("pluginRef", f"{ref!r} is listed twice in this profile")
        seen.add(ref)
        plugin = entry.plugin
        if isinstance(plugin, Scorer):
            scorers.append(WeightedScorer(plugin, weight))
        elif has_weight:
            raise p.error("weight", f"{ref!r} is not a scorer; only scorers take a weight")
        elif isinstance(plugin, Filter):
            filters.append(plugin)
        elif isinstance(plugin, Picker):
            pickers.append(plugin)
        if isinstance(plugin, PickObserver):
            observers.append(plugin)
    if len(pickers) > 1:
        raise ConfigError(f"{where}.plugins", "a profile takes at most one picker", source)
    picker = pickers[0] if pickers else MaxScorePicker(ctx.rng)
    return Profile(name, filters, scorers, picker, observers)
