"""The HTTP face of one simulated pod: an aiohttp app speaking vLLM's OpenAI-compatible API.

Routes: `/v1/chat/completions`, `/v1/completions`, `/v1/responses`, `/v1/messages` (SSE or
JSON), `/v1/embeddings`, `/v1/models`, `/health`, `/metrics`, `/v1/load_lora_adapter`,
`/v1/unload_lora_adapter` and the admin `/sim/config`. Every response carries `x-inference-pod`
and `x-inference-pod-address`. Requests of every API go into the pod's engine (`epp.sim.pod`)
alike; each API's wire (`epp.sim.wire`) reads its body and writes its answer. A stream waits on
a future its sequence's `notify` resolves, then writes every token produced since its last write
in one go. While the pod's GPU has an XID error (`/sim/config {"gpu": {"xid": 79}}`) every request
fails with a 500, and those it was serving when the error came fail too (a 500, or a stream cut
short).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from epp.sim.anthropic import MessagesWire
from epp.sim.embeddings import EmbeddingsWire
from epp.sim.engine import Seq
from epp.sim.metrics import GARBAGE, render_vllm, restrict
from epp.sim.openai import ApiError
from epp.sim.pod import GPU_ERROR, SimPod
from epp.sim.responses import ResponsesWire
from epp.sim.wire import Counts, OpenAIWire, Streamer, Wire

POD_KEY = web.AppKey("sim_pod", SimPod)
WIRES: dict[str, Wire] = {
    "/v1/chat/completions": OpenAIWire(chat=True),
    "/v1/completions": OpenAIWire(chat=False),
    "/v1/responses": ResponsesWire(),
    "/v1/messages": MessagesWire(),
    "/v1/embeddings": EmbeddingsWire(),
}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Wake:
    """`Seq.notify` target: resolves the future a handler is waiting on."""

    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    def __call__(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self) -> None:
        self.fut = asyncio.get_running_loop().create_future()
        await self.fut


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(e: ApiError, wire: Wire | None = None) -> web.Response:
    body = wire.error(e) if wire is not None else e.body()
    return web.Response(body=body, status=e.status, content_type="application/json")


async def _body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None


def _kill(request: web.Request) -> None:
    """Drop the connection without finishing the response, like a crashing server."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _serve(request: web.Request, wire: Wire) -> web.StreamResponse:
    pod = request.app[POD_KEY]
    try:
        raw = await request.read()
        req = wire.parse(raw)
        adapter = pod.resolve_model(req.model)
        ids = wire.token_ids(pod.tokenizer, raw, req) if pod.tokenizer is not None else None
        seq = pod.new_seq(req, adapter, ids)
    except ApiError as e:
        return _error(e, wire)
    gpu_error = pod.gpu_error()
    if gpu_error is not None:
        return _error(gpu_error, wire)
    if pod.should_fail():
        return _error(ApiError(500, "injected fault: internal server error"), wire)
    rid = f"{wire.id_prefix}{pod.name}-{seq.rid}"
    created = int(time.time())
    die_at = max(1, seq.max_tokens // 2) if pod.faults.die_mid_stream else None
    wake = _Wake()
    seq.notify = wake
    pod.driver.submit(seq)
    try:
        if req.stream:
            streamer = wire.streamer(rid, created, req)
            return await _stream(request, seq, streamer, wake, die_at)
        while not seq.done:
            await wake.wait()
        if seq.finish_reason == GPU_ERROR:
            return _error(pod.gpu_error() or ApiError(500, "the GPU failed"), wire)
        if die_at is not None:
            _kill(request)
            return web.Response(status=500)
        return web.Response(
            body=wire.answer(rid, created, req, _counts(seq)), content_type="application/json"
        )
    finally:
        if not seq.done:
            pod.driver.abort(seq)


def _counts(seq: Seq, generated: int | None = None) -> Counts:
    made = seq.generated if generated is None else generated
    return Counts(seq.prompt_tokens, made, seq.cached_tokens, seq.finish_reason or "abort")


async def _stream(
    request: web.Request, seq: Seq, streamer: Streamer, wake: _Wake, die_at: int | None
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    sent = 0
    while True:
        produced = seq.generated
        if produced > sent:
            data = streamer.tokens(sent, produced - sent)
            if sent == 0:
                data = streamer.start(_counts(seq, 0)) + data
            sent = produced
            if die_at is not None and sent >= die_at:
                await resp.write(data)
                _kill(request)
                return resp
            if seq.done:
                await resp.write(data + streamer.finish(_counts(seq, sent)))
                break
            await resp.write(data)
        elif seq.done:
            break
        await wake.wait()
        if seq.finish_reason == GPU_ERROR:  # the GPU failed mid-answer: the stream is cut
            _kill(request)
            return resp
    await resp.write_eof()
    return resp


def _route(wire: Wire) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve(request, wire)

    return handler


async def models(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    created = pod.created
    base = pod.spec.model

    def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": pod.spec.max_model_len,
        }

    data = [card(base, base, None)]
    data.extend(card(alias, base, None) for alias in pod.spec.aliases)
    data.extend(card(name, path, base) for name, path in sorted(pod.adapters.items()))
    return _json({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    pod.metrics_pages += 1
    if pod.faults.metrics == "slow":
        await asyncio.sleep(pod.spec.metrics_delay_s)
    if pod.faults.metrics == "garbage":
        body = GARBAGE
    else:
        body = render_vllm(pod, asyncio.get_running_loop().time(), time.time())
        names = request.query.getall("name[]", [])
        if names:  # as prometheus_client serves vLLM's page: only the samples asked for
            body = restrict(body, names)
    return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})


def _lora_name(body: Any) -> str:
    name = body.get("lora_name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'lora_name' is required", "lora_name")
    return name


async def load_lora(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    try:
        body = await _body(request)
        name = _lora_name(body)
        path = body.get("lora_path")
        if not isinstance(path, str) or not path:
            raise ApiError(400, "'lora_path' is required", "lora_path")
        pod.load_adapter(name, path)
    except ApiError as e:
        return _error(e)
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    try:
        name = _lora_name(await _body(request))
        pod.unload_adapter(name)
    except ApiError as e:
        return _error(e)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def sim_config(request: web.Request) -> web.Response:
    pod = request.app[POD_KEY]
    if request.method == "GET":
        return _json(pod.view())
    try:
        return _json(pod.configure(await _body(request)))
    except ApiError as e:
        return _error(e)
    except (ValueError, TypeError) as e:
        return _error(ApiError(400, str(e)))


@web.middleware
async def _hang(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path != "/sim/config":
        await request.app[POD_KEY].wait_unhung()
    resp: web.StreamResponse = await handler(request)
    return resp


async def _identify(request: web.Request, response: web.StreamResponse) -> None:
    pod = request.app[POD_KEY]
    response.headers["x-inference-pod"] = pod.name
    response.headers["x-inference-pod-address"] = pod.address


def build_app(pod: SimPod) -> web.Application:
    app = web.Application(middlewares=[_hang], client_max_size=64 * 1024 * 1024)
    app[POD_KEY] = pod
    app.on_response_prepare.append(_identify)
    for path, wire in WIRES.items():
        app.router.add_post(path, _route(wire))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/load_lora_adapter", load_lora)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora)
    app.router.add_route("GET", "/sim/config", sim_config)
    app.router.add_route("POST", "/sim/config", sim_config)
    return app


async def start_server(pod: SimPod, shutdown_timeout: float = 1.0) -> web.AppRunner:
    """Listen on the pod's address; the real port (for port 0) is written back to the pod."""
    runner = web.AppRunner(
        build_app(pod),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, pod.spec.host, pod.spec.port, reuse_address=True)
        await site.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    pod.address = f"{host}:{port}"
    pod.created = int(time.time())
    return runner
