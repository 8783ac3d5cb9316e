"""`epp validate PATH...`: check manifest files or folders the way the gateway will read them.

Loads the paths with `epp.api.load` (schema checks per resource, then the cross-resource checks),
prints a table of the resources that were accepted and every problem with its field path, and
returns the exit status: 1 when any error was found, 0 otherwise (warnings do not fail). Wired
into the command line by `epp.cli`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from epp.api.load import load_paths
from epp.api.model import ModelRoute, PodInfo, Pool, Problem, ResourceSet


def run(paths: list[str], out: TextIO) -> int:
    resources = load_paths(paths)
    rows = _rows(resources)
    _table(("KIND", "NAME", "API VERSION", "DETAILS"), rows, out)
    errors = [p for p in resources.problems if p.severity == "error"]
    warnings = [p for p in resources.problems if p.severity == "warning"]
    if resources.problems:
        out.write("\nPROBLEMS\n")
        for problem in sorted(resources.problems, key=lambda p: (p.severity != "error", p.source)):
            out.write(_problem_line(problem) + "\n")
    out.write(
        f"\n{len(rows)} resource(s) accepted, {len(errors)} error(s), {len(warnings)} warning(s)\n"
    )
    return 1 if errors else 0


def _problem_line(problem: Problem) -> str:
    what = f"{problem.kind}/{problem.name}" if problem.kind else "-"
    reason = f" [{problem.reason}]" if problem.reason else ""
    return (
        f"{problem.severity:<8}{problem.source}  {what}  {problem.path}: {problem.message}{reason}"
    )


def _rows(resources: ResourceSet) -> list[tuple[str, str, str, str]]:
    rows = [("InferencePool", p.key, p.api_version, _pool_details(p)) for p in resources.pools]
    rows += [("InferenceModel", m.key, m.api_version, _model_details(m)) for m in resources.models]
    rows += [("Pod", p.key, "v1", _pod_details(p)) for p in resources.pods]
    for raw in resources.other:
        meta = raw.get("metadata")
        name = meta.get("name", "") if isinstance(meta, dict) else ""
        namespace = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
        rows.append((str(raw.get("kind")), f"{namespace}/{name}", str(raw.get("apiVersion")), ""))
    return rows


def _pool_details(pool: Pool) -> str:
    parts = [
        "selector " + ",".join(f"{k}={v}" for k, v in pool.selector),
        "ports " + ",".join(str(p) for p in pool.target_ports),
        pool.failure_mode,
    ]
    if pool.deployment is not None:
        parts.append(f"replicas {pool.deployment.replicas}")
        if pool.deployment.served_model:
            parts.append(f"serves {pool.deployment.served_model}")
    if pool.extension_ref is not None:
        parts.append(f"picker {pool.extension_ref.name}:{pool.extension_ref.port}")
    return "; ".join(parts)


def _model_details(model: ModelRoute) -> str:
    parts = [f"model {model.model_name} -> {model.pool}", f"priority {model.priority}"]
    parts.append(model.strategy)
    parts.extend(f"{c.name}<={c.target:g}%" for c in model.ceilings)
    for split in model.splits:
        target = split.pool or split.model or "self"
        label = f"{split.version} " if split.version else ""
        parts.append(f"split {label}{split.weight} -> {target}")
    if (r := model.rollout) is not None:
        steps = "→".join(f"{w}%" for w in r.steps)
        parts.append(f"rollout of {r.canary}: {steps}, analysis every {r.interval_seconds:g}s")
    return "; ".join(parts)


def _pod_details(pod: PodInfo) -> str:
    state = "ready" if pod.ready and not pod.deleting else "not ready"
    return f"ip {pod.ip or '-'}; {state}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    if not rows:
        out.write("no resources accepted\n")
        return
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
