"""Object builders and waiting helpers for the Kubernetes-mode tests (emulator in `apiserver`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

SEED = "gateway.networking.x-k8s.io/v1alpha1"
POOL_LABEL = "inference.networking.x-k8s.io/pool"


def seed_pool(name: str = "llama2-pool", replicas: int = 2, ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": SEED,
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "deployment": {
                "replicas": replicas,
                "template": {
                    "metadata": {"labels": {"app": "vllm"}},
                    "spec": {
                        "nodeSelector": {"accelerator": "nvidia-tesla-v100"},
                        "containers": [
                            {
                                "name": "vllm",
                                "image": "vllm/vllm-openai:latest",
                                "ports": [{"containerPort": 8000}],
                                "env": [
                                    {"name": "MODEL_NAME", "value": "meta-llama/Llama-2-7b-chat-hf"}
                                ],
                                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            }
                        ],
                    },
                },
            }
        },
    }


def seed_model(name: str, pool: str = "llama2-pool", ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": SEED,
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"modelName": "llama2-7b-chat", "poolRef": {"name": pool}},
    }


def pod(
    name: str,
    ip: str,
    ready: bool = True,
    pool: str = "llama2-pool",
    node: str = "node-a",
    ns: str = "default",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "vllm", POOL_LABEL: pool}},
        "spec": {"nodeName": node, "containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def node(name: str, accelerator: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"accelerator": accelerator}},
    }


async def until(check: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Polls `check` every 10 ms until it is truthy; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)
