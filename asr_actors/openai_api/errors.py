"""Errors as OpenAI's API shapes them: `{"error": {"message", "type", "param", "code"}}` with the HTTP status
its SDKs turn into their exception classes (400 BadRequestError, 401 AuthenticationError, 429
RateLimitError, 5xx InternalServerError...)."""

from __future__ import annotations

import json

from asr_actors import http

_TYPES = {401: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error")

    def response(self) -> http.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return http.Response(self.status, json.dumps(body).encode(), "application/json")
