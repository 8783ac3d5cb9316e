"""Manifest files and folders to documents, and from there to a `ResourceSet`.

A folder is walked recursively for *.yaml, *.yml and *.json (hidden entries, such as a mounted
ConfigMap's `..data`, are skipped); each file may hold many YAML documents. Files over 4 MiB are
refused unread; YAML/JSON syntax errors, duplicate keys (see `yamlio`) and bad encodings
become `Problem`s with the line and column. Used by `epp.validate` and `epp.sources.files`;
parsing is `parse`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from epp.api.model import Problem, ResourceSet
from epp.api.parse import parse_documents
from epp.api.yamlio import load_all

MAX_FILE_BYTES = 4 * 1024 * 1024
SUFFIXES = (".yaml", ".yml", ".json")
FILE_KIND = "File"


@dataclass(frozen=True, slots=True)
class FileDocs:
    """The documents of one file; `broken` when it could not be read or parsed as a whole."""

    path: str
    docs: tuple[tuple[str, object], ...]
    problems: tuple[Problem, ...]
    broken: bool


def file_problem(
    path: str, where: str, message: str, severity: Literal["error", "warning"] = "error"
) -> Problem:
    return Problem(path, FILE_KIND, Path(path).name, where, message, severity, "InvalidFile")


def collect_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Files named directly, plus the manifest files found under each folder, in sorted order."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.suffix in SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            problems.append(file_problem(str(path), "(file)", "no such file or folder"))
    return files, problems


def read_file(path: Path) -> FileDocs:
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return _broken(name, "(file)", f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return _broken(name, "(file)", f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        return _broken(name, "(file)", f"file grew over the limit of {MAX_FILE_BYTES} bytes")
    return parse_text(name, data)


def parse_text(name: str, data: bytes) -> FileDocs:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _broken(name, "(file)", f"not UTF-8 text (byte {exc.start})")
    try:
        if name.endswith(".json"):
            found: list[object] = [json.loads(text)] if text.strip() else []
        else:
            found = load_all(text)
    except json.JSONDecodeError as exc:
        return _broken(
            name, f"line {exc.lineno}, column {exc.colno}", f"JSON syntax error: {exc.msg}"
        )
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        return _broken(name, where, f"YAML syntax error: {exc.problem or exc}")
    except yaml.YAMLError as exc:
        return _broken(name, "(file)", f"YAML syntax error: {exc}")
    docs = tuple((f"{name}#{i + 1}", doc) for i, doc in enumerate(found) if doc is not None)
    if not docs:
        warning = file_problem(name, "(file)", "file holds no documents", "warning")
        return FileDocs(name, (), (warning,), False)
    return FileDocs(name, docs, (), False)


def _broken(name: str, where: str, message: str) -> FileDocs:
    return FileDocs(name, (), (file_problem(name, where, message),), True)


def load_paths(paths: Sequence[str | Path]) -> ResourceSet:
    files, problems = collect_files(paths)
    docs: list[tuple[str, object]] = []
    for path in files:
        loaded = read_file(path)
        docs.extend(loaded.docs)
        problems.extend(loaded.problems)
    parsed = parse_documents(docs)
    return ResourceSet(
        pools=parsed.pools,
        models=parsed.models,
        pods=parsed.pods,
        other=parsed.other,
        problems=(*problems, *parsed.problems),
    )
