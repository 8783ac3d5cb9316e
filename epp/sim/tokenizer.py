"""The simulated pod's tokenizer: the model's `tokenizer.json` and chat template, as vLLM uses them.

A pod started with `--tokenizer DIR` turns chat messages into the template's text and then into
token ids with the `tokenizers` library, so its block hashes are those of a real vLLM serving
that model; without one, a prompt's token i is its bytes [4i, 4i + 4) read as an integer.
The EPP loads the same files with `epp.tokenization` (the simulator imports nothing of the EPP).
"""

from __future__ import annotations

import json
from array import array
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict))
        return "".join(t for t in texts if isinstance(t, str))
    return ""


def byte_ids(prompt: bytes) -> list[int]:
    """Token ids of the byte-counting stand-in: 4 bytes a token, the last one zero-padded."""
    return list(array("I", prompt + b"\0" * (-len(prompt) % 4)))


class SimTokenizer:
    def __init__(self, folder: str) -> None:
        path = Path(folder)
        try:
            self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # the library raises a bare Exception for a bad file
            raise ValueError(f"--tokenizer {folder}: cannot load tokenizer.json: {e}") from None
        config: dict[str, Any] = {}
        if (path / "tokenizer_config.json").exists():
            config = json.loads((path / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        self._template = env.from_string(template) if isinstance(template, str) else None
        bos = config.get("bos_token")
        self._bos = bos if isinstance(bos, str) else ""
        self.encode = lru_cache(maxsize=1024)(self._encode)

    def _encode(self, text: str, special: bool) -> tuple[int, ...]:
        return tuple(self._tok.encode(text, add_special_tokens=special).ids)

    def chat_ids(self, messages: list[Any]) -> tuple[int, ...]:
        msgs = [{**m, "content": _text(m.get("content"))} for m in messages if isinstance(m, dict)]
        if self._template is None:
            text = "".join(f"{m.get('role', '')}: {m['content']}\n" for m in msgs)
        else:
            text = self._template.render(
                messages=msgs, add_generation_prompt=True, bos_token=self._bos, tools=None
            )
        return self.encode(text, False)

    def completion_ids(self, prompt: str) -> tuple[int, ...]:
        return self.encode(prompt, True)
