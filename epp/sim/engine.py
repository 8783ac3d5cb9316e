"""The simulated vLLM engine: continuous batching over a paged KV cache, with no I/O and no clock.

Callers pass `now` in: `plan_step(now)` schedules one step (running sequences first, chunked
prefill within `max_num_batched_tokens`, then waiting ones in FCFS order while KV blocks, LoRA
slots and `max_num_seqs` allow; recompute-preemption of the newest running sequence when KV runs
out) and returns its duration from the GPU profile; `finish_step(now)` commits it and returns the
sequences that produced a token. `epp.sim.driver` runs it in real time or on a fake clock;
`epp.sim.kvcache` holds the blocks; `epp.sim.stats` the counters `epp.sim.metrics` exports.
Blocks a step newly caches become vLLM `BlockStored` events when the cache records events.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.sim.kvcache import KvCache
from epp.sim.kvevents import stored
from epp.sim.profiles import GpuProfile
from epp.sim.stats import EngineStats

WAITING, RUNNING, FINISHED, ABORTED = range(4)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    profile: GpuProfile
    speed: float = 1.0
    num_gpu_blocks: int | None = None  # None: the profile's
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: the profile's
    max_loras: int = 4
    max_model_len: int = 4096
    lora_load_s: float | None = None  # None: the profile's
    min_step_s: float = 0.0005  # floor after the speed multiplier: keeps fast pods cheap to run
    prefix_caching: bool = True


class Seq:
    """One request inside the engine. Mutable; the server reads progress from it."""

    __slots__ = (
        "adapter", "arrival", "blocks", "cached_tokens", "committed", "finish_reason",
        "finished_at", "first_token_at", "generated", "hashes", "last_token_at", "lora_id",
        "max_tokens", "notify", "num_computed", "num_tokens", "preemptions", "prompt_tokens",
        "rid", "scheduled_at", "status", "stop_reason", "token_ids",
    )  # fmt: skip

    def __init__(
        self,
        rid: str,
        prompt_tokens: int,
        max_tokens: int,
        hashes: list[int],
        adapter: str | None = None,
        arrival: float = 0.0,
        stop_reason: str = "length",
        token_ids: Sequence[int] = (),  # the prompt's, for the BlockStored events
        lora_id: int | None = None,
    ) -> None:
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("a sequence needs at least one prompt token and one output token")
        self.rid = rid
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.hashes = hashes
        self.adapter = adapter
        self.arrival = arrival
        self.stop_reason = stop_reason  # finish_reason once max_tokens are out
        self.token_ids = token_ids
        self.lora_id = lora_id
        self.status = WAITING
        self.num_tokens = prompt_tokens  # prompt + generated
        self.num_computed = 0
        self.generated = 0
        self.blocks: list[int] = []
        self.committed = 0  # prompt blocks registered in the prefix cache
        self.cached_tokens = 0
        self.preemptions = 0
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.notify: Callable[[], None] | None = None

    @property
    def done(self) -> bool:
        return self.status >= FINISHED


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        p = config.profile
        self.config = config
        self.profile = p
        self.speed = config.speed
        self.block_size = config.block_size
        self.max_num_seqs = config.max_num_seqs
        self.max_batched = config.max_num_batched_tokens or p.max_num_batched_tokens
        self.lora_load_s = p.lora_load_s if config.lora_load_s is None else config.lora_load_s
        blocks = config.num_gpu_blocks or p.num_gpu_blocks
        self.kv = KvCache(blocks, config.block_size, config.prefix_caching)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.active_loras: OrderedDict[str, None] = OrderedDict()  # GPU slots, LRU first
        self.stats = EngineStats()
        self._scheduled: list[tuple[Seq, int]] = []
        self._step_start = 0.0
        self._busy: deque[tuple[float, float]] = deque()

    # -- requests ---------------------------------------------------------------------------
    def capacity_tokens(self) -> int:
        return min(self.config.max_model_len, self.kv.num_blocks * self.block_size)

    def submit(self, seq: Seq, now: float) -> None:
        if seq.prompt_tokens + seq.max_tokens > self.capacity_tokens():
            raise ValueError("prompt plus output exceed the model's context or the KV cache")
        seq.arrival = now
        self.waiting.append(seq)

    def abort(self, seq: Seq) -> None:
        if seq.status == WAITING:
            self.waiting.remove(seq)
        elif seq.status == RUNNING:
            self.running.remove(seq)
            self.kv.release(seq.blocks)
            seq.blocks = []
        else:
            return
        seq.status = ABORTED
        self.stats.finished["abort"] += 1

    # -- one step ---------------------------------------------------------------------------
    def plan_step(self, now: float) -> float | None:
        """Schedule the next step at `now`; its duration, or None when there is nothing to do."""
        bs, kv = self.block_size, self.kv
        budget = self.max_batched
        sched: list[tuple[Seq, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            need = -(-(seq.num_computed + n) // bs) - len(seq.blocks)
            while need > 0:
                got = kv.allocate(need)
                if got is not None:
                    seq.blocks.extend(got)
                    break
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status != RUNNING:
                break
            sched.append((seq, n))
            budget -= n
            i += 1
        loads = 0 if preempted else self._admit(now, budget, sched)
        if not sched:
            return None
        prefill = decode = ctx = 0
        for seq, n in sched:
            ctx += seq.num_computed
            if n == 1 and seq.generated > 0 and seq.num_computed == seq.num_tokens - 1:
                decode += 1
            else:
                prefill += n
        self._scheduled = sched
        self._step_start = now
        t = self.profile.step_time(prefill, decode, ctx) + loads * self.lora_load_s
        return max(t / self.speed, self.config.min_step_s)

    def _admit(self, now: float, budget: int, sched: list[tuple[Seq, int]]) -> int:
        bs, kv = self.block_size, self.kv
        loads = 0
        skipped: list[Seq] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            evict = self._lora_eviction(seq.adapter)
            if evict is None:
                skipped.append(self.waiting.popleft())
                continue
            hits = kv.lookup(seq.hashes)
            if len(hits) * bs >= seq.num_tokens:
                hits = hits[:-1]
            computed = len(hits) * bs
            n = min(seq.num_tokens - computed, budget)
            need = -(-(computed + n) // bs) - len(hits)
            if need > kv.free_after(hits):
                break
            if seq.adapter is not None:
                loads += self._lora_take(seq.adapter, evict)
            kv.acquire(hits)
            seq.blocks = hits + (kv.allocate(need) or [])
            seq.num_computed = computed
            seq.committed = len(hits)
            st = self.stats
            st.prefix_queries += seq.num_tokens
            st.prefix_hits += computed
            if seq.scheduled_at is None:
                seq.scheduled_at = now
                seq.cached_tokens = computed
                st.queue.observe(max(0.0, now - seq.arrival))
            self.waiting.popleft()
            seq.status = RUNNING
            self.running.append(seq)
            sched.append((seq, n))
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        return loads

    def _lora_eviction(self, adapter: str | None) -> str | None:
        """ "" if `adapter` can run without evicting, the adapter to evict, or None to wait."""
        slots = self.active_loras
        if adapter is None or adapter in slots or len(slots) < self.config.max_loras:
            return ""
        in_use = {s.adapter for s in self.running}
        return next((a for a in slots if a not in in_use), None)

    def _lora_take(self, adapter: str, evict: str) -> int:
        """Put `adapter` in a GPU slot; 1 if that meant loading it."""
        slots = self.active_loras
        if adapter in slots:
            slots.move_to_end(adapter)
            return 0
        if evict:
            del slots[evict]
        slots[adapter] = None
        self.stats.lora_loads += 1
        return 1

    def _preempt(self, seq: Seq) -> None:
        self.kv.release(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.committed = 0
        seq.status = WAITING
        seq.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)

    def finish_step(self, now: float) -> list[Seq]:
        """Commit the planned step at `now`; the sequences that got a token (some finished)."""
        st, kv, bs = self.stats, self.kv, self.block_size
        st.steps += 1
        st.last_step_at = now
        st.busy_s += now - self._step_start
        self._busy.append((self._step_start, now))
        out: list[Seq] = []
        finished = False
        for seq, n in self._scheduled:
            if seq.status != RUNNING:
                continue
            seq.num_computed += n
            full = min(seq.num_computed // bs, len(seq.hashes))
            if seq.committed < full:
                self._commit(seq, full)
            if seq.num_computed < seq.num_tokens:
                continue
            seq.generated += 1
            seq.num_tokens += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
                st.ttft.observe(max(0.0, now - seq.arrival))
                st.prompt_tokens += seq.prompt_tokens  # vLLM v1 counts a prompt at its first token
            else:
                st.itl.observe(now - seq.last_token_at)
            seq.last_token_at = now
            if seq.generated >= seq.max_tokens:
                seq.status = FINISHED
                seq.finished_at = now
                seq.finish_reason = seq.stop_reason
                kv.release(seq.blocks)
                seq.blocks = []
                st.finished[seq.stop_reason] += 1
                st.generation.observe(seq.generated)
                # per-request figures vLLM v1 observes when a request finishes, together
                first = seq.first_token_at or now
                st.prefill.observe(max(0.0, first - (seq.scheduled_at or seq.arrival)))
                st.prefill_computed.observe(max(0, seq.prompt_tokens - seq.cached_tokens))
                st.e2e.observe(now - seq.arrival)
                finished = True
            out.append(seq)
        st.generation_tokens += len(out)
        if finished:
            self.running = [s for s in self.running if s.status == RUNNING]
        self._scheduled = []
        return out

    def _commit(self, seq: Seq, full: int) -> None:
        """Cache the sequence's computed full blocks; those newly cached become events."""
        kv = self.kv
        run: list[int] = []  # consecutive newly cached blocks: one BlockStored each run
        for i in range(seq.committed, full):
            if kv.commit(seq.blocks[i], seq.hashes[i]):
                if run and run[-1] != i - 1:
                    self._stored(seq, run)
                    run = []
                run.append(i)
        seq.committed = full
        if run and kv.events is not None:
            self._stored(seq, run)

    def _stored(self, seq: Seq, run: list[int]) -> None:
        events = self.kv.events
        if events is None:
            return
        bs, first, end = self.block_size, run[0], run[-1] + 1
        events.append(
            stored(
                seq.hashes[first:end],
                seq.hashes[first - 1] if first else None,
                list(seq.token_ids[first * bs : end * bs]),
                bs,
                seq.lora_id,
                seq.adapter,
            )
        )

    # -- observations -----------------------------------------------------------------------
    def utilization(self, now: float, window: float = 1.0) -> float:
        """Fraction of the last `window` seconds spent inside steps (what DCGM calls GPU util)."""
        start = now - window
        busy = self._busy
        while busy and busy[0][1] <= start:
            busy.popleft()
        total = sum(min(e, now) - max(s, start) for s, e in busy)
        if self._scheduled:
            total += now - max(self._step_start, start)
        return max(0.0, min(1.0, total / window))

    def running_adapters(self) -> list[str]:
        return sorted({s.adapter for s in self.running if s.adapter is not None})

    def waiting_adapters(self) -> list[str]:
        return sorted({s.adapter for s in self.waiting if s.adapter is not None})
