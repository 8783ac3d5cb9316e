"""Seeded chat workloads shared by the locust users and the benchmark runner; no downloads.

`sharegpt_like` draws prompt and output lengths from log-normal laws shaped like the ShareGPT
conversations benchmarks use (median prompt ~190 tokens with a long tail, median output ~130);
`shared_prefix` gives every request one of a few long system prompts followed by a short
question (the shape of llm-d's shared-prefix benchmark); `Conversation` grows a multi-turn chat
on top of a shared system prompt, and `multi_turn` sends many of them open-loop, each later
turn resending the history with synthetic assistant replies. The simulator counts one token
per four bytes, so text of 4xN characters is N tokens there; every draw comes from
`random.Random(seed)`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
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
WORKLOADS = ("sharegpt", "shared-prefix", "multi-turn")
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


def lognormal_mean(median: float, sigma: float) -> float:
    return median * math.exp(sigma * sigma / 2)


@dataclass(frozen=True, slots=True)
class ShareGptShape:
    prompt_median: float = 190.0
    prompt_sigma: float = 0.9
    prompt_max: int = 2048
    output_median: float = 130.0
    output_sigma: float = 0.7
    output_max: int = 512

    def batch_tokens(self, max_num_seqs: int) -> int:
        """KV tokens a pod needs to run a full batch of mean-sized requests (no reuse)."""
        mean = lognormal_mean(self.prompt_median, self.prompt_sigma) + lognormal_mean(
            self.output_median, self.output_sigma
        )
        return round(max_num_seqs * mean)


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

    @property
    def working_set_tokens(self) -> int:
        """The prompt tokens worth caching: every group's system prompt."""
        return self.groups * self.system_tokens


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


def workload(
    name: str,
    seed: int,
    prefix: SharedPrefixShape = SharedPrefixShape(),
    turns: MultiTurnShape | None = None,
    arrivals: Iterable[float] | None = None,
) -> Iterator[ChatRequest]:
    """The requests of workload `name`; `arrivals` (multi-turn only) says when each is sent."""
    if name == "sharegpt":
        return sharegpt_like(seed)
    if name == "shared-prefix":
        return shared_prefix(seed, prefix)
    if name == "multi-turn":
        return multi_turn(seed, turns or MultiTurnShape(), arrivals)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


@dataclass(frozen=True, slots=True)
class MultiTurnShape:
    """Open-loop conversations: how many are in progress, their prompts, turns and pace."""

    live: int = 32  # conversations in progress at any time
    systems: int = 8  # shared system prompts; each conversation takes one
    system_tokens: int = 500
    turns_min: int = 2
    turns_max: int = 6
    question_median: float = 60.0  # tokens, log-normal
    answer_median: float = 100.0
    sigma: float = 0.6
    length_max: int = 400
    # a turn is sent once the previous answer had time to arrive at this nominal pace and the
    # user thought for an exponential time of this mean
    reply_s_per_token: float = 0.04
    think_s: float = 3.0

    @property
    def mean_turns(self) -> float:
        return (self.turns_min + self.turns_max) / 2

    @property
    def mean_gap_s(self) -> float:
        """Mean time between two turns of one conversation."""
        return lognormal_mean(self.answer_median, self.sigma) * self.reply_s_per_token + (
            self.think_s
        )

    @property
    def working_set_tokens(self) -> int:
        """The prompt tokens worth caching at once: the system prompts, and the history after
        the system prompt of every live conversation (on average halfway through its turns)."""
        per_turn = lognormal_mean(self.question_median, self.sigma) + lognormal_mean(
            self.answer_median, self.sigma
        )
        done = (self.mean_turns - 1) / 2
        return round(self.systems * self.system_tokens + self.live * done * per_turn)


class Conversation:
    """A multi-turn chat over a shared system prompt: each turn resends the whole history."""

    def __init__(
        self,
        rng: random.Random,
        system: str,
        cid: str,
        max_turns: int = 4,
        shape: MultiTurnShape = MultiTurnShape(),
    ) -> None:
        self.rng = rng
        self.cid = cid
        self.max_turns = max_turns
        self.shape = shape
        self.messages: list[tuple[str, str]] = [("system", system)]
        self.turns = 0

    @property
    def done(self) -> bool:
        return self.turns >= self.max_turns

    def next_request(self) -> ChatRequest:
        s = self.shape
        question = text(
            self.rng, lognormal_int(self.rng, s.question_median, s.sigma, 8, s.length_max)
        )
        self.messages.append(("user", question))
        output = lognormal_int(self.rng, s.answer_median, s.sigma, 8, s.length_max)
        return ChatRequest(tuple(self.messages), output, self.cid)

    def answered(self, reply: str) -> None:
        self.messages.append(("assistant", reply))
        self.turns += 1


@dataclass(slots=True)
class _Live:
    chat: Conversation
    ready: float  # when its user may send the next turn


def multi_turn(
    seed: int, shape: MultiTurnShape = MultiTurnShape(), arrivals: Iterable[float] | None = None
) -> Iterator[ChatRequest]:
    """Endless turns of `shape.live` conversations in progress, one per arrival time.

    Each arrival sends the next turn of a conversation whose user is ready (the previous
    answer had time to arrive at the nominal pace, then a think time passed; the one ready
    first when none is), with its whole history: the system prompt, the earlier questions and a
    synthetic assistant reply of each earlier answer's length, so a later turn's prompt starts
    with the earlier turn's prompt and its cached blocks are reusable. A finished conversation
    is replaced by a new one. The first conversations start part-way (earlier turns made up,
    never sent), so the mix of turns is steady from the first arrival. Without `arrivals`
    (a closed loop) turns are spaced as `live` conversations at their mean gap would be."""
    prompts = system_prompts(seed, shape.systems, shape.system_tokens)
    rng = random.Random(seed)
    spacing = shape.mean_gap_s / shape.live
    times = iter(arrivals) if arrivals is not None else (i * spacing for i in itertools.count())
    started = 0

    def new(now: float, warm: bool) -> _Live:
        nonlocal started
        cid = f"conv-{started}"
        own = random.Random(seed * 1_000_003 + started)  # content independent of interleaving
        turns = own.randint(shape.turns_min, shape.turns_max)
        chat = Conversation(own, prompts[own.randrange(shape.systems)], cid, turns, shape)
        started += 1
        for _ in range(own.randrange(turns) if warm else 0):
            chat.answered(text(own, chat.next_request().max_tokens))
        return _Live(chat, now + (own.expovariate(1 / shape.mean_gap_s) if warm else 0.0))

    live = [new(0.0, warm=True) for _ in range(shape.live)]
    for now in times:
        ready = [i for i, c in enumerate(live) if c.ready <= now]
        i = rng.choice(ready) if ready else min(range(len(live)), key=lambda j: live[j].ready)
        chat = live[i].chat
        request = chat.next_request()
        yield request
        chat.answered(text(chat.rng, request.max_tokens))
        think = rng.expovariate(1 / shape.think_s) if shape.think_s > 0 else 0.0
        live[i].ready = (
            max(now, live[i].ready) + request.max_tokens * shape.reply_s_per_token + think
        )
        if chat.done:
            live[i] = new(now, warm=False)


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
