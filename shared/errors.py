"""Typed errors that travel back to the client as OpenAI-shaped JSON.

Every OpenAI error body ferry sends comes from FerryError.body(): raised in the gateway, or raised
in another process and carried to the gateway by a RequestError (RequestError.of), which the gateway
turns back into a FerryError (RequestError.to_exception) to answer with.
"""
from __future__ import annotations


class FerryError(Exception):
    """Base class: carries what the gateway needs for an OpenAI error body."""

    status = 500
    type = "internal_error"
    code: str | None = None  # a subclass's default; an instance may set its own

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict:
        """The inner OpenAI error object."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def to_dict(self) -> dict:
        return {"error": self.body()}


class InvalidParameter(FerryError, ValueError):
    """A request parameter is out of range or of the wrong type (HTTP 400)."""

    status = 400
    type = "invalid_request_error"


class PromptTooLong(InvalidParameter):
    """prompt (+ max_tokens) does not fit the model's context or the KV pool (HTTP 400)."""

    code = "context_length_exceeded"

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message, param=param)


class ModelNotFound(FerryError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist.", param="model")


class ServiceUnavailable(FerryError):
    """The pipeline cannot answer the request (HTTP 503): a peer died or went silent while it was open."""

    status = 503
    type = "service_unavailable"


class NotReady(ServiceUnavailable):
    """The pipeline is not up (yet): the request was never started."""


class EngineFailure(ServiceUnavailable):
    """The engine failed (a runner died or raised) while the request was in it."""

    code = "engine_failure"


class HTTPError(FerryError):
    """An error whose status is known only at run time: an HTTP-level failure in the gateway (413, 405, ...),
    or one that another process sent in a RequestError. The type follows the status unless given."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param, code)
        self.status = status if isinstance(status, int) and 400 <= status < 600 else 500
        self.type = type or ("invalid_request_error" if self.status < 500 else "service_unavailable")


# ---------------------------------------------------------------- the HTTP edge (issue 13)

class InvalidAPIKey(FerryError):
    """No API key, or not one of the configured keys (HTTP 401, as OpenAI answers it)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}


class Overloaded(ServiceUnavailable):
    """Too many requests are waiting already: try again later (HTTP 503 with Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, int(retry_after)))}


class RateLimited(FerryError):
    """A key's requests or tokens per minute are used up (HTTP 429 with Retry-After)."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, int(retry_after)))}


class RequestTimeout(FerryError):
    """The request ran past --request-timeout: ended, and aborted in the engine (HTTP 504)."""

    status = 504
    type = "timeout"
    code = "request_timeout"


# ---------------------------------------------------------------- models by name (issue 19b)


class ModelNotAvailable(FerryError):
    """A model named org/name that is in neither local cache and cannot be downloaded now (offline, downloads
    off, or the hub refused): the message says which and what to do."""

    status = 503
    type = "service_unavailable"
    code = "model_not_available"


class PullNotAllowed(FerryError):
    """POST /api/pull on a server started without --allow-pull (it would let clients fill this host's disk)."""

    status = 403
    type = "permission_error"
    code = "pull_not_allowed"
