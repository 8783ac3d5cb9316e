"""The inference APIs a body may speak, and what each one says in its own fields.

OpenAI chat (`/v1/chat/completions`), completions (`/v1/completions`), responses
(`/v1/responses`), embeddings (`/v1/embeddings`) and Anthropic messages (`/v1/messages`). The
path names the API; a path we do not know falls back to the body's shape. For each API:
the prompt text a prefix cache would see (every API's turns rendered alike, so one conversation
yields the same leading bytes turn after turn), the output limit and the stream flag. Pure
functions over the decoded body; `epp.request` calls them.
"""

from __future__ import annotations

from collections.abc import Mapping

CHAT = "chat"  # /v1/chat/completions: `messages`
COMPLETIONS = "completions"  # /v1/completions: `prompt`
RESPONSES = "responses"  # /v1/responses: `instructions`, `input`
EMBEDDINGS = "embeddings"  # /v1/embeddings: `input`
MESSAGES = "messages"  # Anthropic /v1/messages: `system`, `messages`
OTHER = "other"  # a JSON body with a model, of a shape not read further

_BY_PATH = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/responses": RESPONSES,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/messages": MESSAGES,
}
# the fields that bound an answer's length, per API (the first valid one counts)
_LIMIT_FIELDS = {
    CHAT: ("max_completion_tokens", "max_tokens"),
    COMPLETIONS: ("max_tokens",),
    RESPONSES: ("max_output_tokens",),
    MESSAGES: ("max_tokens",),
    OTHER: ("max_completion_tokens", "max_tokens", "max_output_tokens"),
}


def api_of(path: str, payload: Mapping[str, object]) -> str:
    """The API a request speaks: by its path (query string aside), else by its body's shape."""
    api = _BY_PATH.get(path.partition("?")[0].rstrip("/"))
    if api is not None:
        return api
    if isinstance(payload.get("messages"), list):
        return CHAT
    if "prompt" in payload:
        return COMPLETIONS
    return OTHER


def prompt_text(payload: Mapping[str, object], api: str | None = None) -> bytes:
    """The text a prefix cache would see: turns with role markers, or the prompt / input.

    Only text counts (string contents, text parts, tool results); the same conversation prefix
    always yields the same leading bytes, whichever of the chat-like APIs carries it.
    """
    api = api or api_of("", payload)
    if api in (CHAT, MESSAGES):
        turns: list[tuple[str, str]] = []
        system = payload.get("system")  # Anthropic: outside the turns
        if system is not None:
            turns.append(("system", _text(system)))
        turns.extend(_turns(payload.get("messages")))
        return _render(turns)
    if api == RESPONSES:
        turns = []
        instructions = payload.get("instructions")
        if isinstance(instructions, str):
            turns.append(("system", instructions))
        given = payload.get("input")
        if isinstance(given, str):
            turns.append(("user", given))
        else:
            turns.extend(_turns(given))
        return _render(turns)
    key = "input" if api == EMBEDDINGS else "prompt"
    prompt = payload.get(key)
    if isinstance(prompt, str):
        return prompt.encode()
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "".join(prompt).encode()
    return b""


def output_limit(payload: Mapping[str, object], api: str | None = None) -> int | None:
    """The answer's token bound in the API's own field, if valid; an embedding has one token
    (the pass over its input) and nothing more."""
    api = api or api_of("", payload)
    if api == EMBEDDINGS:
        return 1
    for key in _LIMIT_FIELDS.get(api, _LIMIT_FIELDS[OTHER]):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _render(turns: list[tuple[str, str]]) -> bytes:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns).encode()


def _turns(items: object) -> list[tuple[str, str]]:
    """(role, text) of a list of messages or Responses input items; others are skipped."""
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if isinstance(role, str):
            out.append((role, _text(item.get("content"))))
        elif item.get("type") == "function_call_output":  # Responses: a tool's answer
            out.append(("tool", _text(item.get("output"))))
    return out


def _text(content: object) -> str:
    """A content's text: a string, or the text of its parts (text blocks, tool results)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
            elif part.get("type") == "tool_result":  # Anthropic: a tool's answer
                parts.append(_text(part.get("content")))
    return "".join(parts)
