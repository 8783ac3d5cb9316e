"""FolderSource on a real folder: edits arrive; broken files keep the last good state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from epp.api.model import ResourceSet
from epp.sources.files import FolderSource

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0  # seconds an edit may take to arrive


def splits(resources: ResourceSet) -> list[tuple[str | None, int]]:
    (model,) = resources.models
    return [(s.version, s.weight) for s in model.splits]


async def next_set(changes: AsyncIterator[ResourceSet]) -> ResourceSet:
    return await asyncio.wait_for(anext(changes), WAIT)


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples" / "canary", target)
    return target


async def test_edits_apply_and_broken_files_keep_last_good(folder: Path) -> None:
    source = FolderSource([folder], interval=0.05)
    assert splits(source.current()) == [("stable", 90), ("canary", 10)]
    changes = source.watch().__aiter__()
    manifest = folder / "inference.yaml"
    try:
        # a weight edit is seen within a few seconds
        started = time.monotonic()
        rewrite(manifest, "- weight: 90\n", "- weight: 50\n")
        rewrite(manifest, "- weight: 10\n", "- weight: 50\n")
        changed = await next_set(changes)
        while splits(changed) != [("stable", 50), ("canary", 50)]:
            changed = await next_set(changes)
        print(f"weight edit applied after {time.monotonic() - started:.2f}s")
        assert not changed.problems
        assert source.current() is changed

        # a YAML syntax error: the previous routing stays, the problem is reported
        good_text = manifest.read_text()
        manifest.write_text(good_text + "  broken: [\n")
        broken = await next_set(changes)
        assert splits(broken) == [("stable", 50), ("canary", 50)]
        assert len(broken.pools) == 2
        reasons = {(p.severity, p.reason) for p in broken.problems}
        assert ("error", "InvalidFile") in reasons and ("warning", "LastGoodKept") in reasons
        assert any("YAML syntax error" in p.message for p in broken.problems)

        # a schema error in an otherwise parseable file is treated the same way
        manifest.write_text(good_text.replace("- weight: 50\n", "- weight: 2000000\n", 1))
        invalid = await next_set(changes)
        assert splits(invalid) == [("stable", 50), ("canary", 50)]
        (error,) = [p for p in invalid.problems if p.severity == "error"]
        assert error.path == "spec.routing.trafficSplit[0].weight"

        # fixed: the new weights apply and the problems are gone
        manifest.write_text(good_text.replace("- weight: 50\n", "- weight: 70\n", 1))
        fixed = await next_set(changes)
        assert splits(fixed) == [("stable", 70), ("canary", 50)]
        assert fixed.problems == ()

        # files come and go
        extra = folder / "sub" / "upstream.yaml"
        extra.parent.mkdir()
        shutil.copy(ROOT / "examples" / "upstream" / "v1.yaml", extra)
        added = await next_set(changes)
        assert {p.name for p in added.pools} >= {"qwen-pool", "llama2-gpu-pool"}
        extra.unlink()
        removed = await next_set(changes)
        assert "qwen-pool" not in {p.name for p in removed.pools}
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


async def test_deleting_the_canary_pool_moves_traffic_to_stable(folder: Path) -> None:
    source = FolderSource([folder], interval=0.05)
    assert splits(source.current()) == [("stable", 90), ("canary", 10)]
    changes = source.watch().__aiter__()
    manifest = folder / "inference.yaml"
    try:
        text = manifest.read_text()
        start = text.index(
            "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: InferencePool\n"
            "metadata:\n  name: llama2-gpu-pool-canary"
        )
        end = text.index("---", start)
        manifest.write_text(text[:start] + text[end + 4 :])
        changed = await next_set(changes)
        assert splits(changed) == [("stable", 90)]
        (warning,) = changed.problems
        assert (warning.severity, warning.reason) == ("warning", "PoolNotFound")
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


def test_first_load_of_a_broken_file_reports_it(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: [\n")
    shutil.copy(ROOT / "examples" / "seed" / "inference.yaml", tmp_path / "good.yaml")
    resources = FolderSource([tmp_path]).current()
    assert len(resources.pools) == 1
    assert any(p.severity == "error" and p.source.endswith("bad.yaml") for p in resources.problems)


async def test_a_vanished_folder_loses_nothing(folder: Path, tmp_path: Path) -> None:
    source = FolderSource([str(folder) + "/"], interval=0.05)
    assert len(source.current().pools) == 2
    changes = source.watch().__aiter__()
    try:
        parked = tmp_path / "parked"
        folder.rename(parked)
        gone = await next_set(changes)
        assert len(gone.pools) == 2 and len(gone.models) == 1
        (problem,) = gone.problems
        assert (problem.severity, problem.message) == ("error", "no such file or folder")
        parked.rename(folder)
        back = await next_set(changes)
        assert back.problems == ()
        assert len(back.pools) == 2
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


async def test_an_edit_hidden_from_mtime_is_found_by_the_content_hash(folder: Path) -> None:
    manifest = folder / "inference.yaml"
    source = FolderSource([folder], interval=0.05)
    assert splits(source.current()) == [("stable", 90), ("canary", 10)]
    changes = source.watch().__aiter__()
    try:
        before = manifest.stat()
        rewrite(manifest, "- weight: 90\n", "- weight: 80\n")  # same size
        os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert manifest.stat().st_size == before.st_size
        changed = await next_set(changes)
        assert splits(changed) == [("stable", 80), ("canary", 10)]
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


async def test_plain_files_are_checked_on_the_loop_and_edits_still_arrive(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain files named directly are stat'ed on the event loop, without a worker thread, while
    they stand still; an edit, and an edit hidden from mtime (the periodic content hash), still
    arrive."""
    files = sorted(folder.glob("*.yaml"))
    manifest = folder / "inference.yaml"
    assert manifest in files
    source = FolderSource(files, interval=0.02)
    assert splits(source.current()) == [("stable", 90), ("canary", 10)]
    handoffs = 0
    to_thread = asyncio.to_thread

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal handoffs
        handoffs += 1
        return await to_thread(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("epp.sources.files.asyncio.to_thread", counted)  # counts, then calls
    changes = source.watch().__aiter__()
    pending = asyncio.ensure_future(anext(changes))
    try:
        await asyncio.sleep(0.5)  # ~25 polls of files that stand still
        assert not pending.done()
        assert handoffs <= 4  # only the content hash every 10th poll (25 before)
        rewrite(manifest, "- weight: 90\n", "- weight: 70\n")
        changed = await asyncio.wait_for(pending, WAIT)
        assert splits(changed) == [("stable", 70), ("canary", 10)]
        before = manifest.stat()
        rewrite(manifest, "- weight: 70\n", "- weight: 60\n")  # same size, same mtime
        os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert splits(await next_set(changes)) == [("stable", 60), ("canary", 10)]
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        await changes.aclose()  # type: ignore[attr-defined]
