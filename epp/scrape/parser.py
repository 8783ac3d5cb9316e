"""Targeted parser for model-server /metrics pages (Prometheus text or OpenMetrics).

Pure and synchronous: `parse_metrics` turns one page into an immutable `EndpointMetrics`. It does
not parse the whole page: one regex pass, anchored on the families' common literal prefix (a C
search), finds the lines of the few families the engine spec names, so a 60 KB vLLM page with
histograms costs tens of microseconds. Engines: vLLM (both
metric generations), SGLang, trtllm-serve and Triton TensorRT-LLM, selected by the constants in
`epp.types`. The scraper (`epp.scrape.scraper`) calls it; nothing here does I/O.

Aggregation over series (the vLLM `engine` label, SGLang dp ranks, Triton models): queue and
running are summed; KV usage is the mean, because the engines of one endpoint have equal caches and
vLLM's internal balancer sends new work to the emptier one, so the mean is used/total blocks of the
endpoint (the max would mark it full when one engine is); `num_gpu_blocks` is summed (capacity of
the endpoint); `block_size` is the first series'; LoRA takes the newest series per engine; the
inter-token latency histogram's `_sum` and `_count` are summed (their growth between scrapes is
the endpoint's pace, which the scraper reports).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from epp.types import ENGINE_SGLANG, ENGINE_TRITON, ENGINE_TRTLLM, ENGINE_VLLM, EndpointMetrics

Labels = tuple[tuple[str, str], ...]


class MetricsParseError(ValueError):
    """The page is not a metrics page for this engine, or a family we need is malformed."""


@dataclass(frozen=True, slots=True)
class MetricRef:
    """One metric family, optionally narrowed to the series whose labels include `match`."""

    name: str
    match: Labels = ()


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Where one engine keeps each signal. Tuples of refs are fallbacks, first found wins."""

    waiting: tuple[MetricRef, ...]
    running: tuple[MetricRef, ...]
    kv_usage: tuple[MetricRef, ...]
    lora_info: str | None = None
    cache_info: str | None = None
    block_size_label: str = "block_size"
    num_blocks_label: str = "num_gpu_blocks"
    block_size_value: MetricRef | None = None
    num_blocks_value: MetricRef | None = None
    itl: tuple[str, ...] = ()  # inter-token latency histograms, first found wins
    prefill: str | None = None  # the prefill-time histogram
    prompt_tokens: str | None = None  # counters: prompt tokens, and those found in the cache
    cached_tokens: str | None = None
    computed: str | None = None  # histogram of computed prompt tokens, per finished request
    answers: str | None = None  # histogram of output tokens per finished request
    at_cap: MetricRef | None = None  # counter of requests that ended on their max_tokens

    def families(self) -> list[str]:
        refs = [*self.waiting, *self.running, *self.kv_usage]
        refs += [r for r in (self.block_size_value, self.num_blocks_value) if r is not None]
        names = [r.name for r in refs] + [n for n in (self.lora_info, self.cache_info) if n]
        names += [f"{h}{part}" for h in self.itl for part in ("_sum", "_count")]
        if self.prefill is not None:
            names += [f"{self.prefill}_sum", f"{self.prefill}_count"]
        names += [n for n in (self.prompt_tokens, self.cached_tokens) if n]
        if self.computed is not None:
            names.append(f"{self.computed}_sum")
        if self.answers is not None:
            names += [f"{self.answers}_sum", f"{self.answers}_count"]
        if self.at_cap is not None:
            names.append(self.at_cap.name)
        return sorted(set(names))


def _ref(name: str, **match: str) -> MetricRef:
    return MetricRef(name, tuple(match.items()))


_TRITON_REQ = "nv_trt_llm_request_metrics"
_TRITON_KV = "nv_trt_llm_kv_cache_block_metrics"

