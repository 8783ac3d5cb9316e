"""vLLM's KV-cache events from a simulated pod: `--kv-events-config`, a PUB socket, replay.

`KvEventsConfig` (`epp.sim.spec`) is vLLM's `KVEventsConfig`. `Publisher` does what vLLM 0.26's
`ZmqEventPublisher` (`vllm/distributed/kv_events.py`) puts on the wire: each engine step's
events as one msgpack batch `[ts, [event, ...], data_parallel_rank]`, every event a map tagged
by `type` (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`; vLLM ≤ 0.25 sent positional
arrays), sent as the frames (topic, 8-byte big-endian sequence number, payload) on a PUB socket,
the last `buffer_steps` batches kept for a ROUTER replay socket that answers a start sequence
number with (sequence, payload) frames and an end marker of sequence -1. `*` in an endpoint
means the pod's own address, since one process hosts many simulated pods. `epp.sim.pod` owns one
per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from epp.sim.spec import KvEventsConfig

log = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
MEDIUM_GPU = "GPU"


def _bound(sock: zmq.Socket[Any]) -> str:
    """The address a socket bound last (with the real port for port 0)."""
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


def _local(endpoint: str, host: str) -> str:
    return endpoint.replace("*", host) if endpoint.startswith("tcp://") else endpoint


class Publisher:
    """One pod's event stream. `publish(events)` is called once per engine step."""

    def __init__(self, config: KvEventsConfig, host: str, ctx: zmq.asyncio.Context) -> None:
        self.config = config
        self.endpoint = _local(config.endpoint, host)
        self.replay_endpoint = (
            _local(config.replay_endpoint, host) if config.replay_endpoint else None
        )
        self._topic = config.topic.encode()
        self._pub = ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._replay: zmq.asyncio.Socket | None = None
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.sent = 0

    def start(self) -> None:
        ep = self.config.endpoint
        if "*" in ep or "::" in ep or ep.startswith(("ipc://", "inproc://")):
            self._pub.bind(self.endpoint)
        else:  # vLLM's rule: bind a wildcard, connect to anything else
            self._pub.connect(self.endpoint)
        self.endpoint = _bound(self._pub) or self.endpoint
        if self.replay_endpoint:
            replay = self._pub.context.socket(zmq.ROUTER)
            replay.setsockopt(zmq.LINGER, 0)
            replay.bind(self.replay_endpoint)
            self.replay_endpoint = _bound(replay)
            self._replay = replay
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: list[Any]) -> None:
        if not events:
            return
        payload = self._pack([time.time(), events, 0])
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq.Again):  # a PUB socket drops at its high-water mark
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload), zmq.NOBLOCK)
            self.sent += 1

    def restart(self) -> None:
        """A restarted engine: sequence numbers start again at 0 and nothing old is replayed."""
        self._seq = 0
        self._buffer.clear()

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        sock = self._replay
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid replay request: %d frames", len(frames))
                continue
            client, _, start = frames
            first = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= first:
                    await sock.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
            await sock.send_multipart((client, b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._replay is not None:
            self._replay.close(linger=0)
        self._pub.close(linger=0)


def stored(
    hashes: list[int],
    parent: int | None,
    token_ids: list[int],
    block_size: int,
    lora_id: int | None,
    lora_name: str | None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": token_ids,
        "block_size": block_size,
        "lora_id": lora_id,
        "medium": MEDIUM_GPU,
        "lora_name": lora_name,
    }
    if lora_name:  # vLLM omits fields left at their default (None)
        event["extra_keys"] = [[lora_name]] * len(hashes)
    return event


def removed(hashes: list[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": MEDIUM_GPU}


def cleared() -> dict[str, Any]:
    return {"type": "AllBlocksCleared"}
