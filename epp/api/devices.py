"""What Dynamic Resource Allocation says of each pod's GPUs: the device chain, capacity and taints.

A pod names ResourceClaims (`spec.resourceClaims`, or `status.resourceClaimStatuses` for claims
made from templates); a claim's allocation names devices (`status.allocation.devices.results`
in `resource.k8s.io/v1` and its betas, `resourceHandles[].structuredData.results` in
`v1alpha2`); ResourceSlices list those devices with their attributes (`productName`, a MIG
`profile`) and taints; DeviceTaintRules taint the devices they select. `DraIndex.facts(pod)`
follows pod → claim → allocation → device → taints and returns the pod's capacity prior and
health class (`epp.hardware`). The seed's `v1alpha2` documents are read too: devices listed
under `spec.devices` with taints beside `basic`, and a ResourceClass's free-form `parameters`
(`migProfile`, `maxUsers`) for claims that name it. Pure functions over JSON: Kubernetes mode
(`epp.kube.source`) feeds it the reflectors' objects, file mode (`parse.parse_documents`) the
documents of the manifests folder; `with_gpu_facts` applies it to parsed pods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epp.hardware import HEALTH_OK, capacity_of, taint_health, worst

JsonObj = dict[str, Any]
PRODUCT_ATTRIBUTES = ("productName", "product", "model")
MIG_ATTRIBUTES = ("profile", "migProfile")
TIME_SLICED_LABEL = "nvidia.com/gpu.replicas"  # GPU feature discovery, time-slicing on
MIG_RESOURCE = "nvidia.com/mig-"  # the device plugin's mixed strategy: nvidia.com/mig-1g.5gb


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class Device:
    driver: str
    pool: str  # "" where the shape names none (the seed's slices)
    name: str
    attributes: tuple[tuple[str, str], ...]
    taints: tuple[Taint, ...]

    def attribute(self, names: Iterable[str]) -> str | None:
        found = dict(self.attributes)
        return next((found[n] for n in names if n in found), None)


@dataclass(frozen=True, slots=True)
class Allocated:
    """One device a claim holds, with what its request tolerates and which class it asked."""

    driver: str
    pool: str
    device: str
    device_class: str | None
    tolerations: tuple[JsonObj, ...]


@dataclass(frozen=True, slots=True)
class GpuFacts:
    capacity: float | None  # None: DRA says nothing of this pod's hardware
    health: str
    devices: tuple[str, ...]  # "driver/pool/device" of each device found


def _spec(obj: JsonObj) -> JsonObj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _dict(value: object) -> JsonObj:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _attribute_value(value: object) -> str | None:
    if isinstance(value, dict):
        for kind in ("string", "version", "int", "bool", "quantity", "value"):
            if kind in value:
                return str(value[kind])
        return None
    return None if value is None else str(value)


def _attributes(raw: object) -> tuple[tuple[str, str], ...]:
    """`{"gpu.nvidia.com/productName": {"string": ...}}` (v1, betas) or `[{"name": ...,
    "string": ...}]` (v1alpha2); the domain prefix is dropped."""
    pairs: list[tuple[str, str]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    else:
        items = [(a.get("name"), a) for a in _list(raw) if isinstance(a, dict)]
    for name, value in items:
        text = _attribute_value(value)
        if name and text is not None:
            pairs.append((str(name).rsplit("/", 1)[-1], text))
    return tuple(pairs)


def _taints(raw: object) -> tuple[Taint, ...]:
    return tuple(
        Taint(str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
        for t in _list(raw)
        if isinstance(t, dict)
    )


def devices_of(slice_obj: JsonObj) -> list[Device]:
    """The devices a ResourceSlice lists, in any served shape."""
    spec = _spec(slice_obj)
    driver = str(spec.get("driver") or spec.get("driverName") or slice_obj.get("driverName") or "")
    pool_field = spec.get("pool")
    pool = str(pool_field.get("name", "")) if isinstance(pool_field, dict) else ""
    pool = pool or str(spec.get("nodeName") or slice_obj.get("nodeName") or "")
    out: list[Device] = []
    for dev in _list(spec.get("devices")):
        if not isinstance(dev, dict) or not dev.get("name"):
            continue
        basic = _dict(dev.get("basic"))
        attrs = _attributes(dev.get("attributes") or basic.get("attributes"))
        taints = _taints(dev.get("taints")) + _taints(basic.get("taints"))
        out.append(Device(driver, pool, str(dev["name"]), attrs, taints))
    named = slice_obj.get("namedResources") or spec.get("namedResources")  # real v1alpha2
    if isinstance(named, dict):
        for inst in _list(named.get("instances")):
            if isinstance(inst, dict) and inst.get("name"):
                attrs = _attributes(inst.get("attributes"))
                out.append(Device(driver, pool, str(inst["name"]), attrs, ()))
    return out


def allocated(claim: JsonObj) -> list[Allocated]:
    """The devices a ResourceClaim's allocation holds, in any served shape."""
    spec = _spec(claim)
    requests: dict[str, JsonObj] = {}
    devices_spec = _dict(spec.get("devices"))
    for req in _list(devices_spec.get("requests")):
        if isinstance(req, dict):
            requests[str(req.get("name", ""))] = _dict(req.get("exactly")) or req
    status = _dict(claim.get("status"))
    allocation = _dict(status.get("allocation"))
    out: list[Allocated] = []
    devices = _dict(allocation.get("devices"))
    for res in _list(devices.get("results")):
        if not isinstance(res, dict):
            continue
        req = requests.get(str(res.get("request", "")).split("/", 1)[0], {})
        tolerations = tuple(
            t for t in _list(req.get("tolerations")) + _list(res.get("tolerations"))
            if isinstance(t, dict)
        )  # fmt: skip
        device_class = req.get("deviceClassName")
        out.append(
            Allocated(
                str(res.get("driver", "")),
                str(res.get("pool", "")),
                str(res.get("device", "")),
                str(device_class) if device_class else None,
                tolerations,
            )
        )
    for handle in _list(allocation.get("resourceHandles")):  # v1alpha2 structured parameters
        if not isinstance(handle, dict):
            continue
        data = _dict(handle.get("structuredData"))
        for res in _list(data.get("results")):
            named = res.get("namedResources") if isinstance(res, dict) else None
            if isinstance(named, dict) and named.get("name"):
                driver = str(handle.get("driverName", ""))
                pool = str(data.get("nodeName", ""))
                cls = spec.get("resourceClassName")
                out.append(Allocated(driver, pool, str(named["name"]), cls and str(cls), ()))
    return out


