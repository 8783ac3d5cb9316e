"""Editing a running `epp up`'s manifests: a new canary weight takes effect within seconds (no
restart), and a syntax error in the same file leaves the previous routing in force."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from epp.local.stack import REPO, LocalStack
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def versions(stack: LocalStack, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=stack.url, timeout=20) as client:
        for _ in range(n):
            r = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"x-model-name": "llama2-7b-chat"}
            )
            assert r.status_code == 200, r.text
            seen[r.headers["x-inference-version"]] += 1
    return seen


@pytest.mark.parametrize("control_plane", [True, False])
async def test_weights_change_live_and_a_broken_edit_keeps_the_last_good_state(
    tmp_path: Path, control_plane: bool
) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(REPO / "examples" / "canary", folder)
    manifest = folder / "inference.yaml"
    original = manifest.read_text()
    assert "weight: 90" in original and "weight: 10" in original
    config = stack_config(tmp_path / "run", (folder,), control_plane=control_plane,
                          first_pod_ip=130 if control_plane else 140)  # fmt: skip
    async with LocalStack(config) as stack:
        before = await versions(stack, 100)
        assert 2 <= before["canary"] <= 25, before  # ~10 %
        manifest.write_text(
            original.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 100")
        )
        started = time.monotonic()
        while (await versions(stack, 5))["canary"] < 5:
            assert time.monotonic() - started < 10, "the new weights did not apply"
            await asyncio.sleep(0.2)
        print(f"weights applied after {time.monotonic() - started:.1f}s")
        assert (await versions(stack, 40)) == Counter({"canary": 40})
        manifest.write_text(manifest.read_text() + "\n  broken: [unclosed\n")
        await asyncio.sleep(2.0)  # several reload periods
        assert (await versions(stack, 40)) == Counter({"canary": 40})
        assert stack.epp is not None
        log = stack.epp.log_tail(50)
        assert "YAML syntax error" in log and "keeping the last good version" in log
