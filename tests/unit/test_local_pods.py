"""The local stack's pod plan: a `--max-num-seqs` in the manifests is the simulated batch size,
and the Pod manifests written for new pods declare it, so the EPP sees what vLLM would run."""

from __future__ import annotations

import copy
from typing import Any

from epp.api.parse import parse_documents
from epp.datastore import endpoints_of
from epp.local.pods import plan_pods
from tests.unit.test_api_broken import A2_POOL, SEED_POOL

VLLM_DEFAULT = 256  # vLLM's own max_num_seqs when none is given


def parse(*docs: dict[str, Any]) -> Any:
    return parse_documents((f"t#{i + 1}", d) for i, d in enumerate(docs))


def test_a_seed_template_batch_size_runs_the_pods_and_is_declared() -> None:
    pool = copy.deepcopy(SEED_POOL)
    container = pool["spec"]["deployment"]["template"]["spec"]["containers"][0]
    container["args"] = ["--model", "m", "--max-num-seqs", "16"]
    resources = parse(pool)
    assert resources.pools[0].deployment.max_num_seqs == 16
    specs, manifests = plan_pods(resources)
    assert [s.max_num_seqs for s in specs] == [16, 16]
    declared = parse(pool, *manifests)  # what the EPP reads in the local stack
    assert [e.max_num_seqs for e in endpoints_of(declared.pools[0], declared.pods)] == [16, 16]


def test_without_one_the_pods_run_the_default_and_declare_nothing() -> None:
    specs, manifests = plan_pods(parse(SEED_POOL))
    assert {s.max_num_seqs for s in specs} == {VLLM_DEFAULT}
    assert all("args" not in m["spec"]["containers"][0] for m in manifests)


def test_a_declared_pod_runs_with_its_own_batch_size() -> None:
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "b"}},
            "spec": {"containers": [{"name": "vllm", "args": args}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for name, ip, args in (
            ("b-0", "127.0.0.9", ["--max-num-seqs=4"]),
            ("b-1", "127.0.0.10", []),
        )
    ]
    specs, manifests = plan_pods(parse(A2_POOL, *pods))
    assert {s.name: s.max_num_seqs for s in specs} == {"b-0": 4, "b-1": VLLM_DEFAULT}
    assert manifests == []  # the pods were declared already
