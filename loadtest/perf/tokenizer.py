"""Build a byte-level BPE tokenizer locally, as a directory `AutoTokenizer` loads.

inference-perf's shared-prefix generator needs a tokenizer: it draws random token ids, decodes
them into prompts, and counts tokens with it. Nothing may come from a model hub, so this trains
one with the `tokenizers` library on the text inference-perf's own wheel ships
(`inference_perf/assets/shakespeare.txt`) and writes `tokenizer.json` and
`tokenizer_config.json`. Run with the inference-perf virtual environment's Python:
`python loadtest/perf/tokenizer.py OUT_DIR [VOCAB]` (standalone: it imports nothing of ours).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB = 8000
SPECIAL = ("<unk>", "<s>", "</s>")


def corpus() -> Path:
    import inference_perf

    return Path(inference_perf.__file__).parent / "assets" / "shakespeare.txt"


def build(out: Path, vocab: int = VOCAB) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(corpus())], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": 1_000_000,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(build(target, int(sys.argv[2]) if len(sys.argv) > 2 else VOCAB))
