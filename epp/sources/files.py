"""File mode: resources from manifest files or folders, re-read whenever they change.

`FolderSource` polls the files' (mtime, size, inode) every `interval` seconds, with no extra
dependency, and re-reads a changed file once two polls agree on it (so a half-written file is not
taken). A few plain files are stat'ed on the event loop; folders are walked, and changed files
read, in a worker thread. Every few polls the contents are hashed too (in the thread), for file
systems with coarse mtimes. A file that no longer parses, or holds a resource that fails its own
checks, keeps its last good documents in force, and so does a path given to the source that
vanishes (an unmounted volume); the problems are reported in the new set. Deleting a file inside
a folder is a deliberate change. Reading is `epp.api.load`'s job, meaning is
`epp.api.parse`'s; `epp.local` consumes the sets.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from epp.api.load import MAX_FILE_BYTES, FileDocs, collect_files, parse_text, read_file
from epp.api.model import Problem, ResourceSet
from epp.api.parse import parse_documents, parse_one

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]  # (mtime_ns, size, inode)
HASH_EVERY_POLLS = 10
INLINE_FILES = 16  # up to this many watched plain files are checked on the loop, not in a thread


@dataclass(frozen=True, slots=True)
class _FileState:
    signature: Signature
    digest: bytes
    docs: tuple[tuple[str, object], ...]  # last good documents, the ones in force
    problems: tuple[Problem, ...]  # from the latest read, good or not


class FolderSource:
    """Watches manifest files and folders; hands out a new `ResourceSet` on every change."""

    def __init__(self, paths: Sequence[str | Path], interval: float = 0.5) -> None:
        self._paths = list(paths)
        self._interval = interval
        self._files: dict[str, _FileState] = {}
        self._pending: dict[str, Signature] = {}
        self._scan_problems: tuple[Problem, ...] = ()
        self._polls = 0
        self._current: ResourceSet | None = None

    def current(self) -> ResourceSet:
        if self._current is None:
            self._scan(settle=False)
            self._current = self._build()
        return self._current

    async def watch(self) -> AsyncIterator[ResourceSet]:
        self.current()
        while True:
            await asyncio.sleep(self._interval)
            self._polls += 1
            full = self._polls % HASH_EVERY_POLLS == 0
            if not full and self._files_unchanged():
                continue
            if await asyncio.to_thread(self._scan, True, full):
                self._current = self._build()
                log.info("manifests changed: %s", _summary(self._current))
                yield self._current

    def _files_unchanged(self) -> bool:
        """Whether every watched path is a plain file whose (mtime, size, inode) is the one in
        force, with nothing pending: a few stat calls on the loop, where a worker thread's
        handoff would wake two threads (docs/benchmarks.md, "Manifest files checked on the
        loop"). Folders, and anything to look at again, go to the thread."""
        if self._pending or self._scan_problems or len(self._paths) > INLINE_FILES:
            return False
        for raw in self._paths:
            state = self._files.get(str(Path(raw)))
            if state is None:  # a folder (its files are listed by their own names), or new
                return False
            try:
                st = os.stat(raw)
            except OSError:
                return False
            if not S_ISREG(st.st_mode) or _signature(st) != state.signature:
                return False
        return len(self._files) == len(self._paths)

    def _build(self) -> ResourceSet:
        docs = [doc for state in self._files.values() for doc in state.docs]
        parsed = parse_documents(docs)
        file_problems = [p for state in self._files.values() for p in state.problems]
        return ResourceSet(
            pools=parsed.pools,
            models=parsed.models,
            pods=parsed.pods,
            other=parsed.other,
            problems=(*self._scan_problems, *file_problems, *parsed.problems),
        )

    def _scan(self, settle: bool, full: bool = False) -> bool:
        """Re-reads what changed; True when the documents or problems in force changed."""
        files, problems = collect_files(self._paths)
        changed = tuple(problems) != self._scan_problems
        self._scan_problems = tuple(problems)
        names = [str(path) for path in files]
        # a root that vanished (an unmounted volume, a folder being replaced) loses nothing
        missing = [str(Path(p)) for p in self._paths if not Path(p).exists()]
        fresh = {
            name: state
            for name, state in self._files.items()
            if any(name == root or name.startswith(root + os.sep) for root in missing)
        }
        if set(self._files) - set(names) - set(fresh):
            changed = True
        for path, name in zip(files, names, strict=True):
            old = self._files.get(name)
            state = self._check(path, name, old, settle, full)
            if state is None:
                if old is not None:
                    fresh[name] = old
                continue
            fresh[name] = state
            if old is None or state.docs != old.docs or state.problems != old.problems:
                changed = True
        self._files = fresh
        return changed

    def _check(
        self, path: Path, name: str, old: _FileState | None, settle: bool, full: bool
    ) -> _FileState | None:
        """The file's new state, or None when it is unchanged or still being written."""
        try:
            st = path.stat()
        except OSError:
            return None
        signature = _signature(st)
        if old is not None and old.signature == signature and not full:
            return None
        if (
            settle
            and (old is None or old.signature != signature)
            and self._pending.get(name) != signature
        ):
            self._pending[name] = signature
            return None
        self._pending.pop(name, None)
        if st.st_size > MAX_FILE_BYTES:
            return self._judge(name, signature, b"", read_file(path), old)
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s", name, exc)
            return None
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if old is not None and digest == old.digest:
            return _FileState(signature, digest, old.docs, old.problems)
        return self._judge(name, signature, digest, parse_text(name, data), old)

    def _judge(
        self,
        name: str,
        signature: Signature,
        digest: bytes,
        loaded: FileDocs,
        old: _FileState | None,
    ) -> _FileState:
        problems = list(loaded.problems)
        broken = loaded.broken
        for label, doc in loaded.docs:
            outcome = parse_one(label, doc)
            errors = [p for p in outcome.problems if p.severity == "error"]
            broken = broken or bool(errors)
            problems.extend(errors)
        if not broken:
            return _FileState(signature, digest, loaded.docs, tuple(problems))
        kept = old.docs if old is not None else ()
        if kept:
            problems.append(
                Problem(
                    name,
                    "File",
                    Path(name).name,
                    "(file)",
                    f"keeping the last good version ({len(kept)} document(s)) in force",
                    "warning",
                    "LastGoodKept",
                )
            )
        log.warning("%s is broken: %s", name, "; ".join(str(p) for p in problems))
        return _FileState(signature, digest, kept, tuple(problems))


def _signature(st: os.stat_result) -> Signature:
    return st.st_mtime_ns, st.st_size, st.st_ino


def _summary(resources: ResourceSet) -> str:
    errors = sum(1 for p in resources.problems if p.severity == "error")
    return (
        f"{len(resources.pools)} pool(s), {len(resources.models)} model(s), "
        f"{len(resources.pods)} pod(s), {errors} error(s)"
    )
