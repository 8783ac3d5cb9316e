"""The gRPC servicer for `envoy.service.ext_proc.v3.ExternalProcessor/Process`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.director import Director
from epp.extproc.stream import RequestStream
from epp.observability import EppMetrics
from epp.settings import ProtocolSettings

log = logging.getLogger("epp.extproc")


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, director: Director, metrics: EppMetrics, protocol: ProtocolSettings) -> None:
        self._director = director
        self._metrics = metrics
        self._protocol = protocol

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = RequestStream(self._director, self._metrics, self._protocol)
        try:
            async for request in request_iterator:
                for reply in stream.on_message(request):
                    yield reply
        finally:
            stream.close()


def add_to_server(servicer: ExternalProcessor, server: grpc.aio.Server) -> None:
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
