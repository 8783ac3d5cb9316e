"""Locust users for an OpenAI-compatible gateway (`epp up`, a cluster, or any router).

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s \
        --host http://127.0.0.1:8080

Streaming users report three extra rows beside the request itself: `TTFT` (first body byte),
`ITL` (mean inter-token gap of the request) and the request's end-to-end time. Users: streaming
chat, non-streaming chat, multi-turn conversations over shared long system prompts, canary
observation (responses counted per served version or pool), and, when configured, priorities
(critical vs sheddable models) and LoRA adapters. Environment (all optional): LOADTEST_MODEL
(llama2-7b-chat), LOADTEST_WORKLOAD (sharegpt | shared-prefix), LOADTEST_SEED (1),
LOADTEST_CRITICAL_MODEL / LOADTEST_SHEDDABLE_MODEL, LOADTEST_LORA_MODELS (comma-separated),
LOADTEST_VERSION_HEADER (x-inference-version). Workloads come from loadtest/workloads.py.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from locust import HttpUser, between, events
from locust.clients import ResponseContextManager
from locust.env import Environment

from loadtest.workloads import ChatRequest, Conversation, system_prompts, workload

MODEL = os.environ.get("LOADTEST_MODEL", "llama2-7b-chat")
WORKLOAD = os.environ.get("LOADTEST_WORKLOAD", "sharegpt")
SEED = int(os.environ.get("LOADTEST_SEED", "1"))
CRITICAL_MODEL = os.environ.get("LOADTEST_CRITICAL_MODEL", "")
SHEDDABLE_MODEL = os.environ.get("LOADTEST_SHEDDABLE_MODEL", "")
LORA_MODELS = [m for m in os.environ.get("LOADTEST_LORA_MODELS", "").split(",") if m]
VERSION_HEADER = os.environ.get("LOADTEST_VERSION_HEADER", "x-inference-version")
PATH = "/v1/chat/completions"
SERVED: Counter[str] = Counter()  # responses per served version / pool / pod, printed at the end


def _fire(env: Environment, kind: str, name: str, ms: float) -> None:
    env.events.request.fire(  # type: ignore[no-untyped-call]
        request_type=kind,
        name=name,
        response_time=ms,
        response_length=0,
        exception=None,
        context={},
    )


def _set_time(resp: ResponseContextManager, ms: float) -> None:
    meta = resp.request_meta
    if isinstance(meta, dict):
        meta["response_time"] = ms


def _pool_of(pod: str) -> str:
    head, _, tail = pod.rpartition("-")
    return head if tail.isdigit() else pod


class _ChatBase(HttpUser):
    abstract = True
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.requests: Iterator[ChatRequest] = workload(WORKLOAD, SEED + random.randrange(1 << 20))

    def stream_chat(self, request: ChatRequest, model: str, name: str) -> tuple[int, str, str]:
        """One streaming request; reports TTFT, ITL and e2e. Returns (status, text, pod)."""
        body = orjson.dumps(request.body(model, stream=True))
        headers = {"content-type": "application/json", "x-model-name": model}
        start = time.perf_counter()
        with self.client.post(
            PATH, data=body, headers=headers, name=name, stream=True, catch_response=True
        ) as resp:
            ttft = 0.0
            tail = b""
            parts: list[str] = []
            for chunk in resp.iter_content(chunk_size=None):
                if not ttft:
                    ttft = time.perf_counter() - start
                tail = (tail + chunk)[-4096:]
                if len(parts) < 64:
                    parts.append(chunk.decode(errors="replace"))
            e2e = time.perf_counter() - start
            _set_time(resp, e2e * 1000)
            pod = resp.headers.get("x-inference-pod", "")
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return resp.status_code, "", pod
            tokens = _completion_tokens(tail)
            if tokens is None:
                resp.failure("stream ended without usage")
                return resp.status_code, "", pod
            _fire(self.environment, "TTFT", name, ttft * 1000)
            if tokens > 1:
                _fire(self.environment, "ITL", name, (e2e - ttft) * 1000 / (tokens - 1))
            SERVED[f"pod {pod or '?'}"] += 1
            return 200, _content_of("".join(parts)), pod


def _completion_tokens(tail: bytes) -> int | None:
    for event in reversed(tail.split(b"\n\n")):
        line = event.strip()
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage: Any = orjson.loads(line[6:]).get("usage")
            except orjson.JSONDecodeError:
                continue
            if isinstance(usage, dict):
                return int(usage.get("completion_tokens") or 0)
    return None


def _content_of(sse: str) -> str:
    """The assistant text of the first chunks (enough to carry a conversation forward)."""
    out = []
    for line in sse.split("\n"):
        if line.startswith("data: {"):
            try:
                choices = orjson.loads(line[6:]).get("choices") or []
            except orjson.JSONDecodeError:
                continue
            out += [str(c.get("delta", {}).get("content") or "") for c in choices]
    return "".join(out)[:2000]


class StreamingChatUser(_ChatBase):
    weight = 4

    def on_start(self) -> None:
        super().on_start()
        self.tasks = [type(self).chat]

    def chat(self) -> None:
        self.stream_chat(next(self.requests), MODEL, "chat stream")


class NonStreamingChatUser(_ChatBase):
    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.tasks = [type(self).chat]

    def chat(self) -> None:
        body = orjson.dumps(next(self.requests).body(MODEL, stream=False))
        headers = {"content-type": "application/json", "x-model-name": MODEL}
        with self.client.post(
            PATH, data=body, headers=headers, name="chat", catch_response=True
        ) as r:
            if r.status_code == 200 and "usage" not in r.text:
                r.failure("no usage in the response")


class MultiTurnUser(_ChatBase):
    """Conversations of up to 4 turns over one of 4 long system prompts shared by all users."""

    weight = 2

    def on_start(self) -> None:
        super().on_start()
        self.rng = random.Random(SEED + random.randrange(1 << 20))
        self.prompts = system_prompts(SEED, 4, 1500)
        self.conversation = self._new()
        self.tasks = [type(self).turn]

    def _new(self) -> Conversation:
        cid = f"conv-{self.rng.randrange(1 << 30)}"
        return Conversation(self.rng, self.rng.choice(self.prompts), cid)

    def turn(self) -> None:
        request = self.conversation.next_request()
        status, text, _ = self.stream_chat(
            request, MODEL, f"multi-turn {self.conversation.turns + 1}"
        )
        if status != 200:
            self.conversation = self._new()
            return
        self.conversation.answered(text)
        if self.conversation.done:
            self.conversation = self._new()


class CanaryUser(_ChatBase):
    """Counts responses per served version (VERSION_HEADER) or else per pool of the pod."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.tasks = [type(self).observe]

    def observe(self) -> None:
        body = orjson.dumps(next(self.requests).body(MODEL, stream=False))
        headers = {"content-type": "application/json", "x-model-name": MODEL}
        with self.client.post(
            PATH, data=body, headers=headers, name="canary", catch_response=True
        ) as r:
            if r.status_code != 200:
                return
            version = r.headers.get(VERSION_HEADER)
            label = (
                f"version {version}"
                if version
                else f"pool {_pool_of(r.headers.get('x-inference-pod', '?'))}"
            )
            SERVED[label] += 1
            _fire(self.environment, "SERVED", label, r.request_meta["response_time"])


