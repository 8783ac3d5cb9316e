"""The rollout's state machine: what the status becomes after an analysis, a wait or a command.

The state lives in the InferenceModel's `status.rollout` (so a restarted controller, or a new
Lease holder, carries on where the last one stopped); `RolloutStatus` reads and writes that
mapping. `step` moves one rollout forward: start (a new policy revision), record an analysis,
roll back after `failureLimit` failed ones, advance once a step has lasted `stepDuration`, seen
`minRequests` canary requests and passed its latest analysis; reaching the last step (100) is the
promotion. `command` is a person's `promote` or `abort`. Pure: times are given, nothing waits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from epp.api.rollout import RolloutPolicy
from epp.rollout.analysis import Analysis

Phase = Literal["Progressing", "Promoted", "RolledBack", "Aborted"]
FINISHED = ("Promoted", "RolledBack", "Aborted")
Command = Literal["promote", "abort"]


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return (
            dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
        )
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    revision: str
    canary: str
    phase: Phase
    step: int  # index into the policy's steps
    weights: dict[str, int]
    started_at: float
    step_started_at: float
    updated_at: float
    reason: str = ""
    failures: int = 0  # failed analyses in this step
    history: tuple[dict[str, Any], ...] = ()  # one entry per step reached: weight, times, analysis

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "canary": self.canary,
            "phase": self.phase,
            "step": self.step,
            "canaryWeight": self.weights.get(self.canary, 0),
            "weights": dict(self.weights),
            "reason": self.reason,
            "failures": self.failures,
            "startedAt": stamp(self.started_at),
            "stepStartedAt": stamp(self.step_started_at),
            "updatedAt": stamp(self.updated_at),
            "steps": [dict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, raw: object) -> RolloutStatus | None:
        """The status a controller wrote; None when absent or not one of ours."""
        if not isinstance(raw, Mapping):
            return None
        weights = raw.get("weights")
        started, step_started, updated = (
            parse_stamp(raw.get(k)) for k in ("startedAt", "stepStartedAt", "updatedAt")
        )
        phase, step, steps = raw.get("phase"), raw.get("step"), raw.get("steps")
        if (
            not isinstance(weights, Mapping)
            or not all(isinstance(v, int) for v in weights.values())
            or phase not in ("Progressing", *FINISHED)
            or not isinstance(step, int)
            or started is None
            or step_started is None
            or updated is None
        ):
            return None
        failures = raw.get("failures")
        return cls(
            revision=str(raw.get("revision", "")),
            canary=str(raw.get("canary", "")),
            phase=phase,
            step=step,
            weights={str(k): int(v) for k, v in weights.items()},
            started_at=started,
            step_started_at=step_started,
            updated_at=updated,
            reason=str(raw.get("reason", "")),
            failures=failures if isinstance(failures, int) else 0,
            history=tuple(dict(h) for h in steps if isinstance(h, Mapping))
            if isinstance(steps, list)
            else (),
        )


def split_weights(
    canary: str, versions: Sequence[tuple[str, int]], canary_weight: int
) -> dict[str, int]:
    """Percent weights: the canary's, and the rest shared by the stable versions in proportion
    to their current weights (equally when those are all 0), rounded to whole percents."""
    stable = [(v, w) for v, w in versions if v != canary]
    rest = 100 - canary_weight
    total = sum(w for _, w in stable)
    shares = [(v, rest * (w / total if total else 1 / len(stable))) for v, w in stable]
    out = {v: int(share) for v, share in shares}
    left = rest - sum(out.values())
    for v, _ in sorted(shares, key=lambda p: p[1] - int(p[1]), reverse=True)[:left]:
        out[v] += 1
    out[canary] = canary_weight
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """A step's result: the new status (None: nothing changed) and what to tell people."""

    status: RolloutStatus | None
    events: tuple[str, ...] = field(default=())


def start(policy: RolloutPolicy, versions: Sequence[tuple[str, int]], now: float) -> Outcome:
    weight = policy.steps[0]
    status = RolloutStatus(
        revision=policy.revision,
        canary=policy.canary,
        phase="Progressing" if weight < 100 else "Promoted",
        step=0,
        weights=split_weights(policy.canary, versions, weight),
        started_at=now,
        step_started_at=now,
        updated_at=now,
        reason=f"started: canary {policy.canary} at {weight}%",
        history=({"weight": weight, "startedAt": stamp(now)},),
    )
    return Outcome(status, (status.reason,))


def step(
    policy: RolloutPolicy,
    versions: Sequence[tuple[str, int]],
    current: RolloutStatus | None,
    now: float,
    analysis: Analysis | None,
    step_requests: int,
) -> Outcome:
    """One move. `versions`: (version, weight) of every split entry; `analysis`: a new window's
    verdict, or None when none is due; `step_requests`: canary requests finished in this step."""
    if current is None or current.revision != policy.revision:
        return start(policy, versions, now)
    if current.finished:
        return Outcome(None)
    status = current
    events: list[str] = []
    if analysis is not None:
        status = _record(status, analysis, now)
        events.append(f"analysis {analysis.verdict}: {analysis.reason}")
        if analysis.verdict == "Fail":
            status = replace(status, failures=status.failures + 1)
            if status.failures >= policy.failure_limit:
                reason = f"rolled back at {policy.steps[status.step]}%: {analysis.reason}"
                return Outcome(
                    _finish(status, "RolledBack", 0, versions, reason, now), (*events, reason)
                )
    latest = status.history[-1].get("analysis") if status.history else None
    passed = isinstance(latest, Mapping) and latest.get("verdict") == "Pass"
    lasted = now - status.step_started_at >= policy.step_seconds
    if passed and lasted and step_requests >= policy.min_requests:
        nxt = status.step + 1
        weight = policy.steps[nxt]
        history = (*status.history[:-1], {**status.history[-1], "endedAt": stamp(now)})
        status = replace(status, history=history)
        if weight >= 100:
            reason = f"promoted: every step passed ({', '.join(f'{w}%' for w in policy.steps)})"
            return Outcome(
                _finish(status, "Promoted", 100, versions, reason, now), (*events, reason)
            )
        reason = f"step {nxt + 1}/{len(policy.steps)}: canary at {weight}%"
        status = replace(
            status,
            step=nxt,
            weights=split_weights(policy.canary, versions, weight),
            step_started_at=now,
            updated_at=now,
            reason=reason,
            failures=0,
            history=(*status.history, {"weight": weight, "startedAt": stamp(now)}),
        )
        events.append(reason)
    return Outcome(status if status != current else None, tuple(events))


def command(
    policy: RolloutPolicy,
    versions: Sequence[tuple[str, int]],
    current: RolloutStatus | None,
    what: Command,
    now: float,
) -> RolloutStatus:
    """A person's decision: all traffic to the canary (promote) or back to stable (abort)."""
    status = current if current is not None and current.revision == policy.revision else None
    if status is None:
        status = start(policy, versions, now).status
        assert status is not None
    if what == "promote":
        return _finish(status, "Promoted", 100, versions, "promoted by hand", now)
    return _finish(status, "Aborted", 0, versions, "aborted by hand: all traffic to stable", now)


def _record(status: RolloutStatus, analysis: Analysis, now: float) -> RolloutStatus:
    entry = {**status.history[-1], "analysis": {**analysis.as_dict(), "at": stamp(now)}}
    return replace(status, history=(*status.history[:-1], entry), updated_at=now)


def _finish(
    status: RolloutStatus,
    phase: Phase,
    canary_weight: int,
    versions: Sequence[tuple[str, int]],
    reason: str,
    now: float,
) -> RolloutStatus:
    history = status.history
    if history and "endedAt" not in history[-1]:
        history = (*history[:-1], {**history[-1], "endedAt": stamp(now)})
    return replace(
        status,
        phase=phase,
        weights=split_weights(status.canary, versions, canary_weight),
        updated_at=now,
        reason=reason,
        history=history,
    )
