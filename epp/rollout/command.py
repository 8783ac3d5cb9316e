"""`epp rollout status|promote|abort MODEL`: a person in the loop of a running rollout.

`status` prints where the rollout stands (phase, weights, each step with its latest analysis);
`promote` sends all traffic to the canary and `abort` all of it back to stable, by writing the
weights and a finished status through the same store the controller uses (the manifests file
`epp up` serves, or the API server), so the controller sees a finished rollout and stops.
The model is named by its resource name or by the model name clients ask for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

from epp.rollout.controller import RolloutStore, Tracked
from epp.rollout.machine import RolloutStatus, command

Action = Literal["status", "promote", "abort"]


class RolloutNotFound(LookupError):
    pass


async def find(store: RolloutStore, name: str) -> Tracked:
    tracked = await store.rollouts()
    for t in tracked:
        if name in (t.model.name, t.model.key, t.model.model_name):
            return t
    known = ", ".join(t.model.key for t in tracked) or "none"
    raise RolloutNotFound(f"no InferenceModel {name!r} with a rollout policy (rollouts: {known})")


async def run(
    store: RolloutStore,
    action: Action,
    name: str,
    out: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    try:
        tracked = await find(store, name)
    except RolloutNotFound as exc:
        out.write(f"epp rollout: {exc}\n")
        return 1
    if action == "status":
        out.write(render(tracked))
        return 0
    current = RolloutStatus.from_dict(tracked.status)
    status = command(tracked.policy, tracked.versions, current, action, clock())
    if not await store.write(tracked, status.as_dict()):
        out.write("epp rollout: the status changed while writing; try again\n")
        return 1
    out.write(f"{tracked.model.key}: {status.phase}: {status.reason}\n")
    out.write("weights: " + _weights(status.weights) + "\n")
    return 0


def _weights(weights: dict[str, int]) -> str:
    return ", ".join(f"{v} {w}%" for v, w in weights.items())


def render(tracked: Tracked) -> str:
    policy = tracked.policy
    status = RolloutStatus.from_dict(tracked.status)
    lines = [
        f"model {tracked.model.key} (clients ask for {tracked.model.model_name})",
        f"canary {policy.canary}; steps {' → '.join(f'{s}%' for s in policy.steps)}; "
        f"analysis every {policy.interval_seconds:g}s",
    ]
    if status is None or status.revision != policy.revision:
        lines.append("phase: not started (the controller starts it on its next pass)")
        return "\n".join(lines) + "\n"
    lines += [
        f"phase: {status.phase}  step {status.step + 1}/{len(policy.steps)}",
        f"weights: {_weights(status.weights)}",
        f"reason: {status.reason}",
        "STEP  WEIGHT  VERDICT       CANARY (n, err, p-TTFT, p-TPOT)   STABLE",
    ]
    for i, entry in enumerate(status.history):
        analysis = entry.get("analysis")
        verdict = analysis.get("verdict", "-") if isinstance(analysis, dict) else "-"
        canary = _figures(analysis.get("canary") if isinstance(analysis, dict) else None)
        stable = _figures(analysis.get("stable") if isinstance(analysis, dict) else None)
        lines.append(
            f"{i + 1:<5} {entry.get('weight', '?')!s:>5}%  {verdict:<13} {canary:<33} {stable}"
        )
    return "\n".join(lines) + "\n"


def _figures(raw: Any) -> str:
    if not isinstance(raw, dict):
        return "-"

    def ms(key: str) -> str:
        value = raw.get(key)
        return f"{value * 1000:.1f}ms" if isinstance(value, int | float) else "-"

    rate = raw.get("errorRate", 0.0)
    return f"{raw.get('requests', 0)}, {rate:.1%}, {ms('ttftSeconds')}, {ms('tpotSeconds')}"
