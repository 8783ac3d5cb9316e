"""EndpointPickerConfig loading: upstream files port over, mistakes fail naming plugin and field."""

from __future__ import annotations

import logging
import random

import pytest
import yaml

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.config import load_config
from epp.scheduling.params import ConfigError
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.scheduling.registry import DEFAULT_PROFILE
from epp.types import Endpoint, EndpointMetrics, EndpointState

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

UPSTREAM_CHART = (
    HEAD
    + """
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics, insecureSkipVerify: true}
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""
)


def load(text: str) -> dict[str, object]:
    return load_config(yaml.safe_load(text), random.Random(1), source="epp.yaml")  # type: ignore[return-value]


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


def test_upstream_chart_config_ports_over() -> None:
    profiles = load_config(yaml.safe_load(UPSTREAM_CHART), random.Random(1))
    default = profiles["default"]
    assert profiles[DEFAULT_PROFILE] is default  # the file's only profile serves as the default
    assert [(ws.scorer.name, ws.weight) for ws in default.scorers] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert default.picker.name == "max-score-picker"  # added when none is named
    assert len(default.observers) == 1  # the prefix index learns from picks
    assert "round-robin" in profiles  # built-in strategies remain


def test_parameters_names_and_shared_instances() -> None:
    profiles = load_config(
        yaml.safe_load(
            HEAD
            + """
plugins:
- name: prefix
  type: prefix-cache-scorer
  parameters:
    blockSizeTokens: 32
    autoTune: false
    loadGateSlack: 2
    metricsStalenessThreshold: 250ms
- type: saturation-filter
  parameters: {queueDepthThreshold: 8, metricsStalenessThreshold: 1s}
- type: weighted-random-picker
schedulingProfiles:
- name: gpu-aware
  plugins:
  - pluginRef: saturation-filter
  - {pluginRef: prefix, weight: 4}
  - pluginRef: weighted-random-picker
- name: sticky
  plugins: [{pluginRef: prefix}]
"""
        ),
        random.Random(1),
    )
    gpu = profiles["gpu-aware"]
    prefix = gpu.scorers[0].scorer
    assert isinstance(prefix, PrefixCacheScorer)
    assert prefix.name == "prefix" and prefix.block_size_tokens == 32 and not prefix.auto_tune
    assert prefix.gate_slack == 2.0 and prefix.staleness == 0.25
    assert profiles["sticky"].scorers[0].scorer is prefix  # one plugin, one index
    assert (
        gpu.picker.name == "weighted-random-picker" and gpu.filters[0].name == "saturation-filter"
    )


def test_no_profiles_makes_one_with_every_plugin() -> None:
    profiles = load(HEAD + "plugins: [{type: queue-scorer}, {type: random-picker}]\n")
    default = profiles["default"]
    assert default.picker.name == "random-picker"  # type: ignore[attr-defined]
    assert [ws.scorer.name for ws in default.scorers] == ["queue-scorer"]  # type: ignore[attr-defined]


def test_legacy_alias() -> None:
    profiles = load(HEAD + "plugins: [{type: kv-cache-scorer}]\n")
    assert profiles["default"].scorers[0].scorer.name == "kv-cache-scorer"  # type: ignore[attr-defined]
    assert profiles["default"].scorers[0].scorer.type == "kv-cache-utilization-scorer"  # type: ignore[attr-defined]


def test_plugin_timing_reports_type_and_configured_name(caplog: pytest.LogCaptureFixture) -> None:
    profiles = load_config(
        yaml.safe_load(
            HEAD + "plugins: [{name: in-flight-count-scorer, type: in-flight-scorer}]\n"
        ),
        random.Random(1),
    )
    profile = profiles["default"]
    scorer = profile.scorers[0].scorer
    assert (scorer.type, scorer.name) == ("in-flight-scorer", "in-flight-count-scorer")  # type: ignore[attr-defined]
    timed: list[tuple[str, str, str]] = []
    profile.timing = lambda point, plugin_type, name, seconds: timed.append(
        (point, plugin_type, name)
    )
    profile.timing_every = 1
    pods = [
        EndpointState(Endpoint(a, a, "ns/pool"), EndpointMetrics(0, 0, 0.0), in_flight=n)
        for a, n in (("a", 3), ("b", 0))
    ]
    with caplog.at_level(logging.DEBUG, logger="epp.scheduling.scheduler"):
        picked = profile.schedule(SchedulingRequest("r1", "m"), pods)
    assert picked[0].address == "b"
    assert timed == [
        ("Scorer", "in-flight-scorer", "in-flight-count-scorer"),
        ("Picker", "max-score-picker", "max-score-picker"),
    ]
    assert "in-flight-count-scorer=" in caplog.text  # the explain log keeps the configured name


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        (
            "plugins: [{type: queue-scorrer}]",
            "plugins[0](queue-scorrer).type",
            "unknown plugin type",
        ),
        (
            "plugins: [{type: prefix-cache-scorer, parameters: {blockSze: 16}}]",
            "plugins[0](prefix-cache-scorer).parameters.blockSze",
            "unknown parameter",
        ),
        (
            "plugins: [{type: prefix-cache-scorer, parameters: {blockSizeTokens: sixteen}}]",
            "plugins[0](prefix-cache-scorer).parameters.blockSizeTokens",
            "must be an integer",
        ),
        (
            "plugins: [{type: saturation-filter, parameters: {kvCacheUtilThreshold: 1.5}}]",
            "plugins[0](saturation-filter).parameters.kvCacheUtilThreshold",
            "<= 1",
        ),
        (
            "plugins: [{type: saturation-filter, parameters: {metricsStalenessThreshold: soon}}]",
            "plugins[0](saturation-filter).parameters.metricsStalenessThreshold",
            "duration",
        ),
        (
            "plugins: [{type: in-flight-scorer, parameters: {unit: bytes}}]",
            "plugins[0](in-flight-scorer).parameters.unit",
            "one of requests, tokens",
        ),
        (
            "plugins: [{type: queue-scorer, parameter: {}}]",
            "plugins[0](queue-scorer).parameter",
            "unknown",
        ),
        (
            "plugins: [{type: queue-scorer}, {type: queue-scorer}]",
            "plugins[1](queue-scorer).name",
            "twice",
        ),
        ("plugins: {type: queue-scorer}", "plugins", "non-empty list"),
        (
            "plugins: [{type: queue-scorer, parameters: [1]}]",
            "plugins[0](queue-scorer).parameters",
            "mapping",
        ),
        (
            "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: nope}]}]",
            "schedulingProfiles[0](p).plugins[0].pluginRef",
            "no plugin named 'nope'",
        ),
        (
            "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer, weight: heavy}]}]",
            "schedulingProfiles[0](p).plugins[0].weight",
            "number",
        ),
        (
            "plugins: [{type: random-picker}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: random-picker, weight: 2}]}]",
            "schedulingProfiles[0](p).plugins[0].weight",
            "not a scorer",
        ),
        (
            "plugins: [{type: random-picker}, {type: max-score-picker}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: random-picker},"
            " {pluginRef: max-score-picker}]}]",
            "schedulingProfiles[0](p).plugins",
            "at most one picker",
        ),
        (
            "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]},"
            " {name: p, plugins: [{pluginRef: queue-scorer}]}]",
            "schedulingProfiles[1].name",
            "defined twice",
        ),
        (
            "plugins: [{type: metrics-data-source}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: metrics-data-source}]}]",
            "schedulingProfiles[0](p).plugins[0].pluginRef",
            "not a scheduling plugin",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfile: []",
            "schedulingProfile",
            "unknown",
        ),
    ],
)
def test_config_errors_name_plugin_and_field(text: str, path: str, words: str) -> None:
    err = error(HEAD + text + "\n")
    assert err.path == path
    assert words in err.message
    assert str(err).startswith("epp.yaml: ")


def test_wrong_api_version_and_kind() -> None:
    assert error(
        "apiVersion: v1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]"
    ).path == ("apiVersion")
    bad_kind = HEAD.replace("EndpointPickerConfig", "Pod") + "plugins: [{type: queue-scorer}]"
    assert error(bad_kind).path == "kind"
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(["not", "a", "mapping"])


def test_upstream_extras_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    load(
        HEAD
        + "featureGates: [flowControl]\n"
        + "plugins: [{type: queue-scorer}, {type: single-profile-handler}]\n"
    )
    assert "featureGates is not used" in caplog.text
    assert "single-profile-handler is not used" in caplog.text
