"""The model's own tokenizer, loaded from local files, with the work it repeats cached.

`Tokenizer.from_dir` reads a Hugging Face model's `tokenizer.json` (the `tokenizers` library)
and `tokenizer_config.json` (its chat template, rendered with Jinja as `transformers` does);
nothing is downloaded. `prompt_ids` turns an OpenAI chat or completions body into the token
ids vLLM would compute. Two caches keep tokenization off the critical path where traffic
repeats: whole prompts (LRU), and the text between special tokens, which the library cuts at
before anything else, so a shared system prompt or earlier turns are tokenized once. A leaf:
`epp.scheduling.plugins.precise_prefix` uses it; `epp.sim.tokenizer` is the simulator's twin.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HfTokenizer

PROMPT_CACHE = 4096  # whole prompts
SEGMENT_CACHE = 16384  # text between special tokens


class TokenizerError(ValueError):
    """The files are missing or malformed, or a body cannot be rendered."""


def _raise(message: str) -> None:
    raise TokenizerError(message)


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def message_text(content: object) -> str:
    """A message's content as one string (text parts joined, as vLLM's string format does)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict))
        return "".join(t for t in texts if isinstance(t, str))
    return ""


class _Lru(OrderedDict[str, tuple[int, ...]]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_fresh(self, key: str) -> tuple[int, ...] | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: str, value: tuple[int, ...]) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


class Tokenizer:
    """A model's tokenizer and chat template; `prompt_ids` is the one call the EPP makes."""

    def __init__(
        self,
        tokenizer: HfTokenizer,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        name: str = "",
    ) -> None:
        self.name = name
        self._tok = tokenizer
        self._bos = bos_token or ""
        self._eos = eos_token or ""
        self._template: jinja2.Template | None = None
        if chat_template:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise
            try:
                self._template = env.from_string(chat_template)
            except jinja2.TemplateError as e:
                raise TokenizerError(f"{name}: bad chat template: {e}") from None
        added = tokenizer.get_added_tokens_decoder().values()
        bare = tokenizer.normalizer is None
        plain = all(
            not (t.lstrip or t.rstrip or t.single_word) and (bare or not t.normalized)
            for t in added
        )
        specials = sorted((t.content for t in added), key=len, reverse=True)
        # cutting at added tokens and tokenizing the pieces alone is what the library does
        # itself, unless a token eats the whitespace around it: then encode whole prompts
        self._split = re.compile(f"({'|'.join(map(re.escape, specials))})") if plain else None
        self._prompts = _Lru(PROMPT_CACHE)
        self._segments = _Lru(SEGMENT_CACHE)
        self.stats = {"prompt_hits": 0, "prompt_misses": 0, "segment_hits": 0, "encoded": 0}

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` if present) from a folder, e.g. a
        model snapshot or a ConfigMap mounted as files."""
        folder = Path(path)
        try:
            tok = HfTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the library raises a bare Exception for a bad file
            raise TokenizerError(f"{folder}: cannot load tokenizer.json: {e}") from None
        config: dict[str, Any] = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.exists():
            try:
                config = json.loads(config_file.read_text())
            except (OSError, ValueError) as e:
                raise TokenizerError(f"{config_file}: {e}") from None
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return cls(
            tok,
            template if isinstance(template, str) else None,
            _token_text(config.get("bos_token")),
            _token_text(config.get("eos_token")),
            str(folder),
        )

    # ---- bodies -----------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[object]) -> str:
        """The prompt text vLLM builds for a chat request (generation prompt added)."""
        msgs = [
            {**m, "content": message_text(m.get("content"))}
            for m in messages
            if isinstance(m, dict)
        ]
        if self._template is None:  # no template: roles and contents, one per line
            return "".join(f"{m.get('role', '')}: {m['content']}\n" for m in msgs)
        try:
            return self._template.render(
                messages=msgs,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
                tools=None,
            )
        except jinja2.TemplateError as e:
            raise TokenizerError(f"chat template failed: {e}") from None

    def prompt_ids(self, payload: Mapping[str, object]) -> tuple[int, ...] | None:
        """Token ids of a chat or completions body; None when it has no prompt to tokenize."""
        messages = payload.get("messages")
        if isinstance(messages, list):
            return self.encode(self.render_chat(messages), add_special_tokens=False)
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.encode(prompt, add_special_tokens=True)
        if isinstance(prompt, list) and prompt and type(prompt[0]) is int:
            return tuple(prompt)  # the ids are checked as their blocks are hashed
        return None

    # ---- text -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> tuple[int, ...]:
        key = f"{int(add_special_tokens)}{text}"
        ids = self._prompts.get_fresh(key)
        if ids is not None:
            self.stats["prompt_hits"] += 1
            return ids
        self.stats["prompt_misses"] += 1
        if add_special_tokens or self._split is None:
            ids = self._encode(text, add_special_tokens)
        else:
            ids = self._encode_segments(text)
        self._prompts.put(key, ids)
        return ids

    def _encode(self, text: str, add_special_tokens: bool) -> tuple[int, ...]:
        self.stats["encoded"] += len(text)
        return tuple(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def _encode_segments(self, text: str) -> tuple[int, ...]:
        assert self._split is not None
        out: list[int] = []
        segments = self._segments
        for piece in self._split.split(text):
            if not piece:
                continue
            ids = segments.get_fresh(piece)
            if ids is None:
                ids = self._encode(piece, False)
                segments.put(piece, ids)
            else:
                self.stats["segment_hits"] += 1
            out.extend(ids)
        return tuple(out)
