"""The CRDs: well formed, and every example manifest validates against them with jsonschema.

Unknown fields are made errors here (additionalProperties: false wherever a schema lists its
properties and does not preserve unknown fields), as the API server's strict field validation
does; `x-kubernetes-*` keys are ignored by jsonschema, so the CEL rules are checked by the parser
tests instead.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from epp import validate
from epp.api.load import collect_files, read_file
from epp.api.parse import parse_one

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())


def _crds() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in CRD_FILES:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, one per served version."""
    out = {}
    for crd in _crds():
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return out


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    files, problems = collect_files([ROOT / "examples"])
    assert not problems
    return [
        (label, doc) for f in files for label, doc in read_file(f).docs if isinstance(doc, dict)
    ]


def test_crds_cover_every_shape() -> None:
    assert set(schemas()) == {
        ("gateway.networking.x-k8s.io/v1alpha1", "InferencePool"),
        ("gateway.networking.x-k8s.io/v1alpha1", "InferenceModel"),
        ("gateway.networking.x-k8s.io/v1alpha1", "PriorityFilter"),
        ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"),
        ("inference.networking.x-k8s.io/v1alpha2", "InferenceModel"),
        ("inference.networking.k8s.io/v1", "InferencePool"),
    }


@pytest.mark.parametrize("crd", _crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_well_formed(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["scope"] == "Namespaced"
    assert sum(v["storage"] for v in spec["versions"]) == 1
    for version in spec["versions"]:
        assert version["subresources"] == {"status": {}}
        assert any(c["name"] == "Age" for c in version["additionalPrinterColumns"])
        root = version["schema"]["openAPIV3Schema"]
        assert root["required"] == ["spec"] or "spec" in root["properties"]
        jsonschema.Draft202012Validator.check_schema(root)


@pytest.mark.parametrize(
    "doc", [d for _, d in example_documents()], ids=[lbl for lbl, _ in example_documents()]
)
def test_example_matches_its_crd(doc: dict[str, Any]) -> None:
    schema = schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        assert doc["kind"] not in ("InferencePool", "InferenceModel", "PriorityFilter")
        return
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def test_examples_use_every_custom_shape() -> None:
    used = {(d["apiVersion"], d["kind"]) for _, d in example_documents()}
    assert set(schemas()) <= used


@pytest.mark.parametrize("folder", EXAMPLES, ids=lambda p: p.name)
def test_example_folder_passes_epp_validate(folder: Path) -> None:
    out = io.StringIO()
    assert validate.run([str(folder)], out) == 0, out.getvalue()
    assert " 0 error(s)" in out.getvalue()


def test_seed_example_is_the_seed_verbatim() -> None:
    folder = ROOT / "examples" / "seed"
    assert sorted(p.name for p in folder.iterdir()) == [
        "gateway.yaml",
        "inference.yaml",
        "monitoring.yaml",
    ]
    assert "# 金丝雀发布" in (folder / "inference.yaml").read_text()
    seed = next((ROOT.parent / "shared" / "seed").glob("*.txt"), None)
    if seed is not None:  # the seed document lives beside the repository in this workspace
        document = seed.read_text()
        for path in folder.iterdir():
            assert path.read_text() in document, path.name


SEED = "gateway.networking.x-k8s.io/v1alpha1"
X_A2 = "inference.networking.x-k8s.io/v1alpha2"
V1 = "inference.networking.k8s.io/v1"
CONTAINERS = {"spec": {"containers": [{"name": "c"}]}}
BROKEN_FOR_BOTH = [
    (SEED, "InferenceModel", {"poolRef": {"name": "p"}, "routing": {"priority": "urgent"}}),
    (
        SEED,
        "InferenceModel",
        {"poolRef": {"name": "p"}, "routing": {"trafficSplit": [{"weight": 2000000}]}},
    ),
    (
        SEED,
        "InferenceModel",
        {
            "poolRef": {"name": "p"},
            "routing": {"loadBalancing": {"metrics": [{"name": "x", "target": 1}]}},
        },
    ),
    (SEED, "InferenceModel", {"routing": {}}),
    (SEED, "InferencePool", {"deployment": {"replicas": -1, "template": CONTAINERS}}),
    (SEED, "InferencePool", {"deployment": {"template": {"spec": {"containers": []}}}}),
    (
        SEED,
        "InferencePool",
        {
            "deployment": {
                "template": {
                    "spec": {
                        "containers": [{"name": "c", "resources": {"limits": {"cpu": "lots"}}}]
                    }
                }
            }
        },
    ),
    (X_A2, "InferenceModel", {"modelName": "m", "poolRef": {"name": "p"}, "criticality": "High"}),
    (
        X_A2,
        "InferenceModel",
        {"modelName": "m", "poolRef": {"name": "p"}, "targetModels": [{"name": "a", "weight": 0}]},
    ),
    (
        X_A2,
        "InferencePool",
        {"selector": {}, "targetPortNumber": 8000, "extensionRef": {"name": "e"}},
    ),
    (X_A2, "InferencePool", {"selector": {"a": "b"}, "targetPortNumber": 8000}),
    (
        V1,
        "InferencePool",
        {
            "selector": {"matchLabels": {"a": "b"}},
            "targetPorts": [{"number": n} for n in range(1, 10)],
        },
    ),
    (
        V1,
        "InferencePool",
        {
            "selector": {"matchLabels": {"a": "b"}},
            "targetPorts": [{"number": 1}],
            "endpointPickerRef": {"name": "e", "failureMode": "Open"},
        },
    ),
    (
        V1,
        "InferencePool",
        {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 1}], "extra": 1},
    ),
    (
        V1,
        "InferencePool",
        {
            "selector": {"matchLabels": {"a": "b"}},
            "targetPorts": [{"number": 1}],
            "endpointPickerRef": {"name": "e", "group": "Apps", "port": {"number": 9002}},
        },
    ),
    (X_A2, "InferencePool", {"selector": {"a": "b"}, "targetPortNumber": 1, "extensionRef": {}}),
]


@pytest.mark.parametrize(("api_version", "kind", "spec"), BROKEN_FOR_BOTH)
def test_schema_and_parser_agree_on_broken_specs(
    api_version: str, kind: str, spec: dict[str, Any]
) -> None:
    doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            doc, schemas()[(api_version, kind)], cls=jsonschema.Draft202012Validator
        )
    assert parse_one("x#1", doc).value is None


def _structural_errors(node: dict[str, Any], path: str) -> list[str]:
    """The rules of a structural schema that the API server would refuse the CRD for."""
    errors = []
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        errors.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties together")
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        errors.append(f"{path}: anyOf outside int-or-string")
    for name, child in node.get("properties", {}).items():
        errors += _structural_errors(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        errors += _structural_errors(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        errors += _structural_errors(node["additionalProperties"], f"{path}{{}}")
    return errors


@pytest.mark.parametrize("crd", _crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_schemas_are_structural(crd: dict[str, Any]) -> None:
    for version in crd["spec"]["versions"]:
        assert _structural_errors(version["schema"]["openAPIV3Schema"], version["name"]) == []