def tolerates(tolerations: Iterable[JsonObj], taint: Taint) -> bool:
    """The DRA toleration rule: the effect if given; `Exists` with no key tolerates every
    taint, with a key every value of it; `Equal` (the default) needs key and value."""
    for t in tolerations:
        effect = t.get("effect")
        if effect and effect != taint.effect:
            continue
        key = str(t.get("key") or "")
        if (t.get("operator") or "Equal") == "Exists":
            if not key or key == taint.key:
                return True
        elif key == taint.key and str(t.get("value") or "") == taint.value:
            return True
    return False


def claim_names(pod: JsonObj) -> list[str]:
    """The ResourceClaims a pod uses: named directly (`source.resourceClaimName` before
    Kubernetes 1.31, `resourceClaimName` after) or made from a template (pod status)."""
    names: list[str] = []
    spec = _spec(pod)
    for ref in _list(spec.get("resourceClaims")):
        if not isinstance(ref, dict):
            continue
        source = _dict(ref.get("source")) or ref
        if source.get("resourceClaimName"):
            names.append(str(source["resourceClaimName"]))
    status = _dict(pod.get("status"))
    names.extend(
        str(st["resourceClaimName"])
        for st in _list(status.get("resourceClaimStatuses"))
        if isinstance(st, dict) and st.get("resourceClaimName")
    )
    return names


def _meta(obj: JsonObj) -> tuple[str, str]:
    meta = _dict(obj.get("metadata"))
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rule_selects(rule: JsonObj, dev: Device, held: Allocated | None) -> bool:
    spec = _spec(rule)
    sel = spec.get("deviceSelector")
    if not isinstance(sel, dict):
        return False  # without a selector a rule matches no device
    if sel.get("selectors"):
        return False  # CEL selectors are not evaluated here: such a rule is not applied
    checks = (("driver", dev.driver), ("pool", dev.pool), ("device", dev.name))
    if any(sel.get(field) and sel[field] != have for field, have in checks):
        return False
    wanted_class = sel.get("deviceClassName")
    return not wanted_class or (held is not None and held.device_class == wanted_class)


def _rule_taint(rule: JsonObj) -> Taint | None:
    found = _taints([_spec(rule).get("taint")])
    return found[0] if found else None


