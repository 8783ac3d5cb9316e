"""The EPP's tokenizer: the shipped files load, chat templates render, caches change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HfTokenizer

from epp.tokenization import Tokenizer, TokenizerError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "epp" / "assets" / "tiny-tokenizer"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(TINY)


def test_chat_template_renders_chatml(tok: Tokenizer) -> None:
    text = tok.render_chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"text": "there"}]},
        ]
    )
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_ids_equal_the_library_on_the_whole_text(tok: Tokenizer) -> None:
    raw = HfTokenizer.from_file(str(TINY / "tokenizer.json"))
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a helpful model. " * 20},
            {"role": "user", "content": "Please explain the cache, kariro 42!"},
        ],
    }
    ids = tok.prompt_ids(body)
    whole = raw.encode(tok.render_chat(body["messages"]), add_special_tokens=False).ids
    assert ids == tuple(whole)
    assert ids is not None and ids[0] == raw.token_to_id("<|im_start|>")


def test_shared_segments_are_tokenized_once(tok: Tokenizer) -> None:
    system = {"role": "system", "content": "shared system prompt words " * 50}
    tok.prompt_ids({"messages": [system, {"role": "user", "content": "first question"}]})
    encoded = tok.stats["encoded"]
    tok.prompt_ids({"messages": [system, {"role": "user", "content": "second question"}]})
    # only the new user turn (and nothing of the 1,350-character system prompt) was encoded
    assert tok.stats["encoded"] - encoded < 100
    again = tok.stats["prompt_hits"]
    tok.prompt_ids({"messages": [system, {"role": "user", "content": "second question"}]})
    assert tok.stats["prompt_hits"] == again + 1


def test_completions_prompts(tok: Tokenizer) -> None:
    raw = HfTokenizer.from_file(str(TINY / "tokenizer.json"))
    assert tok.prompt_ids({"prompt": "the model"}) == tuple(raw.encode("the model").ids)
    assert tok.prompt_ids({"prompt": ["the model"]}) == tuple(raw.encode("the model").ids)
    assert tok.prompt_ids({"prompt": [5, 6, 7]}) == (5, 6, 7)
    assert tok.prompt_ids({"prompt": 3}) is None
    assert tok.prompt_ids({}) is None


def test_missing_or_bad_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((TINY / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% if %}"}))
    with pytest.raises(TokenizerError, match="chat template"):
        Tokenizer.from_dir(tmp_path)


def test_template_without_chat_template_and_raise_exception(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((TINY / "tokenizer.json").read_bytes())
    plain = Tokenizer.from_dir(tmp_path)
    assert plain.render_chat([{"role": "user", "content": "x"}]) == "user: x\n"
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    strict = Tokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="user first"):
        strict.render_chat([{"role": "system", "content": "x"}])


def test_the_script_rebuilds_the_shipped_files(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "make_tiny_tokenizer.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=120)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (TINY / name).read_bytes(), name
