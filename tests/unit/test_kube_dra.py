"""DRA shapes read without a server: device lists, allocations, tolerations, claim references."""

from __future__ import annotations

import pytest

from epp.api.devices import DraIndex, Taint, allocated, claim_names, devices_of, tolerates

NO_SCHEDULE = Taint("maintenance", "scheduled", "NoSchedule")


def test_devices_in_every_slice_shape() -> None:
    v1 = {
        "spec": {
            "driver": "d",
            "pool": {"name": "n1"},
            "devices": [
                {
                    "name": "g0",
                    "attributes": {
                        "d/productName": {"string": "NVIDIA H100"},
                        "d/index": {"int": 0},
                    },
                    "taints": [{"key": "k", "value": "v", "effect": "NoExecute"}],
                }
            ],
        }
    }
    (dev,) = devices_of(v1)
    assert (dev.driver, dev.pool, dev.name) == ("d", "n1", "g0")
    assert dict(dev.attributes) == {"productName": "NVIDIA H100", "index": "0"}
    assert dev.taints == (Taint("k", "v", "NoExecute"),)
    beta = {
        "spec": {
            "driver": "d",
            "nodeName": "n1",
            "devices": [
                {
                    "name": "g0",
                    "basic": {
                        "attributes": {"profile": {"string": "1g.5gb"}},
                        "taints": [{"key": "k", "effect": "NoSchedule"}],
                    },
                }
            ],
        }
    }
    (dev,) = devices_of(beta)
    assert dev.attribute(["profile"]) == "1g.5gb" and dev.taints[0].effect == "NoSchedule"
    alpha2 = {
        "driverName": "d",
        "nodeName": "n1",
        "namedResources": {
            "instances": [{"name": "g0", "attributes": [{"name": "productName", "string": "A100"}]}]
        },
    }
    (dev,) = devices_of(alpha2)
    assert (dev.pool, dev.attribute(["productName"])) == ("n1", "A100")
    assert devices_of({"spec": {"devices": "garbage"}}) == []


def test_allocations_and_claim_references() -> None:
    claim = {
        "spec": {
            "devices": {
                "requests": [
                    {"name": "gpu", "deviceClassName": "c", "tolerations": [{"operator": "Exists"}]}
                ]
            }
        },
        "status": {
            "allocation": {
                "devices": {
                    "results": [{"request": "gpu", "driver": "d", "pool": "p", "device": "g1"}]
                }
            }
        },
    }
    (held,) = allocated(claim)
    assert (held.driver, held.pool, held.device, held.device_class) == ("d", "p", "g1", "c")
    assert held.tolerations == ({"operator": "Exists"},)
    assert allocated({"status": {"allocation": None}}) == []
    pod = {
        "spec": {
            "resourceClaims": [
                {"name": "a", "source": {"resourceClaimName": "old"}},
                {"name": "b", "resourceClaimName": "new"},
                {"name": "c", "resourceClaimTemplateName": "t"},
            ]
        },
        "status": {"resourceClaimStatuses": [{"name": "c", "resourceClaimName": "made"}]},
    }
    assert claim_names(pod) == ["old", "new", "made"]


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"operator": "Exists"}, True),
        ({"key": "maintenance", "operator": "Exists"}, True),
        ({"key": "maintenance", "value": "scheduled"}, True),
        ({"key": "maintenance", "value": "later"}, False),
        ({"key": "maintenance", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_tolerations(toleration: dict[str, str], tolerated: bool) -> None:
    assert tolerates([toleration], NO_SCHEDULE) is tolerated


def test_a_device_two_pods_share_is_split_between_them() -> None:
    slices = [
        {
            "spec": {
                "driver": "d",
                "pool": {"name": "n"},
                "devices": [{"name": "g0", "attributes": {}}],
            }
        }
    ]
    claim = {
        "metadata": {"namespace": "ns", "name": "shared"},
        "status": {
            "allocation": {
                "devices": {
                    "results": [{"request": "r", "driver": "d", "pool": "n", "device": "g0"}]
                }
            }
        },
    }
    pods = [
        {
            "metadata": {"namespace": "ns", "name": n},
            "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimName": "shared"}]},
        }
        for n in ("a", "b")
    ]
    index = DraIndex(slices, [claim], pods=pods)
    facts = index.facts(pods[0], "nvidia-h100-80gb")
    assert facts.capacity == pytest.approx(2.15 / 2)
    assert facts.devices == ("d/n/g0",)
    # a pod whose claim is missing gets nothing from DRA
    lost = {
        "metadata": {"namespace": "ns", "name": "c"},
        "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimName": "gone"}]},
    }
    assert index.facts(lost).capacity is None
