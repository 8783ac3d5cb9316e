"""`epp sim`: the command line that starts simulated vLLM pods and serves until a signal.

Flags become `SimPodSpec`s (shared defaults, then `--pod-option ADDR_OR_INDEX:key=value`
overrides), a `SimCluster` hosts them, one line per pod is printed once it listens, and SIGINT
or SIGTERM shut everything down cleanly. `add_arguments` puts the flags on any parser (`epp.cli`
registers them as its `sim` sub-command and calls `run_parsed`); `run(argv)` is the standalone
entry point. Flag defaults are `SimPodSpec`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from epp.sim.spec import KvEventsConfig, SimPodSpec

DESCRIPTION = "Simulated vLLM GPU pods."

_OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "name": str,
    "model": str,
    "profile": str,
    "speed": float,
    "num_gpu_blocks": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "max_loras": int,
    "max_model_len": int,
    "loras": lambda v: tuple(x for x in v.split(";") if x),
    "lora_load_s": float,
    "seed": int,
    "accept_any_model": lambda v: v.lower() in ("1", "true", "yes"),
    "answer_from_prompt": lambda v: v.lower() in ("1", "true", "yes"),
    "legacy_metrics": lambda v: v.lower() in ("1", "true", "yes"),
    "flush_interval": float,
    "kv_events": KvEventsConfig.parse,
    "tokenizer": str,
    "hash_algo": str,
    "hash_seed": str,
}


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(SimPodSpec) if f.name == name)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp sim", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--pods", help="comma-separated ip:port list, one pod each")
    where.add_argument("--replicas", type=int, help="number of pods on consecutive loopback IPs")
    p.add_argument("--first-ip", default="127.0.0.2", help="first IP with --replicas")
    p.add_argument("--port", type=int, default=8000, help="port of every pod with --replicas")
    p.add_argument("--name-prefix", default="sim-pod", help="pods are named PREFIX-0, PREFIX-1...")
    p.add_argument("--model", default=_default("model"), help="served model name")
    p.add_argument(
        "--profile", default=_default("profile"), help="GPU profile (H100, A100-80G, L4, T4, ...)"
    )
    p.add_argument(
        "--speed", type=float, default=_default("speed"), help="speed multiplier (0.5 = half)"
    )
    p.add_argument("--lora", action="append", default=[], help="adapter NAME[=PATH]; repeatable")
    p.add_argument("--max-loras", type=int, default=_default("max_loras"))
    p.add_argument("--num-gpu-blocks", type=int, help="KV blocks (default: the profile's)")
    p.add_argument("--max-num-seqs", type=int, default=_default("max_num_seqs"))
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--max-model-len", type=int, default=_default("max_model_len"))
    p.add_argument("--seed", type=int, default=_default("seed"))
    p.add_argument("--accept-any-model", action="store_true", help="serve any model name")
    p.add_argument(
        "--answer-from-prompt",
        action="store_true",
        help="benchmarks only: end each answer at the last `#answer=N` marker in the prompt "
        "(capped by max_tokens), so clients can send production-like caps or none while the "
        "true length stays hidden from every router",
    )
    p.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another name for the base model (repeatable), like vLLM --served-model-name",
    )
    p.add_argument("--legacy-metrics", action="store_true", help="export vllm:gpu_cache_usage_perc")
    p.add_argument(
        "--flush-interval",
        type=float,
        default=_default("flush_interval"),
        help="min seconds between writes",
    )
    p.add_argument(
        "--kv-events-config",
        metavar="JSON",
        help="vLLM's KV events config, e.g. "
        '\'{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557"}\' '
        "(* is each pod's own IP)",
    )
    p.add_argument(
        "--prefix-caching-hash-algo",
        default=_default("hash_algo"),
        choices=("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"),
        help="block hash function, as vLLM's flag",
    )
    p.add_argument(
        "--hash-seed",
        default=os.environ.get("PYTHONHASHSEED"),
        help="seed of the first block's parent hash (vLLM reads PYTHONHASHSEED, the default)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="folder with the model's tokenizer.json (+ tokenizer_config.json); "
        "default: 4 bytes of text a token",
    )
    p.add_argument("--gpu-exporter-port", type=int, help="serve DCGM metrics on this port")
    p.add_argument("--gpu-exporter-host", default="127.0.0.1")
    p.add_argument(
        "--pod-option",
        action="append",
        default=[],
        metavar="POD:KEY=VALUE",
        help="per-pod override; POD is ip:port, name or index, e.g. 127.0.0.3:8000:speed=0.5",
    )


def _addresses(args: argparse.Namespace) -> list[tuple[str, int]]:
    if args.pods:
        out = []
        for item in args.pods.split(","):
            host, _, port = item.strip().rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out
    first = ipaddress.ip_address(args.first_ip)
    return [(str(first + i), args.port) for i in range(args.replicas or 1)]


def build_specs(args: argparse.Namespace) -> list[SimPodSpec]:
    loras = tuple(x for entry in args.lora for x in entry.split(",") if x)
    specs = [
        SimPodSpec(
            host=host,
            port=port,
            name=f"{args.name_prefix}-{i}",
            model=args.model,
            profile=args.profile,
            speed=args.speed,
            num_gpu_blocks=args.num_gpu_blocks,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_loras=args.max_loras,
            max_model_len=args.max_model_len,
            loras=loras,
            seed=args.seed + i,
            accept_any_model=args.accept_any_model,
            answer_from_prompt=args.answer_from_prompt,
            aliases=tuple(args.alias),
            legacy_metrics=args.legacy_metrics,
            flush_interval=args.flush_interval,
            kv_events=KvEventsConfig.parse(args.kv_events_config)
            if args.kv_events_config
            else None,
            tokenizer=args.tokenizer,
            hash_algo=args.prefix_caching_hash_algo,
            hash_seed=args.hash_seed,
        )
        for i, (host, port) in enumerate(_addresses(args))
    ]
    for option in args.pod_option:
        target, _, assignment = option.rpartition(":")
        key, eq, value = assignment.partition("=")
        if not target or not eq or key not in _OPTION_TYPES:
            raise ValueError(f"bad --pod-option {option!r}; keys: {', '.join(_OPTION_TYPES)}")
        matches = [
            i
            for i, s in enumerate(specs)
            if target in (f"{s.host}:{s.port}", s.host, s.name, str(i))
        ]
        if not matches:
            raise ValueError(f"--pod-option {option!r} names no pod")
        for i in matches:
            specs[i] = dataclasses.replace(specs[i], **{key: _OPTION_TYPES[key](value)})
    return specs


async def _serve(specs: list[SimPodSpec], exporter: tuple[str, int] | None) -> None:
    from epp.sim.cluster import SimCluster  # aiohttp: not needed to build the parser

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with SimCluster(specs, gpu_exporter=exporter) as cluster:
            for pod in cluster.pods:
                print(
                    f"sim pod {pod.name} listening on http://{pod.address} "
                    f"model={pod.spec.model} profile={pod.profile.name} speed={pod.engine.speed}",
                    flush=True,
                )
            if cluster.gpu_exporter_address:
                print(
                    f"sim gpu exporter on http://{cluster.gpu_exporter_address}/metrics", flush=True
                )
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(argv: list[str]) -> int:
    """Start the pods `argv` describes and serve until SIGINT/SIGTERM; the exit status."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return run_parsed(args)


def run_parsed(args: argparse.Namespace) -> int:
    """Serve the pods that parsed flags (`add_arguments`) describe; the exit status."""
    try:
        specs = build_specs(args)
        exporter = None
        if args.gpu_exporter_port is not None:
            exporter = (args.gpu_exporter_host, args.gpu_exporter_port)
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            runner.run(_serve(specs, exporter))
    except ValueError as e:
        print(f"epp sim: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"epp sim: cannot listen: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
