"""Every DRA document of the seed through `epp validate`: accepted, with what to write instead.

The fixtures are the YAML blocks of the users' document's DRA section, verbatim
(tests/fixtures/seed_dra). Each note names the field path and the real API's equivalent.
"""

from __future__ import annotations

import io
from pathlib import Path

from epp import validate
from epp.api.load import load_paths

SEED_DRA = Path(__file__).resolve().parents[1] / "fixtures" / "seed_dra"

EXPECTED = {
    ("Namespace/gpu-admin-namespace", "metadata.labels[resource.kubernetes.io/admin-access]"):
        "admin access takes the value \"true\"; got 'enabled'",
    ("ResourceClass/nvidia-gpu-class", "kind"):
        "ResourceClass was removed in Kubernetes 1.31: write a DeviceClass (resource.k8s.io/v1) "
        "named nvidia-gpu-class whose spec.selectors[].cel.expression picks the devices, e.g. "
        'device.driver == "gpu.nvidia.com"',
    ("ResourceClass/nvidia-gpu-class", "spec.driverName"):
        "not a field: v1alpha2 had driverName at the top level, without spec; a DeviceClass "
        'names the driver in its CEL selector (device.driver == "gpu.nvidia.com")',
    ("ResourceClass/nvidia-gpu-class", "spec.parameters"):
        "ResourceClass never had free-form parameters (v1alpha2 had parametersRef to another "
        "object): write driver settings in a DeviceClass's spec.config[].opaque {driver, "
        "parameters}, and device properties as CEL selectors on the device's attributes and "
        "capacity",
    ("ResourceClass/mig-gpu-class", "spec.parameters.migProfile"):
        'a MIG slice is a device of its own: select it with device.attributes["gpu.nvidia.com"]'
        '.profile == "1g.5gb"; the EPP takes the allocated device\'s profile as the pod\'s share '
        "of its GPU",
    ("ResourceClass/shared-gpu-class", "spec.parameters.maxUsers"):
        "time-slicing is the driver's sharing config (spec.config[].opaque.parameters: {kind: "
        "GpuConfig, sharing: {strategy: TimeSlicing}}), with no user count; the EPP reads "
        "maxUsers: 4 here as each pod's share 1/4, and counts the pods whose claims hold the "
        "same device",
    ("ResourceClaim/exclusive-gpu-claim", "apiVersion"):
        "resource.k8s.io/v1alpha2 was served by Kubernetes 1.26 to 1.30 only; write "
        "resource.k8s.io/v1 (Kubernetes 1.34+)",
    ("ResourceClaim/exclusive-gpu-claim", "spec.resourceClassName"):
        "v1 requests devices by class: spec.devices.requests[{name: gpu, exactly: "
        "{deviceClassName: nvidia-gpu-class}}]",
    ("ResourceClaim/exclusive-gpu-claim", "spec.allocationMode"):
        "gone after v1alpha2: a claim is allocated when the first pod using it is scheduled "
        "(WaitForFirstConsumer is the only behaviour); v1's allocationMode (ExactCount, All) is "
        "per request and counts devices",
    ("ResourceClaim/flexible-gpu-claim", "spec.resourceClassNames"):
        "not a field of any version: a list of classes in order of preference is "
        "spec.devices.requests[{name: gpu, firstAvailable: [{name: option0, deviceClassName: "
        "high-perf-gpu-class}, {name: option1, deviceClassName: nvidia-gpu-class}, {name: "
        "option2, deviceClassName: shared-gpu-class}]}]",
    ("ResourceClaim/admin-gpu-claim", "spec.parameters"):
        "ResourceClaim never had free-form parameters: admin access is "
        "spec.devices.requests[].exactly.adminAccess: true in a namespace labelled "
        'resource.kubernetes.io/admin-access: "true"; where a device may run follows from its '
        "slice's node, and class or attribute preferences are CEL selectors",
    ("ResourceSlice/gpu-node-maintenance", "spec.driverName"):
        "write spec.driver (v1alpha2 had driverName at the top level, without spec)",
    ("ResourceSlice/gpu-node-maintenance", "spec.pool"):
        "required in v1: {name, generation, resourceSliceCount}, with one of spec.nodeName, "
        "spec.nodeSelector, spec.allNodes; without them the EPP matches a claim's device by "
        "driver and device name alone",
    ("ResourceSlice/gpu-node-maintenance", "spec.devices[0].basic"):
        "v1 lists attributes, capacity and taints on the device itself (basic was v1beta1's "
        "wrapper)",
    ("ResourceSlice/gpu-node-maintenance", "spec.devices[0].taints[1].effect"):
        "device taints take NoSchedule, NoExecute, None; the API server rejects "
        "'PreferNoSchedule'. The EPP reads PreferNoSchedule as 'de-prioritise' (degraded); write "
        "None for a taint that only informs, NoSchedule to drain the pods using the device",
    ("Pod/ml-training-pod", "spec.resourceClaims[0].source"):
        "Kubernetes 1.31 moved it up: spec.resourceClaims[{name: gpu-resource, "
        "resourceClaimName: exclusive-gpu-claim}]",
    ("Pod/maintenance-tolerant-gpu-pod", "spec.tolerations[0]"):
        "Pod tolerations do not apply to device taints: tolerate it in the ResourceClaim, "
        "spec.devices.requests[].exactly.tolerations[{key: maintenance, operator: Equal, value: "
        "scheduled, effect: NoSchedule}]",
    ("Pod/maintenance-tolerant-gpu-pod", "spec.tolerations[1]"):
        "Pod tolerations do not apply to device taints: tolerate it in the ResourceClaim, "
        "spec.devices.requests[].exactly.tolerations[{key: thermal-throttling, operator: Equal, "
        "value: detected, effect: PreferNoSchedule}]",
}  # fmt: skip


def test_every_seed_dra_document_is_accepted_with_exact_notes() -> None:
    resources = load_paths([SEED_DRA])
    assert not [p for p in resources.problems if p.severity == "error"]
    found = {(f"{p.kind}/{p.name}", p.path): p.message for p in resources.problems}
    for key, message in EXPECTED.items():
        assert found.get(key) == message, key
    assert {p.reason for p in resources.problems} == {"DraShape"}
    kinds = sorted(str(raw["kind"]) for raw in resources.other)
    assert kinds == ["Namespace", *["ResourceClaim"] * 3, *["ResourceClass"] * 4, "ResourceSlice"]
    assert len(resources.pods) == 5
    # every v1alpha2 claim and slice is told the version to write
    versions = [p for p in resources.problems if p.path == "apiVersion"]
    assert len(versions) == 4


def test_epp_validate_passes_the_seed_dra_section() -> None:
    out = io.StringIO()
    assert validate.run([str(SEED_DRA)], out) == 0
    text = out.getvalue()
    assert "14 resource(s) accepted, 0 error(s), 36 warning(s)" in text
    assert (
        "taints.yaml#1  ResourceSlice/gpu-node-maintenance  spec.devices[0].taints[1].effect: "
        "device taints take NoSchedule, NoExecute, None;" in text
    )
