"""One simulated model-server pod: its engine and engine loop, adapters, faults and fake metrics.

`SimPod` is the runtime object behind one address. `epp.sim.server` routes HTTP requests into
it; tests and `/sim/config` change it at runtime (`configure`, `set_speed`, ...). It owns the
`RealtimeDriver` task that moves its `Engine` through time, tokenizes prompts (`SimTokenizer`,
or 4 bytes a token), hashes their blocks as vLLM does (`BlockHasher`) and, with vLLM's
`--kv-events-config`, publishes each step's KV events (`Publisher`); `restart` is an engine
crash and restart: the requests in it are lost, its cache and its event stream start afresh.
Its GPU (`epp.sim.gpu.SimGpu`) can throttle (steps slow down by the fault's clock share) or
raise an XID error (the requests in it and every new one fail) until the fault is cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import time
from typing import Any, TypeVar

import xxhash
import zmq.asyncio

from epp.sim.blockhash import BlockHasher
from epp.sim.driver import RealtimeDriver
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.gpu import GpuFault, SimGpu, sm_clock_mhz
from epp.sim.kvcache import KvCache
from epp.sim.kvevents import Publisher
from epp.sim.openai import ApiError, CompletionRequest
from epp.sim.profiles import get_profile
from epp.sim.spec import METRICS_FAULTS, FakeMetrics, Faults, SimPodSpec
from epp.sim.tokenizer import SimTokenizer, byte_ids

MIN_DRAWN_TOKENS = 32
DRAWN_TOKENS_SPAN = 353  # drawn output lengths are uniform in [32, 384], mean ~208
GPU_ERROR = "gpu_error"  # finish reason of a sequence an XID error ended
ANSWER_MARKER = b"#answer="


def engine_config(spec: SimPodSpec) -> EngineConfig:
    """The engine a pod spec describes (its GPU profile, speed, KV cache and limits)."""
    return EngineConfig(
        profile=get_profile(spec.profile),
        speed=spec.speed,
        num_gpu_blocks=spec.num_gpu_blocks,
        block_size=spec.block_size,
        max_num_seqs=spec.max_num_seqs,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        max_loras=spec.max_loras,
        max_model_len=spec.max_model_len,
        lora_load_s=spec.lora_load_s,
        prefix_caching=spec.prefix_caching,
    )


class SimPod:
    def __init__(self, spec: SimPodSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.address = f"{spec.host}:{spec.port}"
        self.engine = Engine(engine_config(spec))
        self.profile = self.engine.profile  # the one lookup engine_config made
        self.driver = RealtimeDriver(self.engine, spec.flush_interval)
        self.adapters: dict[str, str] = {}
        for entry in spec.loras:
            name, _, path = entry.partition("=")
            self.adapters[name] = path or f"/adapters/{name}"
        self.faults = Faults()
        self.fake = FakeMetrics()
        self.gpu = SimGpu(sm_clock_mhz(self.profile.name))
        self._speed = spec.speed  # the healthy speed; a GPU throttle multiplies into the engine's
        self.created = 0
        self.metrics_pages = 0  # /metrics answers served: how often routers scrape this pod
        self._rng = random.Random(spec.seed)
        self._ids = itertools.count()
        self._unhang = asyncio.Event()
        self._unhang.set()
        self._task: asyncio.Task[None] | None = None
        self.hasher = BlockHasher(spec.block_size, spec.hash_algo, spec.hash_seed)
        self.tokenizer = SimTokenizer(spec.tokenizer) if spec.tokenizer else None
        self.publisher: Publisher | None = None
        self._lora_ids: dict[str, int] = {}  # as vLLM numbers adapters: 1, 2, ... in use order
        self._lora_info: tuple[float | None, float] | None = None  # (last step, its wall time)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        events = self.spec.kv_events
        if events is not None and events.active and self.publisher is None:
            self.publisher = Publisher(events, self.spec.host, zmq.asyncio.Context.instance())
            self.publisher.start()
            self.engine.kv.events = []
            self.driver.on_step = self._publish
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.driver.run(), name=f"sim-engine-{self.name}"
            )

    async def stop(self) -> None:
        self._unhang.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.publisher is not None:
            await self.publisher.close()
            self.publisher = None

    def _publish(self) -> None:
        kv = self.engine.kv
        if kv.events and self.publisher is not None:
            self.publisher.publish(kv.events)
            kv.events = []

    def restart(self) -> None:
        """The engine crashed and came back: requests in it end (aborted), the KV cache and the
        LoRA slots are empty, and the event stream starts again at sequence 0 (vLLM sends no
        event to say so)."""
        engine = self.engine
        for seq in [*engine.waiting, *engine.running]:
            self.driver.abort(seq)
            if seq.notify is not None:
                seq.notify()
        old = engine.kv
        engine.kv = KvCache(old.num_blocks, old.block_size, old.prefix_caching)
        engine.kv.events = [] if self.publisher is not None else None
        engine.active_loras.clear()
        if self.publisher is not None:
            self.publisher.restart()

    def lora_info_time(self, now: float, wall: float) -> float:
        """`vllm:lora_requests_info`'s value at loop time `now` (epoch time `wall`): vLLM sets it
        to the current time when it records an engine step's stats, so it is the wall time of
        the last step and an idle pod's page stays byte-identical between scrapes. Before the
        first step: the time of the first page."""
        step = self.engine.stats.last_step_at
        if self._lora_info is None or self._lora_info[0] != step:
            self._lora_info = (step, wall if step is None else wall - (now - step))
        return self._lora_info[1]

    # -- requests ---------------------------------------------------------------------------
    def resolve_model(self, model: str) -> str | None:
        """The adapter a request for `model` runs with (None = base model); 404 if unknown."""
        if model == self.spec.model or model in self.spec.aliases:
            return None
        if model in self.adapters:
            return model
        if self.spec.accept_any_model:
            return None
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def new_seq(
        self, req: CompletionRequest, adapter: str | None, ids: tuple[int, ...] | None = None
    ) -> Seq:
        if ids is not None:
            req = dataclasses.replace(req, prompt_tokens=max(1, len(ids)))
        token_ids = ids if ids is not None else byte_ids(req.prompt)
        limit = self.engine.capacity_tokens()
        told = answer_marker(req.prompt) if self.spec.answer_from_prompt else None
        if told is not None and (req.max_tokens is None or told < req.max_tokens):
            max_tokens, reason = min(told, limit - req.prompt_tokens), "stop"
        elif req.max_tokens is not None:
            max_tokens, reason = req.max_tokens, "length"
        else:
            draw = xxhash.xxh64_intdigest(req.prompt, seed=self.spec.seed)
            max_tokens = MIN_DRAWN_TOKENS + draw % DRAWN_TOKENS_SPAN
            max_tokens, reason = min(max_tokens, limit - req.prompt_tokens), "stop"
        if req.prompt_tokens + max(max_tokens, 1) > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{req.prompt_tokens + max_tokens} tokens ({req.prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion.",
            )
        hashes = self.hasher.hashes(token_ids, adapter)
        lora_id = None
        if adapter is not None:
            lora_id = self._lora_ids.setdefault(adapter, len(self._lora_ids) + 1)
        return Seq(
            f"{next(self._ids)}",
            req.prompt_tokens,
            max_tokens,
            hashes,
            adapter,
            0.0,
            reason,
            token_ids,
            lora_id,
        )

    def gpu_error(self) -> ApiError | None:
        """The error every request gets while the GPU has an XID error."""
        xid = self.gpu.fault.xid
        if xid is None:
            return None
        return ApiError(500, f"CUDA error: the GPU raised Xid {xid}; the engine is unavailable")

    def should_fail(self) -> bool:
        rate = self.faults.error_rate
        return rate > 0 and self._rng.random() < rate

    async def wait_unhung(self) -> None:
        await self._unhang.wait()

    # -- adapters ---------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        if name in self.adapters:
            raise ApiError(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        self.engine.active_loras.pop(name, None)

    # -- runtime control --------------------------------------------------------------------
    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._speed = speed
        self.engine.speed = speed * self.gpu.fault.speed

    def set_gpu_fault(self, fault: GpuFault) -> None:
        """Throttle, fail or restore the GPU; a new XID error fails the requests in the engine."""
        new_xid = fault.xid is not None and fault.xid != self.gpu.fault.xid
        self.gpu.set(fault, time.monotonic())
        self.engine.speed = self._speed * fault.speed
        if new_xid:
            engine = self.engine
            for seq in [*engine.waiting, *engine.running]:
                self.driver.abort(seq)
                seq.finish_reason = GPU_ERROR
                if seq.notify is not None:
                    seq.notify()

    def set_faults(self, **changes: Any) -> None:
        faults = dataclasses.replace(self.faults, **changes)
        if not isinstance(faults.hang, bool) or not isinstance(faults.die_mid_stream, bool):
            raise ValueError("hang and die_mid_stream must be booleans")
        if not _is_number(faults.error_rate) or not 0.0 <= faults.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if faults.metrics is not None and faults.metrics not in METRICS_FAULTS:
            raise ValueError(f"metrics fault must be one of {METRICS_FAULTS} or null")
        self.faults = faults
        if faults.hang:
            self._unhang.clear()
        else:
            self._unhang.set()

    def set_fake_metrics(self, **changes: Any) -> None:
        fake = dataclasses.replace(self.fake, **changes)
        for v in (fake.waiting, fake.running, fake.kv_usage):
            if v is not None and (not _is_number(v) or v < 0):
                raise ValueError("fake metrics must be non-negative numbers or null")
        self.fake = fake

    def configure(self, body: Any) -> dict[str, Any]:
        """Apply a `/sim/config` document; ValueError on a bad one (nothing applied then)."""
        if not isinstance(body, dict):
            raise ValueError("config must be a JSON object")
        unknown = set(body) - {"speed", "faults", "fake_metrics", "gpu", "restart"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        speed = body.get("speed")
        if speed is not None and not _is_number(speed):
            raise ValueError("speed must be a number")
        restart = body.get("restart", False)
        if not isinstance(restart, bool):
            raise ValueError("restart must be a boolean")
        faults = _merge(self.faults, body, "faults")
        fake = _merge(self.fake, body, "fake_metrics")
        gpu = GpuFault.parse(self.gpu.fault, body["gpu"]) if "gpu" in body else self.gpu.fault
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        old = (self.faults, self.fake)
        try:
            self.faults = Faults()
            self.set_faults(**dataclasses.asdict(faults))
            self.set_fake_metrics(**dataclasses.asdict(fake))
            if speed is not None:
                self.set_speed(float(speed))
        except (ValueError, TypeError):
            self.faults, self.fake = old
            self.set_faults()
            raise
        if gpu != self.gpu.fault:
            self.set_gpu_fault(gpu)
        if restart:
            self.restart()
        return self.view()

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "model": self.spec.model,
            "profile": self.profile.name,
            "speed": self._speed,
            "effective_speed": self.engine.speed,
            "faults": dataclasses.asdict(self.faults),
            "gpu": dataclasses.asdict(self.gpu.fault),
            "fake_metrics": dataclasses.asdict(self.fake),
            "adapters": sorted(self.adapters),
            "metrics_pages": self.metrics_pages,
        }


_T = TypeVar("_T", Faults, FakeMetrics)


def _merge(current: _T, body: dict[str, Any], key: str) -> _T:
    if key not in body:
        return current
    changes = body[key]
    if changes is None:
        return type(current)()
    if not isinstance(changes, dict):
        raise ValueError(f"{key} must be an object or null")
    names = {f.name for f in dataclasses.fields(current)}
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"unknown {key} keys: {sorted(unknown)}")
    defaults = type(current)()
    fixed = {k: getattr(defaults, k) if v is None else v for k, v in changes.items()}
    try:
        return dataclasses.replace(current, **fixed)
    except TypeError as e:
        raise ValueError(str(e)) from None


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def answer_marker(prompt: bytes) -> int | None:
    """The answer length a benchmark told in the prompt (`#answer=N`, the last one), if any."""
    at = prompt.rfind(ANSWER_MARKER)
    if at < 0:
        return None
    digits = prompt[at + len(ANSWER_MARKER) : at + len(ANSWER_MARKER) + 7]
    end = 0
    while end < len(digits) and 48 <= digits[end] <= 57:
        end += 1
    return int(digits[:end]) if end and int(digits[:end]) > 0 else None
