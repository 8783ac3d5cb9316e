"""gRPC health for the EPP: `liveness` always serves; `readiness`, `""` and the ext_proc service
name serve only once resources and endpoints are synced, and stop serving on shutdown.
The same statuses are served by grpc.aio (`servicer`) and by the lean server (`check`).
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from epp.grpcwire.call import NOT_FOUND, Call, GrpcError

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
READY_SERVICES = ("", "readiness", EXT_PROC_SERVICE, "inference-extension")
CHECK_METHOD = "/grpc.health.v1.Health/Check"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.ready = False
        self._status: dict[str, int] = {}

    async def start(self) -> None:
        await self._set("liveness", SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        self.ready = ready
        for name in READY_SERVICES:
            await self._set(name, SERVING if ready else NOT_SERVING)

    async def shutting_down(self) -> None:
        await self.set_ready(False)
        await self._set("liveness", NOT_SERVING)

    async def _set(self, service: str, status: int) -> None:
        self._status[service] = status
        await self.servicer.set(service, status)

    async def check(self, call: Call) -> None:
        """`Health/Check` on the lean server (Watch is grpc.aio's only)."""
        message = await call.read()
        request = health_pb2.HealthCheckRequest.FromString(message or b"")
        status = self._status.get(request.service)
        if status is None:
            raise GrpcError(NOT_FOUND, f"unknown service {request.service!r}")
        call.write(health_pb2.HealthCheckResponse(status=status).SerializeToString())
