"""The benchmark's load generator: open-loop Poisson arrivals and a closed loop for capacity.

Every request streams (`stream_options.include_usage`) and becomes one `Sample`: status, time to
first byte of the body (the simulator and vLLM send the role and the first token together),
end-to-end time, token counts and cached tokens from the final `usage` chunk, and the pod from
the `x-inference-pod` header. Bodies are not parsed chunk by chunk (only the tail is kept) so one
Python process can drive hundreds of streams. `stats.py` turns samples into numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import orjson

from loadtest.workloads import ANNOUNCED, ChatRequest

TAIL_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Sample:
    start: float  # seconds since the run started
    status: int  # HTTP status; 0 = no response (connection error, timeout, cancelled)
    error: str  # "" when status is 200 and the stream ended with usage
    ttft: float
    e2e: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    pod: str = ""
    priority: str = ""
    group: str = ""  # the workload's prefix group, for affinity statistics

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def end(self) -> float:
        return self.start + self.e2e


def _usage_of(tail: bytes) -> dict[str, object] | None:
    for event in reversed(tail.split(b"\n\n")):
        line = event.strip()
        if line.startswith(b"data: {") and b'"usage"' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                usage = orjson.loads(line[6:]).get("usage")
                if isinstance(usage, dict):
                    return usage
    return None


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    t0: float,
    headers: dict[str, str] | None = None,
    priority: str = "",
    group: str = "",
) -> Sample:
    """One streaming chat completion, timed from `t0` (a perf_counter origin)."""
    start = time.perf_counter()
    ttft = 0.0
    status = 0
    pod = ""
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            status = resp.status
            pod = resp.headers.get("x-inference-pod", "")
            tail = b""
            async for chunk in resp.content.iter_any():
                if not ttft:
                    ttft = time.perf_counter() - start
                tail = (tail + chunk)[-TAIL_BYTES:]
        e2e = time.perf_counter() - start
    except asyncio.CancelledError:
        elapsed = time.perf_counter() - start
        return Sample(
            start - t0, status, "cancelled", ttft, elapsed, pod=pod, priority=priority, group=group
        )
    except (aiohttp.ClientError, TimeoutError) as e:
        elapsed = time.perf_counter() - start
        return Sample(
            start - t0,
            status,
            type(e).__name__,
            ttft,
            elapsed,
            pod=pod,
            priority=priority,
            group=group,
        )
    usage = _usage_of(tail) if status == 200 else None
    if usage is None:
        error = "no-usage" if status == 200 else f"http-{status}"
        return Sample(start - t0, status, error, ttft, e2e, pod=pod, priority=priority, group=group)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return Sample(
        start - t0,
        status,
        "",
        ttft,
        e2e,
        int(usage.get("prompt_tokens", 0) or 0),  # type: ignore[call-overload]
        int(cached or 0),
        int(usage.get("completion_tokens", 0) or 0),  # type: ignore[call-overload]
        pod,
        priority=priority,
        group=group,
    )


def encode(request: ChatRequest, model: str, lengths: str = ANNOUNCED, cap: int = 0) -> bytes:
    return orjson.dumps(request.body(model, stream=True, lengths=lengths, cap=cap))


def make_session(request_timeout: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def priorities(count: int, sheddable_share: float, seed: int) -> list[str]:
    """Per request: "" (no priorities), else "sheddable" with the given share, or "critical"."""
    if sheddable_share <= 0:
        return [""] * count
    rng = random.Random(seed ^ 0xC817)
    return ["sheddable" if rng.random() < sheddable_share else "critical" for _ in range(count)]


def only(
    label: str, arrivals: list[float], labels: list[str], requests: Iterator[ChatRequest]
) -> tuple[list[float], list[str], Iterator[ChatRequest]]:
    """The arrivals, labels and requests of one class only, each keeping its time and body."""
    kept = [(t, x, r) for t, x, r in zip(arrivals, labels, requests, strict=False) if x == label]
    return [t for t, _, _ in kept], [x for _, x, _ in kept], iter([r for _, _, r in kept])


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    requests: Iterator[ChatRequest],
    arrivals: list[float],
    model: str,
    drain: float,
    labels: list[str] | None = None,
    lengths: str = ANNOUNCED,
    cap: int = 0,
) -> list[Sample]:
    """Send one request at each arrival offset, then wait at most `drain` s for stragglers.

    A request labelled "sheddable" asks for `<model>-sheddable` (a low-priority model)."""
    headers = {"content-type": "application/json"}
    labels = labels or [""] * len(arrivals)
    reqs = [next(requests) for _ in arrivals]
    bodies = [
        encode(r, f"{model}-sheddable" if label == "sheddable" else model, lengths, cap)
        for r, label in zip(reqs, labels, strict=True)
    ]
    tasks: list[asyncio.Task[Sample]] = []
    t0 = time.perf_counter()
    for offset, body, label, r in zip(arrivals, bodies, labels, reqs, strict=True):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sample = send(session, url, body, t0, headers, label, r.group)
        tasks.append(asyncio.create_task(sample))
    if tasks:
        await asyncio.wait(tasks, timeout=drain)
    for task in tasks:
        task.cancel()
    return list(await asyncio.gather(*tasks))


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    requests: Iterator[ChatRequest],
    model: str,
    workers: int,
    duration: float,
    lengths: str = ANNOUNCED,
    cap: int = 0,
    ramp: float = 0.0,
) -> list[Sample]:
    """`workers` users each sending back-to-back requests until `duration` s have passed; with
    `ramp`, user i starts i x ramp / workers s late, so a cold cluster is not hit by one burst
    of identical cold prefixes."""
    headers = {"content-type": "application/json"}
    t0 = time.perf_counter()
    deadline = t0 + duration
    samples: list[Sample] = []

    async def user(delay: float) -> None:
        await asyncio.sleep(delay)
        while time.perf_counter() < deadline:
            body = encode(next(requests), model, lengths, cap)
            samples.append(await send(session, url, body, t0, headers))

    tasks = [asyncio.create_task(user(i * ramp / workers)) for i in range(workers)]
    _, pending = await asyncio.wait(tasks, timeout=duration + 5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples
