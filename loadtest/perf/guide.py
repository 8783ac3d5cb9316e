"""llm-d's guide workload for inference-perf, and the same shape scaled to the simulator.

llm-d's prefix-cache guides benchmark with inference-perf's `shared_prefix` data: 150 groups
of 5 prompts, each a 6,000-token system prompt shared by its group plus a 1,200-token question,
1,000 output tokens, under a Poisson ladder of rates (3 to 60 requests/s). `GUIDE` is that
shape; `SCALED` divides the token lengths and the group count by ten, so the prefixes fill
about the same share of the simulated pods' KV memory (4 pods of 600 blocks x 16 tokens hold
38,400 tokens; 15 prefixes of 600 tokens take 9,000) and a ladder of a few requests per second
crosses the simulated cluster's capacity as the guide's crosses its GPUs'. `config` writes
inference-perf's YAML document for one router.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Shape:
    groups: int
    prompts_per_group: int
    system_tokens: int
    question_tokens: int
    output_tokens: int

    def text(self) -> str:
        return (
            f"{self.groups} groups x {self.prompts_per_group} prompts, "
            f"{self.system_tokens:,} shared + {self.question_tokens:,} own input tokens, "
            f"{self.output_tokens:,} output tokens"
        )


GUIDE = Shape(150, 5, 6000, 1200, 1000)
GUIDE_RATES = (3.0, 10.0, 20.0, 40.0, 60.0)  # requests/s, the guide's Poisson ladder
SCALED = Shape(15, 5, 600, 120, 100)
SCALED_RATES = (1.0, 3.0, 6.0)


def config(
    base_url: str,
    model: str,
    tokenizer: Path,
    out: Path,
    shape: Shape,
    rates: Sequence[float],
    stage_seconds: int,
    interval: float,
    seed: int,
    request_timeout: float = 120.0,
) -> dict[str, Any]:
    """inference-perf's config: streaming completions, shared-prefix data, Poisson stages,
    every lifecycle report (summary, per stage, per request) written under `out`."""
    return {
        "api": {"type": "completion", "streaming": True},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": shape.groups,
                "num_prompts_per_group": shape.prompts_per_group,
                "system_prompt_len": shape.system_tokens,
                "question_len": shape.question_tokens,
                "output_len": shape.output_tokens,
                "seed": seed,
            },
        },
        "load": {
            "type": "poisson",
            "interval": interval,
            "stages": [{"rate": rate, "duration": stage_seconds} for rate in rates],
            "num_workers": 1,
            "request_timeout": request_timeout,
            "base_seed": seed,
        },
        "server": {"type": "vllm", "model_name": model, "base_url": base_url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer)},
        "report": {"request_lifecycle": {"summary": True, "per_stage": True, "per_request": True}},
        "storage": {"local_storage": {"path": str(out)}},
    }
