"""A strict, safe YAML reader for manifests.

Scanning and parsing run in libyaml when PyYAML has it (8x faster than pure Python on big
files); composing stays in Python so that aliases can be counted: more than `MAX_ALIASES` is
refused, because nested aliases expand exponentially when a document is walked. A key written
twice in one mapping is an error instead of the last one silently winning; `<<` merge keys may
still be overridden. Used by `load`.
"""

from __future__ import annotations

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import Resolver

MAX_ALIASES = 100
MERGE_TAG = "tag:yaml.org,2002:merge"


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


def _parser_class() -> type:
    try:
        from yaml.cyaml import CParser  # type: ignore[attr-defined]
    except ImportError:  # PyYAML built without libyaml
        return _PyParser
    return CParser


_Parser = _parser_class()


class _StrictLoader(Composer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc,valid-type]
    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)  # type: ignore[misc]
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                event = self.peek_event()
                message = f"more than {MAX_ALIASES} aliases"
                raise ComposerError(None, None, message, event.start_mark)
        return super().compose_node(parent, index)  # type: ignore[arg-type]


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _value in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_all(text: str) -> list[object]:
    """Every document of `text`; raises yaml.YAMLError (with marks) on bad input."""
    return list(yaml.load_all(text, Loader=_StrictLoader))
