"""Envoy ext_proc edge: translates ProcessingRequest/ProcessingResponse to director calls.

`service.py` is the gRPC servicer, `stream.py` the per-request state machine, `messages.py`
builds Envoy protobufs, `response.py` follows the response body (usage, model back-rewrite).
"""