ENGINE_SPECS: Mapping[str, EngineSpec] = MappingProxyType(
    {
        ENGINE_VLLM: EngineSpec(
            waiting=(_ref("vllm:num_requests_waiting"),),
            running=(_ref("vllm:num_requests_running"),),
            kv_usage=(_ref("vllm:kv_cache_usage_perc"), _ref("vllm:gpu_cache_usage_perc")),
            lora_info="vllm:lora_requests_info",
            cache_info="vllm:cache_config_info",
            # renamed in vLLM 0.11; both names are exported for a while, with equal values
            itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
            prefill="vllm:request_prefill_time_seconds",
            prompt_tokens="vllm:prompt_tokens_total",
            cached_tokens="vllm:prefix_cache_hits_total",
            computed="vllm:request_prefill_kv_computed_tokens",  # where this vLLM exports it
            answers="vllm:request_generation_tokens",
            at_cap=_ref("vllm:request_success_total", finished_reason="length"),
        ),
        ENGINE_SGLANG: EngineSpec(
            waiting=(_ref("sglang:num_queue_reqs"),),
            running=(_ref("sglang:num_running_reqs"),),
            kv_usage=(_ref("sglang:token_usage"),),
            cache_info="sglang:cache_config_info",
            block_size_label="page_size",
            num_blocks_label="num_pages",
            itl=("sglang:inter_token_latency_seconds",),
        ),
        ENGINE_TRTLLM: EngineSpec(
            waiting=(_ref("trtllm_num_requests_waiting"),),
            running=(_ref("trtllm_num_requests_running"),),
            kv_usage=(_ref("trtllm_kv_cache_utilization"),),
            block_size_value=_ref("trtllm_kv_cache_tokens_per_block"),
            num_blocks_value=_ref("trtllm_kv_cache_max_blocks"),
            itl=("trtllm_time_per_output_token_seconds",),
        ),
        ENGINE_TRITON: EngineSpec(
            waiting=(_ref(_TRITON_REQ, request_type="waiting"),),
            running=(_ref(_TRITON_REQ, request_type="scheduled"),),
            kv_usage=(_ref(_TRITON_KV, kv_cache_block_type="fraction"),),
            block_size_value=_ref(_TRITON_KV, kv_cache_block_type="tokens_per"),
            num_blocks_value=_ref(_TRITON_KV, kv_cache_block_type="max"),
        ),
    }
)

_PAIR = r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"'
_LABEL = re.compile(_PAIR)
_LABELS = re.compile(rf"\s*(?:{_PAIR}\s*(?:,\s*|$))*")
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\[\\\"n]")
_NAME_END = frozenset("{ \t")


def parse_labels(raw: str) -> dict[str, str]:
    """Parse the inside of `{...}`; raise MetricsParseError on anything that is not k="v" pairs."""
    if _LABELS.fullmatch(raw) is None:
        raise MetricsParseError(f"malformed labels: {raw[:120]!r}")
    out = dict(_LABEL.findall(raw))
    if "\\" in raw:
        for key, value in out.items():
            out[key] = _ESCAPE.sub(lambda e: _ESCAPES[e.group(0)], value)
    return out


# the same label sets come back on every page (cache geometry, LoRA state, series names)
_labels = functools.lru_cache(maxsize=1024)(parse_labels)


@dataclass(frozen=True, slots=True)
class _Scanner:
    """Regex passes over the page for the wanted families' lines (literal-prefix search in C)."""

    head: re.Pattern[str]  # a family on the very first line
    body: re.Pattern[str]  # a family at the start of any other line
    # every well-formed sample line of the wanted families, as (name, labels, value) tuples
    samples: re.Pattern[str]
    # every line that starts with a wanted family's name (well-formed or not)
    lines: re.Pattern[str]


def _scanner(spec: EngineSpec) -> _Scanner:
    names = spec.families()
    first, last = min(names), max(names)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    prefix = first[:size]
    # longest first, so a family whose name extends another's is not shadowed by it
    tails = sorted((re.escape(n[len(prefix) :]) for n in names), key=len, reverse=True)
    name = f"({re.escape(prefix)}(?:{'|'.join(tails)}))"
    core = f"{name}([^\\n]*)"
    # labels up to the line's last brace (as `_sample`), the value, an optional timestamp
    value = r"[ \t]+([^\s]+)(?:[ \t]+[^\s]+)?[ \t]*(?=\r?\n|\r?$)"
    sample = f"\\n{name}(?:\\{{([^\\n]*)\\}})?{value}"
    return _Scanner(
        re.compile(core),
        re.compile("\\n" + core),
        re.compile(sample),
        re.compile(f"\\n{name}(?=[{{ \\t\\r\\n]|$)"),
    )


Samples = dict[str, list[tuple[str, float]]]


