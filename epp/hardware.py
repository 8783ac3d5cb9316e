"""What the GPU layer says of an endpoint before any traffic: a capacity prior and a health class.

Capacity is relative to one whole A100-40GB (1.0): the accelerator model's memory bandwidth (the
bound of LLM decode) times the share of it the pod holds — a MIG slice (`1g.5gb` is 1/7 of an
A100 or H100, 1/4 of an A30) or a time-sliced share (1/`maxUsers`). An unknown model counts as
the reference. Health classes order the GPU's state: `ok`, `degraded` (thermal throttling, a
`PreferNoSchedule` taint: de-prioritised) and `drain` (maintenance, `NoSchedule`/`NoExecute`, an
XID error: no new requests, in-flight ones finish). The edges that read nodes, DRA objects and
DCGM (`epp.api.devices`, `epp.gpu`) produce these values; the datastore and the snapshot read them.
"""

from __future__ import annotations

import re

HEALTH_OK = "ok"
HEALTH_DEGRADED = "degraded"
HEALTH_DRAIN = "drain"
_RANK = {HEALTH_OK: 0, HEALTH_DEGRADED: 1, HEALTH_DRAIN: 2}

# a degraded GPU's pace is taken as at least this many times its healthy prior (thermal
# throttling roughly halves the clocks) until measured pace says more
DEGRADED_SLOWDOWN = 2.0
# seconds per output token of one reference GPU, used only to put priors in seconds while no
# pace has been measured anywhere (a 7B model on an A100 with a moderate batch)
PRIOR_TPOT = 0.03

# (name fragment, relative decode speed: memory bandwidth over the A100-40GB's 1,555 GB/s);
# first match wins, so longer names come before their prefixes
_MODELS: tuple[tuple[str, float], ...] = (
    ("gb200", 5.1),
    ("b200", 5.1),
    ("gh200", 2.6),
    ("h200", 3.1),
    ("h100-pcie", 1.3),
    ("h100pcie", 1.3),
    ("h100", 2.15),
    ("h800", 2.15),
    ("mi300", 3.4),
    ("a100-80", 1.31),
    ("a100-sxm4-80", 1.31),
    ("a100-pcie-80", 1.24),
    ("a100", 1.0),
    ("a800", 1.0),
    ("l40s", 0.56),
    ("l40", 0.56),
    ("a10g", 0.39),
    ("a10", 0.39),
    ("a30", 0.6),
    ("l4", 0.19),
    ("t4", 0.21),
    ("v100", 0.58),
    ("p100", 0.47),
    ("p4", 0.13),
    ("k80", 0.31),
)
_MIG = re.compile(r"(?<![0-9a-z])(\d)g\.\d+gb", re.IGNORECASE)
# compute slices of a whole GPU by model: A30 has 4, the A100/H100/H200 family 7
_MIG_SLICES = (("a30", 4),)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "-")


def model_speed(accelerator: str | None) -> float:
    """Relative decode speed of an accelerator model named by a node label, a GPU feature
    discovery product name or a DRA device attribute; 1.0 when unknown."""
    if not accelerator:
        return 1.0
    name = _normal(accelerator)
    for fragment, speed in _MODELS:
        if fragment in name:
            return speed
    return 1.0


def mig_fraction(profile: str | None, accelerator: str | None = None) -> float:
    """The share of its GPU a MIG profile holds (`1g.5gb` → 1/7); 1.0 when it names none.
    Product names with a profile (`NVIDIA-A100-SXM4-40GB-MIG-1g.5gb`) are read too."""
    if not profile:
        return 1.0
    found = _MIG.search(profile)
    if found is None:
        return 1.0
    whole = _normal(accelerator or profile)
    slices = next((n for fragment, n in _MIG_SLICES if fragment in whole), 7)
    return min(1.0, int(found.group(1)) / slices)


def capacity_of(
    accelerator: str | None, mig_profile: str | None = None, users: int = 1, gpus: int = 1
) -> float:
    """An endpoint's capacity prior: model speed x MIG share (the profile, or one named in the
    product) / time-sliced users x GPUs the pod holds."""
    profile = mig_profile or (accelerator if accelerator and _MIG.search(accelerator) else None)
    share = mig_fraction(profile, accelerator) / max(1, users)
    return model_speed(accelerator) * share * max(1, gpus)


def worst(a: str, b: str) -> str:
    """The more severe of two health classes (unknown names count as ok)."""
    return a if _RANK.get(a, 0) >= _RANK.get(b, 0) else b


def taint_health(effect: str | None) -> str:
    """A device or node taint's effect as a health class: NoSchedule/NoExecute drain,
    PreferNoSchedule degrades, None and unknown effects are informational (the API's rule)."""
    if effect in ("NoSchedule", "NoExecute"):
        return HEALTH_DRAIN
    if effect == "PreferNoSchedule":
        return HEALTH_DEGRADED
    return HEALTH_OK
