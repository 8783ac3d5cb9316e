"""The error tree. Every error a request can meet carries its HTTP status and OpenAI error type.

    EppError
    ├── BadRequest            400  invalid_request_error  not JSON, no model, bad field
    ├── ModelNotFound         404  not_found_error        unknown model, registration required
    ├── RequestTooLarge       413  invalid_request_error  body over the configured limit
    ├── UnsupportedMediaType  415  invalid_request_error  a content-encoding not decoded
    ├── Shed                  429  rate_limit_error       sheddable request dropped under saturation
    ├── QueueFull             429  rate_limit_error       the pool's waiting room is at its limit
    ├── Evicted               429  rate_limit_error       a waiting sheddable request made room
    ├── NoEndpoints           503  service_unavailable    no ready endpoint (or empty subset hint)
    ├── TTLExpired            503  service_unavailable    waited for room longer than its TTL
    ├── ObjectiveUnmet        503  service_unavailable    no endpoint can meet its latency objective
    └── InternalError         500  internal_error         a bug: logged with its traceback
    ManifestError             (not per request) a resource failed validation; carries its field path

Only `epp.extproc` turns these into Envoy ImmediateResponses; nothing else knows about HTTP.
"""

from __future__ import annotations


class EppError(Exception):
    status: int = 500
    error_type: str = "internal_error"
    reason: str = "Internal"  # short code sent back in the x-gateway-inference-error header

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(EppError):
    status = 400
    error_type = "invalid_request_error"
    reason = "BadRequest"


class ModelNotFound(EppError):
    status = 404
    error_type = "not_found_error"
    reason = "ModelNotFound"


class RequestTooLarge(EppError):
    status = 413
    error_type = "invalid_request_error"
    reason = "RequestTooLarge"


class UnsupportedMediaType(EppError):
    status = 415
    error_type = "invalid_request_error"
    reason = "UnsupportedMediaType"


class Shed(EppError):
    status = 429
    error_type = "rate_limit_error"
    reason = "Shed"


class QueueFull(EppError):
    status = 429
    error_type = "rate_limit_error"
    reason = "QueueFull"


class NoEndpoints(EppError):
    status = 503
    error_type = "service_unavailable"
    reason = "NoEndpoints"


class Evicted(EppError):
    status = 429
    error_type = "rate_limit_error"
    reason = "Evicted"


class TTLExpired(EppError):
    status = 503
    error_type = "service_unavailable"
    reason = "TTLExpired"


class ObjectiveUnmet(EppError):
    status = 503
    error_type = "service_unavailable"
    reason = "ObjectiveUnmet"


class InternalError(EppError):
    status = 500
    error_type = "internal_error"
    reason = "Internal"


class ManifestError(Exception):
    """A resource failed validation. `path` names the field, e.g. spec.targetPorts[0].number."""

    def __init__(self, path: str, message: str, source: str = "") -> None:
        super().__init__(f"{source}: {path}: {message}" if source else f"{path}: {message}")
        self.path = path
        self.message = message
        self.source = source