def _scan(text: str, scanner: _Scanner) -> Samples:
    """Samples of the wanted families by name, as (raw label text, value).

    The page's lines come out of one C pass as (name, labels, value) tuples; a second pass counts
    the lines of the wanted families, and when some line was not a well-formed sample the page
    goes through `_scan_lines`, which says which line is wrong."""
    page = "\n" + text
    found = scanner.samples.findall(page)
    if len(found) != len(scanner.lines.findall(page)):
        return _scan_lines(text, scanner)
    out: Samples = {}
    try:
        for name, raw, value in found:
            samples = out.get(name)
            if samples is None:
                out[name] = [(raw, float(value))]
            else:
                samples.append((raw, float(value)))
    except ValueError:
        return _scan_lines(text, scanner)  # names the bad value
    return out


def _scan_lines(text: str, scanner: _Scanner) -> Samples:
    """`_scan` line by line, raising MetricsParseError at the first malformed line."""
    out: Samples = {}
    first = scanner.head.match(text)
    for m in itertools.chain((first,) if first else (), scanner.body.finditer(text)):
        name, rest = m.group(1, 2)
        if not rest or rest[0] == "\r":
            raise MetricsParseError(f"sample line of {name} has no value")
        if rest[0] in _NAME_END:  # otherwise a longer family name that merely starts alike
            out.setdefault(name, []).append(_sample(name, rest))
    return out


def _sample(name: str, line: str) -> tuple[str, float]:
    raw = ""
    rest = line
    if line.startswith("{"):
        close = line.rfind("}")
        if close == -1:
            raise MetricsParseError(f"truncated labels in {name}{line[:120]}")
        raw = line[1:close]
        rest = line[close + 1 :]
    parts = rest.split()
    if not parts or len(parts) > 2:
        raise MetricsParseError(f"bad sample line: {name}{line[:120]}")
    try:
        return raw, float(parts[0])
    except ValueError:
        raise MetricsParseError(f"bad value {parts[0][:40]!r} for {name}") from None


def _matching(found: Samples, ref: MetricRef) -> list[tuple[str, float]]:
    samples = found.get(ref.name, [])
    if not ref.match or not samples:
        return samples
    kept = []
    for raw, value in samples:
        labels = _labels(raw)
        if all(labels.get(k) == v for k, v in ref.match):
            kept.append((raw, value))
    return kept


def _first_values(found: Samples, refs: tuple[MetricRef, ...], what: str) -> list[float]:
    for ref in refs:
        matched = _matching(found, ref)
        if matched:
            values = [v for _, v in matched]
            if not all(math.isfinite(v) for v in values):
                raise MetricsParseError(f"non-finite {what} in {ref.name}: {values}")
            return values
    names = ", ".join(r.name for r in refs)
    raise MetricsParseError(f"no {what} metric ({names}) on the page")


def _count(found: Samples, refs: tuple[MetricRef, ...], what: str) -> int:
    total = sum(_first_values(found, refs, what))
    if total < 0:
        raise MetricsParseError(f"negative {what}: {total}")
    return round(total)


def _optional_int(found: Samples, ref: MetricRef | None, *, add: bool) -> int | None:
    if ref is None:
        return None
    values = [v for _, v in _matching(found, ref) if math.isfinite(v) and v >= 0]
    if not values:
        return None
    return round(sum(values) if add else values[0])


def _to_int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def _adapters(raw: str) -> frozenset[str]:
    return frozenset(a for a in (p.strip() for p in raw.split(",")) if a)


def _lora(found: Samples, name: str) -> tuple[int, frozenset[str], frozenset[str]]:
    newest: dict[str, tuple[float, dict[str, str]]] = {}
    for raw, value in found.get(name, []):
        if math.isnan(value):
            continue
        labels = _labels(raw)
        engine = labels.get("engine", "")
        if engine not in newest or value > newest[engine][0]:
            newest[engine] = (value, labels)
    max_lora = 0
    active: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    for _, labels in newest.values():
        max_lora = max(max_lora, _to_int(labels.get("max_lora")) or 0)
        active |= _adapters(labels.get("running_lora_adapters", ""))
        waiting |= _adapters(labels.get("waiting_lora_adapters", ""))
    return max_lora, active, waiting


