"""Typed errors that travel back to the client as OpenAI-shaped JSON."""
from __future__ import annotations


class FerryError(Exception):
    """Base class: carries what the gateway needs for an OpenAI error body."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidParameter(FerryError, ValueError):
    """A request parameter is out of range or of the wrong type (HTTP 400)."""

    status = 400
    type = "invalid_request_error"


class PromptTooLong(InvalidParameter):
    """prompt (+ max_tokens) does not fit the model's context or the KV pool (HTTP 400)."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message, param=param, code="context_length_exceeded")


class ModelNotFound(FerryError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist.", param="model", code="model_not_found")


class NotReady(FerryError):
    status = 503
    type = "service_unavailable"
