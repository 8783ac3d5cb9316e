"""Build the small tokenizer the tests and the local stack share, offline and reproducibly.

Trains a byte-level BPE with the `tokenizers` library on English-like text this script makes
from a fixed seed, adds ChatML special tokens, and writes `tokenizer.json` plus a
`tokenizer_config.json` with a chat template, the two files a Hugging Face model ships. Both
`epp.tokenization` (the EPP) and `epp.sim.tokenizer` (the simulated vLLM pods) load them.

    .venv/bin/python scripts/make_tiny_tokenizer.py [OUT_DIR]   # default epp/assets/tiny-tokenizer
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "epp" / "assets" / "tiny-tokenizer"
VOCAB_SIZE = 4096
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_SYLLABLES = (
    "ka ri to na mi so le ve da po an en in on un al el il ar er or ta te ti ro ra re "
    "st th ch sh qu pr tr gr bl cl fl br cr dr pl wh"
)
SYLLABLES = _SYLLABLES.split()
_COMMON = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part system user "
    "assistant model request prompt token cache server answer question please explain"
)
COMMON = _COMMON.split()


def corpus(seed: int = 7, lines: int = 20_000) -> list[str]:
    """English-like lines: common words, made-up words, digits and punctuation."""
    rng = random.Random(seed)
    made = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(3000)]
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 24)):
            r = rng.random()
            if r < 0.6:
                w = rng.choice(COMMON)
            elif r < 0.95:
                w = rng.choice(made)
            else:
                w = str(rng.randint(0, 9999))
            if rng.random() < 0.1:
                w = w.capitalize()
            words.append(w)
        out.append(" ".join(words) + rng.choice([".", ",", "?", "!", ":", ""]))
    return out


def build(out: Path) -> None:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
