"""inference-perf's own virtual environment: Python >= 3.12, the pinned release from PyPI,
and a tokenizer trained locally on the text its wheel ships.

inference-perf 0.7.0 needs Python >= 3.12 and transformers 5.x (about 790 MB installed), so it
cannot share the project's 3.11 environment. `find_python` looks for an interpreter
(`--python`, `python3.13`/`python3.12` on PATH, then pyenv's versions), `ensure_venv` creates
the environment once and installs `PINNED` into it, `ensure_tokenizer` builds the tokenizer
once. Each raises `Unavailable` with the command and its output when it cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtest.record import REPO

PINNED = "inference-perf==0.7.0"
VENV = REPO / ".venv-inference-perf"
TOKENIZER = "tokenizer"  # folder inside the environment
MIN_VERSION = (3, 12)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class Unavailable(RuntimeError):
    """inference-perf cannot run here; the message says why."""


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def candidates() -> list[str]:
    found = [shutil.which(name) for name in ("python3.13", "python3.12")]
    homes = {Path.home(), Path("/root")}
    for home in sorted(homes):
        versions = home / ".pyenv" / "versions"
        if versions.is_dir():
            found += [str(p / "bin" / "python") for p in sorted(versions.iterdir(), reverse=True)]
    return [p for p in dict.fromkeys(found) if p and Path(p).exists()]


def find_python(given: str | None = None) -> str:
    """An interpreter of Python >= 3.12: `given`, else the first found."""
    for python in [given] if given else candidates():
        version = _version(python)
        if version is not None and version >= MIN_VERSION:
            return python
    looked = given or ", ".join(candidates()) or "python3.13, python3.12, ~/.pyenv/versions"
    raise Unavailable(f"inference-perf needs Python >= 3.12; none found (looked at {looked})")


def _run(argv: Sequence[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(
            list(argv),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ | OFFLINE,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{what} failed: {' '.join(argv)}: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
        raise Unavailable(
            f"{what} failed: {' '.join(argv)} (exit {done.returncode}):\n" + "\n".join(tail)
        )


def binary(venv: Path) -> Path:
    return venv / "bin" / "inference-perf"


def installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version; print(version('inference-perf'))",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(venv: Path = VENV, python: str | None = None, log: bool = True) -> Path:
    """`venv` with `PINNED` installed (created and installed once); its inference-perf."""
    wanted = PINNED.partition("==")[2]
    if installed_version(venv) == wanted and binary(venv).exists():
        return binary(venv)
    interpreter = find_python(python)
    if log:
        print(f"creating {venv} with {interpreter} and installing {PINNED} (minutes) …", flush=True)
    if not (venv / "bin" / "python").exists():
        _run([interpreter, "-m", "venv", str(venv)], "creating the virtual environment", 300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, PINNED], f"installing {PINNED}", 1800)
    if installed_version(venv) != wanted:
        raise Unavailable(f"{venv}: {PINNED} did not install (found {installed_version(venv)})")
    return binary(venv)


def ensure_tokenizer(venv: Path = VENV) -> Path:
    """The locally built tokenizer's folder inside `venv` (built once)."""
    out = venv / TOKENIZER
    if (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    script = Path(__file__).with_name("tokenizer.py")
    _run([str(venv / "bin" / "python"), str(script), str(out)], "building the tokenizer", 600)
    return out


if __name__ == "__main__":
    print(ensure_venv(python=sys.argv[1] if len(sys.argv) > 1 else None))
    print(ensure_tokenizer())
