"""What every report states about the run that made it: the record.

A `Record` holds the commit (`git describe --dirty --always` of this checkout), the command,
the machine, the date and, per router, the effective scheduling profile (for ours the plugins
and weights the EPP ran, read from the same built-in EndpointPickerConfig it loads, overlaid
with a `--scheduler-config` file; for a peer its package version and policy). Reports put
`Record.markdown()` at their top and `Record.to_json()` under "record" in their JSON, and
`loadtest.results` builds the index of runs from those.

Run folders follow one pattern, `<results>/<YYYY-MM-DD>-<HHMM>-<tool>[-<tag>]/`, with the
reports of the run inside (`run_folder`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from epp.scheduling.defaults import BASELINE_PROFILES, CRITICAL_PROFILE, DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtest" / "results"
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@functools.cache
def describe_commit(repo: Path = REPO) -> str:
    """`git describe --always` of `repo`, with `-dirty` when a tracked file outside
    `loadtest/results/` differs from it ("unknown" outside a git checkout), taken once per
    process: every report of a run names the commit it started from. Runs write into
    `loadtest/results/` (their reports and the index of runs), so what an earlier run wrote
    there does not make the code of the next one dirty."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        out = git("describe", "--always")
        changed = git(
            "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)loadtest/results"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not out:
        return "unknown"
    return f"{out}-dirty" if changed else out


def machine_text() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def command_text(program: str, argv: Sequence[str]) -> str:
    """The command line as a user types it from the repository root. A report names no folder
    of the machine it ran on: paths inside the checkout become relative, an `--out` outside it
    becomes `<out>` and any other absolute path `<dir>/NAME`."""
    words = [program]
    after_out = False
    for arg in argv:
        if after_out:
            words.append(_outside(arg, "<out>"))
        elif arg.startswith("--out="):
            words.append("--out=" + _outside(arg.removeprefix("--out="), "<out>"))
        else:
            words.append(_outside(arg))
        after_out = arg == "--out"
    return " ".join([program, *(shlex.quote(w) for w in words[1:])])


ABSOLUTE = re.compile(r"(?<![\w./:])/(?:[\w.+-]+/)+([\w.+-]+)")


def _outside(arg: str, placeholder: str = "") -> str:
    text = relative(arg)
    if placeholder and text.startswith("/"):
        return placeholder
    return ABSOLUTE.sub(lambda m: f"<dir>/{m.group(1)}", text)


def relative(text: str) -> str:
    """`text` with the checkout's absolute path (and the working directory) taken off."""
    root = str(REPO)
    out = text.replace(root + "/", "").replace(root, ".")
    cwd = os.getcwd()
    if cwd != "/":
        out = out.replace(cwd + "/", "")
    return out


def run_folder(tool: str, tag: str = "", when: datetime | None = None) -> Path:
    """`loadtest/results/<YYYY-MM-DD>-<HHMM>-<tool>[-<tag>]` for a run starting `when`."""
    when = when or datetime.now(UTC)
    tag = tag.lstrip("-")
    if tag and not TAG.match(tag):
        raise ValueError(f"bad tag {tag!r}: letters, digits, '.', '_' and '-' only")
    return RESULTS / (f"{when:%Y-%m-%d-%H%M}-{tool}" + (f"-{tag}" if tag else ""))


def scheduler_config_of(epp_args: Sequence[str]) -> Path | None:
    """The `--scheduler-config` / `--config-file` FILE among `epp serve` flags, if any."""
    names = ("--scheduler-config", "--config-file")
    for i, arg in enumerate(epp_args):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                return Path(value)
            if i + 1 < len(epp_args):
                return Path(epp_args[i + 1])
    return None


def _document(epp_args: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plugins and profiles by name: the built-in config overlaid with the user's file."""
    docs: list[Mapping[str, Any]] = [DEFAULT_CONFIG]
    path = scheduler_config_of(epp_args)
    if path is not None:
        loaded = yaml.safe_load(path.read_text())
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: not an EndpointPickerConfig mapping")
        docs.append(loaded)
    plugins: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for doc in docs:
        for p in doc.get("plugins") or []:
            plugins[p.get("name") or p["type"]] = p
        for prof in doc.get("schedulingProfiles") or []:
            profiles[prof["name"]] = prof
    return plugins, profiles


def _plugin_text(ref: Mapping[str, Any], plugins: Mapping[str, Any]) -> str:
    name = str(ref["pluginRef"])
    plugin = plugins.get(name, {})
    text = name
    if plugin.get("type", name) != name:
        text += f" ({plugin['type']})"
    params = plugin.get("parameters")
    if params:
        text += " {" + ", ".join(f"{k}: {v}" for k, v in sorted(params.items())) + "}"
    if ref.get("weight") is not None:
        text += f" x{ref['weight']:g}"
    return text


def epp_profile_text(strategy: str, epp_args: Sequence[str] = (), priorities: bool = False) -> str:
    """The scheduling profile the EPP runs for `strategy`: its filters, scorers with weights,
    picker; with `priorities` (critical and sheddable models) also the critical requests'."""
    plugins, profiles = _document(epp_args)

    def one(name: str) -> str:
        profile = profiles.get(name)
        if profile is None:
            return f"{name} (unknown: the default profile serves it)"
        refs = ", ".join(_plugin_text(r, plugins) for r in profile.get("plugins") or [])
        return f"{name}: {refs}"

    text = one(strategy)
    if priorities and strategy not in BASELINE_PROFILES and CRITICAL_PROFILE in profiles:
        text += f"; critical requests: {one(CRITICAL_PROFILE)}"
    flags = " ".join(shlex.quote(_outside(x)) for x in epp_args)
    return text + (f"; `epp serve` flags: {flags}" if flags else "")


def _version(package: str) -> str:
    try:
        version: str = metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
    return version


def router_profile_text(router: str, epp_args: Sequence[str] = (), priorities: bool = False) -> str:
    """`router` ("KIND:OPTION") as it was run: for ours the effective profile."""
    kind, _, option = router.partition(":")
    if kind == "epp":
        return epp_profile_text(option, epp_args, priorities)
    if kind.startswith("epp-replicas"):
        profile, _, count = option.rpartition(":")
        sharing = "sharing nothing" if kind.endswith("-alone") else "sharing over --peers"
        return f"{count} EPP replicas {sharing}; " + epp_profile_text(profile, epp_args, priorities)
    if kind == "envoy":
        return f"Envoy alone, cluster lb_policy {option}"
    return f"{kind} {_version(kind)}, policy {option}"


@dataclass(frozen=True, slots=True)
class Record:
    tool: str  # bench | matrix | inference-perf
    commit: str  # git describe --dirty --always
    command: str
    machine: str
    date: str  # "YYYY-MM-DD HH:MM UTC", when the run started
    profiles: tuple[tuple[str, str], ...] = ()  # (router, effective profile)
    subject: str = ""  # what ran: workloads, cells
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. the peer's version

    @classmethod
    def now(
        cls,
        tool: str,
        command: str,
        profiles: Sequence[tuple[str, str]] = (),
        subject: str = "",
        when: datetime | None = None,
    ) -> Record:
        when = when or datetime.now(UTC)
        return cls(
            tool,
            describe_commit(),
            relative(command),
            machine_text(),
            f"{when:%Y-%m-%d %H:%M} UTC",
            tuple(profiles),
            subject,
        )

    def markdown(self) -> list[str]:
        """The record as the bullet lines at the top of a report."""
        lines = [
            f"- commit: `{self.commit}` (`git describe --dirty --always`)",
            f"- command: `{self.command}`",
            f"- machine: {self.machine}",
            f"- date: {self.date}",
        ]
        if self.profiles:
            lines.append("- scheduling, as run:")
            lines += [f"  - {router}: {text}" for router, text in self.profiles]
        lines += [f"- {k}: {v}" for k, v in self.extra.items()]
        return lines

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["profiles"] = [list(p) for p in self.profiles]
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            data["tool"],
            data["commit"],
            data["command"],
            data["machine"],
            data["date"],
            tuple((str(r), str(t)) for r, t in data.get("profiles") or []),
            data.get("subject", ""),
            dict(data.get("extra") or {}),
        )


def program_argv() -> list[str]:
    """This process's arguments after the module name."""
    return sys.argv[1:]