class PriorityUser(_ChatBase):
    """Critical and sheddable traffic side by side; a sheddable 429 counts as shed, not failed."""

    abstract = not (CRITICAL_MODEL and SHEDDABLE_MODEL)
    weight = 2

    def on_start(self) -> None:
        super().on_start()
        self.tasks = [type(self).critical, type(self).sheddable]

    def critical(self) -> None:
        self.stream_chat(next(self.requests), CRITICAL_MODEL, "critical")

    def sheddable(self) -> None:
        body = orjson.dumps(next(self.requests).body(SHEDDABLE_MODEL, stream=False))
        headers = {"content-type": "application/json", "x-model-name": SHEDDABLE_MODEL}
        with self.client.post(
            PATH, data=body, headers=headers, name="sheddable", catch_response=True
        ) as r:
            if r.status_code == 429:
                r.success()
                _fire(self.environment, "SHED", "sheddable 429", r.request_meta["response_time"])


class LoraUser(_ChatBase):
    """Requests spread over the adapters in LOADTEST_LORA_MODELS (the picker's lora affinity)."""

    abstract = not LORA_MODELS
    weight = 2

    def on_start(self) -> None:
        super().on_start()
        self.tasks = [type(self).adapter]

    def adapter(self) -> None:
        model = random.choice(LORA_MODELS)
        self.stream_chat(next(self.requests), model, f"lora {model}")


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _print_served(environment: Environment, **_: Any) -> None:
    if SERVED:
        print("\nresponses by served version / pool / pod:")
        for label, n in sorted(SERVED.items()):
            print(f"  {label:50s} {n}")
