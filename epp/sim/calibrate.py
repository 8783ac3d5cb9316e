"""Calibrate a GPU profile: time a randomly initialised Llama-2-7B-shaped model, fit `t_step`.

`python -m epp.sim.calibrate` (on a machine with an NVIDIA GPU, `torch` and `transformers`
installed; nothing is downloaded: the arithmetic does not depend on the weights) times prefill
passes of several lengths and decode steps of several batch sizes and context lengths, then
least-squares fits the four coefficients of `GpuProfile.step_time` and prints them with the
samples as JSON. `fit` is pure and unit-tested; the measuring part needs a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StepSample:
    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int
    seconds: float


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (tiny systems only)."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-300:
            raise ValueError("samples do not determine every coefficient")
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit(samples: Sequence[StepSample]) -> dict[str, float]:
    """Least-squares `base_step_s`, `prefill_token_s`, `decode_seq_s`, `kv_token_s`."""
    rows = [
        (1.0, float(s.prefill_tokens), float(s.decode_seqs), float(s.kv_tokens)) for s in samples
    ]
    scale = [max(abs(r[i]) for r in rows) or 1.0 for i in range(4)]
    x = [[r[i] / scale[i] for i in range(4)] for r in rows]
    ata = [[sum(r[i] * r[j] for r in x) for j in range(4)] for i in range(4)]
    atb = [sum(r[i] * s.seconds for r, s in zip(x, samples, strict=True)) for i in range(4)]
    coef = [c / scale[i] for i, c in enumerate(_solve(ata, atb))]
    names = ("base_step_s", "prefill_token_s", "decode_seq_s", "kv_token_s")
    return {name: max(0.0, c) for name, c in zip(names, coef, strict=True)}


def _timed(torch: Any, fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    prefill_lengths: Sequence[int] = (128, 512, 1024, 2048, 4096),
    batches: Sequence[int] = (1, 8, 32, 64),
    contexts: Sequence[int] = (256, 1024),
    repeats: int = 5,
) -> list[StepSample]:
    """Time a random Llama-2-7B-shaped model in fp16 on the first CUDA device."""
    torch = importlib.import_module("torch")
    transformers = importlib.import_module("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).eval()
    out: list[StepSample] = []
    with torch.inference_mode():
        for n in prefill_lengths:
            ids = torch.randint(0, 32000, (1, n), device="cuda")

            def prefill(ids: Any = ids) -> object:
                return model.model(input_ids=ids, use_cache=False)

            t = _timed(torch, prefill, repeats)
            out.append(StepSample(n, 0, 0, t))
            print(f"prefill {n:5d} tokens: {t * 1e3:8.2f} ms", file=sys.stderr)
        for c in contexts:
            for b in batches:
                ids = torch.randint(0, 32000, (b, c), device="cuda")
                cache = model.model(input_ids=ids, use_cache=True).past_key_values
                step = torch.randint(0, 32000, (b, 1), device="cuda")

                def decode(step: Any = step, cache: Any = cache) -> object:
                    # each call appends one position: the context grows by `repeats`, negligible
                    return model(input_ids=step, past_key_values=cache, use_cache=True)

                t = _timed(torch, decode, repeats)
                out.append(StepSample(0, b, b * c, t))
                print(f"decode batch {b:3d} @ {c:5d}: {t * 1e3:8.2f} ms", file=sys.stderr)
                del cache
                torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m epp.sim.calibrate")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    samples = measure(repeats=args.repeats)
    torch = importlib.import_module("torch")
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0),
                "fit": fit(samples),
                "samples": [asdict(s) for s in samples],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