def _cache_info(found: Samples, spec: EngineSpec) -> tuple[int | None, int | None]:
    block_size = _optional_int(found, spec.block_size_value, add=False)
    num_blocks = _optional_int(found, spec.num_blocks_value, add=True)
    if spec.cache_info is None:
        return block_size, num_blocks
    for raw, _ in found.get(spec.cache_info, []):
        labels = _labels(raw)
        if block_size is None:
            block_size = _to_int(labels.get(spec.block_size_label))
        blocks = _to_int(labels.get(spec.num_blocks_label))
        if blocks is not None:
            num_blocks = blocks + (num_blocks or 0)
    return block_size, num_blocks


def _itl(found: Samples, spec: EngineSpec) -> tuple[float | None, float | None]:
    for name in spec.itl:
        sums, counts = found.get(f"{name}_sum"), found.get(f"{name}_count")
        if sums and counts:
            total, count = sum(v for _, v in sums), sum(v for _, v in counts)
            if math.isfinite(total) and math.isfinite(count):
                return total, count
    return None, None


def _total(found: Samples, name: str | None) -> float | None:
    """The sum of a family's series; None when absent or not finite."""
    values = found.get(name) if name else None
    if not values:
        return None
    total = sum(v for _, v in values)
    return total if math.isfinite(total) else None


def _answers(found: Samples, spec: EngineSpec) -> tuple[float, float, float, str] | None:
    """Output tokens and count of finished requests, those that ended on their cap, and the
    model the engine names them by (its `model_name` label); None when not exported."""
    if spec.answers is None:
        return None
    counts = found.get(f"{spec.answers}_count")
    tokens = _total(found, f"{spec.answers}_sum")
    count = _total(found, f"{spec.answers}_count")
    if not counts or tokens is None or count is None:
        return None
    at_cap = 0.0
    if spec.at_cap is not None:
        at_cap = sum(v for _, v in _matching(found, spec.at_cap) if math.isfinite(v))
    return tokens, count, at_cap, _labels(counts[0][0]).get("model_name", "")


_SCANNERS = {engine: _scanner(spec) for engine, spec in ENGINE_SPECS.items()}


def parse_metrics(text: str | bytes, engine: str, now: float) -> EndpointMetrics:
    """Read queue, running, KV usage, LoRA and cache geometry for `engine` from one page.

    `now` is stored as `scraped_at`. Raises MetricsParseError when the page lacks the queue,
    running or KV family, when one of them is malformed or not finite, or for an unknown engine.
    A malformed LoRA or cache-info line also raises: a half-written page is not trusted.
    """
    spec = ENGINE_SPECS.get(engine)
    if spec is None:
        raise MetricsParseError(f"unknown engine {engine!r}; known: {sorted(ENGINE_SPECS)}")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    found = _scan(text, _SCANNERS[engine])
    waiting = _count(found, spec.waiting, "waiting")
    running = _count(found, spec.running, "running")
    kv_values = _first_values(found, spec.kv_usage, "kv usage")
    kv = min(1.0, max(0.0, sum(kv_values) / len(kv_values)))
    max_lora, active, lora_waiting = (0, frozenset[str](), frozenset[str]())
    if spec.lora_info is not None:
        max_lora, active, lora_waiting = _lora(found, spec.lora_info)
    block_size, num_blocks = _cache_info(found, spec)
    itl_seconds, itl_count = _itl(found, spec)
    prefill = spec.prefill
    answers = _answers(found, spec)
    return EndpointMetrics(
        waiting=waiting,
        running=running,
        kv_usage=kv,
        max_lora=max_lora,
        lora_active=active,
        lora_waiting=lora_waiting,
        block_size=block_size,
        num_gpu_blocks=num_blocks,
        scraped_at=now,
        itl_seconds=itl_seconds,
        itl_count=itl_count,
        prefill_seconds=_total(found, prefill and f"{prefill}_sum"),
        prefill_count=_total(found, prefill and f"{prefill}_count"),
        prompt_tokens=_total(found, spec.prompt_tokens),
        cached_tokens=_total(found, spec.cached_tokens),
        computed_tokens=_total(found, spec.computed and f"{spec.computed}_sum"),
        answer_tokens=answers[0] if answers else None,
        answers=answers[1] if answers else None,
        answers_at_cap=answers[2] if answers else None,
        answers_model=answers[3] if answers else None,
    )
