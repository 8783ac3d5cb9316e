"""Seeded chat workloads shared by the locust users and the benchmark runner; no downloads.

`sharegpt_like` draws prompt and output lengths from log-normal laws shaped like the ShareGPT
conversations benchmarks use (median prompt ~190 tokens with a long tail, median output ~130);
`shared_prefix` gives every request one of a few long system prompts followed by a short
question (the shape of llm-d's shared-prefix benchmark); `conversation` grows a multi-turn chat
on top of a shared system prompt. The simulator counts one token per four bytes, so text of
4xN characters is N tokens there; every draw comes from `random.Random(seed)`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

CHARS_PER_TOKEN = 4
WORDS = (
    "the", "model", "gateway", "routes", "each", "request", "to", "a", "pod", "that", "can",
    "answer", "soon", "without", "hurting", "others", "cache", "prefix", "queue", "batch",
    "token", "latency", "throughput", "scheduler", "endpoint", "picker", "envoy", "kernel",
    "memory", "tensor", "layer", "prompt", "answer", "system", "user", "assistant", "review",
    "summary", "data", "query", "policy", "weight", "score", "filter", "profile", "canary",
    "version", "adapter", "stream", "chunk", "budget", "window",
)  # fmt: skip
WORKLOADS = ("sharegpt", "shared-prefix")
ANNOUNCED, CAPPED, UNCAPPED = "announced", "cap", "none"
LENGTHS = (ANNOUNCED, CAPPED, UNCAPPED)  # how a request's answer length reaches the server


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion to send: its messages, its output length, and a grouping key."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int
    group: str  # prefix group or conversation id, for per-group statistics

    @property
    def prompt_chars(self) -> int:
        return sum(len(content) for _, content in self.messages)

    def body(
        self, model: str, stream: bool = True, lengths: str = ANNOUNCED, cap: int = 0
    ) -> dict[str, object]:
        """The request body. `lengths`: how the answer's length reaches the server (`LENGTHS`):
        announced as `max_tokens`, or, as production clients do, a fixed `cap` or no
        `max_tokens` at all, with the true length told to the simulator in a prompt marker
        (`epp sim --answer-from-prompt`) that no router interprets."""
        messages = [{"role": r, "content": c} for r, c in self.messages]
        body: dict[str, object] = {"model": model, "messages": messages, "stream": stream}
        if lengths == ANNOUNCED:
            body["max_tokens"] = self.max_tokens
        else:
            if lengths not in LENGTHS:
                raise ValueError(f"lengths must be one of {LENGTHS}, not {lengths!r}")
            last = messages[-1]
            last["content"] = f"{last['content']} #answer={self.max_tokens}"
            if lengths == CAPPED:
                body["max_tokens"] = cap
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body


def text(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens (4 bytes each) of seeded words."""
    target = max(tokens, 1) * CHARS_PER_TOKEN
    out: list[str] = []
    size = 0
    while size <= target:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:target]


def lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma))))


@dataclass(frozen=True, slots=True)
class ShareGptShape:
    prompt_median: float = 190.0
    prompt_sigma: float = 0.9
    prompt_max: int = 2048
    output_median: float = 130.0
    output_sigma: float = 0.7
    output_max: int = 512


def sharegpt_like(seed: int, shape: ShareGptShape = ShareGptShape()) -> Iterator[ChatRequest]:
    """Endless single-turn requests with ShareGPT-like prompt and output lengths."""
    rng = random.Random(seed)
    i = 0
    while True:
        prompt = lognormal_int(rng, shape.prompt_median, shape.prompt_sigma, 4, shape.prompt_max)
        output = lognormal_int(rng, shape.output_median, shape.output_sigma, 4, shape.output_max)
        # a request number first, so no two prompts share a cacheable block by chance
        content = f"q{i} " + text(rng, prompt)
        yield ChatRequest((("user", content),), output, f"sharegpt-{i}")
        i += 1


@dataclass(frozen=True, slots=True)
class SharedPrefixShape:
    groups: int = 8
    system_tokens: int = 2000
    question_tokens: int = 100
    output_min: int = 48
    output_max: int = 80


def system_prompts(seed: int, groups: int, tokens: int) -> list[str]:
    rng = random.Random(seed * 7919 + groups)
    return [f"[system prompt {g}] " + text(rng, tokens) for g in range(groups)]


def shared_prefix(
    seed: int, shape: SharedPrefixShape = SharedPrefixShape()
) -> Iterator[ChatRequest]:
    """Endless requests: one of `groups` long system prompts (uniformly), then a short question."""
    prompts = system_prompts(seed, shape.groups, shape.system_tokens)
    rng = random.Random(seed)
    i = 0
    while True:
        g = rng.randrange(shape.groups)
        question = f"q{i} " + text(rng, shape.question_tokens)
        output = rng.randint(shape.output_min, shape.output_max)
        yield ChatRequest((("system", prompts[g]), ("user", question)), output, f"group-{g}")
        i += 1


def workload(name: str, seed: int) -> Iterator[ChatRequest]:
    if name == "sharegpt":
        return sharegpt_like(seed)
    if name == "shared-prefix":
        return shared_prefix(seed)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


class Conversation:
    """A multi-turn chat over a shared system prompt: each turn resends the whole history."""

    def __init__(self, rng: random.Random, system: str, cid: str, max_turns: int = 4) -> None:
        self.rng = rng
        self.cid = cid
        self.max_turns = max_turns
        self.messages: list[tuple[str, str]] = [("system", system)]
        self.turns = 0

    @property
    def done(self) -> bool:
        return self.turns >= self.max_turns

    def next_request(self) -> ChatRequest:
        question = text(self.rng, lognormal_int(self.rng, 60, 0.6, 8, 400))
        self.messages.append(("user", question))
        output = lognormal_int(self.rng, 100, 0.6, 8, 400)
        return ChatRequest(tuple(self.messages), output, self.cid)

    def answered(self, reply: str) -> None:
        self.messages.append(("assistant", reply))
        self.turns += 1


def poisson_arrivals(seed: int, rate: float, duration: float) -> list[float]:
    """Open-loop arrival offsets (seconds) of a Poisson process, bounded by `duration`."""
    if rate <= 0 or duration <= 0:
        return []
    rng = random.Random(seed ^ 0x5EED)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out