class DraIndex:
    """The DRA objects of one moment, indexed to answer `facts(pod)` per pod."""

    def __init__(
        self,
        slices: Iterable[JsonObj],
        claims: Iterable[JsonObj],
        rules: Iterable[JsonObj] = (),
        classes: Iterable[JsonObj] = (),
        pods: Iterable[JsonObj] = (),
    ) -> None:
        self._exact: dict[tuple[str, str, str], Device] = {}
        self._by_name: dict[tuple[str, str], list[Device]] = {}
        for s in slices:
            for dev in devices_of(s):
                self._exact[(dev.driver, dev.pool, dev.name)] = dev
                self._by_name.setdefault((dev.driver, dev.name), []).append(dev)
        self._claims = {_meta(c): c for c in claims}
        self._rules = [(r, t) for r in rules if (t := _rule_taint(r)) is not None]
        self._class_params: dict[str, JsonObj] = {}
        for cls in classes:
            params = _spec(cls).get("parameters")
            if isinstance(params, dict):
                self._class_params[_meta(cls)[1]] = params
        # how many pods use each device: a time-sliced GPU is shared between them
        self._users: Counter[tuple[str, str, str]] = Counter()
        for pod in pods:
            for used in {self._key(d) for d, _ in self._held(pod)}:
                self._users[used] += 1

    @staticmethod
    def _key(dev: Device) -> tuple[str, str, str]:
        return (dev.driver, dev.pool, dev.name)

    def _device(self, held: Allocated) -> Device | None:
        dev = self._exact.get((held.driver, held.pool, held.device))
        if dev is None:
            same = self._by_name.get((held.driver, held.device), [])
            dev = same[0] if len(same) == 1 else None
        return dev

    def _pod_claims(self, pod: JsonObj) -> list[JsonObj]:
        namespace = _meta(pod)[0]
        found = (self._claims.get((namespace, n)) for n in claim_names(pod))
        return [c for c in found if c is not None]

    def _held(self, pod: JsonObj) -> list[tuple[Device, Allocated]]:
        out = []
        for claim in self._pod_claims(pod):
            for held in allocated(claim):
                dev = self._device(held)
                if dev is not None:
                    out.append((dev, held))
        return out

    def facts(self, pod: JsonObj, accelerator: str | None = None) -> GpuFacts:
        """The pod's capacity prior and taint health; `accelerator`: its node's label, for
        devices that name no product."""
        health = HEALTH_OK
        capacity = 0.0
        names: list[str] = []
        for dev, held in self._held(pod):
            names.append(f"{dev.driver}/{dev.pool}/{dev.name}")
            product = dev.attribute(PRODUCT_ATTRIBUTES) or accelerator
            users = self._users.get(self._key(dev), 1)
            capacity += capacity_of(product, dev.attribute(MIG_ATTRIBUTES), users)
            taints = list(dev.taints)
            taints += [t for rule, t in self._rules if _rule_selects(rule, dev, held)]
            for taint in taints:
                if not tolerates(held.tolerations, taint):
                    health = worst(health, taint_health(taint.effect))
        if names:
            return GpuFacts(capacity, health, tuple(names))
        params = self._seed_class_params(pod)
        if params is not None:  # the seed: a class's free-form parameters, nothing allocated
            users = _int(params.get("maxUsers"), 1)
            mig = params.get("migProfile")
            prior = capacity_of(accelerator, str(mig) if mig else None, users)
            return GpuFacts(prior, HEALTH_OK, ())
        return GpuFacts(None, HEALTH_OK, ())

    def _seed_class_params(self, pod: JsonObj) -> Mapping[str, object] | None:
        for claim in self._pod_claims(pod):
            name = _spec(claim).get("resourceClassName")
            if isinstance(name, str) and name in self._class_params:
                return self._class_params[name]
        return None


def _int(value: object, default: int) -> int:
    try:
        return max(1, int(str(value)))
    except ValueError:
        return default


DRA_KINDS = frozenset({"ResourceSlice", "ResourceClaim", "ResourceClass", "DeviceTaintRule"})


def with_gpu_facts(
    pods: Iterable[tuple[str, str | None, JsonObj]], dra_docs: Iterable[JsonObj]
) -> dict[str, GpuFacts]:
    """(pod key, its accelerator, raw pod) and the DRA documents beside them → the facts of
    each pod DRA or the device plugin says something of (file mode: no node labels)."""
    by_kind: dict[str, list[JsonObj]] = {}
    for doc in dra_docs:
        by_kind.setdefault(str(doc.get("kind")), []).append(doc)
    pairs = list(pods)
    index = DraIndex(
        by_kind.get("ResourceSlice", []),
        by_kind.get("ResourceClaim", []),
        by_kind.get("DeviceTaintRule", []),
        by_kind.get("ResourceClass", []),
        [raw for _, _, raw in pairs],
    )
    out: dict[str, GpuFacts] = {}
    for key, accelerator, raw in pairs:
        facts = index.facts(raw, accelerator)
        if facts.capacity is None:
            plugin = device_plugin_capacity(raw, accelerator, {})
            facts = GpuFacts(plugin, facts.health, facts.devices)
        if facts.capacity is not None or facts.health != HEALTH_OK:
            out[key] = facts
    return out


def device_plugin_capacity(
    pod: JsonObj, accelerator: str | None, node_labels: Mapping[str, str]
) -> float | None:
    """The prior from the device plugin's view: `nvidia.com/gpu: N` GPUs, a MIG slice from the
    mixed strategy's `nvidia.com/mig-1g.5gb`, time-slicing from the node's
    `nvidia.com/gpu.replicas` label; None when the pod asks for no NVIDIA resource."""
    gpus, profile = 0, None
    for box in _list(_spec(pod).get("containers")):
        resources = box.get("resources") if isinstance(box, dict) else None
        limits = resources.get("limits") if isinstance(resources, dict) else None
        if not isinstance(limits, dict):
            continue
        for name, count in limits.items():
            if name == "nvidia.com/gpu":
                gpus += _int(count, 1)
            elif str(name).startswith(MIG_RESOURCE):
                profile = str(name)[len(MIG_RESOURCE) :]
    if not gpus and profile is None:
        return None
    users = _int(node_labels.get(TIME_SLICED_LABEL), 1)
    return capacity_of(accelerator, profile, users, gpus or 1)
