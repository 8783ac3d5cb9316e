"""Rollout policies in both shapes: parsed into `RolloutPolicy`, broken ones named by exact path,
and the controller's `status.rollout.weights` routing while a policy is set."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp import validate
from epp.api.model import ModelRoute
from epp.api.parse import parse_one

SEED: dict[str, Any] = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "chat"},
    "spec": {
        "poolRef": {"name": "stable-pool"},
        "routing": {
            "trafficSplit": [
                {"weight": 100, "version": "stable", "poolRef": {"name": "stable-pool"}},
                {
                    "weight": 0,
                    "version": "canary",
                    "poolRef": {"name": "canary-pool"},
                    "rollout": {
                        "steps": [10, 25, 50, 100],
                        "interval": "2s",
                        "stepDuration": "1m",
                        "minRequests": 20,
                        "analysis": {"maxErrorRate": 0.02, "maxTPOTRatio": 1.4},
                    },
                },
            ]
        },
    },
}
UPSTREAM: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceModel",
    "metadata": {"name": "chat"},
    "spec": {
        "modelName": "chat",
        "poolRef": {"name": "pool"},
        "targetModels": [
            {"name": "chat-v1", "weight": 100},
            {"name": "chat-v2", "weight": 1, "rollout": {"steps": [20, 100]}},
        ],
    },
}


def _model(doc: dict[str, Any]) -> ModelRoute:
    outcome = parse_one("test", doc)
    assert not outcome.problems, [str(p) for p in outcome.problems]
    assert isinstance(outcome.value, ModelRoute)
    return outcome.value


def _problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    outcome = parse_one("test", doc)
    assert outcome.value is None
    return [(p.path, p.message) for p in outcome.problems]


def test_seed_policy_is_read_with_defaults_for_what_is_not_given() -> None:
    policy = _model(SEED).rollout
    assert policy is not None
    assert policy.canary == "canary"
    assert policy.steps == (10, 25, 50, 100)
    assert (policy.interval_seconds, policy.step_seconds, policy.min_requests) == (2.0, 60.0, 20)
    assert policy.thresholds.max_error_rate == 0.02
    assert policy.thresholds.max_tpot_ratio == 1.4
    assert policy.thresholds.max_ttft_ratio == 1.5  # the default
    assert policy.failure_limit == 1


def test_the_ttft_margin_reads_as_a_duration() -> None:
    doc = copy.deepcopy(SEED)
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"]["analysis"]["minTTFTIncrease"] = "50ms"
    policy = _model(doc).rollout
    assert policy is not None and policy.thresholds.min_ttft_increase == pytest.approx(0.05)
    assert _model(SEED).rollout.thresholds.min_ttft_increase == 0.0  # type: ignore[union-attr]


def test_upstream_policy_names_the_canary_by_its_target_model() -> None:
    model = _model(UPSTREAM)
    assert model.rollout is not None and model.rollout.canary == "chat-v2"
    assert model.rollout.steps == (20, 100)


def test_a_model_without_rollout_has_none() -> None:
    doc = copy.deepcopy(SEED)
    del doc["spec"]["routing"]["trafficSplit"][1]["rollout"]
    assert _model(doc).rollout is None


def test_revision_changes_with_the_policy() -> None:
    doc = copy.deepcopy(SEED)
    first = _model(doc).rollout
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"]["steps"] = [5, 100]
    second = _model(doc).rollout
    assert first is not None and second is not None
    assert first.revision != second.revision
    assert first.revision == _model(SEED).rollout.revision  # type: ignore[union-attr]


CANARY = "spec.routing.trafficSplit[1]"


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"steps": [10, 5, 100]}, f"{CANARY}.rollout.steps[1]", "steps must increase"),
        ({"steps": [10, 50]}, f"{CANARY}.rollout.steps[1]", "the last step must be 100"),
        ({"steps": [0, 100]}, f"{CANARY}.rollout.steps[0]", "must be 1..100"),
        ({"steps": ["10%", 100]}, f"{CANARY}.rollout.steps[0]", "must be an integer percent"),
        ({"steps": []}, f"{CANARY}.rollout.steps", "at least 1 item"),
        ({"interval": "soon"}, f"{CANARY}.rollout.interval", "must be a duration"),
        ({"interval": "0ms"}, f"{CANARY}.rollout.interval", "between 0.1s and 3600s"),
        ({"minRequests": -1}, f"{CANARY}.rollout.minRequests", "must be 0..10000000"),
        ({"pace": 3}, f"{CANARY}.rollout.pace", "unknown field"),
        (
            {"analysis": {"maxErrorRate": 5}},
            f"{CANARY}.rollout.analysis.maxErrorRate",
            "must be 0..1",
        ),
        (
            {"analysis": {"maxTTFTRatio": 0.5}},
            f"{CANARY}.rollout.analysis.maxTTFTRatio",
            "must be 1..1000",
        ),
        (
            {"analysis": {"minTTFTIncrease": "soon"}},
            f"{CANARY}.rollout.analysis.minTTFTIncrease",
            "must be a duration",
        ),
        (
            {"analysis": {"queries": [{"name": "q", "query": "up"}]}},
            f"{CANARY}.rollout.analysis.queries[0]",
            "needs max or min",
        ),
        (
            {"analysis": {"queries": [{"name": "q", "query": 3, "max": 1}]}},
            f"{CANARY}.rollout.analysis.queries[0].query",
            "must be a string",
        ),
    ],
)
def test_a_broken_policy_is_named_by_its_exact_path(
    change: dict[str, Any], path: str, message: str
) -> None:
    doc = copy.deepcopy(SEED)
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"].update(change)
    problems = _problems(doc)
    assert any(p == path and message in m for p, m in problems), problems


def test_two_canaries_a_missing_version_and_a_lone_canary_are_errors() -> None:
    doc = copy.deepcopy(SEED)
    splits = doc["spec"]["routing"]["trafficSplit"]
    splits[0]["rollout"] = {"steps": [100]}
    assert ("spec.routing.trafficSplit[1].rollout") in [p for p, _ in _problems(doc)]

    doc = copy.deepcopy(SEED)
    del doc["spec"]["routing"]["trafficSplit"][1]["version"]
    assert (f"{CANARY}.version", "required on the entry that carries a rollout") in _problems(doc)

    doc = copy.deepcopy(SEED)
    doc["spec"]["routing"]["trafficSplit"][0]["version"] = "canary"
    assert any(p == "spec.routing.trafficSplit[1]" for p, _ in _problems(doc))

    doc = copy.deepcopy(SEED)
    del doc["spec"]["routing"]["trafficSplit"][0]
    doc["spec"]["routing"]["trafficSplit"][0]["weight"] = 1
    problems = _problems(doc)
    assert ("spec.routing.trafficSplit", "a rollout needs a stable entry beside the canary") in (
        problems
    )


def test_upstream_broken_policy_path() -> None:
    doc = copy.deepcopy(UPSTREAM)
    doc["spec"]["targetModels"][1]["rollout"]["steps"] = [50, 20]
    problems = _problems(doc)
    assert any(p == "spec.targetModels[1].rollout.steps[1]" for p, _ in problems), problems


def test_status_weights_route_while_a_policy_is_set() -> None:
    doc = copy.deepcopy(SEED)
    doc["status"] = {"rollout": {"weights": {"stable": 75, "canary": 25}}}
    weights = {s.version: s.weight for s in _model(doc).splits}
    assert weights == {"stable": 75, "canary": 25}
    # without a policy, status is not the controller's and the spec's weights stand
    del doc["spec"]["routing"]["trafficSplit"][1]["rollout"]
    assert {s.version: s.weight for s in _model(doc).splits} == {"stable": 100, "canary": 0}


def test_status_weights_that_do_not_match_the_versions_are_ignored() -> None:
    doc = copy.deepcopy(SEED)
    doc["status"] = {"rollout": {"weights": {"stable": 75, "other": 25}}}
    assert {s.version: s.weight for s in _model(doc).splits} == {"stable": 100, "canary": 0}
    doc["status"] = {"rollout": {"weights": {"stable": 0, "canary": 0}}}
    assert {s.version: s.weight for s in _model(doc).splits} == {"stable": 100, "canary": 0}


def test_upstream_status_weights_name_the_target_models() -> None:
    doc = copy.deepcopy(UPSTREAM)
    doc["status"] = {"rollout": {"weights": {"chat-v1": 0, "chat-v2": 100}}}
    assert {s.model: s.weight for s in _model(doc).splits} == {"chat-v1": 0, "chat-v2": 100}


def test_epp_validate_prints_the_exact_field_path(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"]["steps"] = [10, 30, 20, 100]
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    assert validate.run([str(path)], out) == 1
    assert (
        "InferenceModel/chat  spec.routing.trafficSplit[1].rollout.steps[2]: "
        "steps must increase, got 20 after 30"
    ) in out.getvalue()


def test_epp_validate_shows_the_policy_it_accepted() -> None:
    out = io.StringIO()
    assert validate.run([str(Path(__file__).parents[2] / "examples" / "rollout")], out) == 0
    assert "rollout of canary: 10%→25%→50%→100%, analysis every 30s" in out.getvalue()
