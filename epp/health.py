"""gRPC health for the EPP: `liveness` always serves; `readiness`, `""` and the ext_proc service
name serve only once resources and endpoints are synced, and stop serving on shutdown."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
READY_SERVICES = ("", "readiness", EXT_PROC_SERVICE, "inference-extension")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.ready = False

    async def start(self) -> None:
        await self.servicer.set("liveness", SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        self.ready = ready
        for name in READY_SERVICES:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def shutting_down(self) -> None:
        await self.set_ready(False)
        await self.servicer.set("liveness", NOT_SERVING)
