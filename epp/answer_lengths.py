"""Answer lengths as the engines count them: what the EPP learns lengths from without reading
a single response byte.

vLLM keeps a histogram of the output tokens of every finished request
(`vllm:request_generation_tokens`, `_sum` and `_count`) and counts the requests that ended on
their `max_tokens` (`vllm:request_success_total{finished_reason="length"}`). Their growth between
two scrapes of an endpoint is a batch of answers: how many, their mean length, and how many ran
into their cap. `EngineAnswers` turns successive scrapes into such batches; the composition root
hands them to the output-length model (`epp.scheduling.output_length.OutputLengths.observe_batch`),
which plans requests whose client sends only a cap, or nothing, with them. This matters because
response bodies cross ext_proc only when the EPP must rewrite them: otherwise the EPP never sees
a token count of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.types import EndpointMetrics


@dataclass(frozen=True, slots=True)
class AnswerBatch:
    """Answers an endpoint finished between two scrapes."""

    model: str  # the engine's `model_name` label
    answers: int
    mean_tokens: float
    at_cap: int  # of them, those that ended on their max_tokens


class EngineAnswers:
    """Per endpoint address: the counters of its last scrape."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float, float]] = {}

    def observe(self, address: str, metrics: EndpointMetrics) -> AnswerBatch | None:
        m = metrics
        if m.answer_tokens is None or m.answers is None or m.answers_model is None:
            return None
        now = (m.answer_tokens, m.answers, m.answers_at_cap or 0.0)
        before = self._last.get(address)
        self._last[address] = now
        if before is None or any(n < b for n, b in zip(now, before, strict=True)):
            return None  # the first page, or the engine restarted: counting starts here
        answers = round(now[1] - before[1])
        if answers < 1:
            return None
        at_cap = min(answers, round(now[2] - before[2]))
        return AnswerBatch(m.answers_model, answers, (now[0] - before[0]) / answers, at_cap)

    def forget(self, address: str) -> None:
        self._last.pop(address, None)
